"""The exceptions vlmzoo raises.

Every error subclasses both :class:`VlmzooError` (catch everything from the library) and the
built-in type a caller would naturally expect (``ValueError`` for bad values, ``LookupError``
for unknown names), so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations


class VlmzooError(Exception):
    """Base class of all vlmzoo errors."""


class ConfigError(VlmzooError, ValueError):
    """A config field is missing, of the wrong type, or out of range."""


class InputError(VlmzooError, ValueError):
    """A tensor handed to a model has the wrong shape, dtype, channel count or size."""


class UnknownModelError(VlmzooError, LookupError):
    """A name is not in the registry; the message lists the closest registered names."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class CheckpointError(VlmzooError, ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped keys, or a bad file."""


class ConversionError(VlmzooError, ValueError):
    """A peer model (transformers, timm, original release) cannot be converted faithfully."""
