"""VisionLanguageModel: any vision encoder x any adapter x any Hugging Face causal LM.

    pixel_values ─► encoder ─► tokens [n_img, N, C_enc] ─► adapter ─┐
    input_ids (with image placeholders) ─► decoder embeddings ──────┴► decoder ─► logits

A prefix adapter's M embeddings per image replace that image's placeholder in the text (LLaVA,
BLIP-2, Vary); a cross-attention adapter instead conditions gated layers inside the decoder and
the placeholder stays a real token (Flamingo). Images are given flat, ``pixel_values``
[n_img, C, H, W], in reading order of their placeholders across the batch, so samples may hold
several images or none.

Placeholders are counted against images before any compute, and an image span is never cut:
mismatches raise :class:`InputError` with both counts (the "image features and image tokens do
not match" failure of other VLM code bases, DESIGN item 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder
from vlmzoo.errors import ConfigError, InputError, require
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import architecture_for, build, register_architecture
from vlmzoo.weights.hub import HubMixin

Trainable = Literal["frozen", "full"]

IGNORE_INDEX = -100


@dataclass
class VLMConfig(Config):
    """A VLM from three component configs.

    ``image_token_id`` marks images in ``input_ids``. With ``expand_image_tokens`` (default) each
    image is ONE placeholder that the model expands to the adapter's M tokens; otherwise the text
    already holds M placeholders per image (transformers' processors do this). A negative id
    (LLaVA's original -200) is allowed for prefix adapters: placeholders are never embedded.
    ``max_length`` bounds the expanded sequence (an error, never a cut through an image).
    """

    kind = "model"

    encoder: Config = field(default_factory=Config)
    adapter: Config = field(default_factory=Config)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_token_id: int = -200
    expand_image_tokens: bool = True
    max_length: int | None = None
    train_encoder: Trainable = "frozen"
    train_adapter: Trainable = "full"
    train_decoder: Trainable = "frozen"

    def validate(self) -> None:
        if type(self.encoder) is Config or type(self.adapter) is Config:
            self._fail("encoder", "encoder and adapter must be concrete component configs")
        if self.max_length is not None:
            self._check_positive("max_length")


@dataclass
class VLMOutput:
    """``logits`` [B, L', vocab] over the merged sequence (L' >= L after expansion), ``loss``
    when labels were given, and the merged ``attention_mask`` / ``labels`` [B, L']."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    cache: Any = None


def _num_images(pixel_values: Any) -> int:
    """Images in ``pixel_values``: a [n, C, H, W] tensor, or one such tensor per tower of a fused
    encoder (a tuple in tower order or a dict by tower name), all with the same n."""
    if pixel_values is None:
        return 0
    if isinstance(pixel_values, torch.Tensor):
        return pixel_values.shape[0]
    tensors = list(pixel_values.values() if isinstance(pixel_values, dict) else pixel_values)
    counts = {t.shape[0] for t in tensors}
    if len(counts) != 1:
        raise InputError(f"per-tower pixel_values hold different numbers of images: {sorted(counts)}")
    return counts.pop()


def kv_cache(output: Any) -> Any:
    """The KV cache of a transformers output (``cache`` in transformers >= 5.2, else ``past_key_values``)."""
    for name in ("cache", "past_key_values"):
        if name in output:
            return output[name]
    return None


@register_architecture
class VisionLanguageModel(BlockStack, HubMixin, nn.Module):
    """``encoder`` + ``adapter`` + ``decoder`` (an :class:`HFDecoder`), composed by config."""

    config_class = VLMConfig

    def __init__(self, config: VLMConfig):
        super().__init__()
        encoder = build(config.encoder)
        decoder = HFDecoder(config.decoder)
        adapter_config = config.adapter
        # A prefix adapter writes into the embedding space; cross-attention into the layers' width.
        cross = architecture_for(config.adapter).injection == "cross_attention"
        out_width = decoder.layer_width if cross else decoder.hidden_size
        fill = {
            k: v
            for k, v in (("in_dim", encoder.out_dim), ("out_dim", out_width))
            if hasattr(adapter_config, k) and getattr(adapter_config, k) is None
        }
        if fill:
            adapter_config = adapter_config.replace(**fill)
            config = config.replace(adapter=adapter_config)
        self.config = config
        self.encoder, self.decoder = encoder, decoder
        self.adapter = build(adapter_config)
        self._check_dims()
        if self.injection == "cross_attention":
            if not 0 <= config.image_token_id < decoder.vocab_size:
                raise ConfigError(
                    f"VLMConfig.image_token_id={config.image_token_id}: cross-attention keeps the "
                    f"placeholder in the text, so it must be a token id in [0, {decoder.vocab_size})"
                )
            self.adapter.attach(decoder)
        self.set_trainable(
            encoder=config.train_encoder, adapter=config.train_adapter, decoder=config.train_decoder
        )

    @property
    def injection(self) -> str:
        return self.adapter.injection

    def _check_dims(self) -> None:
        a = self.adapter
        if getattr(a.config, "in_dim", self.encoder.out_dim) != self.encoder.out_dim:
            raise ConfigError(f"adapter in_dim={a.config.in_dim} != encoder out_dim={self.encoder.out_dim}")
        if self.injection == "prefix" and a.out_dim != self.decoder.hidden_size:
            raise ConfigError(
                f"adapter out_dim={a.out_dim} != decoder hidden size={self.decoder.hidden_size}"
            )

    # --- training setup ---------------------------------------------------------------------
    def set_trainable(
        self,
        encoder: Trainable | None = None,
        adapter: Trainable | None = None,
        decoder: Trainable | None = None,
    ) -> None:
        """Freeze (``"frozen"``) or unfreeze (``"full"``) each part by ``requires_grad`` only.

        Nothing runs under ``no_grad``: a frozen part simply builds no graph, and unfreezing it
        later works (DESIGN item 6). Gated cross-attention blocks are the adapter's parameters
        (they run through hooks on the decoder layers), so ``decoder="frozen"`` leaves them trainable.
        """
        for part, mode in (("encoder", encoder), ("decoder", decoder), ("adapter", adapter)):
            if mode is None:
                continue
            if mode not in ("frozen", "full"):
                raise ConfigError(f"trainable mode for {part} must be 'frozen' or 'full', got {mode!r}")
            for p in getattr(self, part).parameters():
                p.requires_grad_(mode == "full")

    def stack_parts(self) -> list[BlockStack]:
        """Encoder, adapter, decoder: ``wrap_units()`` is their blocks in that order (for FSDP2
        ``fully_shard`` one unit at a time before the root) and ``set_grad_checkpointing`` reaches
        all three."""
        return [self.encoder, self.adapter, self.decoder]

    # --- images -> embeddings -------------------------------------------------------------------
    @property
    def tokens_per_image(self) -> int:
        """M: the embeddings one image occupies in the text (1 placeholder for cross-attention)."""
        if self.injection != "prefix":
            return 1
        return self.adapter.num_tokens(self.encoder.num_tokens())

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n_img, C, H, W] -> [n_img, M, hidden] adapter outputs (prefix) or visual tokens."""
        tokens = self.encoder(pixel_values).tokens
        return self.adapter(tokens) if self.injection == "prefix" else tokens

    def _check_inputs(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> int:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise InputError(
                f"input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', type(input_ids))}"
            )
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise InputError(f"input_ids hold no tokens (shape {tuple(input_ids.shape)})")
        for name, t in (("attention_mask", attention_mask), ("labels", labels)):
            if t is not None and t.shape != input_ids.shape:
                raise InputError(f"{name} shape {tuple(t.shape)} != input_ids shape {tuple(input_ids.shape)}")
        device = self.decoder.embed_tokens.weight.device
        if input_ids.device != device:
            raise InputError(
                f"input_ids are on {input_ids.device} but the decoder's weights are on {device}; "
                "move one of them with .to()"
            )
        # Value checks go through require(): exact errors eagerly, graph assertions when compiled.
        image_id, vocab = self.config.image_token_id, self.decoder.vocab_size
        is_image = input_ids == image_id
        text = input_ids.masked_fill(is_image, 0)
        lowest, highest = text.min(), text.max()

        def range_error() -> str:
            ids = input_ids[~is_image]
            return (
                f"token ids must be in [0, {vocab}) (the decoder's vocabulary) or the image placeholder "
                f"{image_id}, got range [{int(ids.min())}, {int(ids.max())}]"
            )

        require((lowest >= 0) & (highest < vocab), range_error, f"token ids outside [0, {vocab})")
        placeholders = is_image.sum()
        num_images = _num_images(pixel_values)
        per_image = (
            1 if self.config.expand_image_tokens or self.injection != "prefix" else self.tokens_per_image
        )

        def count_error() -> str:
            unit = "placeholder per image" if per_image == 1 else f"placeholders per image ({per_image} each)"
            return (
                f"input_ids hold {int(placeholders)} image placeholders (id {image_id}) but "
                f"{num_images} images were given; expected {per_image} {unit}"
            )

        require(
            placeholders == num_images * per_image,
            count_error,
            f"input_ids do not hold {per_image} image placeholder(s) (id {image_id}) per image given",
        )
        return num_images

    def _check_length(self, length: int, new_tokens: int = 0) -> None:
        """Refuse a (merged) sequence longer than ``max_length`` or than the decoder's learned
        position table (GPT-2, OPT), which would otherwise fail deep inside with an IndexError."""
        total = length + new_tokens
        plus = f" + {new_tokens} new tokens" if new_tokens else ""
        if self.config.max_length is not None and total > self.config.max_length:
            raise InputError(f"sequence of {length} tokens{plus} > max_length={self.config.max_length}")
        limit = self.decoder.max_positions
        if limit is not None and total > limit:
            raise InputError(
                f"sequence of {length} tokens{plus} exceeds the {limit} learned positions of the "
                f"{self.decoder.lm.config.model_type} decoder; shorten the text or use fewer images"
            )

    def merge(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice image embeddings into the text: returns (inputs_embeds, attention_mask, labels).

        ``features`` [n_img, M, hidden] in placeholder order. With expansion, each placeholder
        becomes M positions; padding stays on the side it was on (left padding is kept for
        generation). Image positions get label ``IGNORE_INDEX``.
        """
        b, length = input_ids.shape
        image_id = self.config.image_token_id
        is_image = input_ids == image_id
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeds = self.decoder.embed(input_ids.masked_fill(is_image, 0))
        if features is None:
            return text_embeds, attention_mask, labels
        features = features.to(text_embeds.dtype)
        m = features.shape[1]
        if not self.config.expand_image_tokens:
            embeds = text_embeds.masked_scatter(is_image[..., None], features.reshape(-1, features.shape[-1]))
            return (
                embeds,
                attention_mask,
                None if labels is None else labels.masked_fill(is_image, IGNORE_INDEX),
            )
        width = torch.where(is_image, m, 1)
        start = width.cumsum(dim=1) - width  # first merged position of each input token
        total, offset = self._merged_length(is_image, width, attention_mask, features.shape[0], m)
        if self.config.max_length is not None and total > self.config.max_length:
            raise InputError(
                f"with {m} tokens per image the sequence grows to {total} > max_length="
                f"{self.config.max_length}; truncating would cut an image span, shorten the text"
            )
        # Data movement by scatters of static shape (no boolean indexing), so that the merge traces
        # into one torch.compile graph. Every input token lands at `position`; a placeholder's slot
        # is then overwritten by its image's M embeddings, in placeholder (row-major) order.
        position = start + offset[:, None]
        hidden = text_embeds.shape[-1]
        embeds = text_embeds.new_zeros(b, total, hidden)
        embeds = embeds.scatter(1, position[..., None].expand(b, length, hidden), text_embeds)
        spans = torch.zeros(b, total + 1, dtype=torch.long, device=input_ids.device)
        spans = spans.scatter_add(1, position, is_image.long())  # +1 where an image starts
        spans = spans.scatter_add(1, position + width - 1 + is_image.long(), -is_image.long())  # -1 after it
        image_slot = spans.cumsum(dim=1)[:, :total] > 0
        embeds = embeds.masked_scatter(image_slot[..., None], features)
        mask = (
            attention_mask.new_zeros(b, total).scatter(1, position, attention_mask).masked_fill(image_slot, 1)
        )
        new_labels = None
        if labels is not None:
            new_labels = labels.new_full((b, total), IGNORE_INDEX).scatter(1, position, labels)
            new_labels = new_labels.masked_fill(image_slot, IGNORE_INDEX)
        return embeds, mask, new_labels

    def _merged_length(
        self,
        is_image: torch.Tensor,
        width: torch.Tensor,
        attention_mask: torch.Tensor,
        num_images: int,
        m: int,
    ) -> tuple[int, torch.Tensor]:
        """(merged length, per-row offset [B]) of the expanded sequence.

        Eagerly: the longest row, and left-padded rows shifted right so that their padding stays on
        the left (as generation needs). While ``torch.compile`` traces, the length must not depend on
        where the placeholders are, so every sample must hold the same number of images (asserted
        inside the graph): then every row has the same length and none is shifted.
        """
        b, length = is_image.shape
        new_len = width.sum(dim=1)
        if torch.compiler.is_compiling():
            per_row = num_images // b
            torch._assert_async(
                (is_image.sum(dim=1) == per_row).all() & (num_images % b == 0),
                "under torch.compile with expand_image_tokens=True every sample must hold the same "
                "number of images (or use expand_image_tokens=False)",
            )
            return length + per_row * (m - 1), torch.zeros_like(new_len)
        total = int(new_len.max())
        left_padded = bool((attention_mask[:, 0] == 0).any() and (attention_mask[:, -1] == 1).all())
        return total, (total - new_len) if left_padded else torch.zeros_like(new_len)

    # --- forward and generation -------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **decoder_kwargs: Any,
    ) -> VLMOutput:
        """Loss (when ``labels`` [B, L] are given, -100 = ignore) and logits over the merged text.

        ``pixel_values`` [n_img, C, H, W] (a tuple/dict of them for a two-tower encoder);
        ``input_ids`` [B, L] with one placeholder per image (or
        M with ``expand_image_tokens=False``); ``attention_mask`` [B, L] 1 = token, 0 = padding.
        """
        if input_ids is None:
            raise InputError("input_ids are required")
        num_images = self._check_inputs(pixel_values, input_ids, attention_mask, labels)
        if self.injection == "cross_attention":
            self._check_length(input_ids.shape[1])
            self.adapter.condition(
                self.image_features(pixel_values) if num_images else None,
                input_ids,
                self.config.image_token_id,
            )
            if labels is not None:  # the <image> token itself is not a prediction target (OpenFlamingo)
                labels = labels.masked_fill(input_ids == self.config.image_token_id, IGNORE_INDEX)
            out = self.decoder(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **decoder_kwargs
            )
            return VLMOutput(out.logits, out.loss, attention_mask, labels, kv_cache(out))
        features = self.image_features(pixel_values) if num_images else None
        embeds, mask, merged_labels = self.merge(input_ids, features, attention_mask, labels)
        self._check_length(embeds.shape[1])
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, labels=merged_labels, **decoder_kwargs)
        return VLMOutput(out.logits, out.loss, mask, merged_labels, kv_cache(out))

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache: returns new tokens [B, T].

        Batch prompts must be left-padded (``attention_mask`` 0 on the left). Image features are
        computed once, before decoding starts.
        """
        num_images = self._check_inputs(pixel_values, input_ids, attention_mask, None)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise InputError(
                "generate() needs left padding: a prompt ends in padding (attention_mask[:, -1] == 0)"
            )
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self._pad_token_id())
        if self.injection == "cross_attention":
            self._check_length(input_ids.shape[1], max_new_tokens)
            self.adapter.condition(
                self.image_features(pixel_values) if num_images else None,
                input_ids,
                self.config.image_token_id,
            )
            out = self.decoder.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )
            return out[:, input_ids.shape[1] :]
        features = self.image_features(pixel_values) if num_images else None
        embeds, mask, _ = self.merge(input_ids, features, attention_mask)
        self._check_length(embeds.shape[1], max_new_tokens)
        return self.decoder.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, **generate_kwargs
        )

    def _pad_token_id(self) -> int:
        cfg = self.decoder.lm.config
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(cfg, name, None)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return 0
