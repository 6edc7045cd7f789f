"""Flamingo's cross-attention adapter (Alayrac et al. 2022), in OpenFlamingo's form (SPEC §7).

    visual tokens [n_img, N, D_vis] ─► PerceiverResampler ─► latents [n_img, 64, D_vis]
        ─► grouped per sample [B, T_img, 64, D_vis]
        ─► a GatedCrossAttentionBlock before every n-th layer of a frozen causal LM: each text
           token attends to the latents of its image only (media masking, §7.3)

Unlike prefix adapters nothing is spliced into the text: the ``<image>`` placeholder stays one
real token and the visual information enters the LM's hidden states inside the decoder stack.

How the blocks get into any transformers causal LM, without a subclass per family
---------------------------------------------------------------------------------
:meth:`FlamingoAdapter.attach` registers a forward *pre-hook* on every chosen decoder layer
(index i with (i+1) % n == 0, §7.2). The hook runs the layer's gated block on the hidden states
(the layer's first positional argument, or its ``hidden_states`` keyword) and hands the result
to the untouched layer with all other arguments as they were. This is exactly OpenFlamingo's
``FlamingoLayer`` (gated block, then the frozen decoder layer), but without replacing the layer
in ``decoder.layers``. We chose hooks over a wrapper module because:

- the LM's own state-dict keys stay the transformers ones (``lm.model.layers.3.self_attn...``,
  not ``...layers.3.decoder_layer.self_attn...``): Hugging Face weights and converters keep
  working, ``decoder.lm.save_pretrained`` still writes a loadable LM, LoRA target names do not
  move;
- each gated block has exactly one owner, ``adapter.gated_cross_attn_layers[str(i)]``, so every
  tensor has one state-dict key. A wrapper would also put the block under the decoder and every
  tensor would be saved under two names (OpenFlamingo has to drop its ``gated_cross_attn_layers``
  alias from checkpoints, §7.4); ``decoder.parameters()`` stays the LM's own, so freezing the
  decoder never touches the blocks and parameter counts per part add up;
- only a layer's *input* changes, so its return type (a tensor in transformers 5.x, a tuple in
  4.x) and signature (gpt2 passes the cache positionally, opt orders arguments differently)
  do not matter.

The price: the blocks do not show in ``print(decoder)``; :meth:`FlamingoAdapter.detach`
removes the hooks.

Gradient checkpointing. transformers 5 checkpoints a decoder layer's ``forward``, so the
layer's pre-hooks, and the gated block with them, run outside the layer's checkpoint: the
adapter's own ``set_grad_checkpointing`` checkpoints each gated block (and each resampler
layer), independently of the decoder's. transformers 4.x checkpoints the layer's ``__call__``,
hooks included: the block is then also recomputed inside the layer's checkpoint (nested
non-reentrant checkpoints are exact; the block runs once more) and the hook reads the adapter's
conditioning again during backward, so there run backward before conditioning the next batch.

A second pre-hook on ``decoder.lm`` reads each call's ``input_ids`` and KV cache: a call on an
empty cache starts a new sequence (text_time = cumsum of ``<image>`` positions); a call that
continues a cache gives its tokens text_time = images seen so far + their own ``<image>`` count
(§7.3 "cached-media generation"), so ``generate`` and manual incremental decoding work.

Checkpoint keys (OpenFlamingo -> vlmzoo, §7.4): ``perceiver.*`` -> ``adapter.perceiver.*`` (same
sub-keys); ``lang_encoder.<layers>.{i}.gated_cross_attn_layer.*`` ->
``adapter.gated_cross_attn_layers.{i}.*`` (same sub-keys: ``attn.{norm,to_q,to_kv,to_out}``,
``attn_gate``, ``ff.{0,1,3}``, ``ff_gate``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from vlmzoo.adapters.base import Injection
from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError, require
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """OpenFlamingo's ``FeedForward``: LN -> Linear(dim, mult·dim) -> GELU -> Linear, bias-free.

    A ``Sequential`` so that the keys are the original ``0`` (LN), ``1``, ``3`` (§7.1, §7.4).
    """
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


# --- Perceiver Resampler (§7.1) -------------------------------------------------------------
class PerceiverAttention(nn.Module):
    """Latents attend to [media; latents]: [b, N, D], [b, m, D] -> [b, m, D].

    Keys and values are computed over the concatenation of the (normed) media tokens and the
    (normed) latents themselves, as in Flamingo; all projections are bias-free (§7.1).
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
    ``layers.{i}.0.*`` / ``layers.{i}.1.*`` (§7.4) while the layer is one callable module (a
    checkpointing and FSDP unit).
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
    ``max_num_frames`` are given; OpenFlamingo builds its resampler with neither (§7.1).
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


# --- gated cross-attention (§7.2) and media masking (§7.3) ----------------------------------
def placeholder_owners(is_image: torch.Tensor, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ``<image>`` positions holding ``num_images`` placeholders -> (sample [n], rank [n]):
    the row of each placeholder in reading (row-major) order, and its rank among its row's.

    The position of the k-th placeholder is found by a binary search on the running count, so
    every shape is known from ``num_images`` alone (``nonzero`` would break a compiled graph).
    """
    length = is_image.shape[1]
    running = is_image.flatten().long().cumsum(dim=0)  # placeholders up to and including each position
    wanted = torch.arange(1, num_images + 1, device=is_image.device)
    index = torch.searchsorted(running, wanted)  # first position where the count reaches k
    rank = is_image.long().cumsum(dim=1).flatten()[index] - 1
    return index // length, rank


def text_time(media_locations: torch.Tensor) -> torch.Tensor:
    """[B, L] bool ``<image>`` positions -> [B, L] long: images seen so far, the token's own included
    (so an ``<image>`` token already sees its image, §7.3)."""
    return media_locations.long().cumsum(dim=-1)


def media_attention_mask(
    times: torch.Tensor, media_valid: torch.Tensor, only_attend_immediate_media: bool = True
) -> torch.Tensor:
    """Which media each text token may attend: [B, L] text_time, [B, T] valid -> [B, L, T] bool.

    Token i may attend image j (1-based) iff text_time[i] == j (immediate mode) or
    text_time[i] >= j (all previous media), and slot j holds an image of that sample
    (``media_valid``: samples may have fewer images than T, §7.3).
    """
    media_time = torch.arange(1, media_valid.shape[1] + 1, device=times.device)
    op = torch.eq if only_attend_immediate_media else torch.ge
    return op(times[..., None], media_time) & media_valid[:, None, :]


class MaskedCrossAttention(nn.Module):
    """Text queries attend to media latents: [B, L, D], [B, T, n, D_vis] -> [B, L, D] (§7.2).

    LayerNorm on the text queries only; ``to_q``, ``to_kv``, ``to_out`` bias-free. The latents of
    all T images are flattened to T·n keys; ``attend`` [B, L, T] restricts each token to some
    images. A token that may attend no image (before the first ``<image>``, or a sample without
    images) outputs exactly 0. OpenFlamingo zeroes such rows only in immediate mode; in its
    all-previous mode they would average over every latent, which we do not copy (§7.3 says
    tokens before any image get no cross-attention).
    """

    def __init__(self, dim: int, dim_visual: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, x: torch.Tensor, media: torch.Tensor, attend: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``attend`` [B, L, T] bool, or None: every token attends every image."""
        n = media.shape[2]
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(rearrange(media, "b t n c -> b (t n) c")).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in (q, k, v))
        if attend is None:
            return self.to_out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)"))
        has_media = attend.any(dim=-1)  # [B, L]
        # Rows with nothing to attend would be all -inf (NaN); let them attend everything, then
        # zero them, as OpenFlamingo does for text_time == 0 (§7.3).
        allowed = repeat(attend | ~has_media[..., None], "b l t -> b 1 l (t n)", n=n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = out.masked_fill(~has_media[:, None, :, None], 0.0)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate)·xattn(x, media); then x + tanh(ff_gate)·FF(x): [B, L, D] -> [B, L, D].

    Both gates start at 0, so the block is the identity at initialisation and a frozen LM keeps
    its outputs exactly (§7.2). The FF branch applies to every text token, media or not, as in
    Flamingo and OpenFlamingo. Computation runs in the block's dtype (a bf16 LM may carry fp32
    adapter blocks); the result is cast back to the hidden states' dtype.
    """

    def __init__(self, dim: int, dim_visual: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, heads, dim_head)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, x: torch.Tensor, media: torch.Tensor | None = None, attend: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``media`` [B, T, n, D_vis] or None (no image in the batch: FF branch only);
        ``attend`` [B, L, T] bool (see :func:`media_attention_mask`)."""
        dtype = self.attn_gate.dtype
        h = x.to(dtype)
        if media is not None:
            h = self.attn(h, media.to(dtype), attend) * self.attn_gate.tanh() + h
        h = self.ff(h) * self.ff_gate.tanh() + h
        return h.to(x.dtype)


# --- the adapter ------------------------------------------------------------------------------
@dataclass
class FlamingoConfig(Config):
    """Flamingo adapter sizes (defaults: OpenFlamingo, §7.1-§7.2).

    ``in_dim`` is the vision width D_vis and ``out_dim`` the LM width; a VisionLanguageModel fills
    them when None (``out_dim`` is otherwise read from the decoder at :meth:`attach`).
    ``cross_attn_every_n_layers``: a gated block before layer i iff (i+1) % n == 0.
    ``only_attend_immediate_media``: a token sees only its latest image (True) or all previous.
    ``ff_mult`` widens the FF of both the resampler and the gated blocks (4 in both, OpenFlamingo).
    """

    kind = "adapter"

    in_dim: int | None = None
    out_dim: int | None = None
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    num_latents: int = 64
    max_num_media: int | None = None
    max_num_frames: int | None = None
    cross_attn_every_n_layers: int = 1
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: int = 4
    only_attend_immediate_media: bool = True

    def validate(self) -> None:
        self._check_positive(
            "resampler_depth",
            "resampler_heads",
            "resampler_dim_head",
            "num_latents",
            "cross_attn_every_n_layers",
            "xattn_heads",
            "xattn_dim_head",
            "ff_mult",
        )
        for name in ("in_dim", "out_dim", "max_num_media", "max_num_frames"):
            if getattr(self, name) is not None:
                self._check_positive(name)


def _cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (0 for None or an empty cache)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple cache: [layer][key/value] of [B, heads, S, head_dim]
        return int(cache[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


@dataclass
class _Conditioning:
    """What :meth:`FlamingoAdapter.condition` received, resampled at the next LM call."""

    tokens: torch.Tensor  # [n_img, N, D_vis] visual tokens in placeholder order
    sample: torch.Tensor  # [n_img] the sample (row of input_ids) of each image
    rank: torch.Tensor  # [n_img] the image's position among its sample's images in that input
    batch: int  # B of the input_ids given to condition


@register_architecture
class FlamingoAdapter(BlockStack, HubMixin, nn.Module):
    """Perceiver Resampler + gated cross-attention blocks inserted into any HF causal LM.

    Use: ``attach(decoder)`` once (a VisionLanguageModel does this), then before each LM call
    ``condition(visual_tokens, input_ids, image_token_id)``. ``adapter(tokens)`` runs the
    resampler alone: [n_img, N, in_dim] -> [n_img, num_latents, in_dim]. The gated blocks exist
    from ``attach`` on (their number depends on the decoder's depth).
    """

    config_class = FlamingoConfig
    injection: ClassVar[Injection] = "cross_attention"

    def __init__(self, config: FlamingoConfig):
        super().__init__()
        if config.in_dim is None:
            raise InputError("FlamingoAdapter needs in_dim (a VisionLanguageModel fills it in)")
        self.config = config
        self.perceiver = PerceiverResampler(
            config.in_dim,
            depth=config.resampler_depth,
            heads=config.resampler_heads,
            dim_head=config.resampler_dim_head,
            num_latents=config.num_latents,
            ff_mult=config.ff_mult,
            max_num_media=config.max_num_media,
            max_num_frames=config.max_num_frames,
        )
        # Keyed by decoder layer index: adapter.gated_cross_attn_layers.{i}.* mirrors OpenFlamingo's
        # lang_encoder.gated_cross_attn_layers.{i}.* (§7.4).
        self.gated_cross_attn_layers = nn.ModuleDict()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.clear()

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    def forward(self, tokens: torch.Tensor, media_index: torch.Tensor | None = None) -> torch.Tensor:
        """The resampler: [n_img, N, in_dim] -> [n_img, num_latents, in_dim]."""
        return self.perceiver(tokens, media_index)

    # --- training at scale ------------------------------------------------------------------
    def stack_parts(self) -> list[BlockStack]:
        """The resampler, which runs (and checkpoints) its own layers."""
        return [self.perceiver]

    def wrap_units(self) -> list[nn.Module]:
        """The resampler layers, then the gated blocks in decoder order (present from ``attach``)."""
        return [*self.perceiver.wrap_units(), *self.gated_cross_attn_layers.values()]

    # --- inserting the blocks ---------------------------------------------------------------
    def attach(self, decoder: Any) -> None:
        """Insert a gated block before every n-th layer of ``decoder`` (an :class:`HFDecoder`).

        Raises :class:`ConfigError` when the decoder's layers cannot be found (the message names
        the attributes searched), when already attached, or when the widths disagree.
        """
        if self._handles:
            raise ConfigError("FlamingoAdapter is already attached to a decoder; call detach() first")
        layers = decoder.layers  # raises ConfigError naming the searched attribute paths
        width = decoder.layer_width
        if self.config.out_dim is not None and self.config.out_dim != width:
            raise ConfigError(
                f"FlamingoConfig.out_dim={self.config.out_dim} but the decoder's layers "
                f"({decoder.layer_path}) carry {width}-dim hidden states"
            )
        n = self.config.cross_attn_every_n_layers
        chosen = [i for i in range(len(layers)) if (i + 1) % n == 0]  # §7.2 placement
        if not chosen:
            raise ConfigError(
                f"FlamingoConfig.cross_attn_every_n_layers={n} but the decoder has only "
                f"{len(layers)} layers: no gated cross-attention block would be inserted"
            )
        ref = next(layers[0].parameters(), None)
        device = ref.device if ref is not None else None
        dtype = self.perceiver.latents.dtype
        c = self.config
        for i in chosen:
            if str(i) not in self.gated_cross_attn_layers:
                block = GatedCrossAttentionBlock(width, c.in_dim, c.xattn_heads, c.xattn_dim_head, c.ff_mult)
                self.gated_cross_attn_layers[str(i)] = block.to(device=device, dtype=dtype)
            hook = functools.partial(self._before_layer, i)
            self._handles.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self._handles.append(decoder.lm.register_forward_pre_hook(self._before_lm, with_kwargs=True))

    def detach(self) -> None:
        """Remove the hooks: the decoder is the plain LM again (the blocks stay in the adapter)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    # --- conditioning -----------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the media and the sequence state (and the autograd graph they hold)."""
        self._cond: _Conditioning | None = None
        self._pending = False  # condition() was called since the last LM call
        self._image_token_id: int | None = None
        self._media: torch.Tensor | None = None  # [B, T, n, D_vis] latents of the current sequence
        self._valid: torch.Tensor | None = None  # [B, T] which slots hold an image
        self._times: torch.Tensor | None = None  # [B, seen] text_time of every position so far
        self._attend: torch.Tensor | None = None  # [B, L, T] mask for the current LM call

    def condition(
        self, visual_tokens: torch.Tensor | None, input_ids: torch.Tensor, image_token_id: int
    ) -> None:
        """Set the media for the next LM call(s).

        ``visual_tokens`` [n_img, N, in_dim] (or None): encoder tokens of every image, in the
        reading order of the ``image_token_id`` placeholders in ``input_ids`` [B, L] across the
        batch; samples may hold several images or none. The resampler runs at the next LM call;
        a call on an empty cache uses these images for the whole sequence, a call continuing a
        cache appends them after the images already seen. The state stays until the next
        ``condition`` or :meth:`clear` (like OpenFlamingo's conditioned layers): a direct call of
        ``decoder.lm`` in between uses these images too.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise InputError(
                f"input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', type(input_ids))}"
            )
        is_image = input_ids == image_token_id
        num_images = 0 if visual_tokens is None else visual_tokens.shape[0]
        require(
            is_image.sum() == num_images,
            lambda: (
                f"input_ids hold {int(is_image.sum())} image placeholders (id {image_token_id}) but "
                f"{num_images} images' visual tokens were given"
            ),
            f"input_ids do not hold one image placeholder (id {image_token_id}) per image given",
        )
        self._image_token_id = image_token_id
        self._pending = True
        self._cond = None
        if num_images:
            if visual_tokens.shape[-1] != self.config.in_dim:
                raise InputError(
                    f"FlamingoAdapter expects {self.config.in_dim}-dim visual tokens, got {tuple(visual_tokens.shape)}"
                )
            sample, rank = placeholder_owners(is_image, num_images)
            self._cond = _Conditioning(visual_tokens, sample, rank, input_ids.shape[0])

    def _resample(
        self, cond: _Conditioning, start: torch.Tensor, fresh: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents grouped per sample: ([B, T, n, D_vis], valid [B, T]); image k of sample b goes to
        slot start[b] + k, i.e. it is the image of text_time start[b] + k + 1.

        T is the most slots a sample uses; while ``torch.compile`` traces a ``fresh`` sequence
        (``start`` all 0) it is the number of images instead, a bound known without reading the
        data — the extra slots are invalid and masked, so outputs are the same.
        """
        slot = start.to(cond.rank.device)[cond.sample] + cond.rank
        latents = self.perceiver(cond.tokens.to(self.perceiver.latents.dtype), media_index=slot)
        t = cond.tokens.shape[0] if fresh and torch.compiler.is_compiling() else int(slot.max()) + 1
        media = latents.new_zeros(cond.batch, t, *latents.shape[1:]).index_put((cond.sample, slot), latents)
        valid = torch.zeros(cond.batch, t, dtype=torch.bool, device=latents.device)
        valid = valid.index_put((cond.sample, slot), torch.ones_like(slot, dtype=torch.bool))
        return media, valid

    def _before_lm(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Pre-hook on the causal LM: media locations for this call, continuing a KV cache (§7.3)."""
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_length(cache)
        if input_ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return None  # the LM raises its own error
            if self._cond is not None or self._media is not None:
                raise InputError(
                    "the Flamingo adapter needs input_ids to locate the <image> tokens; the LM got inputs_embeds only"
                )
            locations = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        elif self._image_token_id is None:
            locations = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            locations = input_ids == self._image_token_id
        batch = locations.shape[0]
        if past == 0:  # a new sequence: the images given to condition() are its images
            self._media = self._valid = None
            if self._cond is not None:
                self._media, self._valid = self._resample(
                    self._cond, torch.zeros(self._cond.batch, dtype=torch.long), fresh=True
                )
                if batch != self._cond.batch:  # generate(num_return_sequences=k) repeats each row k times
                    if batch % self._cond.batch:
                        raise InputError(
                            f"the LM got a batch of {batch} but condition() saw {self._cond.batch} samples"
                        )
                    k = batch // self._cond.batch
                    self._media = self._media.repeat_interleave(k, dim=0)
                    self._valid = self._valid.repeat_interleave(k, dim=0)
            times = text_time(locations)
            self._times = times
        else:  # continuing a KV cache: new tokens come after the images seen so far (§7.3)
            seen = None if self._times is None else tuple(self._times.shape)
            if seen is None or seen[0] != batch or seen[1] < past:
                raise InputError(
                    f"the KV cache holds {past} tokens of a batch of {batch}, but the Flamingo adapter has "
                    f"seen {seen} (batch, tokens): start each sequence with a call without cache"
                )
            start = self._times[:, past - 1]
            if self._pending and self._cond is not None:
                if self._cond.batch != batch:
                    raise InputError(f"condition() saw {self._cond.batch} samples, the LM got {batch}")
                media, valid = self._resample(self._cond, start)
                self._media, self._valid = _merge_media(self._media, self._valid, media, valid)
            times = start[:, None] + text_time(locations)
            # A cache cropped back (assisted decoding) drops the state of the discarded tokens too.
            self._times = torch.cat([self._times[:, :past], times], dim=1)
        self._pending = False
        self._attend = (
            None
            if self._media is None
            else media_attention_mask(times, self._valid, self.config.only_attend_immediate_media)
        )
        return None

    def _before_layer(
        self, index: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Pre-hook on decoder layer ``index``: run its gated block on the hidden states first."""
        positional = bool(args)
        hidden = args[0] if positional else kwargs["hidden_states"]
        if self._attend is not None and tuple(self._attend.shape[:2]) != tuple(hidden.shape[:2]):
            raise InputError(
                f"hidden states {tuple(hidden.shape)} do not match the media mask "
                f"{tuple(self._attend.shape)}: call the causal LM (decoder.lm), not its inner model"
            )
        # Media and mask go in as the checkpoint's inputs, so a recomputation in backward uses
        # this call's tensors even if the adapter has been conditioned again since.
        out = self.run_block(self.gated_cross_attn_layers[str(index)], hidden, self._media, self._attend)
        if positional:
            return (out, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": out}


def _merge_media(
    old: torch.Tensor | None, old_valid: torch.Tensor | None, new: torch.Tensor, new_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots of ``new`` (disjoint from the old ones) added to ``old``: [B, T, n, D] each, T padded."""
    if old is None or old_valid is None:
        return new, new_valid
    t = max(old.shape[1], new.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        widths = [0, 0] * (x.ndim - 2) + [0, t - x.shape[1]]
        return F.pad(x, widths)

    old, new = pad(old), pad(new.to(old.dtype))
    old_valid, new_valid = pad(old_valid), pad(new_valid)
    return torch.where(new_valid[:, :, None, None], new, old), old_valid | new_valid


# --- presets ---------------------------------------------------------------------------------
# OpenFlamingo v2 releases (§7.2): CLIP ViT-L/14 (width 1024) + MPT-1B (d_model 2048) every layer,
# RedPajama-INCITE-3B (hidden 2560) every 2nd, MPT-7B (d_model 4096) every 4th.
FLAMINGO_PRESETS: dict[str, FlamingoConfig] = {
    "flamingo": FlamingoConfig(),
    "openflamingo-3b-xattn": FlamingoConfig(in_dim=1024, out_dim=2048, cross_attn_every_n_layers=1),
    "openflamingo-4b-xattn": FlamingoConfig(in_dim=1024, out_dim=2560, cross_attn_every_n_layers=2),
    "openflamingo-9b-xattn": FlamingoConfig(in_dim=1024, out_dim=4096, cross_attn_every_n_layers=4),
    "tiny-flamingo": FlamingoConfig(
        resampler_depth=2,
        resampler_heads=2,
        resampler_dim_head=16,
        num_latents=8,
        xattn_heads=2,
        xattn_dim_head=16,
    ),
}

for _name, _cfg in FLAMINGO_PRESETS.items():
    register(
        _name,
        "adapter",
        _cfg,
        FlamingoAdapter,
        "Flamingo Perceiver Resampler + gated cross-attention (OpenFlamingo)",
    )
