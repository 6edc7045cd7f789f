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


def hub_blocks(sd: StateDict, prefix: str, depth: int) -> StateDict:
    """HF encoder layers (separate q/k/v) -> vlmzoo blocks (fused qkv, rows q, k, v); CLIP's and
    SigLIP's towers share this layer layout."""
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
        **hub_blocks(sd, p, config.depth),
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
        **hub_blocks(sd, p, config.depth),
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


def openai_blocks(sd: StateDict, prefix: str) -> tuple[StateDict, int]:
    """``{prefix}transformer.resblocks.{i}.*`` -> ``blocks.{i}.*``; returns (state, depth).

    open_clip's blocks (``src/open_clip/transformer.py`` ``ResidualAttentionBlock``) have the
    same names, plus LayerScale ``ls_1`` / ``ls_2`` when ``ls_init_value`` is set.
    """
    out: StateDict = {}
    names = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "ls_1": "ls1",
        "ls_2": "ls2",
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
            resnet = f"{prefix}layer1.0.conv1.weight" in sd  # build_model's test for the ResNet towers
            raise ConversionError(
                f"not an OpenAI CLIP ViT state dict: no {prefix}{key}"
                + (" (a ModifiedResNet tower, which vlmzoo does not support)" if resnet else "")
            )
    blocks, depth = openai_blocks(sd, prefix)
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


def openai_text_state_dict(sd: StateDict, prefix: str = "") -> tuple[TextTransformerConfig, StateDict]:
    """An OpenAI / open_clip text tower under ``prefix`` -> (:class:`TextTransformerConfig`, its keys).

    Sizes are read off the tensors as ``build_model`` does (heads = width / 64, QuickGELU, pooled
    at argmax(ids)); callers that know better (open_clip's config) replace those fields. The
    projection is OpenAI's ``text_projection`` parameter [width, embed] (``x @ proj``), or
    open_clip's ``nn.Linear`` (``text_projection.weight`` / ``.bias``, ``proj_bias=True``).
    """
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight"):
        if prefix + key not in sd:
            raise ConversionError(f"OpenAI CLIP state dict without the text tower: no {prefix}{key}")
    blocks, depth = openai_blocks(sd, prefix)
    proj = sd.get(f"{prefix}text_projection")
    if proj is not None:
        head = {"head.weight": proj.t()}  # the original computes x @ proj
    elif f"{prefix}text_projection.weight" in sd:
        head = {"head.weight": sd[f"{prefix}text_projection.weight"]}
        if f"{prefix}text_projection.bias" in sd:
            head["head.bias"] = sd[f"{prefix}text_projection.bias"]
    else:
        raise ConversionError(f"OpenAI CLIP state dict without the text tower: no {prefix}text_projection")
    width = sd[f"{prefix}ln_final.weight"].shape[0]
    vocab = sd[f"{prefix}token_embedding.weight"].shape[0]
    config = TextTransformerConfig(
        vocab_size=vocab,
        context_length=sd[f"{prefix}positional_embedding"].shape[0],
        width=width,
        depth=depth,
        num_heads=max(width // 64, 1),
        embed_dim=head["head.weight"].shape[0],
        proj_bias="head.bias" in head,
        pooling="argmax",
        eos_token_id=vocab - 1,
    )
    state = {
        "token_embedding.weight": sd[f"{prefix}token_embedding.weight"],
        "pos_embed": sd[f"{prefix}positional_embedding"].unsqueeze(0),
        "norm.weight": sd[f"{prefix}ln_final.weight"],
        "norm.bias": sd[f"{prefix}ln_final.bias"],
        **blocks,
        **head,
    }
    return config, state


# The ViT models OpenAI released (openai/CLIP's clip/clip.py ``_MODELS``), by the sizes
# ``build_model`` reads off their tensors: (image size, patch, vision width, vision depth,
# embed dim, text width, text depth, context length, vocabulary).
OPENAI_RELEASES: dict[str, tuple[int, ...]] = {
    "ViT-B/32": (224, 32, 768, 12, 512, 512, 12, 77, 49408),
    "ViT-B/16": (224, 16, 768, 12, 512, 512, 12, 77, 49408),
    "ViT-L/14": (224, 14, 1024, 24, 768, 768, 12, 77, 49408),
    "ViT-L/14@336px": (336, 14, 1024, 24, 768, 768, 12, 77, 49408),
}
# The entries only OpenAI's TorchScript archives carry (``build_model`` deletes them before
# loading): scalars that must agree with the tensors' sizes.
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")

USE_OPEN_CLIP = (
    'use the "open_clip" layout with the open_clip_config.json that comes with the weights (or '
    "model_name=, e.g. 'ViT-H-14'): open_clip models may use GELU and other head widths, which the "
    "tensors do not show. If you vouch that these weights were trained like OpenAI's (QuickGELU, "
    "64-wide heads), pass assume_openai=True"
)


def _marker(sd: StateDict, key: str) -> int | None:
    """The integer a one-element marker tensor holds (None when absent or not an integer)."""
    value = sd.get(key)
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_complex() or value.is_meta:
        return None
    number = value.reshape(()).item()
    return int(number) if float(number).is_integer() else None


def openai_release(sd: StateDict, sizes: tuple[int, ...]) -> str:
    """The name of the OpenAI release ``sd`` is (``"ViT-B/32"`` ...), or a :class:`ConversionError`.

    The proof: the scalars of :data:`OPENAI_MARKERS` are there and agree with the tensors, and
    the sizes (``sizes``, ordered as in :data:`OPENAI_RELEASES`) are those of a released model.
    An open_clip checkpoint of the same architecture (LAION's ViT-B-32 has OpenAI's key names
    and shapes, but GELU) carries no markers.
    """
    found = {key: _marker(sd, key) for key in OPENAI_MARKERS}
    absent = [key for key, value in found.items() if value is None]
    if absent:
        raise ConversionError(
            f"cannot prove this is an OpenAI CLIP release: no integer {absent} entries, which "
            f"OpenAI's ViT-*.pt archives carry; {USE_OPEN_CLIP}"
        )
    image, context, vocab = sizes[0], sizes[7], sizes[8]
    if (found["input_resolution"], found["context_length"], found["vocab_size"]) != (image, context, vocab):
        raise ConversionError(
            f"the OpenAI markers {found} disagree with the tensors (image {image}, context {context}, "
            f"vocabulary {vocab}): the file was altered; {USE_OPEN_CLIP}"
        )
    for release, released in OPENAI_RELEASES.items():
        if sizes == released:
            return release
    raise ConversionError(
        f"the sizes {sizes} (image, patch, vision width, depth, embed dim, text width, depth, context, "
        f"vocabulary) are none of OpenAI's released ViT models {sorted(OPENAI_RELEASES)}; {USE_OPEN_CLIP}"
    )


def from_openai_clip(sd: StateDict, *, assume_openai: bool = False) -> CLIPModel:
    """The OpenAI CLIP release (``ViT-*.pt``, read without running it, or its state dict) -> :class:`CLIPModel`.

    Sizes are read off the tensors the way the original ``build_model`` does (openai/CLIP's
    ``clip/model.py``); the activation is QuickGELU and the heads are 64 wide, as OpenAI trained
    them. Neither shows in the tensors, so the checkpoint must prove it is OpenAI's
    (:func:`openai_release`: the archive's ``input_resolution`` / ``context_length`` /
    ``vocab_size`` entries and a released model's sizes); anything else is refused, since
    loading open_clip weights (GELU, 80-wide heads for ViT-H-14) here would silently give wrong
    features. ``assume_openai=True`` skips the proof: you vouch that the weights were trained
    with QuickGELU and 64-wide heads (a fine-tuned OpenAI model, a tiny test model).
    """
    markers = {k: sd[k] for k in OPENAI_MARKERS if k in sd}
    sd = {k: v for k, v in sd.items() if k not in OPENAI_MARKERS}
    vision, vision_state = openai_vision_state_dict(sd, "visual.")
    text, text_state = openai_text_state_dict(sd, "")
    if not assume_openai:
        sizes = (vision.image_size, vision.patch_size, vision.width, vision.depth, text.embed_dim)
        openai_release(markers, (*sizes, text.width, text.depth, text.context_length, text.vocab_size))
    config = CLIPConfig(vision=vision, text=text)
    state = {
        "logit_scale": sd["logit_scale"].reshape(()),
        **{f"visual.{k}": v for k, v in vision_state.items()},
        **{f"text.{k}": v for k, v in text_state.items()},
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
