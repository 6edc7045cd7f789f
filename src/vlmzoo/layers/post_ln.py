"""The post-LN BERT layer (Devlin et al. 2019; Vaswani et al. 2017's ``LN(x + sublayer(x))``).

    x ─► self-attention ─► + ─► LN ─► [cross-attention to a context ─► + ─► LN] ─► FFN ─► + ─► LN

One layer serves every BERT-shaped stack in vlmzoo: BLIP-2's Q-Former (salesforce/LAVIS
``lavis/models/blip2_models/Qformer.py`` ``BertLayer``, query stream) and BLIP's MED text
transformer (salesforce/BLIP ``models/med.py`` ``BertLayer``). Parameter names are the
structure's, not BERT's: ``attn`` (q/k/v fused into ``qkv``, BERT's ``attention.output.dense`` as
``proj``), ``attn_norm``; ``cross_attn`` (``q``, fused ``kv``, ``proj``) and ``cross_norm``,
present only when the layer reads a context (``context_dim``); ``mlp`` (``fc1``, ``fc2``) and
``mlp_norm``. Dropout (0.1 in BERT) is not modelled; outputs in eval mode are unaffected.

Self-attention takes a boolean mask or ``is_causal`` (the MED decoder) and an optional
:class:`LayerCache` that grows by the new positions each decoding step, and keeps the context's
cross-attention keys and values after the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.layers.attention import Attention, CrossAttention
from vlmzoo.layers.mlp import Activation, Mlp


@dataclass
class LayerCache:
    """One layer's cached keys and values [B, h, T, head_dim] (self-attention) and
    [B, h, N, head_dim] (cross-attention over the context)."""

    self_k: torch.Tensor | None = None
    self_v: torch.Tensor | None = None
    cross_k: torch.Tensor | None = None
    cross_v: torch.Tensor | None = None


def _merge(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


class PostLNLayer(nn.Module):
    """One post-LN BERT layer: [B, L, width] (+ context [B, N, context_dim]) -> [B, L, width].

    ``x = attn_norm(x + attn(x))``; when the layer has cross-attention and a context is given,
    ``x = cross_norm(x + cross_attn(x, context))``; then ``x = mlp_norm(x + mlp(x))``. A layer
    built with ``context_dim=None`` has no cross-attention parameters (the Q-Former's layers
    between cross-attention layers); one built with it skips them when called without a context
    (BLIP's unimodal text mode, med.py ``mode='text'``).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        context_dim: int | None,
        act: Activation = "gelu",
        norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attn = Attention(width, num_heads)
        self.attn_norm = nn.LayerNorm(width, eps=norm_eps)
        self.cross_attn = CrossAttention(width, num_heads, context_dim) if context_dim else None
        self.cross_norm = nn.LayerNorm(width, eps=norm_eps) if context_dim else None
        self.mlp = Mlp(width, mlp_dim, act=act)
        self.mlp_norm = nn.LayerNorm(width, eps=norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x: [B, L, width]; masks are bool (True = attend), ``self_mask`` [B|1, 1, L, T],
        ``context_mask`` [B, 1, 1, N]. ``cache`` (decoding) is extended in place."""
        q, k, v = rearrange(
            self.attn.project_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        )
        if cache is not None:
            if cache.self_k is not None:
                k = torch.cat([cache.self_k, k], dim=2)
                v = torch.cat([cache.self_v, v], dim=2)
            cache.self_k, cache.self_v = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask, is_causal=is_causal)
        x = self.attn_norm(x + self.attn.proj(_merge(y)))
        if context is not None and self.cross_attn is not None:
            x = self.cross_norm(x + self._cross(x, context, context_mask, cache))
        return self.mlp_norm(x + self.mlp(x))

    def _cross(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        cache: LayerCache | None,
    ) -> torch.Tensor:
        """Cross-attention of x [B, L, width] to ``context``, its keys and values cached once."""
        ca = self.cross_attn
        if cache is not None and cache.cross_k is not None:
            ck, cv = cache.cross_k, cache.cross_v
        else:
            ck, cv = rearrange(ca.kv(context), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
            if cache is not None:
                cache.cross_k, cache.cross_v = ck, cv
        q = rearrange(ca.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=context_mask)
        return ca.proj(_merge(y))
