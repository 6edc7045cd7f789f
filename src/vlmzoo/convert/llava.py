"""transformers LLaVA and the original LLaVA release -> vlmzoo VisionLanguageModel.

``LlavaForConditionalGeneration`` (transformers 5) holds ``model.vision_tower`` (a
``CLIPVisionModel``), ``model.multi_modal_projector`` (``linear_1`` -> act -> ``linear_2``),
``model.language_model`` (the base LM) and ``lm_head``. The vision tower goes through the CLIP
converter; the feature choice (``vision_feature_layer``, ``vision_feature_select_strategy``)
becomes encoder config; the LM is rebuilt as a ``*ForCausalLM`` from ``text_config``.
transformers' processor writes ``image_seq_length`` placeholders per image, so the converted
model uses ``expand_image_tokens=False``.

``from_original(sd, "llava")`` reads the original haotian-liu/LLaVA layout
(``llava/model/llava_arch.py``, ``llava/model/multimodal_projector/builder.py``):
``model.mm_projector.*`` (``linear``: ``weight``/``bias``; ``mlp{N}x_gelu``: ``0``, ``2``, ...),
the LLaMA/Vicuna LM as ``model.embed_tokens``, ``model.layers.{i}.*``, ``model.norm``,
``lm_head`` (``LlamaForCausalLM`` keys), and the CLIP tower, when saved, as
``model.vision_tower.vision_tower.vision_model.*`` (transformers' hub format). Checkpoints
without the tower (the usual case: LLaVA loads it from ``mm_vision_tower``) or without the LM
(``mm_projector.bin`` of the pretraining stage) take ``encoder=`` / ``decoder=``
(:mod:`vlmzoo.convert.parts`). The result uses LLaVA's own image token: one ``-200`` per image,
expanded to the image's features.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from vlmzoo.adapters.anyres import AnyResConfig
from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.clip import from_hf_clip, vision_config_from_hub_state_dict, vision_state_dict_from_hf
from vlmzoo.convert.parts import assemble_vlm, supplied_decoder, supplied_encoder
from vlmzoo.convert.siglip import from_hf_siglip
from vlmzoo.convert.state_dict import build_loaded, count_blocks, strip_prefix
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder, llama_config
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig

StateDict = dict[str, torch.Tensor]


def decoder_from_hf_parts(
    text_config: Any, base_model: torch.nn.Module, lm_head: torch.nn.Module
) -> HFDecoder:
    """Rebuild ``AutoModelForCausalLM`` from a text config + a base model and head, which it
    shares tensors with (built on the meta device, then adopting them: no second copy)."""
    import transformers

    def causal_lm() -> torch.nn.Module:
        return transformers.AutoModelForCausalLM.from_config(text_config)

    with torch.device("meta"):
        base_key = causal_lm().base_model_prefix  # "model" for llama/qwen2/opt, "transformer" for gpt2
    state = {f"{base_key}.{k}": v for k, v in base_model.state_dict().items()}
    state |= {f"lm_head.{k}": v for k, v in lm_head.state_dict().items()}
    lm = build_loaded(causal_lm, state, f"{type(base_model).__name__} + lm_head")
    return HFDecoder.from_hf(lm)


def _hf_tower(model: Any) -> torch.nn.Module:
    """The vision tower of a transformers LLaVA-family model, converted (CLIP or SigLIP)."""
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ConversionError(
            f"vision_feature_layer={cfg.vision_feature_layer!r}: multi-layer features are not supported"
        )
    kind = type(model.model.vision_tower).__name__
    converters = {"CLIPVisionModel": from_hf_clip, "SiglipVisionModel": from_hf_siglip}
    if kind not in converters:
        raise ConversionError(f"vision tower {kind} is not supported (CLIP or SigLIP)")
    return converters[kind](model.model.vision_tower)


def _hf_llava_family(model: Any, adapter: dict[str, Any] | None, source: str) -> VisionLanguageModel:
    """LLaVA, LLaVA-NeXT and OneVision share this layout; ``adapter`` holds the tiling fields of
    an any-resolution model (None: LLaVA's plain projector)."""
    cfg = model.config
    encoder = _hf_tower(model)
    encoder_config = encoder.config.replace(
        feature_layer=cfg.vision_feature_layer,
        feature_tokens="patch" if cfg.vision_feature_select_strategy == "default" else "all",
        feature_norm=False,
        pool="none",
        embed_dim=None,
    )
    projector = model.model.multi_modal_projector
    act = from_hf_activation(cfg.projector_hidden_act, where="projector_hidden_act")
    mlp = dict(
        in_dim=projector.linear_1.in_features,
        out_dim=projector.linear_2.out_features,
        depth=2,
        act=act,
        bias=projector.linear_1.bias is not None,
    )
    adapter_config = MLPProjectorConfig(**mlp) if adapter is None else AnyResConfig(**mlp, **adapter)
    decoder = decoder_from_hf_parts(cfg.text_config, model.model.language_model, model.lm_head)
    config = VLMConfig(
        encoder=encoder_config,
        adapter=adapter_config,
        decoder=decoder.config,
        image_token_id=cfg.image_token_id,
        expand_image_tokens=False,
    )
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
    if adapter is not None:
        state["adapter.image_newline"] = model.model.image_newline
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    return build_loaded(lambda: VisionLanguageModel(config), state, f"converted {source}")


def from_hf_llava(model: Any) -> VisionLanguageModel:
    """Convert ``LlavaForConditionalGeneration`` (same weights, same logits)."""
    return _hf_llava_family(model, None, "LlavaForConditionalGeneration")


def _pinpoints(pairs: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(h), int(w)) for h, w in pairs)


def from_hf_llava_next(model: Any) -> VisionLanguageModel:
    """Convert ``LlavaNextForConditionalGeneration``: same weights, logits and greedy tokens with
    ``image_sizes`` and the views flat (transformers' padded [B, max_views, ...] ``pixel_values``
    less their zero padding: :func:`vlmzoo.processing.anyres.flat_views`)."""
    cfg = model.config
    tiling = dict(tile_size=cfg.vision_config.image_size, grid_pinpoints=_pinpoints(cfg.image_grid_pinpoints))
    return _hf_llava_family(model, tiling, "LlavaNextForConditionalGeneration")


def from_hf_llava_onevision(model: Any) -> VisionLanguageModel:
    """Convert ``LlavaOnevisionForConditionalGeneration`` (images; its video path is not converted).

    ``vision_aspect_ratio="anyres_max_{k}"`` becomes ``max_tiles=k``. transformers tiles only the
    image of a one-image sample (``batch_num_images``); the images of a multi-image sample are one
    untiled view each, which vlmzoo reads from an ``image_sizes`` row of zeros.
    """
    cfg = model.config
    aspect = re.fullmatch(r"anyres_max_(\d+)", str(cfg.vision_aspect_ratio))
    if aspect is None:
        raise ConversionError(
            f"vision_aspect_ratio={cfg.vision_aspect_ratio!r}: only 'anyres_max_<k>' is supported"
        )
    tiling = dict(
        tile_size=cfg.vision_config.image_size,
        grid_pinpoints=_pinpoints(cfg.image_grid_pinpoints),
        max_tiles=int(aspect.group(1)),
    )
    return _hf_llava_family(model, tiling, "LlavaOnevisionForConditionalGeneration")


# --- the original release (haotian-liu/LLaVA) ---------------------------------------------------
PROJECTOR = "model.mm_projector."
VISION_TOWER = "model.vision_tower.vision_tower."
# Vicuna / LLaMA-2 facts no tensor holds (LLaVA-1.5's LLMs, lmsys/vicuna-7b-v1.5's config.json):
# head dim 128, RMSNorm eps 1e-5, context 4096. Other LLMs (LLaMA-1's eps 1e-6, Mistral's rope)
# need decoder=DecoderConfig(...).
VICUNA_HEAD_DIM = 128
# The sub-keys every LLaMA decoder layer has (checked before the depth is read off the keys).
LLAMA_LAYER_KEYS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def _projector(sd: StateDict) -> tuple[MLPProjectorConfig, StateDict]:
    """``model.mm_projector.*`` (``linear`` or ``mlp{N}x_gelu``) -> MLPProjector config and weights."""
    proj = strip_prefix(sd, PROJECTOR)
    if "weight" in proj:  # linear: one bare Linear
        proj = {f"0.{k}": v for k, v in proj.items()}
    indices = sorted({int(k.split(".")[0]) for k in proj if re.match(r"^\d+\.weight$", k)})
    if not indices or indices != list(range(0, 2 * len(indices), 2)):
        raise ConversionError(
            f"not an original LLaVA checkpoint: {PROJECTOR}* holds {sorted(proj)[:6] or 'nothing'}, "
            "expected weight/bias (linear) or 0., 2., ... (mlpNx_gelu); identity projectors have no keys "
            "to read, build those with create_model"
        )
    first = proj["0.weight"]
    config = MLPProjectorConfig(
        in_dim=first.shape[1],
        out_dim=first.shape[0],
        depth=len(indices),
        act="gelu",
        bias="0.bias" in proj,
    )
    return config, {f"proj.{k}": v for k, v in proj.items()}


def vicuna_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> DecoderConfig:
    """The :class:`DecoderConfig` of a ``LlamaForCausalLM`` state dict with Vicuna-v1.5 conventions."""
    p = "model.layers.0."
    needed = ("model.embed_tokens.weight", f"{p}self_attn.q_proj.weight", f"{p}self_attn.k_proj.weight")
    absent = [k for k in needed if k not in sd]
    if absent:
        raise ConversionError(f"no LLaMA language model in the checkpoint ({absent} missing)")
    vocab, hidden = sd["model.embed_tokens.weight"].shape
    heads, kv_heads = (sd[f"{p}self_attn.{n}_proj.weight"].shape[0] // VICUNA_HEAD_DIM for n in "qk")
    if heads * VICUNA_HEAD_DIM != hidden:
        raise ConversionError(
            f"LLM hidden size {hidden} is not a multiple of Vicuna's head dim {VICUNA_HEAD_DIM}: "
            "pass decoder=DecoderConfig('llama', {...}) with the LLM's own config"
        )
    layers = count_blocks(sd, "model.layers.", LLAMA_LAYER_KEYS, what="decoder layer")
    return llama_config(
        hidden,
        layers,
        heads,
        sd[f"{p}mlp.gate_proj.weight"].shape[0],
        vocab,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        attention_bias=f"{p}self_attn.q_proj.bias" in sd,
        tie_word_embeddings="lm_head.weight" not in sd,
    )


def from_original_llava(
    state_dict: Mapping[str, torch.Tensor],
    *,
    encoder: torch.nn.Module | None = None,
    decoder: HFDecoder | DecoderConfig | None = None,
    vision_select_layer: int = -2,
    vision_select_feature: Literal["patch", "cls_patch"] = "patch",
    image_grid_pinpoints: Sequence[Sequence[int]] | None = None,
    image_aspect_ratio: str | None = None,
    mm_patch_merge_type: str | None = None,
) -> VisionLanguageModel:
    """An original LLaVA / LLaVA-1.5 / LLaVA-NeXT (v1.6) checkpoint (``LlavaLlamaForCausalLM``
    or ``LlavaMistralForCausalLM`` state dict) -> VLM.

    ``vision_select_layer`` / ``vision_select_feature`` are the checkpoint's
    ``mm_vision_select_layer`` / ``mm_vision_select_feature`` (LLaVA-1.5: -2 and ``patch``,
    i.e. the penultimate layer without CLS). The tower comes from the checkpoint or ``encoder=``;
    the LM from the checkpoint (Vicuna conventions, :func:`vicuna_config_from_state_dict`) or
    ``decoder=``, which also gives the architecture when the checkpoint's LM is not a Vicuna
    (Mistral: ``decoder=DECODER_PRESETS["mistral-7b"]``).

    A checkpoint with ``model.image_newline`` is LLaVA-NeXT's any-resolution model
    (:mod:`vlmzoo.adapters.anyres`): ``image_grid_pinpoints`` is its config's list, read as
    (width, height) pairs as llava/mm_utils.py does and stored swapped, in the same order, so ties
    pick the original's grid; ``image_aspect_ratio`` ``"anyres"`` (or ``"anyres_max_<k>"``: the cap
    of k tiles' worth of tokens) and ``mm_patch_merge_type`` ``"spatial_unpad"`` are the only
    packing converted (llava/model/llava_arch.py).
    """
    sd = dict(state_dict)
    if vision_select_feature not in ("patch", "cls_patch"):
        raise ConversionError(
            f"vision_select_feature={vision_select_feature!r}: LLaVA has 'patch' or 'cls_patch'"
        )
    adapter = _projector(sd)
    anyres = "model.image_newline" in sd
    if anyres:
        max_tiles = _original_tiling(image_aspect_ratio, mm_patch_merge_type)
        adapter_config, adapter_state = adapter
        adapter_state = adapter_state | {"image_newline": sd["model.image_newline"]}

    def features(config: ViTConfig) -> ViTConfig:
        return config.replace(
            feature_layer=vision_select_layer,
            feature_tokens="patch" if vision_select_feature == "patch" else "all",
            feature_norm=False,
            pool="none",
            embed_dim=None,
        )

    tower = strip_prefix(sd, VISION_TOWER)
    if tower:
        if encoder is not None:
            raise ConversionError(
                f"the checkpoint holds its vision tower ({VISION_TOWER}*): do not pass encoder="
            )
        vision_config = features(vision_config_from_hub_state_dict(tower, VISION_TOWER))
        vision = vision_config, vision_state_dict_from_hf(tower, vision_config)
    else:
        vision = supplied_encoder(encoder, features, f"no {VISION_TOWER}* keys")
    if anyres:
        tile = int(vision[0].image_size)
        pins = _NEXT_ORIGINAL_PINPOINTS if image_grid_pinpoints is None else image_grid_pinpoints
        if isinstance(pins, str):  # OneVision's "(1x1),...,(6x6)" form
            raise ConversionError(
                f"image_grid_pinpoints={pins!r}: give the list of (width, height) pairs it stands for"
            )
        mlp = {k: getattr(adapter_config, k) for k in ("in_dim", "out_dim", "depth", "act", "bias")}
        tiled = AnyResConfig(
            **mlp,
            tile_size=tile,
            grid_pinpoints=tuple((int(h), int(w)) for w, h in pins),
            max_tiles=max_tiles,
        )
        adapter = tiled, adapter_state
    lm_state = {
        k: v
        for k, v in sd.items()
        if not k.startswith((PROJECTOR, "model.vision_tower.")) and k != "model.image_newline"
    }
    if decoder is None and "model.embed_tokens.weight" in lm_state:
        decoder = vicuna_config_from_state_dict(lm_state)
    language = supplied_decoder(decoder, lm_state, "no model.embed_tokens / model.layers.* keys")
    return assemble_vlm(
        {"encoder": vision, "adapter": adapter, "decoder": language},
        source="original LLaVA state dict",
        image_token_id=-200,  # IMAGE_TOKEN_INDEX: one per image, replaced by its features
        expand_image_tokens=True,
    )


# LLaVA-NeXT's v1.6 config.json list, (width, height) pairs as the original reads them.
_NEXT_ORIGINAL_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def _original_tiling(image_aspect_ratio: str | None, merge: str | None) -> int | None:
    """``max_tiles`` of an original any-resolution config (None: LLaVA-NeXT's uncapped ``anyres``)."""
    if merge not in (None, "spatial_unpad"):
        raise ConversionError(
            f"mm_patch_merge_type={merge!r}: only 'spatial_unpad' (the v1.6 release's) is converted"
        )
    if image_aspect_ratio in (None, "anyres"):
        return None
    capped = re.fullmatch(r"anyres_max_(\d+)", image_aspect_ratio)
    if capped is None:
        raise ConversionError(
            f"image_aspect_ratio={image_aspect_ratio!r}: a checkpoint with model.image_newline needs "
            "'anyres' or 'anyres_max_<k>'"
        )
    return int(capped.group(1))


TRANSFORMERS = {
    "LlavaForConditionalGeneration": from_hf_llava,
    "LlavaNextForConditionalGeneration": from_hf_llava_next,
    "LlavaOnevisionForConditionalGeneration": from_hf_llava_onevision,
}
ORIGINAL = {"llava": from_original_llava}
