"""Spatial-reduction attention, PVT v1's SRA (Wang et al. 2021, "Pyramid Vision Transformer",
section 3.3; whai362/PVT's ``Attention`` with ``sr_ratio``).

Queries are all tokens; keys and values come from the grid shrunk by ``sr_ratio``: a strided
``sr x sr`` convolution (kernel = stride = sr) followed by a LayerNorm, so attention costs
N·N/sr² instead of N². With ``sr_ratio=1`` there is no convolution and no norm and the module is
plain global attention (PVT's last stage).

Parameter names follow PVT: ``q`` Linear(C, C), ``kv`` Linear(C, 2C) (rows k then v), ``sr``,
``norm``, ``proj``. A grid whose sides are not multiples of ``sr_ratio`` loses its last rows/columns
in the reduction (the convolution's floor), exactly as PVT and transformers' ``PvtModel`` do.

Prefix tokens (PVT's CLS in stage 4, or a ViT's CLS/registers) are queries over everything and
extra keys/values next to the reduced grid; they are not reduced (they are not on the grid) and
not renormalised (``norm`` belongs to the convolution's output).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.errors import InputError
from vlmzoo.layers.spatial_attention import SpatialAttention


class SpatialReductionAttention(SpatialAttention):
    """PVT attention: [B, P + H·W, C] -> [B, P + H·W, C], keys/values from a grid reduced by ``sr_ratio``.

    ``norm_eps``: the reduction's LayerNorm eps — PVT v1 builds it with ``nn.LayerNorm``'s default
    1e-5 (its blocks use 1e-6), transformers' ``PvtModel`` uses its ``layer_norm_eps`` (1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        num_prefix_tokens: int = 0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.num_prefix_tokens = num_prefix_tokens
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        else:
            self.sr = self.norm = None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def reduce(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The key/value tokens: [B, P + H·W, C] -> [B, P + ⌊H/sr⌋·⌊W/sr⌋, C] (prefix first)."""
        if self.sr is None:
            return x
        prefix, tokens = self.split_prefix(x, grid)
        if min(grid) < self.sr_ratio:
            raise InputError(
                f"a {grid[0]}x{grid[1]} grid is smaller than the spatial reduction {self.sr_ratio}x"
                f"{self.sr_ratio}; use a larger image"
            )
        reduced = self.sr(rearrange(tokens, "b h w c -> b c h w"))
        reduced = self.norm(rearrange(reduced, "b c h w -> b (h w) c"))
        return torch.cat([prefix, reduced], dim=1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: [B, P + H·W, C], grid (H, W) -> [B, P + H·W, C]."""
        self.split_prefix(x, grid)  # shape check (also done by reduce when sr > 1)
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(
            self.kv(self.reduce(x, grid)), "b n (two h d) -> two b h n d", two=2, h=self.num_heads
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, num_prefix_tokens={self.num_prefix_tokens}"
