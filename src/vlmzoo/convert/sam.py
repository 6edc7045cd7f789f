"""SAM image encoder -> vlmzoo; Vary / GOT-OCR2 are in ``convert/vary.py``.

vlmzoo's :class:`SamEncoder` keeps the original parameter names except the MLP (``mlp.fc1/fc2``
like timm, the original's ``mlp.lin1/lin2``), so the layouts differ only by renames:

- original ``sam_vit_*.pth``: ``image_encoder.*`` (segment-anything's
  ``segment_anything/modeling/image_encoder.py``; prompt encoder and mask decoder dropped);
- transformers ``SamVisionModel`` / ``SamModel``: ``vision_encoder.*`` with ``layers``,
  ``layer_norm1/2``, ``patch_embed.projection``, ``neck.conv1/layer_norm1/conv2/layer_norm2``
  (the renames of transformers' ``models/sam/convert_sam_to_hf.py``);
- timm ``VisionTransformerSAM`` (``samvit_*``): the original names with ``mlp.fc``.

Sizes are read off the peer's config (transformers) or module (timm), or off the tensors for
state dicts: width and patch from the patch conv, the grid from ``pos_embed``, the head dim from
the relative-position tables (heads = width / head dim), and each block's kind from its table
length (2·grid − 1 rows: global; otherwise windowed with window = (rows + 1) / 2).

Quirks carried over, not "fixed": timm builds ``samvit_*`` blocks with ``nn.LayerNorm``'s
default eps 1e-5 where the original uses 1e-6, so a timm model converts with ``norm_eps=1e-5``.
transformers and the original refuse inputs other than the native size; the converted models
resize like timm (``pos_embed_resize="bicubic_antialias"``, see :mod:`vlmzoo.encoders.sam`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vlmzoo.convert.activations import from_hf_activation, from_module_activation
from vlmzoo.convert.state_dict import BLOCK_KEYS, build_loaded, count_blocks, renamed, strip_prefix
from vlmzoo.encoders.sam import SamConfig, SamEncoder
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]
# The sub-keys every block of the original layout has (checked before the depth is read off the keys).
SAM_BLOCK_KEYS = (*BLOCK_KEYS, "attn.rel_pos_h", "attn.rel_pos_w")


# --- state-dict renames ---------------------------------------------------------------------
def sam_state_dict_from_original(sd: StateDict) -> StateDict:
    """Original SAM encoder keys (prefix stripped) -> SamEncoder keys: only ``mlp.lin`` -> ``mlp.fc``."""
    return renamed(sd, _ORIGINAL_RENAMES)


_ORIGINAL_RENAMES = ((r"\.mlp\.lin([12])\.", r".mlp.fc\1."),)
_HF_RENAMES = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
    (r"^layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^layers\.", "blocks."),
    *_ORIGINAL_RENAMES,
)


def sam_state_dict_from_hf(sd: StateDict) -> StateDict:
    """transformers ``SamVisionEncoder`` / ``GotOcr2VisionEncoder`` keys (no prefix) -> SamEncoder keys."""
    return renamed(sd, _HF_RENAMES)


# --- transformers ---------------------------------------------------------------------------
def sam_config_from_hf(hf: Any) -> SamConfig:
    """A :class:`SamConfig` equal to a transformers ``SamVisionConfig`` / ``GotOcr2VisionConfig``."""
    image, patch = hf.image_size, hf.patch_size
    if not isinstance(image, int) or not isinstance(patch, int):
        raise ConversionError(f"non-square image_size={image!r} / patch_size={patch!r} are not supported")
    mlp_dim = getattr(hf, "mlp_dim", None) or int(hf.hidden_size * getattr(hf, "mlp_ratio", 4.0))
    return SamConfig(
        image_size=image,
        patch_size=patch,
        in_channels=hf.num_channels,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=mlp_dim,
        act=from_hf_activation(hf.hidden_act),
        qkv_bias=hf.qkv_bias,
        norm_eps=hf.layer_norm_eps,
        window_size=hf.window_size,
        global_attn_indexes=tuple(hf.global_attn_indexes),
        use_abs_pos=hf.use_abs_pos,
        use_rel_pos=hf.use_rel_pos,
        neck_dim=hf.output_channels,
        neck_eps=1e-6,  # SamLayerNorm's default; transformers does not pass the config's eps
    )


def _hf_vision_encoder(model: Any) -> Any:
    """The ``SamVisionEncoder`` / ``GotOcr2VisionEncoder`` inside a transformers model."""
    name = type(model).__name__
    if name in ("SamVisionEncoder", "GotOcr2VisionEncoder"):
        return model
    if name in ("SamVisionModel", "SamModel"):
        return model.vision_encoder
    if name == "GotOcr2Model":
        return model.vision_tower
    if name == "GotOcr2ForConditionalGeneration":
        return model.model.vision_tower
    raise ConversionError(f"{name} holds no SAM image encoder vlmzoo knows of")


def from_hf_sam(model: Any) -> SamEncoder:
    """``SamVisionModel``, ``SamModel`` (image encoder only) or a bare ``SamVisionEncoder`` /
    ``GotOcr2VisionEncoder`` -> :class:`SamEncoder` (tokens = the neck output, ``last_hidden_state``)."""
    encoder = _hf_vision_encoder(model)
    config = sam_config_from_hf(encoder.config)
    state = sam_state_dict_from_hf(dict(encoder.state_dict()))
    return build_loaded(lambda: SamEncoder(config), state, f"converted {type(model).__name__}")


# --- timm -----------------------------------------------------------------------------------
def sam_config_from_timm(model: Any) -> SamConfig:
    """Read a :class:`SamConfig` off a timm ``VisionTransformerSAM``; refuses variants SAM does not have."""
    if type(model).__name__ != "VisionTransformerSAM":
        raise ConversionError(f"{type(model).__name__} is not a timm VisionTransformerSAM")
    blocks = list(model.blocks)
    block, attn = blocks[0], blocks[0].attn
    problems = []
    if not isinstance(model.norm_pre, nn.Identity):
        problems.append("pre-norm (norm_pre)")
    if model.patch_embed.proj.bias is None:
        problems.append("patch embedding without bias")
    if getattr(model, "rope_global", None) is not None:
        problems.append("rotary position embedding (use_rope)")
    if not isinstance(attn.q_norm, nn.Identity):
        problems.append("qk-norm")
    if not isinstance(block.ls1, nn.Identity):
        problems.append("LayerScale")
    if not isinstance(model.neck, nn.Sequential):
        problems.append(f"neck {type(model.neck).__name__} (neck_chans=None)")
    if any(p.numel() for p in model.head.parameters()):
        problems.append("a classifier head (create it with num_classes=0 or call reset_classifier(0))")
    if tuple(model.patch_embed.patch_size) != (model.patch_embed.patch_size[0],) * 2:
        problems.append("non-square patches")
    if problems:
        raise ConversionError(
            f"timm SAM model uses features vlmzoo's SamEncoder does not express: {problems}"
        )
    img = model.patch_embed.img_size
    if img is None or img[0] != img[1]:
        raise ConversionError(f"non-square or dynamic img_size={img} is not supported")
    windows = {b.window_size for b in blocks if b.window_size > 0}
    if len(windows) > 1:
        raise ConversionError(f"blocks use several window sizes {sorted(windows)}")
    return SamConfig(
        image_size=img[0],
        patch_size=model.patch_embed.patch_size[0],
        in_channels=model.patch_embed.proj.in_channels,
        width=model.embed_dim,
        depth=len(blocks),
        num_heads=attn.num_heads,
        mlp_dim=block.mlp.fc1.out_features,
        act=from_module_activation(block.mlp.act),
        qkv_bias=attn.qkv.bias is not None,
        norm_eps=block.norm1.eps,  # 1e-5 in timm's samvit_* (nn.LayerNorm default), not SAM's 1e-6
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=tuple(i for i, b in enumerate(blocks) if b.window_size == 0),
        use_abs_pos=model.pos_embed is not None,
        use_rel_pos=attn.use_rel_pos,
        neck_dim=model.neck[0].out_channels,
        neck_eps=model.neck[1].eps,
        pos_embed_resize="bicubic_antialias",  # timm's resample_abs_pos_embed_nhwc
    )


def from_timm_sam(model: Any) -> SamEncoder:
    """timm ``VisionTransformerSAM`` (``samvit_*``, head-less) -> :class:`SamEncoder` (= ``forward_features``)."""
    config = sam_config_from_timm(model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    return build_loaded(lambda: SamEncoder(config), state, "converted timm VisionTransformerSAM")


# --- original releases ----------------------------------------------------------------------
def sam_config_from_state_dict(sd: StateDict, origin: str = "") -> SamConfig:
    """Infer a :class:`SamConfig` from SamEncoder-named tensors (see the module docstring).

    ``origin``: the prefix the caller stripped from the file's keys (for error messages).
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.rel_pos_h"):
        if key not in sd:
            raise ConversionError(
                f"not a SAM image-encoder state dict: {key!r} is missing (sizes cannot be inferred "
                f"without it; found e.g. {sorted(sd)[:5]})"
            )
    conv = sd["patch_embed.proj.weight"]
    width, in_channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid_h, grid_w = sd["pos_embed"].shape[1:3]
    if grid_h != grid_w:
        raise ConversionError(f"non-square pos_embed grid {grid_h}x{grid_w} is not supported")
    depth = count_blocks(sd, "blocks.", SAM_BLOCK_KEYS, origin=origin)
    head_dim = sd["blocks.0.attn.rel_pos_h"].shape[1]
    windows, global_indexes = set(), []
    for i in range(depth):
        rows = sd[f"blocks.{i}.attn.rel_pos_h"].shape[0]
        if rows == 2 * grid_h - 1:  # tables sized for the whole grid (a window == grid is the same thing)
            global_indexes.append(i)
        else:
            windows.add((rows + 1) // 2)
    if len(windows) > 1:
        raise ConversionError(f"blocks use several window sizes {sorted(windows)}")
    return SamConfig(
        image_size=grid_h * patch,
        patch_size=patch,
        in_channels=in_channels,
        width=width,
        depth=depth,
        num_heads=width // head_dim,
        mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=tuple(global_indexes),
        neck_dim=sd["neck.0.weight"].shape[0] if "neck.0.weight" in sd else None,
    )


def from_original_sam(sd: StateDict) -> SamEncoder:
    """A segment-anything checkpoint (``sam_vit_{b,l,h}_*.pth``: ``image_encoder.*``) -> :class:`SamEncoder`.

    Bare encoder state dicts (no ``image_encoder.`` prefix) are accepted too; the prompt encoder
    and mask decoder are not part of the result.
    """
    origin = "image_encoder." if any(k.startswith("image_encoder.") for k in sd) else ""
    state = sam_state_dict_from_original(strip_prefix(sd, origin))
    config = sam_config_from_state_dict(state, origin)
    return build_loaded(lambda: SamEncoder(config), state, "segment-anything image_encoder state dict")


TRANSFORMERS = {
    "SamVisionModel": from_hf_sam,
    "SamModel": from_hf_sam,
    "SamVisionEncoder": from_hf_sam,
    "GotOcr2VisionEncoder": from_hf_sam,
}
TIMM = {"VisionTransformerSAM": from_timm_sam}
ORIGINAL = {"segment-anything": from_original_sam}
