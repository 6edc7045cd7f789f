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

Donut and Nougat encoders (:func:`swin_state_dict_from_donut_hf`,
:func:`swin_state_dict_from_donut_original`; a whole-model converter takes the encoder half with
these):

- transformers ``DonutSwinModel`` (models/donut/modeling_donut_swin.py): the layout transformers'
  ``convert_donut_to_pytorch.py`` / ``convert_nougat_to_hf.py`` write — still BERT-style names,
  unlike today's ``SwinModel``: ``attention.self.{query,key,value}`` (fused into ``attn.qkv``),
  ``attention.self.relative_position_bias_table``, ``attention.output.dense`` -> ``attn.proj``,
  ``intermediate.dense`` / ``output.dense`` -> ``mlp.fc1`` / ``mlp.fc2``; the persistent
  ``relative_position_index`` buffer is dropped; there is no final ``layernorm`` (vlmzoo:
  ``final_norm=False``) and the pooler has no weights.
- the original donut-python / nougat checkpoints (``from_original(sd, "donut-swin",
  image_size=(H, W))``): the encoder half, ``encoder.model.*``, is a timm 0.5.4 ``SwinTransformer``
  (clovaai/donut's ``donut/model.py`` ``SwinEncoder.model``) — vlmzoo's names with the patch merging
  at the *end* of stages 0-2 (``layers.{s}.downsample``), plus the persistent buffers
  ``relative_position_index`` and (shifted blocks) ``attn_mask``, dropped after ``attn_mask`` is
  checked against the canvas, and ``norm``, which ``SwinEncoder.forward`` never applies, dropped
  too (as transformers' converters do). The canvas is not in the weights: it is the checkpoint's
  ``config.json`` ``input_size``.

Refused rather than converted wrongly: absolute position embeddings (``use_absolute_embeddings`` /
``ape``), activations other than exact GELU, and transformers' eps other than on the block norms;
for DonutSwin also dropout, a mask token, and a native canvas on which transformers' run-time
window clamp and the original's build-time clamp disagree (:func:`swin_config_from_donut_hf`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.convert.state_dict import (
    BLOCK_KEYS,
    build_loaded,
    count_blocks,
    fuse_groups,
    renamed,
    strip_prefix,
    unwrap,
)
from vlmzoo.encoders.swin import SwinConfig, SwinStageAttention, SwinTransformer
from vlmzoo.errors import ConversionError
from vlmzoo.layers import ImageSize

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
    img = tuple(model.patch_embed.img_size)
    if problems:
        raise ConversionError(f"timm Swin uses features vlmzoo does not express: {', '.join(problems)}")
    blocks = [b for layer in model.layers for b in layer.blocks]
    tables = [b.attn.relative_position_bias_table.shape[0] for b in blocks]
    proj = model.patch_embed.proj
    config = SwinConfig(
        image_size=img[0] if img[0] == img[1] else img,
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
    # timm >= 0.9 clamps each axis on its own (SwinTransformerBlock._calc_window_shift), the original
    # Swin (and vlmzoo) by the shorter side: on a square map, or one larger than the window on both
    # axes, the two are the same; on a non-square map with a side <= the window they are not.
    for s, (h, w) in enumerate(config.stage_grids()):
        if h != w and min(h, w) <= config.window_size:
            raise ConversionError(
                f"timm Swin at img_size {img}: stage {s}'s {h}x{w} map has a side <= window_size "
                f"{config.window_size}, which timm clamps per axis and the original Swin (and vlmzoo) by "
                "the shorter side; such a model cannot be expressed"
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


# --- Donut / Nougat -------------------------------------------------------------------------
# Every key a vlmzoo Swin with shifted-window stages holds (FLatten's linear blocks excepted).
_VLMZOO_SWIN_KEY = re.compile(
    r"^(patch_embed\.(proj|norm)\.(weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|attn\.relative_position_bias_table)"
    r"|layers\.\d+\.downsample\.(norm\.weight|norm\.bias|reduction\.weight))$"
)


def _check_swin_keys(sd: StateDict, source: str) -> StateDict:
    """``sd`` if every key is a vlmzoo Swin key; else a :class:`ConversionError` naming the others."""
    unknown = sorted(k for k in sd if not _VLMZOO_SWIN_KEY.match(k))
    if unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} key(s) a Donut/Nougat Swin encoder does not have, e.g. {unknown[:3]}"
        )
    return sd


_DONUT_HF_RENAMES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.", "layers."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),  # before the MLP's ".output.dense."
    (r"\.attention\.self\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
_DONUT_HF_QKV = (
    r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(?P<part>query|key|value)\.(weight|bias)$"
)


def swin_state_dict_from_donut_hf(sd: StateDict) -> StateDict:
    """transformers ``DonutSwinModel`` keys -> vlmzoo Swin keys (module docstring).

    ``sd`` is ``DonutSwinModel.state_dict()``: a ``VisionEncoderDecoderModel``'s ``encoder.*`` with
    that prefix removed. Query, key and value rows are fused into ``attn.qkv`` in that order (the
    split ``convert_donut_to_pytorch.py`` made of the original ``qkv``); ``relative_position_index``
    buffers are dropped. A mask token, absolute position embeddings or any key DonutSwin's
    encoder does not have is a :class:`ConversionError`.
    """
    refused = sorted(
        k for k in sd if k.startswith(("embeddings.mask_token", "embeddings.position_embeddings"))
    )
    if refused:
        raise ConversionError(
            f"DonutSwinModel with {refused} (a mask token or absolute position embeddings) is not "
            "Donut's or Nougat's encoder and is not supported"
        )
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    fused, rest = fuse_groups(sd, _DONUT_HF_QKV, ("query", "key", "value"), r"layers.\1.blocks.\2.attn.qkv")
    return _check_swin_keys(renamed(rest, _DONUT_HF_RENAMES) | fused, "DonutSwinModel state dict")


def _native_clamp_problems(config: SwinConfig) -> list[str]:
    """Stages where transformers' run-time clamp and the original's build-time clamp disagree.

    transformers' ``DonutSwinLayer`` keeps the configured window's bias table and clamps only in
    ``forward`` (``set_shift_and_window_size``: the clamp is then stored in the layer for every
    later call), so a stage whose native shorter side is below the window cannot run at all
    (bias of the wrong size), and one equal to it stops shifting only after a small input has
    been seen. The original (timm 0.5.4, and vlmzoo) fixes both at build time.
    """
    problems = []
    for s, ((h, w), depth) in enumerate(zip(config.stage_grids(), config.depths, strict=True)):
        side = min(h, w)
        if side < config.window_size or (side == config.window_size and depth > 1):
            problems.append(
                f"stage {s}'s native {h}x{w} map is not larger than window_size {config.window_size} "
                "(transformers clamps it at run time and keeps the clamp, the original at build time)"
            )
    return problems


def swin_config_from_donut_hf(config: Any, pool: str = "none") -> SwinConfig:
    """A :class:`SwinConfig` from a transformers ``DonutSwinConfig`` (``final_norm=False``).

    ``image_size`` is kept as (H, W) when not square. Refused: absolute position embeddings,
    activations other than exact GELU, dropout (vlmzoo has none), non-square patches, and a canvas
    on which a stage's map is not larger than the window (:func:`_native_clamp_problems`).
    """
    problems = []
    if config.use_absolute_embeddings:
        problems.append("absolute position embeddings (use_absolute_embeddings=True)")
    if config.hidden_act != "gelu":
        problems.append(f"activation {config.hidden_act!r}")
    if config.hidden_dropout_prob or config.attention_probs_dropout_prob:
        problems.append(
            f"dropout (hidden {config.hidden_dropout_prob}, attention {config.attention_probs_dropout_prob})"
        )
    image = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    patch = config.patch_size if isinstance(config.patch_size, int) else tuple(config.patch_size)
    if not isinstance(patch, int) and patch[0] != patch[1]:
        problems.append(f"non-square patch_size {patch}")
    if problems:
        raise ConversionError(
            f"transformers DonutSwin uses features vlmzoo does not express: {', '.join(problems)}"
        )
    converted = SwinConfig(
        image_size=image if isinstance(image, int) or image[0] != image[1] else image[0],
        patch_size=patch if isinstance(patch, int) else patch[0],
        in_channels=config.num_channels,
        width=config.embed_dim,
        depths=tuple(config.depths),
        num_heads=tuple(config.num_heads),
        window_size=config.window_size,
        mlp_ratio=float(config.mlp_ratio),
        qkv_bias=config.qkv_bias,
        norm_eps=config.layer_norm_eps,
        final_norm=False,  # DonutSwinModel has no final layernorm
        drop_path_rate=float(config.drop_path_rate),
        pool=pool,  # type: ignore[arg-type]
    )
    clamps = _native_clamp_problems(converted)
    if clamps:
        raise ConversionError(
            f"transformers DonutSwin at image_size {image}: {'; '.join(clamps)}. Such a model cannot be "
            "expressed; every released Donut/Nougat canvas is larger than the window at every stage"
        )
    return converted


def from_transformers_donut_swin(model: Any) -> SwinTransformer:
    """transformers ``DonutSwinModel`` -> :class:`SwinTransformer` with its weights.

    ``tokens`` equal ``last_hidden_state`` (no final norm), ``pooled`` the ``pooler_output`` when
    the peer has a pooler. ``hidden_states[1:]`` equal the per-stage outputs *before* patch merging
    (``DonutSwinEncoder`` with ``output_hidden_states_before_downsampling=True``; ``DonutSwinModel``
    itself returns them after merging).
    """
    if getattr(model.embeddings, "mask_token", None) is not None:
        raise ConversionError("DonutSwinModel with a mask token (use_mask_token=True) is not supported")
    config = swin_config_from_donut_hf(model.config, "mean" if model.pooler is not None else "none")
    state = swin_state_dict_from_donut_hf(model.state_dict())
    return build_loaded(lambda: SwinTransformer(config), state, "transformers DonutSwinModel")


_ORIGINAL_BUFFERS = ("relative_position_index", "attn_mask")


def _donut_encoder_keys(sd: StateDict) -> StateDict:
    """The timm ``SwinTransformer``'s keys: a whole checkpoint's ``encoder.model.*`` with the prefix
    removed, or ``sd`` without an ``encoder.`` / ``model.`` prefix that every key carries."""
    if "encoder.model.patch_embed.proj.weight" in sd:
        return strip_prefix(sd, "encoder.model.")
    return unwrap(sd, ("encoder.", "model."))


def swin_state_dict_from_donut_original(sd: StateDict) -> StateDict:
    """donut-python / nougat encoder keys (timm 0.5.4 ``SwinTransformer``) -> vlmzoo Swin keys.

    ``sd`` holds the keys of ``SwinEncoder.model`` (clovaai/donut's ``donut/model.py``), i.e. a
    checkpoint's ``encoder.model.*`` with that prefix removed; the prefixed keys (or a whole
    checkpoint, whose decoder keys are then ignored) are accepted too. The names are vlmzoo's; the
    buffers ``relative_position_index`` and ``attn_mask`` and the unused final ``norm`` are dropped.
    Refused (:class:`ConversionError`): absolute position embeddings, a classifier head (neither
    is built by donut-python's ``SwinEncoder``), timm >= 0.9's layout with the patch merging at
    the start of the next stage, and any other key the encoder does not have.
    """
    sd = _donut_encoder_keys(sd)
    refused = sorted(k for k in sd if k == "absolute_pos_embed" or k.startswith("head."))
    if refused:
        raise ConversionError(
            f"{refused[:3]}: donut-python's SwinEncoder builds neither absolute position embeddings nor a "
            "classifier head; this is not a Donut/Nougat encoder"
        )
    merges = {int(m.group(1)) for k in sd if (m := re.match(r"^layers\.(\d+)\.downsample\.", k))}
    if merges and 0 not in merges:
        raise ConversionError(
            f"patch merging in layers {sorted(merges)} but not in layers 0: timm >= 0.9's layout (merging at the "
            "start of the next stage), not donut-python's timm 0.5.4 one; use swin_state_dict_from_timm"
        )
    kept = {
        k: v
        for k, v in sd.items()
        if not k.endswith(_ORIGINAL_BUFFERS) and k not in ("norm.weight", "norm.bias")
    }
    return _check_swin_keys(kept, "donut-python encoder state dict")


def swin_config_from_donut_original(sd: StateDict, image_size: ImageSize) -> SwinConfig:
    """A :class:`SwinConfig` for a donut-python / nougat encoder state dict on the canvas ``image_size``.

    Sizes are read off the tensors (:func:`swin_config_from_state_dict`); the canvas, (H, W) = the
    checkpoint's ``config.json`` ``input_size``, is not stored in them. ``final_norm=False`` and
    ``drop_path_rate=0.1`` as donut-python builds it (timm's default). The ``attn_mask`` buffers
    timm 0.5.4 saves on shifted blocks ([windows, w², w²] at the native map) are checked against
    the canvas: a wrong ``image_size`` is a :class:`ConversionError`, not a silently wrong model.
    """
    sd = _donut_encoder_keys(sd)
    base = swin_config_from_state_dict(sd)
    if any(kind != "shifted_window" for kind in base.stage_attention):
        raise ConversionError("focused linear attention stages in a Donut/Nougat encoder state dict")
    size = tuple(image_size) if isinstance(image_size, list | tuple) else image_size
    config = base.replace(image_size=size, final_norm=False, drop_path_rate=0.1, pool="none")
    with torch.device("meta"):
        skeleton = SwinTransformer(config)
    grids = config.stage_grids()
    for key, mask in sd.items():
        match = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn_mask$", key)
        if match is None:
            continue
        s, b = int(match.group(1)), int(match.group(2))
        if s >= len(skeleton.layers) or b >= len(skeleton.layers[s].blocks):
            raise ConversionError(f"{key}: no such block in a {config.depths} encoder")
        attn = skeleton.layers[s].blocks[b].attn
        (h, w), win = grids[s], attn.window_size
        expected = (-(-h // win) * -(-w // win), win * win, win * win)
        if attn.shift_size == 0 or tuple(mask.shape) != expected:
            want = "no attn_mask (an unshifted block)" if attn.shift_size == 0 else f"shape {list(expected)}"
            raise ConversionError(
                f"{key} has shape {list(mask.shape)}, but on the canvas image_size={size} stage {s}'s "
                f"{h}x{w} map with window {win} gives {want}: pass the checkpoint's input_size as image_size"
            )
    return config


def from_donut_original_swin(sd: StateDict, image_size: ImageSize | None = None) -> SwinTransformer:
    """A donut-python / nougat encoder state dict -> :class:`SwinTransformer` (``from_original(sd,
    "donut-swin", image_size=(H, W))``).

    ``image_size``: the canvas, (H, W) = the checkpoint's ``config.json`` ``input_size`` ((2560,
    1920) for donut-base, (896, 672) for Nougat). ``tokens`` equal ``SwinEncoder.forward``'s output.
    """
    sd = _donut_encoder_keys(sd)
    state = swin_state_dict_from_donut_original(sd)  # first: another layout is refused by its keys
    if image_size is None:
        raise ConversionError(
            "pass image_size=(H, W): the canvas of the checkpoint's config.json input_size (e.g. "
            "(2560, 1920) for donut-base, (896, 672) for Nougat); the weights do not store it"
        )
    config = swin_config_from_donut_original(sd, image_size)
    return build_loaded(lambda: SwinTransformer(config), state, "donut-python encoder state dict")


TRANSFORMERS = {"SwinModel": from_transformers_swin, "DonutSwinModel": from_transformers_donut_swin}
TIMM = {"SwinTransformer": from_timm_swin}
ORIGINAL = {
    "swin": from_original_swin,
    "flatten-swin": from_original_swin,
    "donut-swin": from_donut_original_swin,
}
