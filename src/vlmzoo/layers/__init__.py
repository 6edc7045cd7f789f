"""Building blocks shared by every model. Nothing here knows about encoders or adapters."""

from vlmzoo.layers.attention import Attention
from vlmzoo.layers.block import Block
from vlmzoo.layers.drop_path import DropPath
from vlmzoo.layers.layer_scale import LayerScale
from vlmzoo.layers.mlp import Activation, Mlp, QuickGELU, SwiGLU, make_activation
from vlmzoo.layers.norm import LayerNorm2d
from vlmzoo.layers.patch_embed import PatchEmbed, check_image
from vlmzoo.layers.pos_embed import PosEmbedResize, resize_pos_embed
from vlmzoo.layers.rel_pos import RelPosAttention, decomposed_rel_pos_bias, get_rel_pos
from vlmzoo.layers.window import window_partition, window_unpartition

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
    "RelPosAttention",
    "SwiGLU",
    "check_image",
    "decomposed_rel_pos_bias",
    "get_rel_pos",
    "make_activation",
    "resize_pos_embed",
    "window_partition",
    "window_unpartition",
]
