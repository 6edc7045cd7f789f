"""The pre-LN transformer block shared by every ViT-style encoder and the CLIP text tower."""

from __future__ import annotations

import torch
import torch.nn as nn

from vlmzoo.layers.attention import Attention, QKVBias
from vlmzoo.layers.drop_path import DropPath
from vlmzoo.layers.layer_scale import LayerScale
from vlmzoo.layers.mlp import Activation, Mlp, SwiGLU


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``: [B, N, C] -> [B, N, C].

    LayerScale (DINOv2, CaiT) is present only when ``layer_scale_init`` is given; drop path only
    when ``drop_path > 0`` — so a CLIP block holds exactly the parameters of the original.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        act: Activation = "gelu",
        qkv_bias: QKVBias = True,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        norm_eps: float = 1e-6,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        swiglu: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = (
            SwiGLU(dim, mlp_hidden_dim, bias=mlp_bias)
            if swiglu
            else Mlp(dim, mlp_hidden_dim, act=act, bias=mlp_bias)
        )
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
