"""The conditioning contract: how an adapter makes a language decoder see images.

An adapter owns everything about the way visual tokens reach the decoder, so that a
:class:`~vlmzoo.models.vlm.VisionLanguageModel` runs one path whatever the adapter::

    adapter.bind(decoder, layout)            # once, when the model is built
    prepared = adapter.prepare(decoder, input_ids, visual_tokens, attention_mask, labels)
    with prepared.conditioning:              # per call: one forward, or a whole generate()
        decoder(**prepared.decoder_inputs())

Three kinds exist today, each a subclass:

- :class:`~vlmzoo.adapters.prefix.PrefixAdapter` (LLaVA's MLP projector, BLIP-2's Q-Former) maps
  visual tokens [n, N, C_enc] to M embeddings [n, M, C_llm] and splices them into the text at the
  image placeholders: ``prepare`` returns ``inputs_embeds``; nothing else is conditioned.
  Its any-resolution kind (:class:`~vlmzoo.adapters.anyres.AnyResProjector`, LLaVA-NeXT and
  OneVision) reads several encoder inputs per image and gives each image as many embeddings as
  its size asks: :meth:`Adapter.count_images` and :meth:`Adapter.image_positions` take the
  callers' ``image_sizes``.
- :class:`~vlmzoo.adapters.cross_attention.FlamingoAdapter` inserts gated cross-attention blocks
  into the decoder at ``bind``; the placeholder stays one real token, ``prepare`` returns the
  ``input_ids`` and a conditioning context in which those blocks see this call's images.
- :class:`~vlmzoo.adapters.encoder_decoder.EncoderDecoderAdapter` hands the images to a decoder
  that cross-attends to them itself (Donut, Nougat): an image takes no position in the text,
  ``prepare`` returns the ``input_ids`` and ``extra`` = ``encoder_hidden_states``.

A new kind is one file: subclass :class:`Adapter`, implement the methods below, register presets.

Per-call state, never module state
----------------------------------
What a call conditions on (its images, the media mask of the LM step in flight) lives in a state
object pushed for the duration of that call onto this thread's stack (:class:`CallState`,
:func:`current_state`), never in module attributes. Two threads calling one model each see their
own images; a call nested inside another (a hook that runs the model again, ``generate`` of one
model inside the forward of another) pushes its own state and pops it on the way out, leaving the
outer call's state as it was.

The stack is a ``threading.local`` list rather than a ``contextvars.ContextVar``: ``ContextVar.set``
cannot be traced by ``torch.compile`` (it breaks the graph), while a list's pushes and pops are
traced as ordinary side effects, so a compiled forward stays one graph. A model call is
synchronous, so a thread's stack is balanced whenever control leaves the call (asyncio tasks
sharing the thread never interleave inside one).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.weights.hub import HubMixin

S = TypeVar("S")
PaddingSide = Literal["left", "right"]


# --- how images sit in the text --------------------------------------------------------------
@dataclass(frozen=True)
class TextLayout:
    """How images are marked in the text a decoder reads (fields as in ``VLMConfig``).

    ``image_token_id`` marks an image in ``input_ids``. With ``expand_image_tokens`` each image is
    one placeholder that the adapter widens to :meth:`Adapter.tokens_per_image` positions; without
    it the text already holds that many placeholders per image. ``max_length`` bounds the sequence
    the decoder receives (an error, never a cut through an image).
    """

    image_token_id: int
    expand_image_tokens: bool = True
    max_length: int | None = None

    def placeholders_per_image(self, tokens_per_image: int) -> int:
        """Placeholders ``input_ids`` must hold per image."""
        return 1 if self.expand_image_tokens else tokens_per_image


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


# --- what one call hands the decoder ---------------------------------------------------------
@dataclass
class Prepared:
    """The decoder inputs of one call and the context its decoder call runs in.

    Exactly one of ``input_ids`` [B, L'] (placeholders stay tokens) and ``inputs_embeds``
    [B, L', hidden] is set; ``attention_mask`` and ``labels`` [B, L'] are aligned with it (None
    when the caller gave none). ``conditioning`` is entered around the decoder call: one forward,
    or the whole ``generate`` (every LM step inside it sees this call's images). ``extra`` holds
    further keyword inputs of the decoder call (an encoder-decoder's ``encoder_hidden_states``
    [B, N, width] and ``encoder_attention_mask`` [B, N]).
    """

    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None
    conditioning: AbstractContextManager[Any] = field(default_factory=nullcontext)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """L', the length of the sequence the decoder receives."""
        inputs = self.inputs_embeds if self.inputs_embeds is not None else self.input_ids
        return inputs.shape[1]

    def decoder_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword inputs of the decoder's forward or ``generate`` (None entries left out)."""
        inputs = {
            "input_ids": self.input_ids,
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
        }
        return {k: v for k, v in inputs.items() if v is not None} | self.extra


# --- per-call state on this thread's stack ---------------------------------------------------
class _Frames(threading.local):
    """This thread's open call states, innermost last; every thread starts with an empty list."""

    def __init__(self) -> None:
        self.stack: list[tuple[nn.Module, Any]] = []


_FRAMES = _Frames()


def push_state(owner: nn.Module, state: Any) -> None:
    """Open ``state`` for ``owner`` on this thread (pair with :func:`pop_state`)."""
    _FRAMES.stack.append((owner, state))


def pop_state(state: Any) -> None:
    """Close ``state``: the innermost frame holding it goes, frames opened after it are untouched."""
    stack = _FRAMES.stack
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][1] is state:
            del stack[i]
            return


def current_state(owner: nn.Module, kind: type[S]) -> S | None:
    """The innermost open state of type ``kind`` that ``owner`` opened on this thread, or None."""
    for who, state in reversed(_FRAMES.stack):
        if who is owner and isinstance(state, kind):
            return state
    return None


class CallState(AbstractContextManager):
    """``with CallState(owner, state):`` — ``state`` is ``owner``'s current state of its type on
    this thread for the duration of the block, including when the block raises."""

    def __init__(self, owner: nn.Module, state: Any):
        self.owner, self.state = owner, state

    def __enter__(self) -> Any:
        push_state(self.owner, self.state)
        return self.state

    def __exit__(self, *exc_info: object) -> None:
        pop_state(self.state)


# --- the contract ----------------------------------------------------------------------------
class Adapter(BlockStack, HubMixin, nn.Module):
    """Base of every way of conditioning a decoder on images.

    Subclasses set ``config_class`` (a config with ``in_dim`` and ``out_dim`` fields, filled by
    :meth:`fit_config` when None) and implement :meth:`decoder_width`, :meth:`tokens_per_image`,
    :meth:`visual_features` and :meth:`prepare`; :meth:`bind` when they change the decoder.
    """

    config: Config

    def __init__(self) -> None:
        super().__init__()
        self.layout: TextLayout | None = None  # set by bind()

    @property
    def in_dim(self) -> int:
        """Width of the visual tokens the adapter reads (the encoder's ``out_dim``)."""
        return self.config.in_dim

    # --- building: widths and the decoder -------------------------------------------------
    @staticmethod
    def decoder_width(decoder: Any) -> int:
        """The width this kind of adapter writes into ``decoder`` (embeddings or hidden states)."""
        raise NotImplementedError

    @classmethod
    def fit_config(cls, config: Config, encoder_width: int, decoder: Any) -> Config:
        """``config`` with ``in_dim`` / ``out_dim`` filled from the encoder and decoder where None."""
        widths = (("in_dim", encoder_width), ("out_dim", cls.decoder_width(decoder)))
        fill = {k: v for k, v in widths if hasattr(config, k) and getattr(config, k) is None}
        return config.replace(**fill) if fill else config

    def bind(self, decoder: Any, layout: TextLayout) -> None:
        """Fit the adapter to ``decoder`` (an :class:`~vlmzoo.decoders.hf.HFDecoder`) read with
        ``layout``: check widths, insert layers if the kind has any. Raises :class:`ConfigError`."""
        self.layout = layout

    def decoder_modules(self, decoder: Any) -> list[nn.Module]:
        """Modules of ``decoder`` that belong to the conditioning: trained with the adapter
        (``train_adapter``) even when the decoder is frozen. None for most kinds; the
        encoder-decoder kind claims the decoder's cross-attention layers, which only exist to
        read images."""
        return []

    def bound_layout(self) -> TextLayout:
        """The layout given to :meth:`bind`; raises :class:`ConfigError` before it."""
        if self.layout is None:
            raise ConfigError(
                f"{type(self).__name__} is not bound to a decoder: call bind(decoder, layout) first "
                "(a VisionLanguageModel does)"
            )
        return self.layout

    # --- what an image costs ----------------------------------------------------------------
    def tokens_per_image(self, num_encoder_tokens: int) -> int:
        """Positions one image takes in the decoder's sequence, from N encoder tokens."""
        raise NotImplementedError

    def visual_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the adapter makes of the images before the decoder: [n, N, in_dim] -> [n, M, D]."""
        raise NotImplementedError

    def count_images(self, num_inputs: int, image_sizes: torch.Tensor | None) -> int:
        """Images among ``num_inputs`` encoder inputs, given the callers' ``image_sizes`` [n, 2]
        (height, width) or None. Every kind but any-resolution tiling reads one image per input
        and takes no sizes; a tiling adapter reads several inputs (its views) per image."""
        if image_sizes is not None:
            raise InputError(
                f"image_sizes were given but a {type(self).__name__} reads every input as one image at "
                "the encoder's resolution; leave image_sizes out (they are for any-resolution tiling)"
            )
        return num_inputs

    def image_positions(
        self, num_encoder_tokens: int, num_images: int, image_sizes: torch.Tensor | None = None
    ) -> list[int]:
        """Positions each of ``num_images`` images takes in the decoder's sequence, in placeholder
        order: :meth:`tokens_per_image` each, unless the kind's cost depends on the image's size."""
        return [self.tokens_per_image(num_encoder_tokens)] * num_images

    # --- one call ---------------------------------------------------------------------------
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
        """The decoder's inputs for one call and its conditioning context.

        ``input_ids`` [B, L] hold :attr:`layout`'s placeholders; ``visual_tokens``
        [n_img, N, in_dim] are the encoder tokens of the images in placeholder (reading) order,
        or None without images; ``attention_mask`` [B, L] 1 = token, 0 = padding; ``labels``
        [B, L] with ``IGNORE_INDEX`` where not scored. Inputs are checked by the caller.
        A kind whose images have sizes (any-resolution tiling) also takes ``image_sizes=``
        [n_img, 2]; the model passes it only when the caller gave it.
        ``padding_side``: where a kind that changes the rows' lengths (expanding or removing
        placeholders) puts the padding it makes: ``"left"`` for ``generate`` (every row must end
        in its last token), None to keep the side the input is padded on (the right when unpadded).
        """
        raise NotImplementedError
