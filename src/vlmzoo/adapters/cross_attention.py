"""Flamingo's cross-attention adapter (Alayrac et al. 2022, "Flamingo", Section 2), in OpenFlamingo's form.

    visual tokens [n_img, N, D_vis] ─► PerceiverResampler ─► latents [n_img, 64, D_vis]
        ─► grouped per sample [B, T_img, 64, D_vis]
        ─► a GatedCrossAttentionBlock before every n-th layer of a frozen causal LM: each text
           token attends to the latents of its image only (media masking, Section 2.3)

Unlike prefix adapters nothing is spliced into the text: the ``<image>`` placeholder stays one
real token and the visual information enters the LM's hidden states inside the decoder stack.
The resampler is :mod:`vlmzoo.adapters.resampler`; this file holds the gated blocks, the media
masking, the hooks that insert the blocks and the per-call conditioning.

How the blocks get into any transformers causal LM, without a subclass per family
---------------------------------------------------------------------------------
:meth:`FlamingoAdapter.bind` registers a forward *pre-hook* on every chosen decoder layer
(index i with (i+1) % n == 0, as OpenFlamingo's flamingo_lm.py places them). The hook runs the
layer's gated block on the hidden states (the layer's first positional argument, or its
``hidden_states`` keyword) and hands the result to the untouched layer with all other arguments
as they were. This is exactly OpenFlamingo's ``FlamingoLayer`` (gated block, then the frozen
decoder layer), but without replacing the layer in ``decoder.layers``. We chose hooks over a
wrapper module because:

- the LM's own state-dict keys stay the transformers ones (``lm.model.layers.3.self_attn...``,
  not ``...layers.3.decoder_layer.self_attn...``): Hugging Face weights and converters keep
  working, ``decoder.lm.save_pretrained`` still writes a loadable LM, LoRA target names do not
  move;
- each gated block has exactly one owner, ``adapter.gated_cross_attn_layers[str(i)]``, so every
  tensor has one state-dict key. A wrapper would also put the block under the decoder and every
  tensor would be saved under two names (OpenFlamingo's train_utils.py has to drop its
  ``gated_cross_attn_layers`` alias from checkpoints); ``decoder.parameters()`` stays the LM's
  own, so freezing the decoder never touches the blocks and parameter counts per part add up;
- only a layer's *input* changes, so its return type and signature (gpt2 passes the cache
  positionally, opt orders arguments differently) do not matter.

The price: the blocks do not show in ``print(decoder)``; :meth:`FlamingoAdapter.unbind` removes
the hooks.

Gradient checkpointing. transformers checkpoints a decoder layer's ``forward``
(``GradientCheckpointingLayer`` in transformers/modeling_layers.py), so the layer's pre-hooks,
and the gated block with them, run outside the layer's checkpoint: the adapter's own
``set_grad_checkpointing`` checkpoints each gated block (and each resampler layer),
independently of the decoder's, with the media and mask as the checkpoint's inputs.

Conditioning is per call, never module state
--------------------------------------------
:meth:`FlamingoAdapter.prepare` returns the ``input_ids`` and a context holding this call's
images (a :class:`FlamingoCall`, opened on this thread's stack, see :mod:`vlmzoo.adapters.base`).
A pre-hook on ``decoder.lm`` opens a :class:`_Step` for each LM call: it resamples the call's
images at the call's first LM step and computes the media mask; the layer hooks read that step;
a post-hook on ``decoder.lm`` closes it. Two threads, or a call nested inside another, never see
each other's images.

A sequence's media travel with its KV cache: the post-hook records on the transformers cache
what the sequence has seen (the latents of its images and every position's text_time), so a
call that continues a cache, inside ``generate`` or by hand one call at a time, gives its tokens
text_time = images seen so far + their own ``<image>`` count (OpenFlamingo's cached-media
generation, ``use_cached_media`` in open_flamingo/src/helpers.py). Images given with a
continuation are appended after those the cache has seen.

Checkpoint keys (OpenFlamingo -> vlmzoo): ``perceiver.*`` -> ``adapter.perceiver.*`` (same
sub-keys); ``lang_encoder.<layers>.{i}.gated_cross_attn_layer.*`` ->
``adapter.gated_cross_attn_layers.{i}.*`` (same sub-keys: ``attn.{norm,to_q,to_kv,to_out}``,
``attn_gate``, ``ff.{0,1,3}``, ``ff_gate``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from vlmzoo.adapters.base import (
    Adapter,
    CallState,
    PaddingSide,
    Prepared,
    TextLayout,
    current_state,
    placeholder_owners,
    pop_state,
    push_state,
)
from vlmzoo.adapters.resampler import PerceiverResampler, feed_forward
from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX, cache_length, kv_cache
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.registry import register, register_architecture


# --- media masking (Flamingo Section 2.3) and gated cross-attention (Section 2.2) -------------
def text_time(media_locations: torch.Tensor) -> torch.Tensor:
    """[B, L] bool ``<image>`` positions -> [B, L] long: images seen so far, the token's own included
    (so an ``<image>`` token already sees its image, as OpenFlamingo's ``MaskedCrossAttention``)."""
    return media_locations.long().cumsum(dim=-1)


def media_attention_mask(
    times: torch.Tensor, media_valid: torch.Tensor, only_attend_immediate_media: bool = True
) -> torch.Tensor:
    """Which media each text token may attend: [B, L] text_time, [B, T] valid -> [B, L, T] bool.

    Token i may attend image j (1-based) iff text_time[i] == j (immediate mode) or
    text_time[i] >= j (all previous media), and slot j holds an image of that sample
    (``media_valid``: samples may have fewer images than T). Flamingo Section 2.3: each token
    attends only to the image just before it; OpenFlamingo's ``only_attend_immediate_media``.
    """
    media_time = torch.arange(1, media_valid.shape[1] + 1, device=times.device)
    op = torch.eq if only_attend_immediate_media else torch.ge
    return op(times[..., None], media_time) & media_valid[:, None, :]


class MaskedCrossAttention(nn.Module):
    """Text queries attend to media latents: [B, L, D], [B, T, n, D_vis] -> [B, L, D].

    OpenFlamingo's ``MaskedCrossAttention`` (open_flamingo/src/helpers.py).

    LayerNorm on the text queries only; ``to_q``, ``to_kv``, ``to_out`` bias-free. The latents of
    all T images are flattened to T·n keys; ``attend`` [B, L, T] restricts each token to some
    images. A token that may attend no image (before the first ``<image>``, or a sample without
    images) outputs exactly 0. OpenFlamingo zeroes such rows only in immediate mode; in its
    all-previous mode they would average over every latent, which we do not copy (Flamingo
    Section 2.3: tokens before any image attend to no image).
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
        # zero them, as OpenFlamingo's helpers.py does for text_time == 0.
        allowed = repeat(attend | ~has_media[..., None], "b l t -> b 1 l (t n)", n=n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = out.masked_fill(~has_media[:, None, :, None], 0.0)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate)·xattn(x, media); then x + tanh(ff_gate)·FF(x): [B, L, D] -> [B, L, D].

    Both gates start at 0, so the block is the identity at initialisation and a frozen LM keeps
    its outputs exactly (Flamingo Section 2.2, tanh gating initialised at 0). The FF branch applies to every text token, media or not, as in
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
    """Flamingo adapter sizes (defaults: OpenFlamingo's, open_flamingo/src/helpers.py and factory.py).

    ``in_dim`` is the vision width D_vis and ``out_dim`` the LM width; a VisionLanguageModel fills
    them when None (``out_dim`` is otherwise read from the decoder at :meth:`FlamingoAdapter.bind`).
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


# --- per-call state ---------------------------------------------------------------------------
@dataclass
class FlamingoCall:
    """One call's images, opened by :meth:`FlamingoAdapter.prepare` for the decoder call.

    ``tokens`` [n_img, N, D_vis] visual tokens in placeholder order, ``sample`` [n_img] the row of
    ``input_ids`` holding each, ``rank`` [n_img] its position among that row's images, ``batch``
    the B of those ``input_ids``. The first LM step of the call resamples them and sets
    ``tokens`` to None: later steps (``generate``'s) continue the sequence they started.
    """

    tokens: torch.Tensor | None
    sample: torch.Tensor | None
    rank: torch.Tensor | None
    batch: int


@dataclass(frozen=True)
class _Sequence:
    """What a sequence has seen, carried by its KV cache from one LM call to the next.

    ``media`` [B, T, n, D_vis] latents of its images and ``valid`` [B, T] which slots hold one
    (both None without images); ``times`` [B, S] the text_time of each of its S positions.
    """

    media: torch.Tensor | None
    valid: torch.Tensor | None
    times: torch.Tensor


@dataclass
class _Step:
    """One LM call in flight: the media and mask its gated blocks read, and the sequence so far."""

    media: torch.Tensor | None = None
    attend: torch.Tensor | None = None
    sequence: _Sequence | None = None


# The attribute of a transformers KV cache that holds its Flamingo sequence (a _Sequence).
_SEQUENCE = "vlmzoo_flamingo_sequence"


# --- the adapter ------------------------------------------------------------------------------
@register_architecture
class FlamingoAdapter(Adapter):
    """Perceiver Resampler + gated cross-attention blocks inserted into any HF causal LM.

    Use: ``bind(decoder, layout)`` once (a VisionLanguageModel does this), then run each decoder
    call inside ``prepare(...).conditioning``. ``adapter(tokens)`` runs the resampler alone:
    [n_img, N, in_dim] -> [n_img, num_latents, in_dim]. The gated blocks exist from ``bind`` on
    (their number depends on the decoder's depth).
    """

    config_class = FlamingoConfig

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
        # lang_encoder.gated_cross_attn_layers.{i}.* (open_flamingo/src/flamingo_lm.py).
        self.gated_cross_attn_layers = nn.ModuleDict()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []  # the hooks bind() registered

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    def forward(self, tokens: torch.Tensor, media_index: torch.Tensor | None = None) -> torch.Tensor:
        """The resampler: [n_img, N, in_dim] -> [n_img, num_latents, in_dim]."""
        return self.perceiver(tokens, media_index)

    # --- training at scale ------------------------------------------------------------------
    def stack_parts(self) -> list[Any]:
        """The resampler, which runs (and checkpoints) its own layers."""
        return [self.perceiver]

    def wrap_units(self) -> list[nn.Module]:
        """The resampler layers, then the gated blocks in decoder order (present from ``bind``)."""
        return [*self.perceiver.wrap_units(), *self.gated_cross_attn_layers.values()]

    # --- the contract: inserting the blocks -------------------------------------------------
    @staticmethod
    def decoder_width(decoder: Any) -> int:
        """The width of the hidden states between decoder layers, which the gated blocks read."""
        return decoder.layer_width

    def bind(self, decoder: Any, layout: TextLayout) -> None:
        """Insert a gated block before every n-th layer of ``decoder`` (an :class:`HFDecoder`).

        Raises :class:`ConfigError` when the image token is not a token of the decoder, when the
        decoder's layers cannot be found (the message names the attributes searched), when
        already bound, or when the widths disagree.
        """
        if self._handles:
            raise ConfigError("FlamingoAdapter is already bound to a decoder; call unbind() first")
        vocab = decoder.vocab_size
        if not 0 <= layout.image_token_id < vocab:
            raise ConfigError(
                f"image_token_id={layout.image_token_id}: cross-attention keeps the placeholder in "
                f"the text, so it must be a token id in [0, {vocab}) of the decoder's vocabulary"
            )
        layers = decoder.layers  # raises ConfigError naming the searched attribute paths
        width = decoder.layer_width
        if self.config.out_dim is not None and self.config.out_dim != width:
            raise ConfigError(
                f"FlamingoConfig.out_dim={self.config.out_dim} but the decoder's layers "
                f"({decoder.layer_path}) carry {width}-dim hidden states"
            )
        n = self.config.cross_attn_every_n_layers
        chosen = [i for i in range(len(layers)) if (i + 1) % n == 0]  # OpenFlamingo's placement
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
        lm = decoder.lm
        self._handles.append(lm.register_forward_pre_hook(self._before_lm, with_kwargs=True))
        # always_call: the step is closed even when the LM (or a hook) raises.
        self._handles.append(lm.register_forward_hook(self._after_lm, with_kwargs=True, always_call=True))
        super().bind(decoder, layout)

    def unbind(self) -> None:
        """Remove the hooks: the decoder is the plain LM again and calls ignore their images (the
        blocks stay in the adapter, the layout too: ``bind`` puts them back)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # --- the contract: what an image costs --------------------------------------------------
    def tokens_per_image(self, num_encoder_tokens: int) -> int:
        """1: the ``<image>`` token; the latents enter through cross-attention, not the text."""
        return 1

    def visual_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The latents the gated blocks attend to: [n, N, in_dim] -> [n, num_latents, in_dim]
        (each image resampled as the first of its sample, which matters only with
        ``max_num_media``'s time embeddings)."""
        return self.perceiver(tokens)

    # --- the contract: one call -------------------------------------------------------------
    def prepare(
        self,
        decoder: Any,
        input_ids: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        padding_side: PaddingSide | None = None,
    ) -> Prepared:
        """The ``input_ids`` as they are, and a conditioning context holding this call's images.

        ``visual_tokens`` [n_img, N, in_dim] (or None): encoder tokens of every image, in the
        reading order of the placeholders in ``input_ids`` [B, L] across the batch; samples may
        hold several images or none (the caller has counted placeholders against images). Inside
        the context, a decoder call on an empty cache uses these images for the whole sequence,
        one continuing a cache appends them after the images it has seen. The ``<image>`` token
        is not a prediction target: its label becomes ``IGNORE_INDEX`` (as in OpenFlamingo's
        training, open_flamingo/train/train_utils.py). Rows keep their lengths, so
        ``padding_side`` changes nothing.
        """
        layout = self.bound_layout()
        is_image = input_ids == layout.image_token_id
        call = FlamingoCall(None, None, None, input_ids.shape[0])
        if visual_tokens is not None and visual_tokens.shape[0]:
            if visual_tokens.shape[-1] != self.config.in_dim:
                raise InputError(
                    f"FlamingoAdapter expects {self.config.in_dim}-dim visual tokens, got {tuple(visual_tokens.shape)}"
                )
            sample, rank = placeholder_owners(is_image, visual_tokens.shape[0])
            call = FlamingoCall(visual_tokens, sample, rank, input_ids.shape[0])
        if labels is not None:
            labels = labels.masked_fill(is_image, IGNORE_INDEX)
        return Prepared(
            attention_mask=attention_mask,
            labels=labels,
            input_ids=input_ids,
            conditioning=CallState(self, call),
        )

    # --- the hooks --------------------------------------------------------------------------
    def _resample(
        self, call: FlamingoCall, start: torch.Tensor, fresh: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents grouped per sample: ([B, T, n, D_vis], valid [B, T]); image k of sample b goes to
        slot start[b] + k, i.e. it is the image of text_time start[b] + k + 1.

        T is the most slots a sample uses; while ``torch.compile`` traces a ``fresh`` sequence
        (``start`` all 0) it is the number of images instead, a bound known without reading the
        data — the extra slots are invalid and masked, so outputs are the same.
        """
        slot = start.to(call.rank.device)[call.sample] + call.rank
        latents = self.perceiver(call.tokens.to(self.perceiver.latents.dtype), media_index=slot)
        t = call.tokens.shape[0] if fresh and torch.compiler.is_compiling() else int(slot.max()) + 1
        media = latents.new_zeros(call.batch, t, *latents.shape[1:]).index_put((call.sample, slot), latents)
        valid = torch.zeros(call.batch, t, dtype=torch.bool, device=latents.device)
        valid = valid.index_put((call.sample, slot), torch.ones_like(slot, dtype=torch.bool))
        return media, valid

    def _before_lm(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Pre-hook on the causal LM: open this LM call's step (media, mask, sequence)."""
        step = _Step()
        push_state(self, step)  # first, so that the post-hook always closes this step
        call = current_state(self, FlamingoCall)
        images = None
        if call is not None and call.tokens is not None:  # the call's first LM step takes its images
            images = FlamingoCall(call.tokens, call.sample, call.rank, call.batch)
            call.tokens = None
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args and isinstance(args[0], torch.Tensor):
            input_ids = args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache_length(cache)
        seen = getattr(cache, _SEQUENCE, None) if past else None
        if input_ids is None:
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                return None  # the LM raises its own error
            if images is not None or (seen is not None and seen.media is not None):
                raise InputError(
                    "the Flamingo adapter needs input_ids to locate the <image> tokens; the LM got inputs_embeds only"
                )
            locations = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        else:  # the hooks exist only while bound, so the layout is known
            locations = input_ids == self.bound_layout().image_token_id
        batch = locations.shape[0]
        if past == 0:  # a new sequence: the call's images are its images
            media = valid = None
            if images is not None:
                media, valid = self._resample(images, torch.zeros(images.batch, dtype=torch.long), fresh=True)
                if batch != images.batch:  # generate(num_return_sequences=k) repeats each row k times
                    if batch % images.batch:
                        raise InputError(
                            f"the LM got a batch of {batch} but the call's input_ids hold {images.batch} samples"
                        )
                    k = batch // images.batch
                    media, valid = media.repeat_interleave(k, dim=0), valid.repeat_interleave(k, dim=0)
            times = text_time(locations)
            sequence = _Sequence(media, valid, times)
        else:  # continuing a KV cache: new tokens come after the images seen so far
            shape = None if seen is None else tuple(seen.times.shape)
            if shape is None or shape[0] != batch or shape[1] < past:
                raise InputError(
                    f"the KV cache holds {past} tokens of a batch of {batch}, but the Flamingo adapter has "
                    f"seen {shape} (batch, tokens) in it: start each sequence with a call without cache"
                )
            start = seen.times[:, past - 1]
            media, valid = seen.media, seen.valid
            if images is not None:
                if images.batch != batch:
                    raise InputError(f"the call's input_ids hold {images.batch} samples, the LM got {batch}")
                media, valid = _merge_media(media, valid, *self._resample(images, start))
            times = start[:, None] + text_time(locations)
            # A cache cropped back (assisted decoding) drops the state of the discarded tokens too.
            sequence = _Sequence(media, valid, torch.cat([seen.times[:, :past], times], dim=1))
        step.media, step.sequence = media, sequence
        if media is not None:
            step.attend = media_attention_mask(times, valid, self.config.only_attend_immediate_media)
        return None

    def _after_lm(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        """Post-hook on the causal LM: close the step; the output's KV cache keeps the sequence."""
        step = current_state(self, _Step)
        if step is None:
            return
        pop_state(step)
        cache = None if output is None else kv_cache(output)
        if cache is not None and step.sequence is not None:
            setattr(cache, _SEQUENCE, step.sequence)

    def _before_layer(
        self, index: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Pre-hook on decoder layer ``index``: run its gated block on the hidden states first."""
        step = current_state(self, _Step)
        media, attend = (None, None) if step is None else (step.media, step.attend)
        positional = bool(args)
        hidden = args[0] if positional else kwargs["hidden_states"]
        if attend is not None and tuple(attend.shape[:2]) != tuple(hidden.shape[:2]):
            raise InputError(
                f"hidden states {tuple(hidden.shape)} do not match the media mask "
                f"{tuple(attend.shape)}: call the causal LM (decoder.lm), not its inner model"
            )
        # Media and mask go in as the checkpoint's inputs, so a recomputation in backward uses
        # this call's tensors.
        out = self.run_block(self.gated_cross_attn_layers[str(index)], hidden, media, attend)
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
# OpenFlamingo v2 releases (open_flamingo README and factory.py): CLIP ViT-L/14 (width 1024) + MPT-1B (d_model 2048) every layer,
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
