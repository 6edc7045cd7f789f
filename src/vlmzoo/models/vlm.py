"""VisionLanguageModel: any vision encoder x any adapter x any Hugging Face causal LM.

    pixel_values ─► encoder ─► tokens [n_img, N, C_enc] ─┐
    input_ids (with image placeholders) ─────────────────┴► adapter.prepare ─► decoder ─► logits
                                                             (decoder inputs + conditioning)

How images condition the decoder is the adapter's business (:mod:`vlmzoo.adapters.base`): a prefix
adapter's M embeddings per image replace that image's placeholder in the text (LLaVA, BLIP-2,
Vary); Flamingo's adapter conditions gated layers inside the decoder and the placeholder stays a
real token. The model runs one path for every adapter: check the inputs, encode the images,
``adapter.prepare``, check the length, run the decoder (or ``generate``) inside the prepared
conditioning. Images are given flat, ``pixel_values`` [n_img, C, H, W], in reading order of their
placeholders across the batch, so samples may hold several images or none. An any-resolution
adapter (LLaVA-NeXT, OneVision) also takes ``image_sizes`` [n_img, 2]: ``pixel_values`` then hold
each image's views (tiles + base) flat, and each image takes as many positions as its size asks;
the adapter answers both questions (``count_images``, ``image_positions``), so images of different
sizes, any number per sample, batch together.

Placeholders are counted against images before any compute, and an image span is never cut:
mismatches raise :class:`InputError` with both counts (transformers' modeling_llava.py finds the
same mistake only after the encoder ran: "Image features and image tokens do not match").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from vlmzoo.adapters.base import Adapter, PaddingSide, Prepared, TextLayout
from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX, DecoderConfig, HFDecoder, cache_length, kv_cache
from vlmzoo.errors import ConfigError, InputError, require
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import architecture_for, build, register_architecture
from vlmzoo.weights.hub import HubMixin

Trainable = Literal["frozen", "full"]

__all__ = ["IGNORE_INDEX", "VLMConfig", "VLMOutput", "VisionLanguageModel", "kv_cache"]


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

    @property
    def layout(self) -> TextLayout:
        """How images sit in this model's text (what the adapter is bound with)."""
        return TextLayout(self.image_token_id, self.expand_image_tokens, self.max_length)


@dataclass
class VLMOutput:
    """``logits`` [B, L', vocab] over the merged sequence (L' >= L after expansion), ``loss``
    when labels were given, and the merged ``attention_mask`` / ``labels`` [B, L']. With
    ``output_hidden_states=True``, ``hidden_states`` are the decoder's (embeddings, then each
    layer; each [B, L', D]) over the merged sequence: what heads on top of the decoder read
    (OneChart's number head, Emu's regression head)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


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


def _cache_of(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a decoder call's keyword arguments (either transformers name)."""
    return kwargs.get("cache", kwargs.get("past_key_values"))


@register_architecture
class VisionLanguageModel(BlockStack, HubMixin, nn.Module):
    """``encoder`` + ``adapter`` + ``decoder`` (an :class:`HFDecoder`), composed by config."""

    config_class = VLMConfig

    def __init__(self, config: VLMConfig):
        super().__init__()
        encoder = build(config.encoder)
        decoder = HFDecoder(config.decoder)
        if decoder.config != config.decoder:  # loaded from a path: keep its architecture, not the path
            config = config.replace(decoder=decoder.config)
        kind = architecture_for(config.adapter)
        if not issubclass(kind, Adapter):
            raise ConfigError(
                f"VLMConfig.adapter={type(config.adapter).__name__}: {kind.__name__} is not an adapter "
                "(a subclass of vlmzoo.adapters.Adapter)"
            )
        adapter_config = kind.fit_config(config.adapter, encoder.out_dim, decoder)
        if adapter_config is not config.adapter:
            config = config.replace(adapter=adapter_config)
        self.config = config
        self.encoder, self.decoder = encoder, decoder
        self.adapter: Adapter = build(adapter_config)
        if self.adapter.in_dim != encoder.out_dim:
            raise ConfigError(f"adapter in_dim={self.adapter.in_dim} != encoder out_dim={encoder.out_dim}")
        self.adapter.bind(decoder, config.layout)
        self.set_trainable(
            encoder=config.train_encoder, adapter=config.train_adapter, decoder=config.train_decoder
        )

    # --- training setup ---------------------------------------------------------------------
    def set_trainable(
        self,
        encoder: Trainable | None = None,
        adapter: Trainable | None = None,
        decoder: Trainable | None = None,
    ) -> None:
        """Freeze (``"frozen"``) or unfreeze (``"full"``) each part by ``requires_grad`` only, and
        record the modes in ``config.train_*`` (so that a saved model reloads with them).

        Nothing runs under ``no_grad``: a frozen part simply builds no graph, and unfreezing it
        later works (LLaVA's ``CLIPVisionTower.forward`` runs under ``torch.no_grad``, in
        llava/model/multimodal_encoder/clip_encoder.py, so its tower cannot be unfrozen by flags).
        Gated cross-attention blocks are the adapter's parameters (they run through hooks on the
        decoder layers), so ``decoder="frozen"`` leaves them trainable. The decoder modules the
        adapter claims (:meth:`~vlmzoo.adapters.base.Adapter.decoder_modules`: an encoder-decoder's
        cross-attention layers) belong to both: they train when the adapter or the decoder does.
        """
        modes = getattr(self, "_modes", {})
        for part, mode in (("encoder", encoder), ("decoder", decoder), ("adapter", adapter)):
            if mode is None:
                continue
            if mode not in ("frozen", "full"):
                raise ConfigError(f"trainable mode for {part} must be 'frozen' or 'full', got {mode!r}")
            for p in getattr(self, part).parameters():
                p.requires_grad_(mode == "full")
            modes[part] = mode
        self._modes = modes
        # The config says what the model is: a save after set_trainable reloads with the same parts
        # frozen (VLMConfig.train_*), and summary()/the load report read it from there.
        self.config = self.config.replace(**{f"train_{part}": mode for part, mode in modes.items()})
        shared = "full" in (modes.get("adapter"), modes.get("decoder"))
        for module in self.adapter.decoder_modules(self.decoder):
            for p in module.parameters():
                p.requires_grad_(shared)

    def resize_vocab(self, size: int) -> None:
        """The decoder's vocabulary grown (or cut) to ``size`` tokens (:meth:`HFDecoder.resize_vocab`),
        e.g. after adding a fine-tune's special tokens to the tokenizer; the config follows."""
        self.decoder.resize_vocab(size)
        self.config = self.config.replace(decoder=self.decoder.config)
        self.set_trainable(**{part: mode for part, mode in self._modes.items()})  # new rows too

    def stack_parts(self) -> list[BlockStack]:
        """Encoder, adapter, decoder: ``wrap_units()`` is their blocks in that order (for FSDP2
        ``fully_shard`` one unit at a time before the root) and ``set_grad_checkpointing`` reaches
        all three."""
        return [self.encoder, self.adapter, self.decoder]

    # --- images ---------------------------------------------------------------------------------
    @property
    def tokens_per_image(self) -> int:
        """Positions one image takes in the decoder's sequence: the adapter's M embeddings for a
        prefix adapter, 1 (its ``<image>`` token) for Flamingo."""
        return self.adapter.tokens_per_image(self.encoder.num_tokens())

    def image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """[n_img, C, H, W] -> [n_img, M, D]: what the adapter makes of the images before the
        decoder (the spliced embeddings of a prefix adapter, Flamingo's resampled latents). With
        ``image_sizes`` (any-resolution tiling: ``pixel_values`` are every image's views), one
        [M_i, D] per image."""
        tokens = self.encoder(pixel_values).tokens
        if image_sizes is None:
            return self.adapter.visual_features(tokens)
        self.adapter.count_images(_num_images(pixel_values), image_sizes)
        return self.adapter.visual_features(tokens, image_sizes)

    # --- checks -----------------------------------------------------------------------------
    def _check_inputs(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        image_sizes: torch.Tensor | None = None,
    ) -> int:
        """Shapes, devices and values of one call's inputs; returns the number of images."""
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
        self._check_device(input_ids)
        # Value checks go through require(): exact errors eagerly, graph assertions when compiled.
        layout, vocab = self.config.layout, self.decoder.vocab_size
        image_id = layout.image_token_id
        is_image = input_ids == image_id
        text = input_ids.masked_fill(is_image, 0)
        lowest, highest = text.min(), text.max()

        def convention(per_image: int | None = None) -> str:
            """The model's placeholder convention, in words (for the two messages below)."""
            m = per_image or self.tokens_per_image
            kind = "a sentinel outside the vocabulary" if image_id < 0 else "a vocabulary id"
            if layout.expand_image_tokens:
                return f"{kind}, one placeholder per image that the model expands to {m}"
            return f"{kind}, {m} placeholders per image written out, as transformers' LlavaProcessor does"

        both = (
            "the two conventions are one placeholder per image expanded by the model (LLaVA's original "
            "-200: expand_image_tokens=True) and M placeholders per image written out (a real "
            "vocabulary id, as transformers' LlavaProcessor writes: expand_image_tokens=False)"
        )

        def range_error() -> str:
            ids = input_ids[~is_image]
            message = (
                f"token ids must be in [0, {vocab}) (the decoder's vocabulary) or the image placeholder "
                f"{image_id}, got range [{int(ids.min())}, {int(ids.max())}]"
            )
            negative = ids[ids < 0]
            if negative.numel():  # a sentinel (LLaVA's -200) the model does not use
                found = int(negative[0])
                rebuild = f"build the VLM with image_token_id={found}" + (
                    "" if layout.expand_image_tokens else " and expand_image_tokens=True"
                )
                return (
                    f"{message}: found id {found}, the model's placeholder is {image_id} ({convention()}); "
                    f"{both}. Fix: bind the processor to the model with processor.for_model(model), which "
                    f"writes {image_id}, or {rebuild} to read {found}"
                )
            beyond = ids[ids >= vocab]
            if beyond.numel():  # perhaps a real image id added to a tokenizer but not to the model
                found = int(beyond[0])
                return (
                    f"{message}: found id {found}, beyond the vocabulary; the model's placeholder is "
                    f"{image_id} ({convention()}). If {found} is the tokenizer's image token, bind the "
                    f"processor with processor.for_model(model) (it writes {image_id}), or build the VLM "
                    f"with image_token_id={found} and grow the decoder with model.resize_vocab(len(tokenizer))"
                )
            return message

        require((lowest >= 0) & (highest < vocab), range_error, f"token ids outside [0, {vocab})")
        if attention_mask is not None:
            _check_attention_mask(attention_mask)
        if labels is not None:
            _check_labels(labels, is_image, vocab)
        placeholders = is_image.sum()
        # The adapter says how many images the inputs hold and what each costs (one input and M
        # positions per image for every kind but any-resolution tiling, whose images have sizes).
        num_images = self.adapter.count_images(_num_images(pixel_values), image_sizes)
        positions = self.adapter.image_positions(self.encoder.num_tokens(), num_images, image_sizes)
        wanted = [layout.placeholders_per_image(p) for p in positions]
        expected = sum(wanted)
        uniform = len(set(wanted)) <= 1
        per_image = wanted[0] if wanted else layout.placeholders_per_image(self.tokens_per_image)

        def count_error() -> str:
            found, bind = int(placeholders), "bind the processor to the model with processor.for_model(model)"
            if not uniform:
                return (
                    f"input_ids hold {found} image placeholders (id {image_id}) but the "
                    f"{num_images} images given take {expected} ({wanted} per image, from image_sizes); "
                    f"the model takes each image's placeholders written out; {bind}, which writes them"
                )
            unit = "placeholder per image" if per_image == 1 else f"placeholders per image ({per_image} each)"
            message = (
                f"input_ids hold {found} image placeholders (id {image_id}) but "
                f"{num_images} images were given; expected {per_image} {unit}"
            )
            m = positions[0] if positions else self.tokens_per_image
            if num_images and found == num_images * m and per_image == 1 and m > 1:
                return (
                    f"{message}: found {m} placeholders per image, the model expands one ({convention(m)}); "
                    f"{both}. Fix: {bind} (one per image), or build the VLM with expand_image_tokens=False "
                    "to read them written out"
                )
            if num_images and found == num_images and per_image > 1:
                return (
                    f"{message}: found one placeholder per image, the model expects {per_image} written out "
                    f"({convention(m)}); {both}. Fix: {bind} (it writes {per_image} per image), or build "
                    "the VLM with expand_image_tokens=True to expand one"
                )
            if num_images and found == 0:
                return (
                    f"{message}: found no id {image_id} ({convention(m)}). If the ids mark images with "
                    "another id (the tokenizer's '<image>' where the model uses LLaVA's -200, or the other "
                    f"way round), {bind}, or build the VLM with image_token_id=<that id>; else add one "
                    "placeholder per image to the prompt"
                )
            return f"{message} ({convention(m)}); {both}. Fix: {bind}, which writes {per_image} per image"

        summary = (
            f"input_ids do not hold {per_image} image placeholder(s) (id {image_id}) per image given"
            if uniform
            else f"input_ids do not hold the {expected} image placeholders (id {image_id}) image_sizes ask for"
        )
        require(placeholders == expected, count_error, summary)
        return num_images

    def _check_device(self, input_ids: torch.Tensor) -> None:
        """A model without weights (on the meta device) or inputs on another device than the weights."""
        if input_ids.device.type != "meta":
            for name in ("encoder", "adapter", "decoder"):
                weight = next(getattr(self, name).parameters(), None)
                if weight is not None and weight.is_meta:
                    raise InputError(
                        f"the model's {name} is on the meta device: its weights have shapes but no values "
                        "(it was built under torch.device('meta'), as size summaries do). Build it on a real "
                        "device or load weights first: vlmzoo.load(path), or model.to_empty(device='cpu') "
                        "then load_state_dict(...)"
                    )
        device = self.decoder.embed_tokens.weight.device
        if input_ids.device != device:
            raise InputError(
                f"input_ids are on {input_ids.device} but the decoder's weights are on {device}; "
                "move one of them with .to()"
            )

    def _check_length(self, length: int, new_tokens: int = 0, cached: int = 0) -> None:
        """Refuse a (merged) sequence longer than ``max_length`` or than the decoder's learned
        position table (GPT-2, OPT), which would otherwise fail deep inside with an IndexError.
        ``cached`` tokens already in a KV cache and ``new_tokens`` to generate count too."""
        total = cached + length + new_tokens
        extra = (f" + {cached} in the KV cache" if cached else "") + (
            f" + {new_tokens} new tokens" if new_tokens else ""
        )
        if self.config.max_length is not None and total > self.config.max_length:
            raise InputError(f"sequence of {length} tokens{extra} > max_length={self.config.max_length}")
        limit = self.decoder.max_positions
        if limit is not None and total > limit:
            raise InputError(
                f"sequence of {length} tokens{extra} exceeds the {limit} learned positions of the "
                f"{self.decoder.lm.config.model_type} decoder; shorten the text, use fewer images or "
                "generate fewer tokens"
            )

    # --- one path for every adapter -----------------------------------------------------------
    def _prepare(
        self,
        pixel_values: Any,
        num_images: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        new_tokens: int = 0,
        cache: Any = None,
        padding_side: PaddingSide | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> Prepared:
        """Encode the images, let the adapter prepare the decoder's inputs, check their length."""
        tokens = self.encoder(pixel_values).tokens if num_images else None
        options: dict[str, Any] = {} if padding_side is None else {"padding_side": padding_side}
        if image_sizes is not None:  # only kinds whose images have sizes take them (count_images)
            options["image_sizes"] = image_sizes
        prepared = self.adapter.prepare(self.decoder, input_ids, tokens, attention_mask, labels, **options)
        self._check_length(prepared.length, new_tokens, cache_length(cache))
        return prepared

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **decoder_kwargs: Any,
    ) -> VLMOutput:
        """Loss (when ``labels`` [B, L] are given, -100 = ignore) and logits over the merged text.

        ``pixel_values`` [n_img, C, H, W] (a tuple/dict of them for a two-tower encoder);
        ``input_ids`` [B, L] with one placeholder per image (or
        M with ``expand_image_tokens=False``); ``attention_mask`` [B, L] 1 = token, 0 = padding
        (integers or floats; bool masks are refused, see docs/errors.md). ``decoder_kwargs`` go to
        the decoder (``cache`` to continue a KV cache, ``use_cache``, ``output_hidden_states``).
        ``image_sizes`` [n_img, 2] (height, width) for an any-resolution adapter: then
        ``pixel_values`` hold every image's views (tiles + base) flat, in placeholder order, and
        each image takes the positions its size asks (:mod:`vlmzoo.adapters.anyres`).
        """
        if input_ids is None:
            raise InputError("input_ids are required")
        num_images = self._check_inputs(pixel_values, input_ids, attention_mask, labels, image_sizes)
        cache = _cache_of(decoder_kwargs)
        prepared = self._prepare(
            pixel_values, num_images, input_ids, attention_mask, labels, cache=cache, image_sizes=image_sizes
        )
        with prepared.conditioning:
            out = self.decoder(**prepared.decoder_inputs(), **decoder_kwargs)
        return VLMOutput(
            out.logits,
            out.loss,
            prepared.attention_mask,
            prepared.labels,
            kv_cache(out),
            getattr(out, "hidden_states", None),
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        image_sizes: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache: returns new tokens [B, T].

        Batch prompts must be left-padded (``attention_mask`` 0 on the left). Image features are
        computed once, before decoding starts; every decoding step runs in the same conditioning.
        ``image_sizes`` as in :meth:`forward`.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
        num_images = self._check_inputs(pixel_values, input_ids, attention_mask, None, image_sizes)
        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise InputError(
                "generate() needs left padding: a prompt ends in padding (attention_mask[:, -1] == 0)"
            )
        cache = _cache_of(generate_kwargs)
        prepared = self._prepare(
            pixel_values,
            num_images,
            input_ids,
            attention_mask,
            None,
            max_new_tokens,
            cache,
            "left",
            image_sizes,
        )
        self._check_padding_positions(prepared.attention_mask)
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self._pad_token_id())
        with prepared.conditioning:
            return self.decoder.generate(
                **prepared.decoder_inputs(), max_new_tokens=max_new_tokens, **generate_kwargs
            )

    def _check_padding_positions(self, mask: torch.Tensor | None) -> None:
        """Refuse left padding for a decoder that numbers positions from the first column and takes
        no ``position_ids`` (mBART, BART: their learned positions would shift with the padding, so
        a padded row would not get the tokens it gets alone; transformers' generate has no way
        around it either)."""
        if mask is None or self.decoder.takes_position_ids or bool(mask.all()):
            return
        raise InputError(
            f"the {self.decoder.lm.config.model_type} decoder takes no position_ids, so left padding "
            "would shift its learned positions and change what a padded row generates; generate rows "
            "of one prompt length together (DocumentProcessor.read groups them), or one at a time"
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


# --- value checks of the text inputs -------------------------------------------------------------
def _check_attention_mask(mask: torch.Tensor) -> None:
    """1 = token, 0 = padding, and every sample has a token: other masks mean something else.

    Bool masks are refused rather than read as 0/1: torch.nn's ``key_padding_mask`` uses True for
    *padding*, transformers' tokenizers 1 for tokens, so a bool mask's polarity is a guess.
    Additive masks (0 = attend, a large negative number = masked) hold values other than 0/1, or,
    without padding, are all 0: both are refused with the conversion to use.
    """
    if mask.dtype == torch.bool:
        raise InputError(
            "attention_mask is a bool tensor, whose meaning is ambiguous (transformers reads 1 as a "
            "token, torch.nn's key_padding_mask reads True as padding): pass mask.long() if True marks "
            "tokens, or (~mask).long() if True marks padding"
        )
    if mask.dtype.is_complex:
        raise InputError(f"attention_mask must hold 0 (padding) and 1 (token), got a {mask.dtype} tensor")
    binary = (mask == 0) | (mask == 1)

    def values_error() -> str:
        other = mask[~binary]
        shown = ", ".join(f"{v:g}" for v in torch.unique(other)[:4].tolist())
        hint = (
            "it looks additive (0 = attend, negative = masked): pass (mask == 0).long()"
            if bool((mask <= 0).all())
            else "mark tokens with 1 and padding with 0"
        )
        return (
            f"attention_mask must hold only 0 (padding) and 1 (token), got {other.numel()} other "
            f"values ({shown}); {hint}"
        )

    require(binary.all(), values_error, "attention_mask holds values other than 0 (padding) and 1 (token)")
    has_token = (mask != 0).any(dim=1)

    def empty_error() -> str:
        rows = (~has_token).nonzero().flatten().tolist()
        return (
            f"attention_mask rows {rows} are all 0: those samples have no token to attend to; drop "
            "them from the batch (an additive mask without padding is all 0 too: pass (mask == 0).long())"
        )

    require(has_token.all(), empty_error, "an attention_mask row is all 0 (a sample without any token)")


def _check_labels(labels: torch.Tensor, is_image: torch.Tensor, vocab: int) -> None:
    """Token ids of the vocabulary, or ``IGNORE_INDEX`` where not scored. Labels at image
    placeholders are never scored (the adapter sets them to ``IGNORE_INDEX``), so any value goes."""
    if labels.dtype not in (torch.int32, torch.int64):
        raise InputError(f"labels must be an integer tensor of token ids, got {labels.dtype}")
    valid = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < vocab)) | is_image

    def range_error() -> str:
        bad = labels[~valid]
        return (
            f"labels must be token ids in [0, {vocab}) (the decoder's vocabulary) or {IGNORE_INDEX} "
            f"(not scored), got {bad.numel()} other values in [{int(bad.min())}, {int(bad.max())}]; "
            f"mark positions that are not scored with {IGNORE_INDEX} (vlmzoo.decoders.hf.IGNORE_INDEX)"
        )

    require(valid.all(), range_error, f"labels outside [0, {vocab}) other than {IGNORE_INDEX}")
