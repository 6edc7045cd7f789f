"""transformers LLaVA -> vlmzoo VisionLanguageModel (SPEC §8).

``LlavaForConditionalGeneration`` (transformers 5) holds ``model.vision_tower`` (a
``CLIPVisionModel``), ``model.multi_modal_projector`` (``linear_1`` -> act -> ``linear_2``),
``model.language_model`` (the base LM) and ``lm_head``. The vision tower goes through the CLIP
converter; the feature choice (``vision_feature_layer``, ``vision_feature_select_strategy``)
becomes encoder config; the LM is rebuilt as a ``*ForCausalLM`` from ``text_config``.
transformers' processor writes ``image_seq_length`` placeholders per image, so the converted
model uses ``expand_image_tokens=False``.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.checkpoint import load_state_dict_strict
from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.clip import from_hf_clip
from vlmzoo.decoders.hf import HFDecoder
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig


def decoder_from_hf_parts(
    text_config: Any, base_model: torch.nn.Module, lm_head: torch.nn.Module
) -> HFDecoder:
    """Rebuild ``AutoModelForCausalLM`` from a text config + a base model and head (weights copied)."""
    import transformers

    lm = transformers.AutoModelForCausalLM.from_config(text_config)
    base_key = lm.base_model_prefix  # "model" for llama/qwen2/opt, "transformer" for gpt2
    state = {f"{base_key}.{k}": v for k, v in base_model.state_dict().items()}
    state |= {f"lm_head.{k}": v for k, v in lm_head.state_dict().items()}
    load_state_dict_strict(lm, state, source=f"{type(base_model).__name__} + lm_head")
    return HFDecoder.from_hf(lm)


def from_hf_llava(model: Any) -> VisionLanguageModel:
    """Convert ``LlavaForConditionalGeneration`` (same weights, same logits)."""
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ConversionError(
            f"vision_feature_layer={cfg.vision_feature_layer!r}: multi-layer features are not supported"
        )
    if type(model.model.vision_tower).__name__ != "CLIPVisionModel":
        raise ConversionError(
            f"vision tower {type(model.model.vision_tower).__name__} is not supported (CLIP only)"
        )
    encoder = from_hf_clip(model.model.vision_tower)
    encoder_config = encoder.config.replace(
        feature_layer=cfg.vision_feature_layer,
        feature_tokens="patch" if cfg.vision_feature_select_strategy == "default" else "all",
        pool="none",
        embed_dim=None,
    )
    projector = model.model.multi_modal_projector
    act = from_hf_activation(cfg.projector_hidden_act, where="projector_hidden_act")
    adapter_config = MLPProjectorConfig(
        in_dim=projector.linear_1.in_features,
        out_dim=projector.linear_2.out_features,
        depth=2,
        act=act,
        bias=projector.linear_1.bias is not None,
    )
    decoder = decoder_from_hf_parts(cfg.text_config, model.model.language_model, model.lm_head)
    config = VLMConfig(
        encoder=encoder_config,
        adapter=adapter_config,
        decoder=decoder.config,
        image_token_id=cfg.image_token_id,
        expand_image_tokens=False,
    )
    vlm = VisionLanguageModel(config)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {
        "adapter.proj.0.weight": projector.linear_1.weight,
        "adapter.proj.2.weight": projector.linear_2.weight,
    }
    if adapter_config.bias:
        state |= {
            "adapter.proj.0.bias": projector.linear_1.bias,
            "adapter.proj.2.bias": projector.linear_2.bias,
        }
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    load_state_dict_strict(vlm, state, source="converted LlavaForConditionalGeneration")
    return vlm


TRANSFORMERS = {"LlavaForConditionalGeneration": from_hf_llava}
