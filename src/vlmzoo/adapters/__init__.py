"""Adapters between vision encoders and language models."""

from vlmzoo.adapters.base import PrefixAdapter
from vlmzoo.adapters.mlp import MLPProjector, MLPProjectorConfig

__all__ = ["MLPProjector", "MLPProjectorConfig", "PrefixAdapter"]
