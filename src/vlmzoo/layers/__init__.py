"""Building blocks shared by every model. Nothing here knows about encoders or adapters."""

from vlmzoo.layers.attention import Attention
from vlmzoo.layers.block import Block
from vlmzoo.layers.block_attention import (
    BLOCK_ATTENTION_TYPES,
    AttentionOptions,
    BlockAttention,
    build_block_attention,
)
from vlmzoo.layers.cswin_attention import CrossShapedWindowAttention
from vlmzoo.layers.drop_path import DropPath, check_drop_path_rate, drop_path_rates
from vlmzoo.layers.focused_linear_attention import FocusedLinearAttention as FocusedLinearAttention
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.layer_scale import LayerScale
from vlmzoo.layers.mlp import Activation, Mlp, QuickGELU, SwiGLU, make_activation
from vlmzoo.layers.norm import LayerNorm2d
from vlmzoo.layers.patch_embed import ImageSize, PatchEmbed, check_image, image_hw
from vlmzoo.layers.pos_embed import PosEmbedResize, resize_pos_embed
from vlmzoo.layers.rel_pos import RelPosAttention, decomposed_rel_pos_bias, get_rel_pos
from vlmzoo.layers.spatial_attention import SpatialAttention
from vlmzoo.layers.spatial_reduction_attention import SpatialReductionAttention
from vlmzoo.layers.swin_attention import ShiftedWindowAttention
from vlmzoo.layers.window import window_partition, window_unpartition
from vlmzoo.layers.window_attention import WindowAttention

__all__ = [
    "BLOCK_ATTENTION_TYPES",
    "Activation",
    "Attention",
    "AttentionOptions",
    "Block",
    "BlockAttention",
    "CrossShapedWindowAttention",
    "DropPath",
    "FocusedLinearWindowAttention",
    "ImageSize",
    "LayerNorm2d",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "PosEmbedResize",
    "QuickGELU",
    "RelPosAttention",
    "ShiftedWindowAttention",
    "SpatialAttention",
    "SpatialReductionAttention",
    "SwiGLU",
    "WindowAttention",
    "build_block_attention",
    "check_drop_path_rate",
    "check_image",
    "decomposed_rel_pos_bias",
    "drop_path_rates",
    "get_rel_pos",
    "image_hw",
    "make_activation",
    "resize_pos_embed",
    "window_partition",
    "window_unpartition",
]
