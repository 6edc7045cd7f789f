"""Building blocks shared by every model. Nothing here knows about encoders or adapters."""

from vlmzoo.layers.attention import Attention
from vlmzoo.layers.block import Block
from vlmzoo.layers.drop_path import DropPath
from vlmzoo.layers.layer_scale import LayerScale
from vlmzoo.layers.mlp import Activation, Mlp, QuickGELU, SwiGLU, make_activation
from vlmzoo.layers.norm import LayerNorm2d
from vlmzoo.layers.patch_embed import PatchEmbed, check_image
from vlmzoo.layers.pos_embed import PosEmbedResize, resize_pos_embed

__all__ = [
    "Activation",
    "Attention",
    "Block",
    "DropPath",
    "LayerNorm2d",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "PosEmbedResize",
    "QuickGELU",
    "SwiGLU",
    "check_image",
    "make_activation",
    "resize_pos_embed",
]
