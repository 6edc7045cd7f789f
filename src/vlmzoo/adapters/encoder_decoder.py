"""Encoder-decoder conditioning: the decoder's own cross-attention reads the image tokens.

    pixel_values ─► encoder ─► tokens [n, N, C_enc] ─► proj (optional) ─► memory [B, K·N, D] ─┐
    input_ids (prompt, no image positions) ─► decoder (self-attention + cross-attention) ◄─────┘

This is the sequence-to-sequence way of conditioning: Donut (Kim et al. 2022, "OCR-free Document
Understanding Transformer", section 2.1) and Nougat (Blecher et al. 2023, section 2) feed the Swin
encoder's output to an mBART decoder as ``encoder_hidden_states``, the way transformers'
``VisionEncoderDecoderModel`` (models/vision_encoder_decoder/modeling_vision_encoder_decoder.py)
composes any vision encoder with any decoder that has cross-attention layers (``MBartForCausalLM``,
``BartForCausalLM``, ``BertLMHeadModel`` / ``GPT2LMHeadModel`` with ``add_cross_attention=True``).
Unlike Flamingo's gated blocks the cross-attention is part of the decoder: nothing is inserted,
and the decoder is trained with it. When the encoder's width differs from the decoder's, a
Linear ``proj`` maps it (``VisionEncoderDecoderModel``'s ``enc_to_dec_proj``).

An image takes no position in the text. With ``expand_image_tokens`` (the default) each image is
marked by one placeholder in its sample's text, which is removed (its width is 0): placeholders
say which sample an image belongs to, so a sample may read several images (their tokens are
concatenated into one memory, masked where a sample has fewer). With ``expand_image_tokens=False``
the text holds no placeholders and there is exactly one image per sample, in batch order — the
Donut / Nougat prompt (``<s_docvqa><s_question>...``) as their processors write it.

Every call needs its images: the decoder skips cross-attention entirely when it is given no
``encoder_hidden_states``, so a call without them would silently read no image. During
``generate`` the decoder keeps the cross-attention keys and values of the memory in its
``EncoderDecoderCache`` after the first step (:meth:`vlmzoo.decoders.hf.HFDecoder.generate`),
so the memory is projected once per generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from vlmzoo.adapters.base import Adapter, PaddingSide, Prepared, TextLayout, placeholder_owners
from vlmzoo.adapters.prefix import merged_length
from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import ConfigError, InputError, require
from vlmzoo.registry import register, register_architecture

Projection = Literal["auto", "linear", "none"]


@dataclass
class EncoderDecoderConfig(Config):
    """``in_dim`` (encoder width) and ``out_dim`` (the decoder's hidden width) are filled by the
    VLM when None. ``projection``: ``"auto"`` adds the Linear only when the widths differ (as
    ``VisionEncoderDecoderModel`` does), ``"linear"`` always, ``"none"`` never (widths must match)."""

    kind = "adapter"

    in_dim: int | None = None
    out_dim: int | None = None
    projection: Projection = "auto"
    bias: bool = True

    def validate(self) -> None:
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)
        if self.projection not in ("auto", "linear", "none"):
            self._fail("projection", "must be 'auto', 'linear' or 'none'")
        widths_known = self.in_dim is not None and self.out_dim is not None
        if self.projection == "none" and widths_known and self.in_dim != self.out_dim:
            self._fail(
                "projection",
                f"'none' needs in_dim == out_dim, got {self.in_dim} -> {self.out_dim}; use 'auto' or 'linear'",
            )

    @property
    def projects(self) -> bool:
        """Whether a Linear maps the encoder tokens to the decoder's width."""
        return self.projection == "linear" or (self.projection == "auto" and self.in_dim != self.out_dim)


@register_architecture
class EncoderDecoderAdapter(Adapter):
    """Hands the (projected) image tokens to the decoder as ``encoder_hidden_states`` (module docstring)."""

    config_class = EncoderDecoderConfig

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        if config.in_dim is None or config.out_dim is None:
            raise ConfigError(
                "EncoderDecoderAdapter needs in_dim and out_dim (a VisionLanguageModel fills them in)"
            )
        self.config = config
        self.proj = (
            nn.Linear(config.in_dim, config.out_dim, bias=config.bias) if config.projects else nn.Identity()
        )

    # --- building -----------------------------------------------------------------------------
    @staticmethod
    def decoder_width(decoder: Any) -> int:
        """The width the decoder's cross-attention reads (its hidden size)."""
        return decoder.layer_width

    def bind(self, decoder: Any, layout: TextLayout) -> None:
        if not decoder.cross_attends:
            lm = decoder.lm
            raise ConfigError(
                f"the {lm.config.model_type} decoder ({type(lm).__name__}) has no cross-attention layers, so it "
                "cannot read an encoder's output: use a decoder that takes encoder_hidden_states (mbart, "
                "bart, or bert / gpt2 with hf_config add_cross_attention=True), or another adapter"
            )
        if self.config.out_dim != decoder.layer_width:
            raise ConfigError(
                f"adapter out_dim={self.config.out_dim} != the decoder's hidden width {decoder.layer_width}"
            )
        super().bind(decoder, layout)

    def decoder_modules(self, decoder: Any) -> list[nn.Module]:
        """The decoder's cross-attention layers (and their norms): they are how images reach the
        text, so ``train_adapter`` trains them and a frozen decoder keeps its self-attention and
        FFNs frozen — warm-starting a text decoder with new cross-attention, as
        ``VisionEncoderDecoderModel.from_encoder_decoder_pretrained`` does, trains these first."""
        return decoder.cross_attention_modules()

    def wrap_units(self) -> list[nn.Module]:
        """None: one Linear is not worth a unit of its own."""
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to recompute: the projection's activations are one tensor."""

    # --- what an image costs ------------------------------------------------------------------
    def tokens_per_image(self, num_encoder_tokens: int) -> int:
        """0: an image is read through cross-attention and takes no position in the text."""
        return 0

    def visual_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The memory one image contributes: [n, N, in_dim] -> [n, N, out_dim]."""
        if tokens.shape[-1] != self.config.in_dim:
            raise InputError(
                f"EncoderDecoderAdapter expects {self.config.in_dim}-dim visual tokens, got {tuple(tokens.shape)}"
            )
        return self.proj(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, N, in_dim] -> [n, N, out_dim]: :meth:`visual_features`."""
        return self.visual_features(tokens)

    # --- one call -----------------------------------------------------------------------------
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
        """The text without placeholders, and the images as ``encoder_hidden_states``.

        ``visual_tokens`` [n, N, in_dim] in placeholder order (one per sample, in batch order,
        without placeholders). Returns ``input_ids`` [B, L'], ``attention_mask`` / ``labels``
        aligned with them (rows that lose fewer placeholders are padded on ``padding_side``), and
        ``extra``: ``encoder_hidden_states`` [B, K·N, out_dim], plus ``encoder_attention_mask``
        [B, K·N] (1 = image token) when samples hold different numbers K of images.
        """
        layout = self.bound_layout()
        batch = input_ids.shape[0]
        if visual_tokens is None or visual_tokens.shape[0] == 0:
            where = "its image placeholder(s) and " if layout.expand_image_tokens else ""
            raise InputError(
                "an encoder-decoder model reads its images through cross-attention at every call: pass "
                f"{where}pixel_values (also when continuing a KV cache, which keeps the image keys)"
            )
        n = visual_tokens.shape[0]
        features = self.visual_features(visual_tokens)
        if not layout.expand_image_tokens:
            if n != batch:
                raise InputError(
                    f"{n} images for {batch} samples: without image placeholders in the text "
                    "(expand_image_tokens=False) an encoder-decoder model reads exactly one image per sample"
                )
            memory, memory_mask = features.contiguous(), None
        else:
            is_image = input_ids == layout.image_token_id
            sample, rank = placeholder_owners(is_image, n)
            memory, memory_mask = _memory(features, sample, rank, is_image.sum(dim=1))
            input_ids, attention_mask, labels = _drop_placeholders(
                input_ids, is_image, n, attention_mask, labels, padding_side
            )
        extra = {"encoder_hidden_states": memory}
        if memory_mask is not None:
            extra["encoder_attention_mask"] = memory_mask
        return Prepared(attention_mask=attention_mask, labels=labels, input_ids=input_ids, extra=extra)


def _drop_placeholders(
    input_ids: torch.Tensor,
    is_image: torch.Tensor,
    num_images: int,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    padding_side: PaddingSide | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Remove the ``num_images`` placeholders from [B, L] ids (and the mask and labels aligned with them).

    Rows lose different numbers of placeholders; shorter rows are padded on ``padding_side``, or
    on the side their padding was on (:func:`~vlmzoo.adapters.prefix.merged_length`). Data moves
    by scatters of static shape, as in the prefix splice.
    """
    b = input_ids.shape[0]
    given_mask = attention_mask is not None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    width = (~is_image).long()
    total, offset = merged_length(is_image, width, attention_mask, num_images, 0, padding_side)
    # Kept tokens land at their rank among the kept, shifted by the row's offset; placeholders in
    # a dump column past the end that is cut off.
    position = torch.where(is_image, total, width.cumsum(dim=1) - 1 + offset[:, None])

    def moved(values: torch.Tensor, fill: int) -> torch.Tensor:
        return values.new_full((b, total + 1), fill).scatter(1, position, values)[:, :total].contiguous()

    mask = moved(attention_mask, 0)
    if not given_mask and (torch.compiler.is_compiling() or bool(mask.all())):
        # Every row lost as many placeholders (always so under torch.compile, where merged_length
        # asserts it): no padding appeared, and no mask keeps a KV-cache continuation's past visible.
        mask = None
    return moved(input_ids, 0), mask, None if labels is None else moved(labels, IGNORE_INDEX)


def _memory(
    features: torch.Tensor, sample: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, N, D] image memories of samples ``sample`` [n] (``rank`` [n] among their sample's;
    ``counts`` [B] images per sample) -> ([B, K·N, D], mask [B, K·N] or None when every sample
    holds K images). Under ``torch.compile`` every sample must hold the same number (asserted in
    the graph), so the shapes are known from n and B alone."""
    n, tokens, width = features.shape
    batch = counts.shape[0]

    def empty_error() -> str:
        rows = (counts == 0).nonzero().flatten().tolist()
        return (
            f"samples {rows} hold no image: an encoder-decoder model reads every sample's text against "
            "its image(s); give each sample at least one (or run the decoder alone on text)"
        )

    require((counts > 0).all(), empty_error, "a sample holds no image")
    per_sample = n // batch
    if torch.compiler.is_compiling():
        torch._assert_async(
            (counts == per_sample).all() & (n % batch == 0),
            "under torch.compile with expand_image_tokens=True every sample must hold the same "
            "number of images (or use expand_image_tokens=False)",
        )
    if torch.compiler.is_compiling() or (n % batch == 0 and bool((counts == per_sample).all())):
        # Reading order groups images by sample, so a reshape keeps them in place.
        return features.reshape(batch, per_sample * tokens, width).contiguous(), None
    k = int(counts.max())
    memory = features.new_zeros(batch, k, tokens, width).index_put((sample, rank), features)
    valid = torch.zeros(batch, k, tokens, dtype=torch.long, device=features.device)
    valid = valid.index_put((sample, rank), torch.ones(n, tokens, dtype=torch.long, device=features.device))
    return memory.flatten(1, 2), valid.flatten(1)


register(
    "encoder-decoder",
    "adapter",
    EncoderDecoderConfig(),
    EncoderDecoderAdapter,
    "the decoder's cross-attention reads the image tokens (Donut, Nougat); Linear when widths differ",
)
register(
    "encoder-decoder-linear",
    "adapter",
    EncoderDecoderConfig(projection="linear"),
    EncoderDecoderAdapter,
    "the decoder's cross-attention reads linearly projected image tokens",
)
