"""Multi-head self- and cross-attention on ``scaled_dot_product_attention``."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

# ``True``/``False``: one bias over the fused q, k, v rows, or none. ``"qv"``: learned q and v biases
# with the k bias fixed at zero (BEiT / EVA: LAVIS's eva_vit.py Attention builds its qkv bias as
# cat(q_bias, zeros, v_bias)) — a k bias only adds a per-query constant to
# the attention logits, which softmax ignores, so those models do not learn one.
QKVBias = bool | Literal["qv"]


class Attention(nn.Module):
    """Global multi-head self-attention with a fused ``qkv`` projection: [B, N, C] -> [B, N, C].

    The fused layout (rows ordered q, k, v; heads contiguous inside each) is the one of OpenAI
    CLIP's ``in_proj_weight``, timm and DINOv2, so their checkpoints load without reshuffling.
    With ``qkv_bias="qv"`` the biases are the separate ``q_bias`` and ``v_bias`` of EVA / BEiT
    (``qkv`` itself has none), so those checkpoints load 1:1 too.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: QKVBias = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if qkv_bias not in (True, False, "qv"):
            raise ValueError(f"qkv_bias must be True, False or 'qv', got {qkv_bias!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias is True)
        # Only for "qv", so every other model keeps its exact parameter count.
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias == "qv" else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias == "qv" else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., 3·dim], the fused q, k, v projections (k bias zero under "qv")."""
        if self.q_bias is None:
            return self.qkv(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """``attn_mask``: bool (True = attend) or additive float, broadcastable to [B, h, N, N]."""
        q, k, v = rearrange(
            self.project_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        )
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Multi-head attention from queries [B, M, dim] to a context [B, N, context_dim] -> [B, M, dim].

    ``q`` projects the queries, ``kv`` the context (fused, rows ordered k, v; heads contiguous inside
    each, as in :class:`Attention`), ``proj`` mixes the heads. The context may be wider or narrower
    than the queries (BLIP-2's Q-Former attends from 768-d queries to 1408-d EVA tokens: LAVIS's
    ``Qformer.py`` builds its cross-attention key/value from ``encoder_width``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``attn_mask``: bool (True = attend) or additive float, broadcastable to [B, h, M, N]."""
        q = rearrange(self.q(x), "b m (h d) -> b h m d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(rearrange(x, "b h m d -> b m (h d)"))
