"""PVT v1 / FLatten-PVT -> vlmzoo :class:`PyramidVisionTransformer`.

vlmzoo keeps PVT's module names, with the per-stage attributes as lists:

- original PVT v1 / FLatten-PVT (``from_original(sd, "pvt")`` / ``"flatten-pvt"``; whai362/PVT's
  ``classification/pvt.py``, LeapLabTHU/FLatten-Transformer's ``models/flatten_pvt.py``):
  ``patch_embed{i+1}.`` -> ``patch_embeds.{i}.``, ``pos_embed{i+1}`` -> ``pos_embeds.{i}``,
  ``block{i+1}.`` -> ``stages.{i}.``; ``cls_token``, ``norm`` unchanged; ``head`` dropped.
  FLatten's linear blocks store ``attn.q`` and ``attn.kv`` (its PVT form of the module); vlmzoo's focused
  linear attention has the fused ``attn.qkv`` of the Swin form, rows q then k, v — the
  concatenation of the two;
- transformers ``PvtModel``: ``encoder.patch_embeddings.{i}.{projection,layer_norm,
  position_embeddings}`` -> ``patch_embeds.{i}.{proj,norm}``, ``pos_embeds.{i}``; the last stage's
  ``cls_token`` -> ``cls_token``; ``encoder.block.{i}.{j}.`` -> ``stages.{i}.{j}.`` with
  ``layer_norm_1/2`` -> ``norm1/2``, ``attention.self.query`` -> ``attn.q``,
  ``attention.self.{key,value}`` fused into ``attn.kv`` (rows k, v),
  ``attention.self.sequence_reduction`` -> ``attn.sr``, ``attention.self.layer_norm`` -> ``attn.norm``,
  ``attention.output.dense`` -> ``attn.proj``, ``mlp.dense1/2`` -> ``mlp.fc1/2``;
  ``encoder.layer_norm`` -> ``norm``. transformers uses one ``layer_norm_eps`` for every norm, so
  the converted config sets ``embed_norm_eps = norm_eps``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlmzoo.convert.state_dict import (
    build_loaded,
    count_blocks,
    fuse_groups,
    fuse_rows,
    rename_key,
    renamed,
    unwrap,
)
from vlmzoo.encoders.pvt import PvtConfig, PvtStageAttention, PyramidVisionTransformer
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]
# The sub-keys every PVT block has in vlmzoo's names (the attention's q/kv/qkv depend on the kind).
BLOCK_KEYS = ("norm1.weight", "attn.proj.weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight")

_HF_RENAMES = (
    (r"^encoder\.patch_embeddings\.(\d+)\.projection\.", r"patch_embeds.\1.proj."),
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"patch_embeds.\1.norm."),
    (r"^encoder\.patch_embeddings\.(\d+)\.position_embeddings$", r"pos_embeds.\1"),
    (r"^encoder\.patch_embeddings\.\d+\.cls_token$", "cls_token"),
    (r"^encoder\.block\.", "stages."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"^encoder\.layer_norm\.", "norm."),
)


_HF_KV = r"^encoder\.block\.(\d+)\.(\d+)\.attention\.self\.(?P<part>key|value)\.(weight|bias)$"


def pvt_state_dict_from_hf(sd: StateDict) -> StateDict:
    """transformers ``PvtModel`` keys -> vlmzoo PVT keys (key/value fused into ``kv``)."""
    fused, rest = fuse_groups(sd, _HF_KV, ("key", "value"), r"stages.\1.\2.attn.kv")
    return renamed(rest, _HF_RENAMES) | fused


def pvt_config_from_hf(config: Any) -> PvtConfig:
    """A :class:`PvtConfig` from a transformers ``PvtConfig``."""
    problems = []
    if config.hidden_act != "gelu":
        problems.append(f"activation {config.hidden_act!r}")
    if list(config.patch_sizes) != list(config.strides):
        problems.append(f"overlapping patches (patch_sizes {config.patch_sizes} != strides {config.strides})")
    if not isinstance(config.image_size, int):
        problems.append(f"non-square image_size {config.image_size}")
    if problems:
        raise ConversionError(
            f"transformers PVT uses features vlmzoo does not express: {', '.join(problems)}"
        )
    return PvtConfig(
        image_size=config.image_size,
        in_channels=config.num_channels,
        widths=tuple(config.hidden_sizes),
        depths=tuple(config.depths),
        num_heads=tuple(config.num_attention_heads),
        mlp_ratios=tuple(float(r) for r in config.mlp_ratios),
        sr_ratios=tuple(config.sequence_reduction_ratios),
        patch_sizes=tuple(config.patch_sizes),
        qkv_bias=config.qkv_bias,
        norm_eps=config.layer_norm_eps,
        embed_norm_eps=config.layer_norm_eps,
        class_token=True,
        pool="cls",
    )


def from_transformers_pvt(model: Any) -> PyramidVisionTransformer:
    """transformers ``PvtModel`` -> :class:`PyramidVisionTransformer` with its weights.

    ``tokens`` equal ``last_hidden_state[:, 1:]`` (CLS dropped), ``pooled`` its CLS row;
    ``hidden_states[s + 1]`` equals the peer's hidden state of stage s's last block.
    """
    config = pvt_config_from_hf(model.config)
    state = pvt_state_dict_from_hf(model.state_dict())
    return build_loaded(lambda: PyramidVisionTransformer(config), state, "transformers PvtModel")


# --- original layout ------------------------------------------------------------------------
# PVT v1's per-stage attributes (1-based, patch_embed1 ... block4) <-> vlmzoo's lists (0-based).
_ORIGINAL_RENAMES = (
    (r"^patch_embed(\d+)\.", lambda m: f"patch_embeds.{int(m[1]) - 1}."),
    (r"^pos_embed(\d+)$", lambda m: f"pos_embeds.{int(m[1]) - 1}"),
    (r"^block(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}."),
)
_TO_ORIGINAL = (
    (r"^patch_embeds\.(\d+)\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^pos_embeds\.(\d+)$", lambda m: f"pos_embed{int(m[1]) + 1}"),
    (r"^stages\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}."),
)


def pvt_state_dict_from_original(sd: StateDict) -> StateDict:
    """PVT v1 / FLatten-PVT keys -> vlmzoo keys (FLatten's ``attn.q`` + ``attn.kv`` fused into ``attn.qkv``)."""
    out = renamed({k: v for k, v in sd.items() if not k.startswith("head.")}, _ORIGINAL_RENAMES)
    for key in [k for k in out if k.endswith(".attn.positional_encoding")]:
        prefix = key.removesuffix("positional_encoding")
        fused = fuse_rows(out, [f"{prefix}q", f"{prefix}kv"], f"{prefix}qkv")
        for kind in ("weight", "bias"):
            if f"{prefix}qkv.{kind}" in fused:
                del out[f"{prefix}q.{kind}"], out[f"{prefix}kv.{kind}"]
        out |= fused
    return out


def _original_name(key: str) -> str:
    """A vlmzoo PVT key's name in the original layout (for error messages)."""
    return rename_key(key, _TO_ORIGINAL)


def pvt_config_from_state_dict(sd: StateDict) -> PvtConfig:
    """Infer a PVT / FLatten-PVT config from vlmzoo-named tensors (see :func:`pvt_state_dict_from_original`).

    Widths and patch sizes come from the patch convs, the native size from stage 1's position
    embedding (a square grid), heads from the DWC (head dim) of linear stages — for spatial-
    reduction stages the heads are not stored and PVT v1's head dim 64 is assumed (1, 2, 5, 8).
    Stage and block counts are checked (:func:`~vlmzoo.convert.state_dict.count_blocks`) before
    anything is sized from them.
    """
    stages = count_blocks(sd, "stages.", ("0.norm1.weight",), "stage", _original_name)
    if not stages:
        raise ConversionError(
            f"not a PVT state dict: no block1.* (stage 1) keys; found e.g. {sorted(sd)[:3]}"
        )
    dims, patches, depths, heads, srs, ratios = [], [], [], [], [], []
    kinds: list[PvtStageAttention] = []
    for s in range(stages):
        if f"patch_embeds.{s}.proj.weight" not in sd:
            raise ConversionError(f"PVT stage {s + 1} has blocks but no patch_embed{s + 1}.proj.weight")
        proj = sd[f"patch_embeds.{s}.proj.weight"]
        dims.append(proj.shape[0])
        patches.append(proj.shape[-1])
        depths.append(count_blocks(sd, f"stages.{s}.", BLOCK_KEYS, origin=_original_name))
        ratios.append(sd[f"stages.{s}.0.mlp.fc1.weight"].shape[0] / proj.shape[0])
        attn = f"stages.{s}.0.attn."
        linear = f"{attn}positional_encoding" in sd
        kinds.append("focused_linear" if linear else "spatial_reduction")
        heads.append(proj.shape[0] // (sd[f"{attn}dwc.weight"].shape[0] if linear else 64) or 1)
        srs.append(sd[f"{attn}sr.weight"].shape[-1] if f"{attn}sr.weight" in sd else 1)
    class_token = "cls_token" in sd
    side = math.isqrt(sd["pos_embeds.0"].shape[1])
    norm_eps = 1e-6
    return PvtConfig(
        image_size=side * patches[0],
        in_channels=sd["patch_embeds.0.proj.weight"].shape[1],
        widths=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        mlp_ratios=tuple(ratios),
        sr_ratios=tuple(srs),
        patch_sizes=tuple(patches),
        stage_attention=tuple(kinds),
        qkv_bias=any(k.endswith((".attn.q.bias", ".attn.qkv.bias")) for k in sd),
        norm_eps=norm_eps,
        class_token=class_token,
        pool="cls" if class_token else "mean",
        dwc_kernel_size=next((v.shape[-1] for k, v in sd.items() if k.endswith("attn.dwc.weight")), 5),
    )


def from_original_pvt(sd: StateDict) -> PyramidVisionTransformer:
    """An original PVT v1 or FLatten-PVT state dict -> :class:`PyramidVisionTransformer`."""
    sd = pvt_state_dict_from_original(unwrap(sd))
    config = pvt_config_from_state_dict(sd)
    return build_loaded(lambda: PyramidVisionTransformer(config), sd, "original PVT state dict")


TRANSFORMERS = {"PvtModel": from_transformers_pvt}
ORIGINAL = {"pvt": from_original_pvt, "flatten-pvt": from_original_pvt}
