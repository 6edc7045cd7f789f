"""Decomposed relative position embeddings (MViTv2, Li et al. 2022, section 4.1; used by ViTDet
and SAM: segment-anything's ``modeling/image_encoder.py`` ``get_rel_pos`` and
``add_decomposed_rel_pos``).

Each attention layer owns two tables, ``rel_pos_h`` and ``rel_pos_w``, of shape (2·S − 1, d):
one row per relative offset along an axis, for a layer built for an S x S token grid (the
window for windowed layers, the whole grid for global ones). The attention logits of query
(y, x) and key (ky, kx) get ``q·Rh[y, ky] + q·Rw[x, kx]`` added before the softmax, where
``q`` is the **unscaled** query (the ``d^-0.5`` factor only multiplies q·kᵀ: SAM's ``Attention``
scales ``q * self.scale`` inside ``q @ k.T`` and passes the raw ``q`` to ``add_decomposed_rel_pos``).

For another grid size the tables are resized by 1-D linear interpolation along their length,
exactly like the original ``get_rel_pos`` (``F.interpolate(mode="linear")``, no antialias,
align_corners=False), so a model runs at other resolutions with the original's numbers.

:class:`RelPosAttention` feeds the term to ``scaled_dot_product_attention`` as an additive float
``attn_mask`` (SDPA adds the mask after scaling q·kᵀ, which is where the original adds it);
this matches the explicit softmax to float32 rounding and keeps gradients to the tables.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.layers.attention import Attention


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The relative-position rows for every (query, key) pair along one axis: [q_size, k_size, d].

    ``rel_pos`` is a (L, d) table. It is resized to ``2·max(q_size, k_size) − 1`` rows by linear
    interpolation when L differs (SAM's ``get_rel_pos``). The row of pair (i, j) is
    ``i·max(k/q, 1) − j·max(q/k, 1) + (k − 1)·max(q/k, 1)`` (truncated to an integer), i.e.
    ``i − j + S − 1`` for equal sizes.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rearrange(rel_pos, "l d -> 1 d l"), size=max_rel_dist, mode="linear", align_corners=False
        )
        rel_pos = rearrange(resized, "1 d l -> l d")
    # Float coordinates scaled towards the longer side, then truncated: the original's rule for q != k.
    q_coords = torch.arange(q_size, dtype=torch.float32)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, dtype=torch.float32)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long().to(rel_pos.device)]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias from decomposed relative positions: [..., qh·qw, kh·kw].

    Args:
        q: the unscaled queries [..., qh·qw, d] in row-major grid order (any leading dims, e.g.
            [B, heads]).
        rel_pos_h, rel_pos_w: (Lh, d) and (Lw, d) tables (resized as needed, :func:`get_rel_pos`).
        q_size, k_size: the query and key grids (qh, qw), (kh, kw).

    Returns:
        ``bias[..., (y, x), (ky, kx)] = q[(y, x)]·Rh[y, ky] + q[(y, x)]·Rw[x, kx]``.
    """
    (qh, qw), (kh, kw) = q_size, k_size
    rh = get_rel_pos(qh, kh, rel_pos_h).to(q.dtype)
    rw = get_rel_pos(qw, kw, rel_pos_w).to(q.dtype)
    grid_q = q.unflatten(-2, (qh, qw))  # [..., qh, qw, d]
    rel_h = torch.einsum("...hwc,hkc->...hwk", grid_q, rh)  # [..., qh, qw, kh]
    rel_w = torch.einsum("...hwc,wkc->...hwk", grid_q, rw)  # [..., qh, qw, kw]
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # [..., qh, qw, kh, kw]
    return bias.flatten(-4, -3).flatten(-2, -1)


class RelPosAttention(Attention):
    """Multi-head self-attention over a channels-last grid with decomposed relative positions.

    [B, H, W, C] -> [B, H, W, C]. Same fused ``qkv``/``proj`` layout as :class:`Attention`
    (q, k, v rows; heads contiguous — SAM's and timm's layout), plus ``rel_pos_h``/``rel_pos_w``
    of shape (2·S − 1, head_dim) for the grid ``input_size`` = (S_h, S_w) the layer was built
    for (the window side for windowed layers, the full grid for global ones). Other grid sizes
    resize the tables (:func:`get_rel_pos`). ``use_rel_pos=False`` gives plain attention on a grid.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        qkv_bias: bool = True,
        proj_bias: bool = True,
        use_rel_pos: bool = True,
    ):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.input_size = tuple(input_size)
        if use_rel_pos:
            # Zero init, as in SAM; the released checkpoints overwrite them.
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
        else:
            self.rel_pos_h = self.rel_pos_w = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x: [B, H, W, C] (one image or one window per batch row) -> [B, H, W, C]."""
        _, h, w, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b y x (three n d) -> three b n (y x) d", three=3, n=self.num_heads)
        bias = None
        if self.rel_pos_h is not None:
            # Built from the unscaled q, as SAM's add_decomposed_rel_pos; SDPA scales only q·kᵀ
            # and then adds the mask.
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(rearrange(out, "b n (y x) d -> b y x (n d)", y=h, x=w))

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, input_size={self.input_size}, rel_pos={self.rel_pos_h is not None}"
        )
