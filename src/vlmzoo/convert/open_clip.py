"""open_clip checkpoints (LAION, DataComp, ... weights) -> :class:`CLIPModel`.

open_clip (mlfoundations/open_clip) keeps OpenAI's key names (``visual.conv1.weight``,
``transformer.resblocks.{i}.*``, ``text_projection``, ...), but not OpenAI's architecture: the
activation is GELU unless ``quick_gelu`` is set, the vision heads are ``head_width`` wide (80 for
ViT-H-14, 88 for g-14, 104 for bigG-14), and pooling, ``ln_post`` placement, LayerScale and
text pooling are configurable. None of that shows in the tensors, so this layout reads the
model's config, and refuses every setting vlmzoo's towers cannot express instead of guessing:

- ``config=``: the ``model_cfg`` of a hub repo's ``open_clip_config.json`` (or the whole
  document, or a path to it);
- otherwise ``open_clip_config.json`` beside the weights file (``open_clip_pytorch_model.bin`` /
  ``open_clip_model.safetensors``), when ``from_original`` is given the file's path;
- or ``model_name=``: one of open_clip's own model configs (:data:`OPEN_CLIP_MODEL_CONFIGS`,
  copied from open_clip's ``src/open_clip/model_configs/*.json``).

The fields and their meaning are open_clip's ``src/open_clip/model.py`` (``CLIPVisionCfg``,
``CLIPTextCfg``, ``_build_vision_tower``, ``_build_text_tower``, ``CLIP.encode_text``) and
``src/open_clip/transformer.py`` (``VisionTransformer``, ``TextTransformer``,
``text_global_pool``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlmzoo.convert.clip import openai_blocks, openai_text_state_dict
from vlmzoo.convert.state_dict import build_loaded
from vlmzoo.encoders.clip_text import TextTransformerConfig
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConversionError, UnknownModelError
from vlmzoo.models.clip import CLIPConfig, CLIPModel
from vlmzoo.weights.files import read_json

StateDict = dict[str, torch.Tensor]
CONFIG_FILE = "open_clip_config.json"


def _vit(
    embed: int, image: int, layers: int, width: int, patch: int, text: tuple[int, int, int], **vision: Any
):
    text_width, heads, text_layers = text
    return {
        "embed_dim": embed,
        "vision_cfg": {"image_size": image, "layers": layers, "width": width, "patch_size": patch, **vision},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": heads,
            "layers": text_layers,
        },
    }


# open_clip's src/open_clip/model_configs/<name>.json for the ViT models (open_clip 3.3).
_BASE_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B-32": _vit(512, 224, 12, 768, 32, (512, 8, 12)),
    "ViT-B-16": _vit(512, 224, 12, 768, 16, (512, 8, 12)),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, (768, 12, 12)),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, (768, 12, 12)),
    "ViT-H-14": _vit(1024, 224, 32, 1280, 14, (1024, 16, 24), head_width=80),
    "ViT-g-14": _vit(1024, 224, 40, 1408, 14, (1024, 16, 24), head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": _vit(1280, 224, 48, 1664, 14, (1280, 20, 32), head_width=104, mlp_ratio=4.9231),
}
# The -quickgelu variants differ only in "quick_gelu": true (open_clip has no ViT-g-14-quickgelu).
OPEN_CLIP_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    **_BASE_CONFIGS,
    **{
        f"{name}-quickgelu": {"quick_gelu": True, **cfg}
        for name, cfg in _BASE_CONFIGS.items()
        if name != "ViT-g-14"
    },
}

# Fields that do not change the weights' meaning at inference: preprocessing and tokenizer
# settings, training-only switches, initial values the weights replace, and the settings of
# tower kinds that are not used (timm / HF / attentional pooler fields when those are off).
_IGNORED_TOP = {"init_logit_scale", "cast_dtype", "output_dict", "custom_text"}
_IGNORED_VISION = {
    "patch_dropout",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "n_queries",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "output_tokens",
    "image_mean",
    "image_std",
    "interpolation",
    "resize_mode",
}
_IGNORED_TEXT = {
    "hf_tokenizer_name",
    "tokenizer_mode",
    "tokenizer_kwargs",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
    "output_tokens",
    "pad_id",  # only masks padding with embed_cls / bidirectional text, both refused below
    "final_ln_after_pool",  # LayerNorm is per token: the same before or after picking one token
    "proj_type",  # checked below
}
# Custom attention blocks (open_clip's CustomResidualAttentionBlock): none has a vlmzoo twin.
_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


def _refuse(field: str, value: Any, why: str) -> ConversionError:
    return ConversionError(
        f"open_clip {field}={value!r}: {why}. vlmzoo's CLIP towers cannot express it; refused rather "
        "than converted into a model that computes something else"
    )


def _known(cfg: Mapping[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConversionError(
            f"open_clip {where} has fields vlmzoo does not know: {unknown} (a newer open_clip?); "
            "refused rather than guessing what they change"
        )


def _falsy(cfg: Mapping[str, Any], where: str, fields: tuple[str, ...], why: str) -> None:
    for name in fields:
        if cfg.get(name):
            raise _refuse(f"{where}.{name}", cfg[name], why)


def _kwargs(cfg: Mapping[str, Any], where: str) -> float:
    """The LayerNorm eps of ``norm_kwargs`` (open_clip's ``LayerNorm`` default 1e-5); ``act_kwargs``
    and other norm arguments are refused."""
    if cfg.get("act_kwargs"):
        raise _refuse(f"{where}.act_kwargs", cfg["act_kwargs"], "activation arguments are not supported")
    norm = dict(cfg.get("norm_kwargs") or {})
    eps = norm.pop("eps", 1e-5)
    if norm:
        raise _refuse(f"{where}.norm_kwargs", cfg["norm_kwargs"], "only eps is supported")
    return float(eps)


def _block_type(cfg: Mapping[str, Any], where: str) -> None:
    if cfg.get("block_type") not in (None, "default"):
        raise _refuse(f"{where}.block_type", cfg["block_type"], "custom attention blocks are not supported")
    _falsy(cfg, where, _CUSTOM_BLOCK, "custom attention blocks are not supported")


_VISION_FIELDS = {
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "ls_init_value",
    "attentional_pool",
    "no_ln_pre",
    "pos_embed_type",
    "final_ln_after_pool",
    "pool_type",
    "global_average_pool",
    "input_patchnorm",
    "act_kwargs",
    "norm_kwargs",
    "block_type",
    "timm_model_name",
    *_CUSTOM_BLOCK,
    *_IGNORED_VISION,
}
_TEXT_FIELDS = {
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "ls_init_value",
    "embed_cls",
    "eos_id",
    "no_causal_mask",
    "pool_type",
    "proj_bias",
    "act_kwargs",
    "norm_kwargs",
    "block_type",
    "hf_model_name",
    *_CUSTOM_BLOCK,
    *_IGNORED_TEXT,
}


def _square(value: Any, field: str) -> int:
    """open_clip allows (h, w) sizes; vlmzoo's ViT is square."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise _refuse(field, value, "non-square sizes are not supported")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(field, value, "must be an integer")
    return value


def vision_config(cfg: Mapping[str, Any], embed_dim: int, act: str) -> ViTConfig:
    """A :class:`ViTConfig` equal to open_clip's ``VisionTransformer`` built from ``vision_cfg``."""
    w = "vision_cfg"
    _known(cfg, w, _VISION_FIELDS)
    if cfg.get("timm_model_name"):
        raise _refuse(f"{w}.timm_model_name", cfg["timm_model_name"], "timm towers are not supported here")
    layers = cfg.get("layers", 12)
    if not isinstance(layers, int) or isinstance(layers, bool):
        raise _refuse(f"{w}.layers", layers, "a ModifiedResNet tower (layers per stage) is not supported")
    _falsy(cfg, w, ("attentional_pool",), "the attentional pooler (CoCa) is not supported")
    _falsy(cfg, w, ("input_patchnorm",), "the patch-input LayerNorm is not supported")
    _falsy(cfg, w, ("global_average_pool",), "its mean over all tokens, CLS included, is not supported")
    _block_type(cfg, w)
    eps = _kwargs(cfg, w)
    if cfg.get("pos_embed_type", "learnable") not in ("learnable", "sin_cos_2d"):  # both are stored tensors
        raise _refuse(f"{w}.pos_embed_type", cfg["pos_embed_type"], "unknown position embedding")
    pool_type = cfg.get("pool_type", "tok")
    if pool_type not in ("tok", "avg"):
        raise _refuse(f"{w}.pool_type", pool_type, "only 'tok' (CLS) and 'avg' pooling are supported")
    after_pool = bool(cfg.get("final_ln_after_pool", False))
    if after_pool and pool_type == "avg":
        # vlmzoo normalises every token, then averages; LayerNorm(mean) is another function.
        raise _refuse(f"{w}.final_ln_after_pool", True, "ln_post after 'avg' pooling is not supported")
    width = cfg.get("width", 768)
    head_width = cfg.get("head_width", 64)
    if not isinstance(head_width, int) or head_width <= 0 or width % head_width:
        raise _refuse(f"{w}.head_width", head_width, f"must divide width={width}")
    ls = cfg.get("ls_init_value")
    return ViTConfig(
        image_size=_square(cfg.get("image_size", 224), f"{w}.image_size"),
        patch_size=_square(cfg.get("patch_size", 16), f"{w}.patch_size"),
        width=width,
        depth=layers,
        num_heads=width // head_width,
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        act=act,
        patch_bias=False,
        pre_norm=not cfg.get("no_ln_pre", False),
        norm_eps=eps,
        layer_scale_init=None if ls is None else float(ls),
        pos_embed_resize="bicubic",
        pool="cls" if pool_type == "tok" else "mean",
        embed_dim=embed_dim,
        proj_bias=False,
        # open_clip's tokens (output_tokens=True) are ln_post'ed unless ln_post follows pooling.
        feature_norm=not after_pool,
        feature_tokens="patch",
    )


def text_config(cfg: Mapping[str, Any], embed_dim: int, act: str) -> TextTransformerConfig:
    """A :class:`TextTransformerConfig` equal to open_clip's text tower built from ``text_cfg``,
    as ``CLIP.encode_text`` runs it (causal mask, ``ln_final``, ``text_global_pool``, projection)."""
    w = "text_cfg"
    _known(cfg, w, _TEXT_FIELDS)
    if cfg.get("hf_model_name"):
        raise _refuse(
            f"{w}.hf_model_name", cfg["hf_model_name"], "Hugging Face text towers are not supported"
        )
    if cfg.get("ls_init_value") is not None:
        raise _refuse(f"{w}.ls_init_value", cfg["ls_init_value"], "the text tower has no LayerScale")
    _falsy(cfg, w, ("embed_cls",), "a text CLS token is not supported")
    _falsy(cfg, w, ("no_causal_mask",), "bidirectional text attention is not supported")
    _block_type(cfg, w)
    eps = _kwargs(cfg, w)
    if cfg.get("proj_type", "linear") != "linear":
        raise _refuse(f"{w}.proj_type", cfg["proj_type"], "CLIP needs the linear text projection")
    pool_type = cfg.get("pool_type", "argmax")
    vocab = cfg.get("vocab_size", 49408)
    if pool_type == "argmax":
        pooling, eos = "argmax", vocab - 1
    elif pool_type == "eos":
        pooling, eos = "eos_token", cfg.get("eos_id", 2)
    else:
        raise _refuse(f"{w}.pool_type", pool_type, "only 'argmax' and 'eos' text pooling are supported")
    return TextTransformerConfig(
        vocab_size=vocab,
        context_length=cfg.get("context_length", 77),
        width=cfg.get("width", 512),
        depth=cfg.get("layers", 12),
        num_heads=cfg.get("heads", 8),
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        act=act,
        norm_eps=eps,
        embed_dim=embed_dim,
        proj_bias=bool(cfg.get("proj_bias", False)),
        pooling=pooling,
        eos_token_id=eos,
    )


def clip_config(model_cfg: Mapping[str, Any]) -> CLIPConfig:
    """A :class:`CLIPConfig` equal to ``open_clip.CLIP(**model_cfg)``, or a refusal naming the field."""
    _known(
        model_cfg,
        "model_cfg",
        {
            "embed_dim",
            "quick_gelu",
            "vision_cfg",
            "text_cfg",
            *_IGNORED_TOP,
            "init_logit_bias",
            "nonscalar_logit_scale",
            "multimodal_cfg",
        },
    )
    if model_cfg.get("multimodal_cfg"):
        raise _refuse("multimodal_cfg", "{...}", "CoCa's multimodal decoder is not supported")
    if model_cfg.get("init_logit_bias") is not None:
        raise _refuse(
            "init_logit_bias", model_cfg["init_logit_bias"], "the sigmoid loss bias (SigLIP) is not supported"
        )
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ConversionError(f"open_clip model_cfg has no {key!r} (is it an open_clip_config.json?)")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"  # open_clip: QuickGELU or nn.GELU
    embed_dim = model_cfg["embed_dim"]
    return CLIPConfig(
        vision=vision_config(model_cfg["vision_cfg"], embed_dim, act),
        text=text_config(model_cfg["text_cfg"], embed_dim, act),
    )


def _model_cfg(config: Any, model_name: str | None, path: Path | None) -> dict[str, Any]:
    """The ``model_cfg`` from ``config=``, ``model_name=`` or the JSON beside the weights."""
    if config is not None and model_name is not None:
        raise ConversionError("pass config= or model_name= to the 'open_clip' layout, not both")
    if model_name is not None:
        if model_name not in OPEN_CLIP_MODEL_CONFIGS:
            raise UnknownModelError(
                f"unknown open_clip model_name {model_name!r}; known: {sorted(OPEN_CLIP_MODEL_CONFIGS)} "
                f"(for others pass config=, the model_cfg of its {CONFIG_FILE})"
            )
        return OPEN_CLIP_MODEL_CONFIGS[model_name]
    if isinstance(config, (str, os.PathLike)):
        config = read_json(Path(config), "open_clip config")
    elif config is None and path is not None:
        beside = path.parent / CONFIG_FILE
        if not beside.is_file():
            raise ConversionError(
                f"no {CONFIG_FILE} beside {path}: an open_clip checkpoint does not tell its activation, "
                "head width or pooling; put the repo's open_clip_config.json next to it, or pass "
                "config= (its model_cfg) or model_name= (e.g. 'ViT-H-14')"
            )
        config = read_json(beside, "open_clip config")
    elif config is None:
        raise ConversionError(
            f"the 'open_clip' layout needs the model config: pass config= (the model_cfg of the repo's "
            f"{CONFIG_FILE}) or model_name= (e.g. 'ViT-H-14'), or give from_original the weights file's "
            f"path with {CONFIG_FILE} beside it"
        )
    if not isinstance(config, Mapping):
        raise ConversionError(f"open_clip config must be a JSON object, got {type(config).__name__}")
    if "model_cfg" in config:  # the whole open_clip_config.json document
        config = config["model_cfg"]
        if not isinstance(config, Mapping):
            raise ConversionError(f"{CONFIG_FILE}'s model_cfg must be a JSON object")
    return dict(config)


def _check(field: str, expected: Any, key: str, found: Any) -> None:
    if expected != found:
        raise ConversionError(
            f"open_clip config says {field}={expected}, but {key} gives {found}: the config is not this "
            "checkpoint's"
        )


def _vision_state_dict(sd: StateDict, config: ViTConfig) -> StateDict:
    """open_clip's ``visual.*`` -> VisionTransformer keys, every size checked against ``config``."""
    p = "visual."
    for key in ("conv1.weight", "class_embedding", "positional_embedding", "ln_post.weight", "proj"):
        if p + key not in sd:
            resnet = f"{p}layer1.0.conv1.weight" in sd
            raise ConversionError(
                f"not an open_clip ViT state dict: no {p}{key}"
                + (" (a ModifiedResNet tower, which vlmzoo does not support)" if resnet else "")
            )
    blocks, depth = openai_blocks(sd, p)
    conv, pos = sd[f"{p}conv1.weight"], sd[f"{p}positional_embedding"]
    _check("vision_cfg.layers", config.depth, f"{p}transformer.resblocks.*", depth)
    _check("vision_cfg.width", config.width, f"{p}conv1.weight", conv.shape[0])
    _check("vision_cfg.patch_size", config.patch_size, f"{p}conv1.weight", conv.shape[-1])
    _check("vision_cfg.image_size", config.grid[0] ** 2 + 1, f"{p}positional_embedding rows", pos.shape[0])
    _check("embed_dim", config.embed_dim, f"{p}proj", sd[f"{p}proj"].shape[-1])
    state = {
        "patch_embed.proj.weight": conv,
        "cls_token": sd[f"{p}class_embedding"].reshape(1, 1, -1),
        "pos_embed": pos.unsqueeze(0),
        "norm.weight": sd[f"{p}ln_post.weight"],
        "norm.bias": sd[f"{p}ln_post.bias"],
        "head.weight": sd[f"{p}proj"].t(),  # open_clip computes pooled @ proj
        **blocks,
    }
    if config.pre_norm:
        for n in ("weight", "bias"):
            if f"{p}ln_pre.{n}" not in sd:
                raise ConversionError(f"{p}ln_pre.{n} is missing, but vision_cfg.no_ln_pre is not set")
            state[f"norm_pre.{n}"] = sd[f"{p}ln_pre.{n}"]
    elif f"{p}ln_pre.weight" in sd:
        raise ConversionError(f"vision_cfg.no_ln_pre is set, but the checkpoint has {p}ln_pre.weight")
    return state


def from_open_clip(
    sd: StateDict,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    model_name: str | None = None,
    path: Path | None = None,
) -> CLIPModel:
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` checkpoint -> :class:`CLIPModel` (same features).

    ``config``: open_clip's ``model_cfg`` (a dict, the whole ``open_clip_config.json`` document, or
    a path to it); ``model_name``: one of :data:`OPEN_CLIP_MODEL_CONFIGS`; neither: the
    ``open_clip_config.json`` beside ``path`` (the weights file, passed by ``from_original``).
    Every setting vlmzoo cannot express is a :class:`ConversionError` naming the field and value;
    a config whose sizes disagree with the tensors is refused too.
    """
    for key in ("visual.conv1.weight", "logit_scale"):  # the layout first: its keys, then its config
        if key not in sd:
            resnet = "visual.layer1.0.conv1.weight" in sd
            raise ConversionError(
                f"not an open_clip ViT CLIP state dict: no {key}"
                + (" (a ModifiedResNet tower, which vlmzoo does not support)" if resnet else "")
            )
    model_cfg = _model_cfg(config, model_name, path)
    clip = clip_config(model_cfg)
    if "logit_bias" in sd:
        raise _refuse("logit_bias", "a tensor", "the sigmoid loss bias (SigLIP) is not supported")
    # CustomTextCLIP keeps the text tower as a submodule ``text``; CLIP flattens it into the root.
    text_prefix = "text." if model_cfg.get("custom_text") else ""
    vision_state = _vision_state_dict(sd, clip.vision)
    found, text_state = openai_text_state_dict(sd, text_prefix)
    t = clip.text
    for field, key, value in (
        ("layers", "transformer.resblocks.*", found.depth),
        ("width", "ln_final.weight", found.width),
        ("vocab_size", "token_embedding.weight", found.vocab_size),
        ("context_length", "positional_embedding", found.context_length),
    ):
        expected = {"layers": t.depth}.get(field, getattr(t, field, None))
        _check(f"text_cfg.{field}", expected, text_prefix + key, value)
    _check("embed_dim", t.embed_dim, f"{text_prefix}text_projection", found.embed_dim)
    _check("text_cfg.proj_bias", t.proj_bias, f"{text_prefix}text_projection.bias present", found.proj_bias)
    state = {
        "logit_scale": sd["logit_scale"].reshape(()),  # nonscalar_logit_scale stores it as [1]
        **{f"visual.{k}": v for k, v in vision_state.items()},
        **{f"text.{k}": v for k, v in text_state.items()},
    }
    return build_loaded(lambda: CLIPModel(clip), state, "open_clip state dict")


ORIGINAL = {"open_clip": from_open_clip}
