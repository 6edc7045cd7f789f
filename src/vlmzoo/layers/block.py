"""The pre-LN transformer block shared by every ViT-style encoder and the CLIP text tower.

The token mixer is global softmax :class:`Attention` unless another module is passed as ``attn``:
a :class:`SpatialAttention` (ViTDet windows, Swin shifted windows, PVT spatial reduction, CSWin
stripes, FLatten focused linear attention: :mod:`vlmzoo.layers.block_attention`) is called with
the token grid instead of a
mask, which is how one encoder mixes attention types block by block (``ViTConfig.block_attention``)
and how Swin and PVT stages are built from the same block.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlmzoo.layers.attention import Attention, QKVBias
from vlmzoo.layers.drop_path import DropPath
from vlmzoo.layers.layer_scale import LayerScale
from vlmzoo.layers.mlp import Activation, Mlp, SwiGLU
from vlmzoo.layers.spatial_attention import SpatialAttention


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``: [B, N, C] -> [B, N, C].

    LayerScale (DINOv2, CaiT) is present only when ``layer_scale_init`` is given; drop path only
    when ``drop_path > 0`` — so a CLIP block holds exactly the parameters of the original.
    ``attn`` replaces the default global attention (``qkv_bias``/``proj_bias`` then only concern
    the default); a :class:`SpatialAttention` needs ``grid`` in :meth:`forward`.
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
        attn: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = (
            attn if attn is not None else Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        )
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
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]. ``grid``: the (H', W') patch grid of the last H'·W' tokens,
        required by spatial attention; ``attn_mask``/``is_causal`` are for global attention only."""
        y = self.norm1(x)
        if isinstance(self.attn, SpatialAttention):
            if grid is None:
                raise ValueError(
                    f"{type(self.attn).__name__} needs the token grid: call block(x, grid=(H, W))"
                )
            if attn_mask is not None or is_causal:
                raise ValueError(f"{type(self.attn).__name__} takes no attention mask")
            y = self.attn(y, grid)
        else:
            y = self.attn(y, attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.drop_path(self.ls1(y))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
