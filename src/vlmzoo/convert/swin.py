"""Swin / FLatten-Swin -> vlmzoo :class:`SwinTransformer`.

vlmzoo keeps the original Swin layout (``patch_embed.{proj,norm}``, ``layers.{s}.blocks.{b}.*``
with fused ``attn.qkv``, ``layers.{s}.downsample`` at the *end* of stage s, ``norm``), so:

- transformers ``SwinModel``: ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``,
  ``embeddings.norm`` -> ``patch_embed.norm``, ``encoder.layers`` -> ``layers``,
  ``layernorm_before/after`` -> ``norm1/2``, ``attention.{q,k,v}_proj`` fused into ``attn.qkv``
  (rows q, k, v), ``attention.o_proj`` -> ``attn.proj``,
  ``attention.relative_position_bias.relative_position_bias_table`` -> ``attn.relative_position_bias_table``,
  ``layernorm`` -> ``norm``;
- timm ``SwinTransformer``: the original names, but the patch merging of stage s sits at the start
  of stage s + 1 (``layers.{s+1}.downsample``) and the classifier is ``head.fc``;
- the original / FLatten-Swin checkpoints (``from_original(sd, "swin")`` or ``"flatten-swin"``;
  microsoft/Swin-Transformer's ``models/swin_transformer.py``, LeapLabTHU/FLatten-Transformer's
  ``models/flatten_swin.py``): vlmzoo's names plus buffers that are recomputed here
  (``relative_position_index``, ``attn_mask``) and the classifier ``head``, all dropped.

Refused rather than converted wrongly: absolute position embeddings (``use_absolute_embeddings`` /
``ape``), activations other than exact GELU, and transformers' eps other than on the block norms.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.convert.state_dict import BLOCK_KEYS, build_loaded, count_blocks, fuse_groups, renamed, unwrap
from vlmzoo.encoders.swin import SwinConfig, SwinStageAttention, SwinTransformer
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]

_HF_RENAMES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.", "layers."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"^layernorm\.", "norm."),
)


_HF_QKV = r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?P<part>[qkv]_proj)\.(weight|bias)$"


def swin_state_dict_from_hf(sd: StateDict) -> StateDict:
    """transformers ``SwinModel`` keys -> vlmzoo Swin keys (q/k/v fused into ``qkv``)."""
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    fused, rest = fuse_groups(sd, _HF_QKV, ("q_proj", "k_proj", "v_proj"), r"layers.\1.blocks.\2.attn.qkv")
    return renamed(rest, _HF_RENAMES) | fused


def swin_config_from_hf(config: Any, pool: str) -> SwinConfig:
    """A :class:`SwinConfig` from a transformers ``SwinConfig``."""
    problems = []
    if config.use_absolute_embeddings:
        problems.append("absolute position embeddings (use_absolute_embeddings=True)")
    if config.hidden_act != "gelu":
        problems.append(f"activation {config.hidden_act!r}")
    image = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    patch = config.patch_size if isinstance(config.patch_size, int) else tuple(config.patch_size)
    if not isinstance(image, int) and image[0] != image[1]:
        problems.append(f"non-square image_size {image}")
    if not isinstance(patch, int) and patch[0] != patch[1]:
        problems.append(f"non-square patch_size {patch}")
    if problems:
        raise ConversionError(
            f"transformers Swin uses features vlmzoo does not express: {', '.join(problems)}"
        )
    return SwinConfig(
        image_size=image if isinstance(image, int) else image[0],
        patch_size=patch if isinstance(patch, int) else patch[0],
        in_channels=config.num_channels,
        width=config.embed_dim,
        depths=tuple(config.depths),
        num_heads=tuple(config.num_heads),
        window_size=config.window_size,
        mlp_ratio=float(config.mlp_ratio),
        qkv_bias=config.qkv_bias,
        norm_eps=config.layer_norm_eps,
        pool=pool,  # type: ignore[arg-type]
    )


def from_transformers_swin(model: Any) -> SwinTransformer:
    """transformers ``SwinModel`` -> :class:`SwinTransformer` with its weights.

    ``tokens`` equal ``last_hidden_state``, ``pooled`` the ``pooler_output`` (when the peer pools),
    ``hidden_states[1:]`` the peer's ``reshaped_hidden_states[1:]`` taken with
    ``output_hidden_states_before_downsampling=True``.
    """
    if getattr(model.embeddings, "mask_token", None) is not None:
        raise ConversionError("SwinModel with a mask token (use_mask_token=True) is not supported")
    config = swin_config_from_hf(model.config, "mean" if model.pooler is not None else "none")
    state = swin_state_dict_from_hf(model.state_dict())
    return build_loaded(lambda: SwinTransformer(config), state, "transformers SwinModel")


# --- timm -----------------------------------------------------------------------------------
def swin_state_dict_from_timm(sd: StateDict) -> StateDict:
    """timm ``SwinTransformer`` keys -> vlmzoo keys: stage s+1's leading downsample becomes
    stage s's trailing one; the classifier head and buffers are dropped."""
    out: StateDict = {}
    for key, value in sd.items():
        if key.startswith("head.") or key.endswith(("relative_position_index", "attn_mask")):
            continue
        match = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key)
        if match:
            key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        out[key] = value
    return out


def from_timm_swin(model: Any) -> SwinTransformer:
    """timm ``SwinTransformer`` (e.g. ``swin_tiny_patch4_window7_224``) -> :class:`SwinTransformer`.

    ``tokens`` equal ``forward_features(x)`` flattened to [B, H'·W', C]. timm clamps windows per
    axis and shifts before padding, transformers (and vlmzoo, as the original) clamp by the
    shorter side and pad before shifting: outputs agree at the native size and whenever no
    window is padded or clamped on only one axis.
    """
    block = model.layers[0].blocks[0]
    problems = []
    if getattr(model, "absolute_pos_embed", None) is not None:
        problems.append("absolute position embeddings")
    if type(block.mlp.act).__name__ != "GELU" or getattr(block.mlp.act, "approximate", "none") != "none":
        problems.append(f"activation {type(block.mlp.act).__name__}")
    if not isinstance(model.norm, nn.LayerNorm):
        problems.append(f"final norm {type(model.norm).__name__}")
    img = model.patch_embed.img_size
    if img[0] != img[1]:
        problems.append(f"non-square img_size {img}")
    if problems:
        raise ConversionError(f"timm Swin uses features vlmzoo does not express: {', '.join(problems)}")
    blocks = [b for layer in model.layers for b in layer.blocks]
    tables = [b.attn.relative_position_bias_table.shape[0] for b in blocks]
    proj = model.patch_embed.proj
    config = SwinConfig(
        image_size=img[0],
        patch_size=proj.kernel_size[0],
        in_channels=proj.in_channels,
        width=proj.out_channels,
        depths=tuple(len(layer.blocks) for layer in model.layers),
        num_heads=tuple(layer.blocks[0].attn.num_heads for layer in model.layers),
        window_size=max((math.isqrt(t) + 1) // 2 for t in tables),
        mlp_ratio=block.mlp.fc1.out_features / block.mlp.fc1.in_features,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_eps=model.norm.eps,
        patch_norm=not isinstance(model.patch_embed.norm, nn.Identity),
        pool="mean" if model.global_pool == "avg" else "none",
    )
    state = swin_state_dict_from_timm(model.state_dict())
    return build_loaded(lambda: SwinTransformer(config), state, "timm SwinTransformer")


# --- original layouts -----------------------------------------------------------------------
def swin_config_from_state_dict(sd: StateDict) -> SwinConfig:
    """Infer a (FLatten-)Swin config from an original-layout state dict.

    Stage kinds come from the keys (``positional_encoding``: focused linear; bias table: window),
    heads from the bias tables (S stages) or the shared DWC's channels = head dim (L stages), the
    windows from the table / positional-encoding sizes. The native image size is not stored; it
    is read off FLatten's positional encodings where the window was clamped to the map (stage 1
    holds the whole 56x56 map at 224 px: ``WINDOW_SIZE: 56`` in FLatten-Transformer's
    ``cfgs/flatten_swin_*.yaml``), else off an ``attn_mask`` buffer ([windows, w², w²] of a
    shifted stage), else 224 is assumed. Stage and block counts are checked
    (:func:`~vlmzoo.convert.state_dict.count_blocks`) before anything is sized from them.
    """
    if "patch_embed.proj.weight" not in sd:
        raise ConversionError(
            f"not a Swin state dict: no 'patch_embed.proj.weight' (found e.g. {sorted(sd)[:3]})"
        )
    proj = sd["patch_embed.proj.weight"]
    embed_dim, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    stages = count_blocks(sd, "layers.", ("blocks.0.norm1.weight",), what="stage")
    depths = tuple(count_blocks(sd, f"layers.{s}.blocks.", BLOCK_KEYS) for s in range(stages))
    kinds: list[SwinStageAttention] = []
    heads, windows, linear_windows = [], [], []
    for s in range(stages):
        prefix, dim = f"layers.{s}.blocks.0.attn.", embed_dim * 2**s
        if f"{prefix}positional_encoding" in sd:
            kinds.append("focused_linear")
            heads.append(dim // sd[f"{prefix}dwc.weight"].shape[0])
            linear_windows.append(math.isqrt(sd[f"{prefix}positional_encoding"].shape[1]))
        else:
            kinds.append("shifted_window")
            table = sd[f"{prefix}relative_position_bias_table"]
            heads.append(table.shape[1])
            windows.append((math.isqrt(table.shape[0]) + 1) // 2)
    image_size = 224
    if linear_windows and kinds[0] == "focused_linear":
        # FLatten's window 56 (or 96 at 384 px) is clamped to stage 1's map: side x patch = image.
        image_size = linear_windows[0] * patch
    else:
        for key, mask in sd.items():
            match = re.match(r"^layers\.(\d+)\.blocks\.\d+\.attn_mask$", key)
            if match:
                side = math.isqrt(mask.shape[0]) * math.isqrt(mask.shape[1])  # windows per side x window
                image_size = side * patch * 2 ** int(match.group(1))
                break
    mlp_hidden = sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0]
    return SwinConfig(
        image_size=image_size,
        patch_size=patch,
        in_channels=in_channels,
        width=embed_dim,
        depths=depths,
        num_heads=tuple(heads),
        window_size=max(windows) if windows else 7,
        stage_attention=tuple(kinds),
        linear_window_size=max(linear_windows) if linear_windows else 56,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd,
        patch_norm="patch_embed.norm.weight" in sd,
        final_norm="norm.weight" in sd,
        dwc_kernel_size=next((v.shape[-1] for k, v in sd.items() if k.endswith("attn.dwc.weight")), 5),
    )


def from_original_swin(sd: StateDict) -> SwinTransformer:
    """An original Swin or FLatten-Swin state dict -> :class:`SwinTransformer`.

    A DDP ``module.`` or a ``model.`` prefix on every key is removed first.
    """
    sd = unwrap(sd, ("model.", "module."))
    config = swin_config_from_state_dict(sd)
    kept = {
        k: v
        for k, v in sd.items()
        if not k.startswith("head.") and not k.endswith(("relative_position_index", "attn_mask"))
    }
    return build_loaded(lambda: SwinTransformer(config), kept, "original Swin state dict")


TRANSFORMERS = {"SwinModel": from_transformers_swin}
TIMM = {"SwinTransformer": from_timm_swin}
ORIGINAL = {"swin": from_original_swin, "flatten-swin": from_original_swin}
