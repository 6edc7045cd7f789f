"""Self-attention that needs the token grid, and how it treats prefix tokens (CLS, registers).

The efficient-attention family a block can use (:mod:`vlmzoo.layers.block_attention`) — ViTDet windows, Swin shifted windows, PVT spatial
reduction, CSWin stripes, FLatten's focused linear attention — mixes tokens according to where
they sit on the H x W patch grid. Every such module derives from :class:`SpatialAttention` and is
called as ``attn(x, grid)`` with x = [B, P + H·W, C]: P prefix tokens first, then the grid in
row-major order (the ViT token order). :class:`~vlmzoo.layers.block.Block` passes the grid to
these modules and only to them.

Prefix tokens — the design, and why. Every prefix token attends **globally** (its keys are all
P + H·W tokens), and every patch token sees the P prefix tokens as extra keys/values **in its
local region** (window, stripe, or reduced key set), next to its spatial neighbours:

- CLS pooling keeps working. CLIP and DINOv2 pool the CLS token; if prefix tokens bypassed the
  spatial blocks, CLS would only pass through their MLP, and an encoder whose blocks are all
  spatial would pool nothing it had seen.
- Each spatial type then degenerates to *exact* global attention in its limit — one window that
  covers the grid, ``sr_ratio=1``, stripes as wide as the grid — prefix tokens included. So
  switching a block to another type changes only what that type is about (tests check this).
- Registers (Darcet et al. 2024) are global scratch space: patches must be able to read them.
- It is cheap: P extra keys per region and P global queries, O(P·N) next to the patches' cost.

Spatial extras (relative position bias, shift masks, LePE, depthwise convs, positional
encodings on keys) belong to grid tokens only: prefix keys get zero bias and are never masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.errors import InputError


class SpatialAttention(nn.Module):
    """Marker base of attention modules called as ``forward(x [B, P + H·W, C], grid (H, W))``.

    Subclasses set ``num_prefix_tokens`` (P) at construction; :meth:`split_prefix` and
    :meth:`merge_prefix` move between the token sequence and the channels-last grid.
    """

    num_prefix_tokens: int = 0

    def split_prefix(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P + H·W, C] -> (prefix [B, P, C], grid [B, H, W, C]); checks that N = P + H·W."""
        h, w = grid
        p = self.num_prefix_tokens
        if x.ndim != 3 or x.shape[1] != p + h * w:
            raise InputError(
                f"{type(self).__name__} got tokens of shape {tuple(x.shape)} for a {h}x{w} grid with "
                f"{p} prefix token(s); expected [B, {p + h * w}, C]"
            )
        return x[:, :p], x[:, p:].unflatten(1, (h, w))

    @staticmethod
    def merge_prefix(prefix: torch.Tensor, grid_tokens: torch.Tensor) -> torch.Tensor:
        """(prefix [B, P, C], grid [B, H, W, C]) -> [B, P + H·W, C]."""
        return torch.cat([prefix, grid_tokens.flatten(1, 2)], dim=1)

    @staticmethod
    def with_global_prefix(
        grid_out: torch.Tensor,
        prefix_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        grid_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """The prefix tokens' global attention in front of the grid's output: [B, P + H·W, C].

        ``prefix_qkv``: the prefix queries, keys, values [B, heads, P, d]; ``grid_kv``: every real
        grid token's keys and values [B, heads, H·W, d] (unshifted, uncropped: the module
        docstring's rule); ``grid_out``: the grid tokens' own output [B, H·W, C].
        """
        (pq, pk, pv), (gk, gv) = prefix_qkv, grid_kv
        prefix_out = F.scaled_dot_product_attention(
            pq, torch.cat([pk, gk], dim=-2), torch.cat([pv, gv], dim=-2)
        )
        return torch.cat([rearrange(prefix_out, "b h p d -> b p (h d)"), grid_out], dim=1)
