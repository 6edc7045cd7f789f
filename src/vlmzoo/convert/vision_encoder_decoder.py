"""transformers ``VisionEncoderDecoderModel`` -> vlmzoo :class:`VisionLanguageModel` with the
encoder-decoder adapter (:mod:`vlmzoo.adapters.encoder_decoder`).

``VisionEncoderDecoderModel`` (transformers' models/vision_encoder_decoder/
modeling_vision_encoder_decoder.py) holds ``encoder`` (any vision model), ``decoder`` (a causal LM
with cross-attention: ``MBartForCausalLM`` for Donut and Nougat) and, when their widths differ,
``enc_to_dec_proj``. Its decoder reads the encoder's ``last_hidden_state``, which each vision
family defines differently; :data:`LAST_HIDDEN_STATE` says, per encoder class, which vlmzoo
feature selection equals it, and an encoder class not listed is refused rather than guessed.

The converted model takes the decoder's inputs as ``input_ids`` (``VisionEncoderDecoderModel``'s
``decoder_input_ids``; it builds them from ``labels`` by shifting them right behind
``decoder_start_token_id``, vlmzoo scores ``labels`` aligned with ``input_ids``) and one image per
sample with no placeholder in the text (``expand_image_tokens=False``), and trains every part, as
these models are fine-tuned (Donut, Nougat, TrOCR).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlmzoo.adapters.encoder_decoder import EncoderDecoderConfig
from vlmzoo.config import Config
from vlmzoo.convert.state_dict import build_loaded
from vlmzoo.decoders.hf import HFDecoder
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig


def _vit_all_tokens(norm: bool) -> Callable[[Config], Config]:
    def select(config: Config) -> Config:
        return config.replace(
            feature_layer=-1, feature_tokens="all", feature_norm=norm, pool="none", embed_dim=None
        )

    return select


def _hierarchical(config: Config) -> Config:
    return config.replace(pool="none")


# Peer encoder class -> the vlmzoo feature selection equal to its ``last_hidden_state``:
# CLIP's is the last block's tokens before ``post_layernorm`` (which only its pooler applies);
# DINOv2's is after the final ``layernorm``, every token; a Swin's is the last stage after its
# final norm (DonutSwin has none: the converted config says so).
LAST_HIDDEN_STATE: dict[str, Callable[[Config], Config]] = {
    "CLIPVisionModel": _vit_all_tokens(norm=False),
    "Dinov2Model": _vit_all_tokens(norm=True),
    "Dinov2WithRegistersModel": _vit_all_tokens(norm=True),
    "SwinModel": _hierarchical,
    "DonutSwinModel": _hierarchical,
}


def from_hf_vision_encoder_decoder(model: Any) -> VisionLanguageModel:
    """Convert ``VisionEncoderDecoderModel`` (same weights, same logits and greedy tokens)."""
    from vlmzoo.convert import from_transformers

    name = type(model.encoder).__name__
    if name not in LAST_HIDDEN_STATE:
        raise ConversionError(
            f"VisionEncoderDecoderModel with a {name} encoder is not supported (its last_hidden_state is "
            f"not mapped to a vlmzoo feature selection); supported encoders: {sorted(LAST_HIDDEN_STATE)}"
        )
    if getattr(model.decoder.config, "cross_attention_hidden_size", None) is not None:
        raise ConversionError(
            "the decoder's cross-attention reads the encoder's width directly "
            "(cross_attention_hidden_size is set); vlmzoo's encoder-decoder adapter projects to the "
            "decoder's hidden size instead, so this model cannot be expressed"
        )
    encoder = from_transformers(model.encoder)
    encoder_config = LAST_HIDDEN_STATE[name](encoder.config)
    decoder = HFDecoder.from_hf(model.decoder)
    proj = getattr(model, "enc_to_dec_proj", None)
    adapter = EncoderDecoderConfig(
        in_dim=encoder.out_dim,
        out_dim=decoder.layer_width,
        projection="linear" if proj is not None else "none",
        bias=proj is None or proj.bias is not None,
    )
    config = VLMConfig(
        encoder=encoder_config,
        adapter=adapter,
        decoder=decoder.config,
        expand_image_tokens=False,
        train_encoder="full",
        train_decoder="full",
    )
    state: dict[str, torch.Tensor] = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    if proj is not None:
        state |= {f"adapter.proj.{k}": v for k, v in proj.state_dict().items()}
    return build_loaded(lambda: VisionLanguageModel(config), state, "converted VisionEncoderDecoderModel")


TRANSFORMERS = {"VisionEncoderDecoderModel": from_hf_vision_encoder_decoder}
