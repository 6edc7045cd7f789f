"""The attention types a ViT block can use, by name, and the one function that builds them.

``ViTConfig.block_attention`` names one type per block (the FLatten paper mixes them, its
``ATTN_TYPE: LLSS``: linear attention in the early stages where the token count is large,
softmax in the late ones where it is small):

==================  ==========================================================================
``global``          softmax over all tokens (:class:`~vlmzoo.layers.attention.Attention`)
``window``          ViTDet non-overlapping windows, zero padding (window_attention.py)
``shifted_window``  Swin windows with a relative position bias table; every second block of a
                    run of consecutive ``shifted_window`` blocks is shifted by window // 2
                    (W-MSA, SW-MSA, W-MSA, ...; swin_attention.py)
``spatial_reduction``  PVT: keys/values from a strided conv + LayerNorm (spatial_reduction_attention.py)
``cross_shaped``    CSWin stripes with LePE (cswin_attention.py)
``focused_linear``  FLatten focused linear attention over the whole grid (focused_linear_attention.py)
==================  ==========================================================================

Every non-global type keeps the block's fused ``qkv``/``proj`` (``spatial_reduction`` uses PVT's
``q``/``kv``), so a block switched from ``global`` keeps its parameter count plus only what the
type adds (bias table, reduction conv + norm, LePE convs, FLatten's DWC/temperature/positional
encoding). Prefix tokens: see :mod:`vlmzoo.layers.spatial_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch.nn as nn

from vlmzoo.layers.attention import QKVBias
from vlmzoo.layers.cswin_attention import CrossShapedWindowAttention
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.spatial_reduction_attention import SpatialReductionAttention
from vlmzoo.layers.swin_attention import ShiftedWindowAttention
from vlmzoo.layers.window_attention import WindowAttention

BlockAttention = Literal[
    "global", "window", "shifted_window", "spatial_reduction", "cross_shaped", "focused_linear"
]
BLOCK_ATTENTION_TYPES: tuple[str, ...] = get_args(BlockAttention)

# The kernel behind ``focused_linear`` attention, as a config field can name it: "auto" or one of
# vlmzoo.kernels.BACKENDS (a test keeps the two lists equal). A Literal, so that a config file
# naming an unknown backend is refused on construction, before any model is built.
FocusedLinearBackend = Literal["auto", "reference", "torch", "triton", "cpp"]


@dataclass(frozen=True)
class AttentionOptions:
    """The hyperparameters of the non-global types (each type reads its own).

    ``window_size``: ``window`` and ``shifted_window`` (ViTDet/SAM use 14, Swin 7).
    ``sr_ratio`` and ``sr_norm_eps``: ``spatial_reduction`` (PVT v1 stage 1–3: 8, 4, 2; its
    reduction norm has ``nn.LayerNorm``'s default eps 1e-5). ``stripe_width``: ``cross_shaped``
    (CSWin-T: 1, 2, 7, 7 by stage). ``focusing_factor`` and ``dwc_kernel_size``:
    ``focused_linear`` (FLatten: 3 and 5, ``MODEL.LA.FOCUSING_FACTOR`` / ``KERNEL_SIZE`` in its config.py);
    ``focused_linear_backend``: the kernel it calls (see :func:`vlmzoo.kernels.focused_linear_attention`).
    """

    window_size: int = 14
    sr_ratio: int = 2
    sr_norm_eps: float = 1e-5
    stripe_width: int = 7
    focusing_factor: float = 3.0
    dwc_kernel_size: int = 5
    focused_linear_backend: FocusedLinearBackend = "auto"


def shift_sizes(kinds: tuple[str, ...], window_size: int) -> tuple[int, ...]:
    """Per-block shift for a layout: window // 2 on every second block of each run of consecutive
    ``shifted_window`` blocks (Swin's W-MSA/SW-MSA alternation), 0 elsewhere."""
    shifts, run = [], 0
    for kind in kinds:
        run = run + 1 if kind == "shifted_window" else 0
        shifts.append(window_size // 2 if kind == "shifted_window" and run % 2 == 0 else 0)
    return tuple(shifts)


def build_block_attention(
    kind: str,
    dim: int,
    num_heads: int,
    grid: tuple[int, int],
    num_prefix_tokens: int = 0,
    qkv_bias: QKVBias = True,
    options: AttentionOptions | None = None,
    shift_size: int = 0,
) -> nn.Module | None:
    """The token mixer of type ``kind`` for a block on the native token ``grid``; ``None`` for
    ``global`` (the block builds its own :class:`Attention`).

    ``grid`` sizes what is tied to the native resolution (FLatten's positional encoding).
    ``shift_size`` only matters for ``shifted_window`` (see :func:`shift_sizes`).
    """
    o = options or AttentionOptions()
    if kind == "global":
        return None
    if kind == "window":
        return WindowAttention(dim, num_heads, o.window_size, num_prefix_tokens, qkv_bias=qkv_bias)
    if kind == "shifted_window":
        return ShiftedWindowAttention(
            dim, num_heads, o.window_size, shift_size, num_prefix_tokens, qkv_bias=qkv_bias
        )
    if kind == "cross_shaped":
        return CrossShapedWindowAttention(
            dim, num_heads, o.stripe_width, num_prefix_tokens, qkv_bias=qkv_bias
        )
    if kind == "spatial_reduction":
        if qkv_bias not in (True, False):
            raise ValueError(f"spatial_reduction attention takes qkv_bias True or False, got {qkv_bias!r}")
        return SpatialReductionAttention(
            dim, num_heads, o.sr_ratio, num_prefix_tokens, qkv_bias=bool(qkv_bias), norm_eps=o.sr_norm_eps
        )
    if kind == "focused_linear":
        if qkv_bias not in (True, False):
            raise ValueError(f"focused_linear attention takes qkv_bias True or False, got {qkv_bias!r}")
        return FocusedLinearWindowAttention(
            dim,
            num_heads,
            None,  # global over the grid (and the prefix tokens), at any resolution
            num_prefix_tokens=num_prefix_tokens,
            qkv_bias=bool(qkv_bias),
            focusing_factor=o.focusing_factor,
            kernel_size=o.dwc_kernel_size,
            backend=o.focused_linear_backend,
            native_grid=grid,
        )
    raise ValueError(f"unknown block attention {kind!r}; known: {list(BLOCK_ATTENTION_TYPES)}")
