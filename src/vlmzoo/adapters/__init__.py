"""Adapters between vision encoders and language models."""

from vlmzoo.adapters.base import PrefixAdapter
from vlmzoo.adapters.cross_attention import (
    FlamingoAdapter,
    FlamingoConfig,
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    PerceiverResampler,
)
from vlmzoo.adapters.mlp import MLPProjector, MLPProjectorConfig
from vlmzoo.adapters.qformer import QFormer, QFormerConfig, QFormerLayer, QFormerModel

__all__ = [
    "FlamingoAdapter",
    "FlamingoConfig",
    "GatedCrossAttentionBlock",
    "MLPProjector",
    "MLPProjectorConfig",
    "MaskedCrossAttention",
    "PerceiverResampler",
    "PrefixAdapter",
    "QFormer",
    "QFormerConfig",
    "QFormerLayer",
    "QFormerModel",
]
