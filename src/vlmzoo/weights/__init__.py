"""Weights on disk: vlmzoo's checkpoint format, the atomic directory swap, and the Hugging Face Hub.

- :mod:`~vlmzoo.weights.format`: ``config.json`` + safetensors (single file or shards), read and
  written with every check;
- :mod:`~vlmzoo.weights.swap`: whole-directory replacement that a crash cannot tear;
- :mod:`~vlmzoo.weights.hub`: ``vlmzoo.load`` of a path or hub id, and ``HubMixin``.
"""
