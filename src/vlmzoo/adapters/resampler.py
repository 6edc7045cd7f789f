"""The Perceiver Resampler (Alayrac et al. 2022, "Flamingo", Section 2.1), in OpenFlamingo's form.

    visual tokens [n, N, D] (or video [n, F, v, D]) ─► depth x (latents attend [media; latents], FF)
        ─► LayerNorm ─► latents [n, num_latents, D]

A fixed number of learned latents read any number of visual tokens through cross-attention, so
every image costs the same downstream whatever the encoder. Transcribed from OpenFlamingo's
``PerceiverResampler`` / ``PerceiverAttention`` / ``FeedForward`` (open_flamingo/src/helpers.py):
bias-free projections, keys and values over the media *and* the latents, GELU feed-forward, and
the same state-dict keys. Standalone: :class:`~vlmzoo.adapters.cross_attention.FlamingoAdapter`
uses it, and any adapter that wants a fixed token count per image can.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from vlmzoo.errors import InputError
from vlmzoo.layers.stack import BlockStack


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """OpenFlamingo's ``FeedForward``: LN -> Linear(dim, mult·dim) -> GELU -> Linear, bias-free.

    A ``Sequential`` so that the keys are the original ``0`` (LN), ``1``, ``3`` (open_flamingo/src/
    helpers.py); the gated cross-attention blocks use the same feed-forward.
    """
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to [media; latents]: [b, N, D], [b, m, D] -> [b, m, D].

    Keys and values are computed over the concatenation of the (normed) media tokens and the
    (normed) latents themselves, as in Flamingo (Section 2.1); all projections are
    bias-free, as in OpenFlamingo's ``PerceiverAttention``.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        # Scale dim_head^-1/2 (SDPA's default for head size dim_head); OpenFlamingo subtracts the
        # row max before its softmax, which changes nothing mathematically.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PerceiverLayer(nn.ModuleList):
    """One resampler layer, ``latents + attn(x, latents)`` then ``latents + ff(latents)``:
    [n, N, D], [n, m, D] -> [n, m, D].

    A ``ModuleList`` [attn, ff] that runs itself, so that the keys stay OpenFlamingo's
    ``layers.{i}.0.*`` / ``layers.{i}.1.*`` (its resampler keeps each layer as a ``ModuleList``)
    while the layer is one callable module (a checkpointing and FSDP unit).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)])

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        attn, ff = self
        latents = attn(x, latents) + latents
        return ff(latents) + latents


class PerceiverResampler(BlockStack, nn.Module):
    """Resample any number of visual tokens to ``num_latents``: [n, N, D] -> [n, num_latents, D].

    Each image is resampled on its own (the media axis of OpenFlamingo's [b, T, F, v, D] input is
    flattened into ``n``). A 4-D input [n, F, v, D] holds F video frames per media item, which
    are flattened to F·v tokens after adding ``frame_embs``. ``media_time_embs`` (indexed by
    each item's position in its sample) and ``frame_embs`` exist only when ``max_num_media`` /
    ``max_num_frames`` are given; OpenFlamingo builds its resampler with neither
    (open_flamingo/src/flamingo.py), though the paper adds learned time embeddings to video frames.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        num_latents: int = 64,
        ff_mult: int = 4,
        max_num_media: int | None = None,
        max_num_frames: int | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, media_index: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [n, N, D] or [n, F, v, D]; ``media_index`` [n] (long): each item's position in its
        sample, used only by ``media_time_embs`` (None = 0 for all). Returns [n, num_latents, D]."""
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[-1] != self.dim:
            raise InputError(
                f"PerceiverResampler expects [n, N, {self.dim}] or [n, F, N, {self.dim}], got {tuple(x.shape)}"
            )
        if self.frame_embs is not None:
            if x.shape[1] > self.frame_embs.shape[0]:
                raise InputError(f"{x.shape[1]} frames > max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[: x.shape[1], None]
        x = rearrange(x, "n f v d -> n (f v) d")
        if self.media_time_embs is not None:
            if media_index is None:
                media_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            if media_index.numel() and int(media_index.max()) >= self.media_time_embs.shape[0]:
                raise InputError(
                    f"media index {int(media_index.max())} >= max_num_media={self.media_time_embs.shape[0]}"
                )
            x = x + self.media_time_embs[media_index]
        latents = repeat(self.latents, "m d -> n m d", n=x.shape[0])
        for layer in self.layers:
            latents = self.run_block(layer, x, latents)
        return self.norm(latents)

    def wrap_units(self) -> list[nn.Module]:
        return list(self.layers)
