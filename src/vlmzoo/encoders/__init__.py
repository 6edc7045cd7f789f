"""Vision encoders (and the CLIP text tower). Each returns a :class:`VisionOutput`."""

from vlmzoo.encoders.base import VisionOutput
from vlmzoo.encoders.clip_text import TextOutput, TextTransformer, TextTransformerConfig
from vlmzoo.encoders.fusion import FusedEncoder, FusedEncoderConfig
from vlmzoo.encoders.pvt import PvtConfig, PyramidVisionTransformer
from vlmzoo.encoders.sam import SamConfig, SamEncoder
from vlmzoo.encoders.swin import SwinConfig, SwinTransformer
from vlmzoo.encoders.vary import VaryVocabConfig, VaryVocabEncoder
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig

__all__ = [
    "FusedEncoder",
    "FusedEncoderConfig",
    "PvtConfig",
    "PyramidVisionTransformer",
    "SamConfig",
    "SamEncoder",
    "SwinConfig",
    "SwinTransformer",
    "TextOutput",
    "TextTransformer",
    "TextTransformerConfig",
    "VaryVocabConfig",
    "VaryVocabEncoder",
    "ViTConfig",
    "VisionOutput",
    "VisionTransformer",
]
