"""transformers CLIP and the OpenAI CLIP release -> vlmzoo.

Key names follow the serialised hub format of ``CLIPModel`` (``vision_model.*``,
``text_model.*``, ``visual_projection``, ``text_projection``, ``logit_scale``; the renames of
transformers' ``models/clip/convert_clip_original_pytorch_to_hf.py``). transformers 5 keeps a
bare ``CLIPVisionModel`` / ``CLIPTextModel`` without the tower prefix in memory, so the
converter first brings every model's state dict to the hub layout.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.state_dict import build_loaded, count_blocks, fuse_rows, moved
from vlmzoo.encoders.clip_text import TextTransformer, TextTransformerConfig
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig, clip_vision_config
from vlmzoo.errors import ConversionError
from vlmzoo.models.clip import CLIPConfig, CLIPModel

StateDict = dict[str, torch.Tensor]


def tower_fields(hf: Any, projection_dim: int | None) -> dict[str, Any]:
    """The fields both CLIP towers read off their transformers config the same way."""
    return dict(
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_ratio=hf.intermediate_size / hf.hidden_size,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        embed_dim=projection_dim,
    )


def vision_config_from_hf(hf: Any, projection_dim: int | None) -> ViTConfig:
    """A :class:`ViTConfig` equal to a transformers ``CLIPVisionConfig`` (+ optional projection)."""
    return ViTConfig(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        in_channels=hf.num_channels,
        patch_bias=False,
        pre_norm=True,
        pos_embed_resize="bicubic",  # transformers' interpolate_pos_encoding
        proj_bias=False,
        **tower_fields(hf, projection_dim),
    )


def text_config_from_hf(hf: Any, projection_dim: int | None) -> TextTransformerConfig:
    """A :class:`TextTransformerConfig` equal to a transformers ``CLIPTextConfig``.

    transformers pools at argmax(ids) for legacy configs (``eos_token_id == 2``) and at the first
    ``eos_token_id`` otherwise (``CLIPTextTransformer.forward`` in transformers'
    ``modeling_clip.py``); the pooling rule is carried over.
    """
    legacy = hf.eos_token_id == 2
    return TextTransformerConfig(
        vocab_size=hf.vocab_size,
        context_length=hf.max_position_embeddings,
        pooling="argmax" if legacy else "eos_token",
        eos_token_id=hf.eos_token_id if not legacy else hf.vocab_size - 1,
        **tower_fields(hf, projection_dim),
    )


# The sub-keys every hub-format encoder layer has (checked before a depth is read off the keys).
HUB_LAYER_KEYS = (
    "layer_norm1.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.out_proj.weight",
    "layer_norm2.weight",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
)


# transformers' CLIP encoder layer sub-modules -> vlmzoo's Block (q/k/v are fused apart).
HF_LAYER_NAMES = {
    "self_attn.out_proj": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _blocks(sd: StateDict, prefix: str, depth: int) -> StateDict:
    """HF encoder layers (separate q/k/v) -> vlmzoo blocks (fused qkv, rows q, k, v)."""
    out: StateDict = {}
    for i in range(depth):
        src, dst = f"{prefix}encoder.layers.{i}.", f"blocks.{i}."
        out |= fuse_rows(sd, [f"{src}self_attn.{n}_proj" for n in "qkv"], f"{dst}attn.qkv")
        out |= moved(sd, src, dst, HF_LAYER_NAMES)
    return out


def vision_state_dict_from_hf(sd: StateDict, config: ViTConfig) -> StateDict:
    """Hub-format ``vision_model.*`` (+ ``visual_projection.weight``) -> VisionTransformer keys."""
    p = "vision_model."
    out = {
        "patch_embed.proj.weight": sd[f"{p}embeddings.patch_embedding.weight"],
        "cls_token": sd[f"{p}embeddings.class_embedding"].reshape(1, 1, -1),
        "pos_embed": sd[f"{p}embeddings.position_embedding.weight"].unsqueeze(0),
        "norm_pre.weight": sd[f"{p}pre_layrnorm.weight"],  # the typo is transformers'
        "norm_pre.bias": sd[f"{p}pre_layrnorm.bias"],
        "norm.weight": sd[f"{p}post_layernorm.weight"],
        "norm.bias": sd[f"{p}post_layernorm.bias"],
        **_blocks(sd, p, config.depth),
    }
    if config.embed_dim is not None:
        out["head.weight"] = sd["visual_projection.weight"]
    return out


def text_state_dict_from_hf(sd: StateDict, config: TextTransformerConfig) -> StateDict:
    """Hub-format ``text_model.*`` (+ ``text_projection.weight``) -> TextTransformer keys."""
    p = "text_model."
    out = {
        "token_embedding.weight": sd[f"{p}embeddings.token_embedding.weight"],
        "pos_embed": sd[f"{p}embeddings.position_embedding.weight"].unsqueeze(0),
        "norm.weight": sd[f"{p}final_layer_norm.weight"],
        "norm.bias": sd[f"{p}final_layer_norm.bias"],
        **_blocks(sd, p, config.depth),
    }
    if config.embed_dim is not None:
        out["head.weight"] = sd["text_projection.weight"]
    return out


def _hub_state_dict(model: Any) -> StateDict:
    """The model's state dict with the hub-format tower prefix restored (transformers 5 drops it)."""
    sd = dict(model.state_dict())
    name = type(model).__name__
    if name == "CLIPVisionModel" and not any(k.startswith("vision_model.") for k in sd):
        sd = {f"vision_model.{k}": v for k, v in sd.items()}
    if name == "CLIPTextModel" and not any(k.startswith("text_model.") for k in sd):
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    return sd


def from_hf_clip(model: Any) -> torch.nn.Module:
    """Convert ``CLIPModel``, ``CLIPVisionModel[WithProjection]`` or ``CLIPTextModel[WithProjection]``.

    Returns a :class:`CLIPModel`, :class:`VisionTransformer` or :class:`TextTransformer` with
    the same weights; a tower without projection gets ``embed_dim=None``.
    """
    name, cfg, sd = type(model).__name__, model.config, _hub_state_dict(model)
    projection_dim = getattr(cfg, "projection_dim", None)
    if name == "CLIPModel":
        config = CLIPConfig(
            vision=vision_config_from_hf(cfg.vision_config, projection_dim),
            text=text_config_from_hf(cfg.text_config, projection_dim),
        )
        state = {f"visual.{k}": v for k, v in vision_state_dict_from_hf(sd, config.vision).items()}
        state |= {f"text.{k}": v for k, v in text_state_dict_from_hf(sd, config.text).items()}
        state["logit_scale"] = sd["logit_scale"].reshape(())
        return build_loaded(lambda: CLIPModel(config), state, f"converted {name}")
    if name in ("CLIPVisionModel", "CLIPVisionModelWithProjection"):
        proj = projection_dim if name.endswith("WithProjection") else None
        vision = vision_config_from_hf(cfg, proj)
        state = vision_state_dict_from_hf(sd, vision)
        return build_loaded(lambda: VisionTransformer(vision), state, f"converted {name}")
    if name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        proj = projection_dim if name.endswith("WithProjection") else None
        text = text_config_from_hf(cfg, proj)
        state = text_state_dict_from_hf(sd, text)
        return build_loaded(lambda: TextTransformer(text), state, f"converted {name}")
    raise ConversionError(f"{name} is not a CLIP model")


# --- the OpenAI release (openai/CLIP's clip/model.py: VisionTransformer, build_model) ----------
# The sub-keys of every residual attention block of the release (checked before the depth is
# read off the keys, as ``build_model`` counts them).
OPENAI_BLOCK_KEYS = (
    "ln_1.weight",
    "attn.in_proj_weight",
    "attn.out_proj.weight",
    "ln_2.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def _openai_blocks(sd: StateDict, prefix: str) -> tuple[StateDict, int]:
    """``{prefix}transformer.resblocks.{i}.*`` -> ``blocks.{i}.*``; returns (state, depth)."""
    out: StateDict = {}
    names = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "attn.out_proj": "attn.proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    start = f"{prefix}transformer.resblocks."
    depth = count_blocks(sd, start, OPENAI_BLOCK_KEYS, what="residual block")
    for key, value in sd.items():
        if not key.startswith(start):
            continue
        index, rest = key[len(start) :].split(".", 1)
        rest = rest.replace("attn.in_proj_weight", "attn.qkv.weight").replace(
            "attn.in_proj_bias", "attn.qkv.bias"
        )
        for old, new in names.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
        out[f"blocks.{index}.{rest}"] = value
    return out, depth


def openai_vision_state_dict(sd: StateDict, prefix: str = "visual.") -> tuple[ViTConfig, StateDict]:
    """An OpenAI / open_clip ``VisionTransformer`` under ``prefix`` -> (:class:`ViTConfig`, its keys).

    Sizes are read off the tensors the way the original ``build_model`` does (heads = width / 64,
    QuickGELU); the projection ``proj`` becomes ``head`` (``embed_dim``) when present. open_clip's
    ``visual`` (OpenFlamingo's ``vision_encoder``) uses the same names.
    """
    for key in ("conv1.weight", "class_embedding", "positional_embedding"):
        if prefix + key not in sd:
            raise ConversionError(
                f"not an OpenAI CLIP ViT state dict: no {prefix}{key} "
                "(the ModifiedResNet towers are not supported)"
            )
    blocks, depth = _openai_blocks(sd, prefix)
    conv = sd[f"{prefix}conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd[f"{prefix}positional_embedding"].shape[0] - 1) ** 0.5)
    proj = sd.get(f"{prefix}proj")
    config = clip_vision_config(grid * patch, patch, width, depth, None if proj is None else proj.shape[1])
    state = {
        "patch_embed.proj.weight": conv,
        "cls_token": sd[f"{prefix}class_embedding"].reshape(1, 1, -1),
        "pos_embed": sd[f"{prefix}positional_embedding"].unsqueeze(0),
        "norm_pre.weight": sd[f"{prefix}ln_pre.weight"],
        "norm_pre.bias": sd[f"{prefix}ln_pre.bias"],
        "norm.weight": sd[f"{prefix}ln_post.weight"],
        "norm.bias": sd[f"{prefix}ln_post.bias"],
        **blocks,
    }
    if proj is not None:
        state["head.weight"] = proj.t()  # the original computes x @ proj
    return config, state


def vision_config_from_hub_state_dict(sd: StateDict, origin: str = "") -> ViTConfig:
    """OpenAI CLIP vision sizes read off hub-format ``vision_model.*`` tensors (no projection).
    ``origin``: the prefix the caller stripped from the file's keys (for error messages).

    For checkpoints that embed transformers' ``CLIPVisionModel`` of an OpenAI release (LLaVA,
    Vary): QuickGELU, eps 1e-5, ``ln_pre``, no patch bias, and heads by OpenAI's rule (head dim
    64): the q/k/v tensors do not tell the head count.
    """
    key = "vision_model.embeddings.patch_embedding.weight"
    if key not in sd:
        raise ConversionError(f"no CLIP vision tower: {origin}{key} is missing")
    conv = sd[key]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5)
    depth = count_blocks(sd, "vision_model.encoder.layers.", HUB_LAYER_KEYS, "encoder layer", origin)
    if depth == 0:
        raise ConversionError(f"no CLIP vision layers: {origin}vision_model.encoder.layers.0.* is missing")
    mlp = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    return clip_vision_config(grid * patch, patch, width, depth, None).replace(
        mlp_ratio=mlp / width, pool="none"
    )


def from_openai_clip(sd: StateDict) -> CLIPModel:
    """The OpenAI CLIP release (``ViT-*.pt`` state dict) -> :class:`CLIPModel`.

    Sizes are read off the tensors the way the original ``build_model`` does; the activation is
    QuickGELU, as OpenAI trained it (loading these weights into a GELU model would silently give
    wrong features).
    """
    sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    vision, vision_state = openai_vision_state_dict(sd, "visual.")
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"):
        if key not in sd:
            raise ConversionError(f"OpenAI CLIP state dict without the text tower: no {key}")
    text_blocks, text_depth = _openai_blocks(sd, "")
    embed_dim = sd["text_projection"].shape[1]
    text_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    config = CLIPConfig(
        vision=vision,
        text=TextTransformerConfig(
            vocab_size=vocab,
            context_length=sd["positional_embedding"].shape[0],
            width=text_width,
            depth=text_depth,
            num_heads=text_width // 64,
            embed_dim=embed_dim,
            pooling="argmax",
            eos_token_id=vocab - 1,
        ),
    )
    state = {
        "text.token_embedding.weight": sd["token_embedding.weight"],
        "text.pos_embed": sd["positional_embedding"].unsqueeze(0),
        "text.norm.weight": sd["ln_final.weight"],
        "text.norm.bias": sd["ln_final.bias"],
        "text.head.weight": sd["text_projection"].t(),
        "logit_scale": sd["logit_scale"].reshape(()),
        **{f"visual.{k}": v for k, v in vision_state.items()},
        **{f"text.{k}": v for k, v in text_blocks.items()},
    }
    return build_loaded(lambda: CLIPModel(config), state, "OpenAI CLIP state dict")


TRANSFORMERS = dict.fromkeys(
    (
        "CLIPModel",
        "CLIPVisionModel",
        "CLIPVisionModelWithProjection",
        "CLIPTextModel",
        "CLIPTextModelWithProjection",
    ),
    from_hf_clip,
)
ORIGINAL = {"openai-clip": from_openai_clip}
