"""Non-overlapping window attention on the token grid (ViTDet, Li et al. 2022, section 3; as SAM's
``modeling/image_encoder.py`` ``Block`` runs it).

The grid is zero-padded bottom/right to a multiple of the window side, cut into ``w x w`` windows,
and each window attends within itself. As in ViTDet/SAM (and transformers' Swin), the padded
tokens are ordinary zero vectors after ``norm1`` — their keys are the qkv bias — and are **not**
masked: they take part in the border windows' attention, which is what released weights were
trained with (SAM's ``window_partition`` pads with zeros, its ``Attention`` takes no mask;
:mod:`vlmzoo.layers.window`).

A window that reaches a side of the grid is clamped to it and not shifted along it (the Swin and
FLatten-Swin ``SwinTransformerBlock``: when the feature map is no larger than the window, the
window becomes the map and the shift 0), so a
window covering the grid is exactly global attention, not attention over padding. Two rules exist
and both are offered (``clamp``): ``"per_axis"`` (timm's Swin; windows may become rectangular, the
default here) and ``"shorter_side"`` (the original Swin and transformers' ``SwinLayer``: if the
shorter side is <= the window, the window becomes that side on both axes and the shift 0; what
the Swin encoder uses, for parity). The partition is an einops reshape rather than
:func:`vlmzoo.layers.window.window_partition`, which cuts square windows only; the window order
is the same (image-major, then row-major over the window grid).

Prefix tokens (CLS, registers) attend globally and are keys/values of every window
(:mod:`vlmzoo.layers.spatial_attention` explains why). :class:`WindowAttention` is also the base of
Swin's shifted windows (:mod:`vlmzoo.layers.swin_attention`), which add a relative position bias
and a cyclic shift through :meth:`WindowAttention.attention_bias` and ``shift_size``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.layers.attention import Attention, QKVBias
from vlmzoo.layers.spatial_attention import SpatialAttention

WindowClamp = Literal["per_axis", "shorter_side"]


class WindowAttention(Attention, SpatialAttention):
    """Multi-head self-attention inside ``window_size`` windows: [B, P + H·W, C] -> [B, P + H·W, C].

    Same fused ``qkv``/``proj`` parameters as :class:`Attention` (``qkv_bias`` True/False/"qv"), so
    a global block's weights load into a windowed one unchanged and parameter counts are equal.
    ``clamp`` picks the rule for grids smaller than the window (module docstring).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        num_prefix_tokens: int = 0,
        qkv_bias: QKVBias = True,
        proj_bias: bool = True,
        clamp: WindowClamp = "per_axis",
    ):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        if window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        if clamp not in ("per_axis", "shorter_side"):
            raise ValueError(f"clamp must be 'per_axis' or 'shorter_side', got {clamp!r}")
        self.window_size = window_size
        self.shift_size = 0  # Swin's shifted windows set this (layers/swin_attention.py)
        self.num_prefix_tokens = num_prefix_tokens
        self.clamp = clamp

    def window_and_shift(self, grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (window, shift) used on ``grid``, each (rows, columns), after clamping (module docstring)."""
        w, s = self.window_size, self.shift_size
        if self.clamp == "shorter_side":
            side = min(grid)
            return ((side, side), (0, 0)) if side <= w else ((w, w), (s, s))
        windows = tuple(n if n <= w else w for n in grid)
        shifts = tuple(0 if n <= w else s for n in grid)
        return windows, shifts  # type: ignore[return-value]

    def attention_bias(
        self,
        window: tuple[int, int],
        padded_grid: tuple[int, int],
        shift: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Additive logits bias broadcastable to [B, windows, heads, n, n] (n = window area); none here."""
        return None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        """x: [B, P + H·W, C], grid (H, W) -> [B, P + H·W, C]."""
        prefix, tokens = self.split_prefix(x, grid)
        (h, w), p = grid, self.num_prefix_tokens
        (wh, ww), shift = self.window_and_shift(grid)
        pad_h, pad_w = -h % wh, -w % ww
        # Pad the normed tokens (not q/k/v): padded keys are then the qkv bias, as in ViTDet and Swin.
        tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
        padded = (h + pad_h, w + pad_w)
        qkv = self.project_qkv(tokens)  # [B, Hp, Wp, 3C]
        rolled = torch.roll(qkv, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else qkv
        q, k, v = rearrange(
            rolled,
            "b (nh wh) (nw ww) (three h d) -> three b (nh nw) h (wh ww) d",
            wh=wh,
            ww=ww,
            three=3,
            h=self.num_heads,
        )  # [B, windows, heads, wh·ww, d]
        bias = self.attention_bias((wh, ww), padded, shift, q.dtype, q.device)
        if p:
            pq, pk, pv = rearrange(
                self.project_qkv(prefix), "b p (three h d) -> three b h p d", three=3, h=self.num_heads
            )
            per_window = (-1, q.shape[1], -1, -1, -1)
            k = torch.cat([pk.unsqueeze(1).expand(per_window), k], dim=-2)
            v = torch.cat([pv.unsqueeze(1).expand(per_window), v], dim=-2)
            if bias is not None:  # prefix keys: zero bias, never masked
                bias = F.pad(bias, (p, 0))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = rearrange(out, "b (nh nw) h (wh ww) d -> b (nh wh) (nw ww) (h d)", nh=padded[0] // wh, wh=wh)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        out = out[:, :h, :w].flatten(1, 2)  # [B, H·W, C]
        if p:
            # Prefix queries attend to every real token: prefix keys + the unshifted, uncropped grid.
            _, gk, gv = rearrange(
                qkv[:, :h, :w], "b y x (three h d) -> three b h (y x) d", three=3, h=self.num_heads
            )
            out = self.with_global_prefix(out, (pq, pk, pv), (gk, gv))
        return self.proj(out)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, clamp={self.clamp!r}"
        )
