"""Cross-shaped window attention with locally-enhanced positional encoding (CSWin, Dong et al. 2022).

The heads are split in two halves. The first half (channels [0, C/2)) attends inside **vertical
stripes** — full height, ``stripe_width`` columns — and the second half inside **horizontal
stripes** — ``stripe_width`` rows, full width — so every token sees a cross centred on it after
one block. CSWin's LePE adds ``get_v[i](v)``, a 3x3 depthwise convolution of the branch's values
computed inside each stripe (zero-padded at the stripe's border), to the attention output.
Parameter names follow CSWin where they can: fused ``qkv`` (rows q, k, v), ``proj``, and the two
LePE convolutions as ``get_v.0`` / ``get_v.1`` (CSWin's ``attns.{i}.get_v``).

A stripe wider than the grid is clamped to it (FLatten-CSWin's L stages set the stripe to the
feature size, ``CSWIN_LA_SPLIT_SIZE '56-28-14-7'`` in FLatten-Transformer's config.py, i.e.
full-map attention). When the grid is not a multiple of the
stripe width it is zero-padded bottom/right, with padded tokens unmasked like ViTDet windows
(:mod:`vlmzoo.layers.window_attention`); the original CSWin requires divisible sizes.

Prefix tokens attend globally with all heads and are keys/values of every stripe of both branches
(:mod:`vlmzoo.layers.spatial_attention`); LePE applies to grid tokens only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.layers.attention import Attention, QKVBias
from vlmzoo.layers.spatial_attention import SpatialAttention


class CrossShapedWindowAttention(Attention, SpatialAttention):
    """CSWin attention: [B, P + H·W, C] -> [B, P + H·W, C]; half the heads per stripe direction."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        stripe_width: int,
        num_prefix_tokens: int = 0,
        qkv_bias: QKVBias = True,
        proj_bias: bool = True,
    ):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        if num_heads % 2:
            raise ValueError(
                f"cross-shaped attention splits the heads between vertical and horizontal stripes: "
                f"num_heads must be even, got {num_heads}"
            )
        if stripe_width <= 0:
            raise ValueError(f"stripe_width must be positive, got {stripe_width}")
        self.stripe_width = stripe_width
        self.num_prefix_tokens = num_prefix_tokens
        half = dim // 2
        self.get_v = nn.ModuleList(nn.Conv2d(half, half, 3, padding=1, groups=half) for _ in range(2))

    def _stripe_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lepe: nn.Conv2d,
        stripe: tuple[int, int],
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """One branch (half the heads). q, k, v: [B, Hp, Wp, C/2] grids cut into ``stripe`` =
        (rows, cols) rectangles — (H, width) vertical, (width, W) horizontal -> [B, Hp, Wp, C/2]."""
        sy, sx = stripe
        heads = self.num_heads // 2
        qs, ks, vs = (
            rearrange(t, "b (ny sy) (nx sx) (h d) -> b (ny nx) h (sy sx) d", sy=sy, sx=sx, h=heads)
            for t in (q, k, v)
        )  # [B, stripes, heads, sy·sx, d]
        # LePE: 3x3 depthwise conv of v inside each stripe (zero padding at the stripe border).
        pos = lepe(rearrange(vs, "b n h (sy sx) d -> (b n) (h d) sy sx", sy=sy))
        pos = rearrange(pos, "(b n) (h d) sy sx -> b n h (sy sx) d", b=q.shape[0], h=heads)
        if prefix_kv is not None:
            per_stripe = (-1, qs.shape[1], -1, -1, -1)
            ks = torch.cat([prefix_kv[0].unsqueeze(1).expand(per_stripe), ks], dim=-2)
            vs = torch.cat([prefix_kv[1].unsqueeze(1).expand(per_stripe), vs], dim=-2)
        out = F.scaled_dot_product_attention(qs, ks, vs) + pos
        return rearrange(out, "b (ny nx) h (sy sx) d -> b (ny sy) (nx sx) (h d)", ny=q.shape[1] // sy, sy=sy)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        """x: [B, P + H·W, C], grid (H, W) -> [B, P + H·W, C]."""
        prefix, tokens = self.split_prefix(x, grid)
        (h, w), p = grid, self.num_prefix_tokens
        width_v, width_h = min(self.stripe_width, w), min(self.stripe_width, h)  # clamped to the grid
        pad_h, pad_w = -h % width_h, -w % width_v
        # Pad the normed tokens (padded keys = qkv bias, unmasked), as for ViTDet windows.
        q, k, v = self.project_qkv(F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))).chunk(
            3, dim=-1
        )  # [B, Hp, Wp, C]
        half, heads = q.shape[-1] // 2, self.num_heads // 2
        prefix_q = prefix_k = prefix_v = None
        if p:
            prefix_q, prefix_k, prefix_v = rearrange(
                self.project_qkv(prefix), "b p (three h d) -> three b h p d", three=3, h=self.num_heads
            )
        # First half of the heads: vertical stripes (all H rows, width_v columns; only W is padded).
        vertical = self._stripe_attention(
            *(t[:, :h, :, :half] for t in (q, k, v)),
            self.get_v[0],
            (h, width_v),
            (prefix_k[:, :heads], prefix_v[:, :heads]) if p else None,
        )[:, :, :w]
        # Second half: horizontal stripes (width_h rows, all W columns; only H is padded).
        horizontal = self._stripe_attention(
            *(t[:, :, :w, half:] for t in (q, k, v)),
            self.get_v[1],
            (width_h, w),
            (prefix_k[:, heads:], prefix_v[:, heads:]) if p else None,
        )[:, :h]
        out = torch.cat([vertical, horizontal], dim=-1).flatten(1, 2)  # [B, H·W, C]
        if p:
            gk, gv = (rearrange(t[:, :h, :w], "b y x (h d) -> b h (y x) d", h=self.num_heads) for t in (k, v))
            out = self.with_global_prefix(out, (prefix_q, prefix_k, prefix_v), (gk, gv))
        return self.proj(out)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, stripe_width={self.stripe_width}, "
            f"num_prefix_tokens={self.num_prefix_tokens}"
        )
