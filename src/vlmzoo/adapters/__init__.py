"""Ways of conditioning a language decoder on images: the contract (``base``), the prefix splice
(``prefix``: MLP projector, Q-Former, and ``anyres``: LLaVA-NeXT / OneVision's tiled images),
Flamingo's gated cross-attention and its Perceiver Resampler, and the encoder-decoder kind (the
decoder's own cross-attention reads the image tokens)."""

from vlmzoo.adapters.anyres import AnyResConfig, AnyResProjector
from vlmzoo.adapters.base import Adapter, Prepared, TextLayout
from vlmzoo.adapters.cross_attention import (
    FlamingoAdapter,
    FlamingoConfig,
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
)
from vlmzoo.adapters.encoder_decoder import EncoderDecoderAdapter, EncoderDecoderConfig
from vlmzoo.adapters.mlp import MLPProjector, MLPProjectorConfig
from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.adapters.qformer import QFormer, QFormerConfig, QFormerLayer, QFormerModel
from vlmzoo.adapters.resampler import PerceiverResampler

__all__ = [
    "Adapter",
    "AnyResConfig",
    "AnyResProjector",
    "EncoderDecoderAdapter",
    "EncoderDecoderConfig",
    "FlamingoAdapter",
    "FlamingoConfig",
    "GatedCrossAttentionBlock",
    "MLPProjector",
    "MLPProjectorConfig",
    "MaskedCrossAttention",
    "PerceiverResampler",
    "PrefixAdapter",
    "Prepared",
    "QFormer",
    "QFormerConfig",
    "QFormerLayer",
    "QFormerModel",
    "TextLayout",
]
