"""Emu (Sun et al. 2023, "Emu: Generative Pretraining in Multimodality", arXiv 2307.05222).

    pixel_values ─► encoder ─► Causal Transformer ─► 32 visual embeddings per image ─┐
    ... text [IMG] <image> [/IMG] text ... ─► decoder embeddings ────────────────────┴► splice ─► LLM
        LLM hidden states ─► lm_head (next text token, cross-entropy)
                          └► regress_head (next visual embedding, l2)

One autoregressive model over interleaved images and text (section 2): an image is the M visual
embeddings of the Causal Transformer (:mod:`vlmzoo.adapters.causal_former`; M = 32) between the
special tokens ``[IMG]`` and ``[/IMG]`` (baaivision/Emu's Emu1/models/modeling_llama.py adds
``[IMG]``, ``[/IMG]`` and ``<image>`` to the LLaMA tokenizer and writes an image as
``[IMG]`` + ``<image>`` x 32 + ``[/IMG]``, the ``<image>`` slots overwritten by the embeddings).
Training predicts the next element whatever its modality (section 2.2): the next text token by
cross-entropy, and the next visual embedding by an l2 regression from the LLM's last hidden
state through ``regress_head`` (Emu's ``stu_regress_head``, Linear(5120, 5120) without bias).

Which positions regress which (the masks of modeling_llama.py ``LLaMAForClsAndRegression.forward``):
the outputs at ``[IMG]`` and at the M slots predict the embeddings fed at the next positions,
i.e. the M visual embeddings and then the ``[/IMG]`` token's embedding, as detached targets in
the LLM's input space (the Emu authors, baaivision/Emu issue #16: the loss is computed between the
regressed embeddings and the embeddings fed into the LLM, at width 5120). The text loss skips
``<image>``, ``[IMG]`` and ``[/IMG]`` (their labels are -100 in modeling_llama.py), so the model is
prompted with ``[IMG]`` to draw; ``score_image_start=True`` scores ``[IMG]`` so that it learns to
open an image itself. The released code builds those masks but not the loss; vlmzoo's l2 loss is
the mean squared error over the embedding entries, and the total is
``text_loss_weight * text + regression_loss_weight * regression``.

Generation (:meth:`EmuModel.generate_interleaved`) emits text token by token; after ``[IMG]``
(emitted, or ending the prompt as in Emu's ``generate_image``) it regresses M embeddings one by one,
each fed back as the next input embedding, then closes the image with ``[/IMG]`` and goes on with
text. Turning the regressed embeddings into pixels is Emu's fine-tuned Stable Diffusion UNet
(Emu1/models/pipeline.py passes them as its ``encoder_hidden_states``): not part of vlmzoo.

``EmuModel`` is a :class:`VisionLanguageModel` (``forward`` adds the regression, ``generate`` is
text only, like Emu's own ``generate``) and works with any encoder, any prefix adapter and any
decoder. The ``emu-14b`` preset has the paper's parts: EVA-CLIP ViT-g/14 with all 40 blocks
(Emu1/models/Emu-14B.json; raw ``forward_features`` tokens: CLS kept, no final norm), the Causal
Transformer, LLaMA-13B with the 4 tokens Emu adds (``[PAD]`` 32000, ``[IMG]`` 32001, ``[/IMG]``
32002, ``<image>`` 32003); the instruction-tuned Emu-I adds ``[USER]`` and ``[ASSISTANT]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.adapters.causal_former import CAUSAL_FORMER_PRESETS, CausalFormerConfig
from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.config import Config
from vlmzoo.decoders.hf import DECODER_PRESETS, IGNORE_INDEX, DecoderConfig, kv_cache, llama_config
from vlmzoo.encoders.eva import EVA_PRESETS, eva_vit_config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import Trainable, VisionLanguageModel, VLMConfig, VLMOutput, _num_images
from vlmzoo.registry import architecture_for, register, register_architecture

IMAGE_START = "[IMG]"
IMAGE_END = "[/IMG]"
IMAGE_TOKEN = "<image>"

# A label no vocabulary uses: it travels with the [IMG] tokens through the adapter's splice, so that
# their positions in the merged sequence are known whatever the expansion and padding.
_IMAGE_START_MARK = IGNORE_INDEX - 1


def emu_encoder_config(**overrides: Any) -> Config:
    """EVA-CLIP ViT-g/14 as Emu reads it: all 40 blocks, every token (CLS kept) of the last one,
    no final norm (Emu's ``visual.forward_features``; its own ``ln_visual`` is the adapter's)."""
    return eva_vit_config(depth=40).replace(final_norm=False, feature_norm=False, **overrides)


# LLaMA-13B (Emu1/models/llama_config/config.json) with Emu's 4 added tokens.
LLAMA_13B_EMU = llama_config(
    5120, 40, 40, 13824, vocab=32004, max_position_embeddings=2048, rms_norm_eps=1e-6, pad_token_id=32000
)


@dataclass
class EmuConfig(VLMConfig):
    """A VLM config with Emu's image markers and losses; the defaults are Emu-14B's.

    ``image_token_id`` is the ``<image>`` placeholder (one per image with ``expand_image_tokens``,
    else M, as Emu's own text writes them), ``image_start_token_id`` / ``image_end_token_id`` are
    ``[IMG]`` / ``[/IMG]``, real tokens of the decoder's vocabulary: every image in the text is
    ``[IMG]`` + its placeholder(s) + ``[/IMG]``. ``score_image_start`` scores ``[IMG]`` in the
    text loss (Emu's released code does not). Every part trains, as in Emu's pretraining
    (Emu-14B.json freezes neither the vision tower nor the LLM).
    """

    encoder: Config = field(default_factory=emu_encoder_config)
    adapter: Config = field(default_factory=CausalFormerConfig)
    decoder: DecoderConfig = field(default_factory=lambda: LLAMA_13B_EMU)
    image_token_id: int = 32003
    train_encoder: Trainable = "full"
    train_adapter: Trainable = "full"
    train_decoder: Trainable = "full"
    image_start_token_id: int = 32001
    image_end_token_id: int = 32002
    score_image_start: bool = False
    text_loss_weight: float = 1.0
    regression_loss_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        self._check_non_negative("image_start_token_id", "image_end_token_id")
        ids = {
            "image_token_id": self.image_token_id,
            "image_start_token_id": self.image_start_token_id,
            "image_end_token_id": self.image_end_token_id,
        }
        if len(set(ids.values())) != 3:
            self._fail(
                "image_start_token_id", f"<image>, [IMG] and [/IMG] need three different ids, got {ids}"
            )
        self._check_positive("text_loss_weight", "regression_loss_weight")


@dataclass
class EmuOutput(VLMOutput):
    """:class:`VLMOutput` plus the two terms of Emu's loss: ``text_loss`` (cross-entropy of the
    next text token) and ``regression_loss`` (l2 of the next visual embedding; None without
    images); ``loss`` is their weighted sum."""

    text_loss: torch.Tensor | None = None
    regression_loss: torch.Tensor | None = None


@dataclass
class EmuGeneration:
    """What :meth:`EmuModel.generate_interleaved` made.

    ``tokens`` [B, T]: the new positions of each row, text ids, ``[IMG]``, the ``<image>``
    placeholder id at every regressed embedding, ``[/IMG]``, and the pad id after EOS.
    ``images[b]``: row b's images in order, each [k, D] regressed embeddings in the decoder's
    embedding space (k = M, fewer only for an image cut off by ``max_new_tokens``).
    """

    tokens: torch.Tensor
    images: list[list[torch.Tensor]]


@register_architecture
class EmuModel(VisionLanguageModel):
    """A :class:`VisionLanguageModel` with Emu's ``regress_head`` (LLM hidden state -> embedding
    space), its regression loss and interleaved image-text generation."""

    config_class = EmuConfig

    def __init__(self, config: EmuConfig):
        kind = architecture_for(config.adapter)
        if not issubclass(kind, PrefixAdapter):
            raise ConfigError(
                f"EmuConfig.adapter={type(config.adapter).__name__}: Emu regresses the visual embeddings "
                "spliced into the text, so it needs a prefix adapter (a CausalFormer, MLP projector, "
                f"Q-Former...), not a {kind.__name__}"
            )
        super().__init__(config)
        vocab = self.decoder.vocab_size
        for name in ("image_start_token_id", "image_end_token_id"):
            if getattr(config, name) >= vocab:
                raise ConfigError(
                    f"EmuConfig.{name}={getattr(config, name)}: [IMG] and [/IMG] are tokens of the "
                    f"decoder's vocabulary of {vocab}; add them to the tokenizer and resize the decoder"
                )
        # What the LM head reads (the final hidden state) -> what the decoder embeds.
        width = self.decoder.lm.get_output_embeddings().in_features
        self.regress_head = nn.Linear(width, self.decoder.hidden_size, bias=False)
        self.set_trainable(**self._modes)

    def set_trainable(self, encoder: Any = None, adapter: Any = None, decoder: Any = None) -> None:
        """As :meth:`VisionLanguageModel.set_trainable`; ``regress_head`` (new with Emu, like the
        adapter) trains whenever the adapter or the decoder does."""
        super().set_trainable(encoder=encoder, adapter=adapter, decoder=decoder)
        head = getattr(self, "regress_head", None)  # None while the base class builds
        if head is not None:
            head.requires_grad_("full" in (self._modes.get("adapter"), self._modes.get("decoder")))

    # --- checks -----------------------------------------------------------------------------
    def check_image_spans(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        num_images: int,
        open_end: bool = False,
    ) -> None:
        """Every image in ``input_ids`` [B, L] is ``[IMG]`` + its placeholder(s) + ``[/IMG]``, and
        there is one such span per image given. ``open_end``: a row may end with ``[IMG]`` (the
        image generation is asked to draw). Padding (``attention_mask`` 0) is skipped. Raises
        :class:`InputError` naming the row and position."""
        c = self.config
        start, end, image = c.image_start_token_id, c.image_end_token_id, c.image_token_id
        per_image = c.layout.placeholders_per_image(self.tokens_per_image)
        unit = f"{per_image} {IMAGE_TOKEN} placeholder{'s' if per_image > 1 else ''} (id {image})"
        form = f"an image is {IMAGE_START} (id {start}) + {unit} + {IMAGE_END} (id {end})"
        rows = input_ids.tolist()
        masks = attention_mask.tolist() if attention_mask is not None else None
        spans = 0
        for r, row in enumerate(rows):
            real = [i for i in range(len(row)) if masks is None or masks[r][i] != 0]
            last = real[-1] if real else -1
            i = 0
            while i < len(row):
                token = row[i]
                if masks is not None and masks[r][i] == 0:
                    i += 1
                    continue
                where = f"row {r}, position {i}"
                if token == start:
                    if open_end and i == last:
                        break
                    run = 0
                    while i + 1 + run < len(row) and row[i + 1 + run] == image:
                        run += 1
                    if run != per_image:
                        raise InputError(
                            f"{IMAGE_START} at {where} is followed by {run} {IMAGE_TOKEN} placeholders: {form}"
                        )
                    close = i + 1 + run
                    if close >= len(row) or row[close] != end:
                        raise InputError(
                            f"{IMAGE_START} at {where} has no {IMAGE_END} after its placeholders: {form}"
                        )
                    spans += 1
                    i = close + 1
                    continue
                if token == end:
                    raise InputError(f"{IMAGE_END} at {where} closes no {IMAGE_START}: {form}")
                if token == image:
                    raise InputError(
                        f"{IMAGE_TOKEN} placeholder at {where} is outside {IMAGE_START} ... {IMAGE_END}: {form}"
                    )
                i += 1
        if spans != num_images:
            raise InputError(
                f"input_ids hold {spans} image{'s' * (spans != 1)} ({IMAGE_START} ... {IMAGE_END} spans) "
                f"but {num_images} image{'s' * (num_images != 1)} were given in pixel_values"
            )

    def _check_all(
        self,
        pixel_values: Any,
        input_ids: Any,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        open_end: bool = False,
    ) -> int:
        """Emu's spans first (their errors say more than a placeholder count), then the VLM's checks."""
        if isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2 and input_ids.numel():
            mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
            if mask is not None and mask.shape != input_ids.shape:
                mask = None  # the VLM's check reports it
            self.check_image_spans(input_ids, mask, _num_images(pixel_values), open_end)
        return self._check_inputs(pixel_values, input_ids, attention_mask, labels)

    # --- training -----------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **decoder_kwargs: Any,
    ) -> EmuOutput:
        """Logits over the merged text and, with ``labels`` [B, L], Emu's loss.

        Inputs as for :meth:`VisionLanguageModel.forward`, each image written ``[IMG]`` +
        placeholder(s) + ``[/IMG]``. ``text_loss`` scores ``labels`` except at ``<image>``,
        ``[/IMG]`` and (unless ``score_image_start``) ``[IMG]``; ``regression_loss`` is the mean
        squared error between ``regress_head`` of the last hidden state at ``[IMG]`` and the M
        slots and the (detached) embeddings fed at the next positions. ``hidden_states`` are
        returned when ``output_hidden_states=True`` is passed.
        """
        if input_ids is None:
            raise InputError("input_ids are required")
        num_images = self._check_all(pixel_values, input_ids, attention_mask, labels)
        want_hidden = bool(decoder_kwargs.pop("output_hidden_states", False))
        cache = decoder_kwargs.get("cache", decoder_kwargs.get("past_key_values"))
        c = self.config
        marked = None
        if labels is not None:
            is_start = input_ids == c.image_start_token_id
            marked = labels.masked_fill(input_ids == c.image_end_token_id, IGNORE_INDEX)
            marked = marked.masked_fill(is_start, _IMAGE_START_MARK)
        prepared = self._prepare(pixel_values, num_images, input_ids, attention_mask, marked, cache=cache)
        starts = None
        if prepared.labels is not None:
            starts = prepared.labels == _IMAGE_START_MARK
            prepared.labels = prepared.labels.masked_fill(
                starts, c.image_start_token_id if c.score_image_start else IGNORE_INDEX
            )
        with prepared.conditioning:
            out = self.decoder(**prepared.decoder_inputs(), output_hidden_states=True, **decoder_kwargs)
        text_loss, regression_loss, loss = out.loss, None, None
        if text_loss is not None:
            loss = c.text_loss_weight * text_loss
            if num_images:
                regression_loss = self.regression_loss(out.hidden_states[-1], prepared.inputs_embeds, starts)
                loss = loss + c.regression_loss_weight * regression_loss
        return EmuOutput(
            out.logits,
            loss,
            prepared.attention_mask,
            prepared.labels,
            kv_cache(out),
            out.hidden_states if want_hidden else None,
            text_loss,
            regression_loss,
        )

    def regression_loss(
        self, hidden: torch.Tensor, inputs_embeds: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        """The l2 loss of the next visual embedding, a scalar.

        ``hidden`` [B, L', H] the decoder's last hidden states, ``inputs_embeds`` [B, L', D] what
        it was fed, ``starts`` [B, L'] True at each ``[IMG]``. For an image whose ``[IMG]`` is at
        q, ``regress_head(hidden[q + t])`` predicts ``inputs_embeds[q + t + 1]`` for t = 0 .. M:
        the M visual embeddings, then the ``[/IMG]`` embedding (Emu's ``regress_mask`` and
        ``regress_labels``, modeling_llama.py); targets are detached.
        """
        rows, first = starts.nonzero(as_tuple=True)
        span = first[:, None] + torch.arange(self.tokens_per_image + 1, device=first.device)
        predicted = self.regress_head(hidden[rows[:, None], span])
        target = inputs_embeds[rows[:, None], span + 1].detach()
        return F.mse_loss(predicted.float(), target.float())

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_interleaved(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> EmuGeneration:
        """Text and images after the prompt, with the KV cache: returns :class:`EmuGeneration`.

        Text tokens are greedy (default) or sampled (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``generator``). A row that emits ``[IMG]``, or whose prompt ends with it,
        regresses M embeddings, each ``regress_head`` of the last hidden state fed back as the
        next input embedding, then gets ``[/IMG]`` and goes on with text. Every regressed
        embedding and the ``[/IMG]`` count in ``max_new_tokens`` (positions). A row stops at EOS
        (``eos_token_id``, default the decoder's). Batch prompts must be left-padded. Decoding
        the embeddings to pixels (Emu's diffusion decoder) is not part of vlmzoo.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
        _check_sampling(temperature, top_k, top_p)
        num_images = self._check_all(pixel_values, input_ids, attention_mask, None, open_end=True)
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise InputError(
                "generate_interleaved() needs left padding: a prompt ends in padding (attention_mask[:, -1] == 0)"
            )
        prepared = self._prepare(
            pixel_values, num_images, input_ids, attention_mask, None, max_new_tokens, None, "left"
        )
        self._check_padding_positions(prepared.attention_mask)
        c, m = self.config, self.tokens_per_image
        embeds = prepared.inputs_embeds
        b, device = embeds.shape[0], embeds.device
        mask = prepared.attention_mask
        if mask is None:
            mask = torch.ones(b, embeds.shape[1], dtype=torch.long, device=device)
        eos = self._eos_ids(eos_token_id)
        pad = self._pad_token_id()
        in_image = input_ids[:, -1] == c.image_start_token_id  # the prompt opens an image to draw
        count = torch.zeros(b, dtype=torch.long, device=device)  # embeddings of the open image so far
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        images: list[list[list[torch.Tensor]]] = [[] for _ in range(b)]
        for row in in_image.nonzero().flatten().tolist():
            images[row].append([])
        tokens, inputs, cache = [], embeds, None
        with prepared.conditioning:
            for _ in range(max_new_tokens):
                kwargs: dict[str, Any] = dict(
                    inputs_embeds=inputs, attention_mask=mask, use_cache=True, output_hidden_states=True
                )
                if cache is not None:
                    kwargs["cache"] = cache
                if self.decoder.takes_position_ids:  # as transformers' generate derives them
                    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
                    kwargs["position_ids"] = positions[:, -inputs.shape[1] :]
                out = self.decoder(**kwargs)
                cache = kv_cache(out)
                hidden = out.hidden_states[-1][:, -1]
                text = _choose(out.logits[:, -1], do_sample, temperature, top_k, top_p, generator)
                regressing = in_image & (count < m) & ~finished
                closing = in_image & (count == m) & ~finished
                token = torch.where(closing, c.image_end_token_id, text)
                token = torch.where(regressing, c.image_token_id, token)
                token = torch.where(finished, pad, token)
                regressed = self.regress_head(hidden).to(embeds.dtype)
                embedded = self.decoder.embed(
                    token.masked_fill(regressing, 0)
                )  # a placeholder is never embedded
                inputs = torch.where(regressing[:, None], regressed, embedded)[:, None]
                for row in regressing.nonzero().flatten().tolist():
                    images[row][-1].append(regressed[row])
                opens = ~in_image & ~finished & (token == c.image_start_token_id)
                for row in opens.nonzero().flatten().tolist():
                    images[row].append([])
                count = torch.where(regressing, count + 1, torch.where(opens | closing, 0, count))
                in_image = (in_image & ~closing) | opens
                is_text = ~regressing & ~closing & ~opens
                finished = finished | (is_text & torch.isin(token, eos))
                tokens.append(token)
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
                if bool(finished.all()):
                    break
        return EmuGeneration(
            torch.stack(tokens, dim=1),
            [
                [torch.stack(image) if image else embeds.new_zeros(0, embeds.shape[-1]) for image in row]
                for row in images
            ],
        )

    def _eos_ids(self, eos_token_id: int | list[int] | None) -> torch.Tensor:
        """The EOS ids as a tensor (the argument, else the decoder's config; empty = never stop)."""
        if eos_token_id is None:
            eos_token_id = getattr(self.decoder.lm.config, "eos_token_id", None)
        ids = (
            []
            if eos_token_id is None
            else [eos_token_id]
            if isinstance(eos_token_id, int)
            else list(eos_token_id)
        )
        return torch.tensor(ids, dtype=torch.long, device=self.decoder.embed_tokens.weight.device)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise InputError(f"temperature={temperature!r} must be a positive number")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise InputError(f"top_k={top_k!r} must be a positive int or None")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1
    ):
        raise InputError(f"top_p={top_p!r} must be in (0, 1] or None")


def _choose(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """[B, V] logits -> [B] next tokens: the argmax, or a sample after temperature, top-k and
    top-p (nucleus: the smallest set of tokens whose probability reaches ``top_p``) filtering."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)  # mass of better tokens
        drop = (before >= top_p).scatter(1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


# --- presets --------------------------------------------------------------------------------
EMU_PRESETS: dict[str, tuple[EmuConfig, str]] = {
    "emu-14b": (
        EmuConfig(),
        "Emu-14B: EVA-CLIP ViT-g/14 (40 blocks) + Causal Transformer (32 embeddings) + LLaMA-13B",
    ),
    "tiny-emu": (
        EmuConfig(
            encoder=EVA_PRESETS["eva-vit-tiny"].replace(final_norm=False, feature_norm=False),
            adapter=CAUSAL_FORMER_PRESETS["tiny-causal-former"][0],
            decoder=DECODER_PRESETS["tiny-llama"],
            image_token_id=511,
            image_start_token_id=509,
            image_end_token_id=510,
        ),
        "tiny Emu for tests and CPU demos",
    ),
}

for _name, (_cfg, _description) in EMU_PRESETS.items():
    register(_name, "model", _cfg, EmuModel, _description)
