"""Vision encoders (and the CLIP text tower). Each returns a :class:`VisionOutput`."""

from vlmzoo.encoders.base import VisionOutput
from vlmzoo.encoders.clip_text import TextOutput, TextTransformer, TextTransformerConfig
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig

__all__ = [
    "TextOutput",
    "TextTransformer",
    "TextTransformerConfig",
    "ViTConfig",
    "VisionOutput",
    "VisionTransformer",
]
