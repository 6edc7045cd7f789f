"""Swin's (shifted) window attention with a relative position bias table (Liu et al. 2021).

W-MSA / SW-MSA: attention inside ``w x w`` windows (:class:`WindowAttention`) plus

- a learned bias per head for every relative offset (dy, dx) in [-(w-1), w-1]²:
  ``relative_position_bias_table`` of shape ((2w-1)², heads), indexed by
  ``(dy + w - 1)·(2w - 1) + (dx + w - 1)`` (the original ``WindowAttention``'s names and index; here
  the index is a non-persistent
  buffer, as in timm and transformers — it is fully determined by ``w``);
- on shifted blocks (``shift_size = w // 2`` on every second block), the padded grid is rolled by
  ``-shift`` before partitioning and back afterwards, and tokens that were not neighbours before
  the roll are kept apart with an additive mask of -100 (Swin's constant, kept for parity; the
  three regions per axis are [0, L-w), [L-w, L-shift), [L-shift, L) on the padded length L).

Grids smaller than the window clamp it (no shift; rules in :mod:`vlmzoo.layers.window_attention`);
the bias of a clamped, possibly rectangular window is read from the same table (its offsets are a
subset), so a model built at one resolution runs at smaller ones with its trained biases.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.layers.attention import QKVBias
from vlmzoo.layers.window_attention import WindowAttention, WindowClamp

SHIFT_MASK_VALUE = -100.0  # Swin's (and transformers') value for pairs split by the cyclic shift


def relative_position_index(window: tuple[int, int], table_window: int) -> torch.Tensor:
    """[n, n] rows of a ((2t-1)², heads) table for every token pair of a (rows, cols) window, n = rows·cols.

    ``table_window`` t >= rows, cols is the window the table was built for; for a t x t window this
    is Swin's ``relative_position_index``: (dy + t - 1)·(2t - 1) + (dx + t - 1).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)  # [2, n, n], each in [0, 2t-2]
    return rel[0] * (2 * table_window - 1) + rel[1]


def shift_mask(
    padded_grid: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """[windows, n, n] additive mask (0 or -100) for a cyclic shift of the padded grid (n = window area)."""

    def regions(length: int, size: int, offset: int) -> torch.Tensor:
        i = torch.arange(length, device=device)
        if offset == 0:  # not shifted along this axis: one region
            return torch.zeros_like(i)
        return (i >= length - size).long() + (i >= length - offset).long()  # 0, 1, 2

    rows = regions(padded_grid[0], window[0], shift[0])
    cols = regions(padded_grid[1], window[1], shift[1])
    labels = rows[:, None] * 3 + cols[None, :]  # [Hp, Wp]
    windows = rearrange(labels, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window[0], ww=window[1])
    apart = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(apart.shape, dtype=dtype, device=device).masked_fill_(apart, SHIFT_MASK_VALUE)


class ShiftedWindowAttention(WindowAttention):
    """Swin window attention, shifted by ``shift_size`` (0 for W-MSA): [B, P + H·W, C] -> same.

    Parameters: fused ``qkv`` (rows q, k, v), ``proj``, ``relative_position_bias_table``.
    Prefix tokens, when present (a ViT block of type "shifted_window"), are keys of every window
    with zero bias and never masked, and attend globally themselves.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        num_prefix_tokens: int = 0,
        qkv_bias: QKVBias = True,
        proj_bias: bool = True,
        clamp: WindowClamp = "per_axis",
    ):
        super().__init__(
            dim,
            num_heads,
            window_size,
            num_prefix_tokens,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            clamp=clamp,
        )
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.shift_size = shift_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # Swin's init
        self.register_buffer(
            "relative_position_index",
            relative_position_index((window_size, window_size), window_size),
            persistent=False,
        )

    def attention_bias(
        self,
        window: tuple[int, int],
        padded_grid: tuple[int, int],
        shift: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor:
        """[heads, n, n] relative position bias, plus the shift mask: [windows, heads, n, n]."""
        if window == (self.window_size, self.window_size):
            index = self.relative_position_index
        else:  # clamped to a small grid: the smaller window's offsets, read from the same table
            index = relative_position_index(window, self.window_size).to(device)
        n = window[0] * window[1]
        bias = self.relative_position_bias_table[index.flatten()].view(n, n, -1).permute(2, 0, 1)
        bias = bias.to(dtype)
        if any(shift):
            bias = bias + shift_mask(padded_grid, window, shift, dtype, device).unsqueeze(1)
        return bias
