"""Multi-head self-attention on ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class Attention(nn.Module):
    """Global multi-head self-attention with a fused ``qkv`` projection: [B, N, C] -> [B, N, C].

    The fused layout (rows ordered q, k, v; heads contiguous inside each) is the one of OpenAI
    CLIP's ``in_proj_weight``, timm and DINOv2, so their checkpoints load without reshuffling.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """``attn_mask``: bool (True = attend) or additive float, broadcastable to [B, h, N, N]."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))
