"""The package version, in a room of its own so that lower rooms need not import the package root."""

__version__ = "0.1.0"
