"""DINOv2 -> vlmzoo: transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` and the original
facebookresearch/dinov2 checkpoints (``dinov2/models/vision_transformer.py``; the renames of
transformers' ``models/dinov2/convert_dinov2_to_hf.py``). timm's ``vit_*_dinov2`` models are timm
``VisionTransformer`` objects and go through ``convert/timm_vit.py``.

vlmzoo's ViT already uses the original's parameter names (``blocks.{i}.attn.qkv``, ``ls1.gamma``,
...), so the original layout needs only three renames. transformers splits ``qkv`` into q/k/v and
renames everything else; its names also changed in version 5 (hub files keep the old names and
transformers 5 renames them at load, in its ``conversion_mapping.py``), so
:func:`state_dict_from_hf` accepts both.

Each converter also sets the position-embedding resize rule of its source, because the peers
disagree at non-native resolutions (the original's ``interpolate_pos_encoding`` in
``dinov2/models/vision_transformer.py`` against transformers' in ``modeling_dinov2.py``):
``Dinov2Model`` resizes by size without antialias,
``Dinov2WithRegistersModel`` by size with antialias, the original without registers by the
``(target + 0.1) / M`` scale factor and with registers like transformers' register model.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.state_dict import BLOCK_KEYS, build_loaded, count_blocks, fuse_rows, moved, renamed
from vlmzoo.encoders.dinov2 import LAYER_SCALE_INIT, dinov2_config
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]
# The sub-keys every block has in transformers 5's names (vlmzoo's, = the original's after three
# renames, are BLOCK_KEYS): checked before the depth is read off the keys.
HF_LAYER_KEYS = (
    "norm1.weight",
    "attention.q_proj.weight",
    "attention.k_proj.weight",
    "attention.v_proj.weight",
    "attention.o_proj.weight",
    "norm2.weight",
)


def _grid_side(pos_embed: torch.Tensor, source: str) -> int:
    """M for position embeddings of shape [1, 1 + M·M, D] (CLS row first)."""
    rows = pos_embed.shape[1] - 1
    side = round(rows**0.5)
    if side * side != rows:
        raise ConversionError(f"{source}: {rows} patch position embeddings do not form a square grid")
    return side


# --- transformers ---------------------------------------------------------------------------
def config_from_hf(model: Any) -> ViTConfig:
    """Read a :class:`ViTConfig` off a ``Dinov2Model`` / ``Dinov2WithRegistersModel`` instance.

    Sizes come from the weights themselves (conv kernel, Linear shapes, stored position rows,
    which parameters exist), not from config arithmetic such as the SwiGLU 2/3 rule, so what
    is converted is what the model computes; only the head count, activation and LayerNorm
    eps (which no weight shape holds) come from the model's config and modules.
    """
    name = type(model).__name__
    if name not in TRANSFORMERS:
        raise ConversionError(f"{name} is not a transformers DINOv2 model; supported: {sorted(TRANSFORMERS)}")
    sd, cfg = _v5_names(dict(model.state_dict())), model.config
    conv = sd["embeddings.patch_embeddings.projection.weight"]  # [D, C, p, p]
    width, patch = conv.shape[0], conv.shape[-1]
    if conv.shape[-1] != conv.shape[-2]:
        raise ConversionError(f"{name}: non-square patches {tuple(conv.shape[-2:])} are not supported")
    if sd["encoder.layer.0.attention.q_proj.weight"].shape[0] != width:
        raise ConversionError(f"{name}: attention width (heads x head_dim) differs from hidden size {width}")
    swiglu = "encoder.layer.0.mlp.gate_proj.weight" in sd
    act = cfg.hidden_act
    hidden = sd["encoder.layer.0.mlp.gate_proj.weight" if swiglu else "encoder.layer.0.mlp.fc1.weight"]
    registers = sd.get("embeddings.register_tokens")
    return dinov2_config(
        width=width,
        depth=count_blocks(sd, "encoder.layer.", HF_LAYER_KEYS, what="encoder layer"),
        num_heads=cfg.num_attention_heads,
        num_registers=registers.shape[1] if registers is not None else 0,
        mlp_dim=hidden.shape[0],
        swiglu=swiglu,
        image_size=_grid_side(sd["embeddings.position_embeddings"], name) * patch,
        patch_size=patch,
        # Dinov2Model resizes by size without antialias; the register model with antialias.
        pos_embed_resize="bicubic_antialias" if name == "Dinov2WithRegistersModel" else "bicubic",
        in_channels=conv.shape[1],
        act="silu" if swiglu else from_hf_activation(act, where=f"{name} hidden_act"),
        qkv_bias="encoder.layer.0.attention.q_proj.bias" in sd,
        mask_token="embeddings.mask_token" in sd,  # Dinov2Model drops it when use_mask_token=False
        norm_eps=model.layernorm.eps,
    )


# Hub files (and transformers 4) -> transformers 5 in-memory names (transformers' conversion_mapping.py).
_HUB_TO_V5 = (
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.weights_out\.", ".mlp.down_proj."),
)


def _v5_names(sd: StateDict) -> StateDict:
    """Bring hub-format keys to transformers 5 names; v5 keys pass through unchanged."""
    out: StateDict = {}
    for key, value in sd.items():
        if ".mlp.weights_in." in key:  # packed [gate; up] rows, split in halves as v5 does
            gate, up = value.chunk(2, dim=0)
            out[key.replace("mlp.weights_in.", "mlp.gate_proj.")] = gate
            out[key.replace("mlp.weights_in.", "mlp.up_proj.")] = up
        else:
            out[key] = value
    return renamed(out, _HUB_TO_V5)


# transformers 5 sub-module names of one layer -> vlmzoo's (q/k/v and SwiGLU's gate/up are fused).
_HF_MLP_NAMES = {
    "attention.o_proj": "attn.proj",
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_SWIGLU_NAMES = {
    "attention.o_proj": "attn.proj",
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.down_proj": "mlp.fc2",
}


def state_dict_from_hf(sd: StateDict, config: ViTConfig) -> StateDict:
    """A transformers DINOv2 state dict (v5 in-memory or hub names) -> VisionTransformer keys.

    q/k/v rows are concatenated into the fused ``qkv`` (rows q, k, v: the original layout);
    ``gate_proj``/``up_proj`` become the packed SwiGLU ``fc1`` = [gate; up] (the original
    ``w12``, whose first half goes through SiLU).
    """
    sd = _v5_names(sd)
    e = "embeddings."
    out: StateDict = {
        "cls_token": sd[f"{e}cls_token"],
        "pos_embed": sd[f"{e}position_embeddings"],
        "patch_embed.proj.weight": sd[f"{e}patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[f"{e}patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if config.mask_token:
        out["mask_token"] = sd[f"{e}mask_token"]
    if config.num_registers:
        out["reg_token"] = sd[f"{e}register_tokens"]
    biases = ("weight", "bias") if config.qkv_bias else ("weight",)
    names = _HF_SWIGLU_NAMES if config.swiglu else _HF_MLP_NAMES
    for i in range(config.depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        out |= fuse_rows(sd, [f"{src}attention.{n}_proj" for n in "qkv"], f"{dst}attn.qkv", biases)
        if config.swiglu:
            out |= fuse_rows(sd, [f"{src}mlp.{n}_proj" for n in ("gate", "up")], f"{dst}mlp.fc1")
        out |= moved(sd, src, dst, names)
        out[f"{dst}ls1.gamma"] = sd[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = sd[f"{src}layer_scale2.lambda1"]
    return out


def from_hf_dinov2(model: Any) -> VisionTransformer:
    """Convert ``Dinov2Model`` or ``Dinov2WithRegistersModel`` (with its weights).

    ``tokens`` of the result equal ``last_hidden_state[:, 1 + R:]``, ``pooled`` equals
    ``pooler_output`` and ``hidden_states`` equal transformers' ``hidden_states``.
    """
    config = config_from_hf(model)
    state = state_dict_from_hf(dict(model.state_dict()), config)
    return build_loaded(lambda: VisionTransformer(config), state, f"converted {type(model).__name__}")


# --- the original release (facebookresearch/dinov2) -----------------------------------------
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def state_dict_from_original(sd: StateDict) -> StateDict:
    """Original DINOv2 keys -> VisionTransformer keys.

    ``register_tokens`` -> ``reg_token``; SwiGLU ``mlp.w12``/``mlp.w3`` -> ``mlp.fc1``/``mlp.fc2``
    (same packing: the first half of ``w12``'s output goes through SiLU). Training checkpoints
    saved with ``block_chunks > 0`` name blocks ``blocks.{chunk}.{i}`` with the global index
    ``i``; the chunk level is dropped.
    """
    out: StateDict = {}
    for key, value in sd.items():
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out["reg_token" if key == "register_tokens" else key] = value
    return out


def config_from_original(sd: StateDict) -> ViTConfig:
    """Infer the architecture from a state dict already renamed by :func:`state_dict_from_original`.

    Sizes are read off the tensors; a packed SwiGLU is recognised by ``fc1`` having twice the
    rows of ``fc2``'s input (a plain MLP has equal widths). Heads are not stored: every released
    DINOv2 has head dim 64 (S/B/L/g: 6/12/16/24 heads, ``vit_small`` .. ``vit_giant2`` in
    ``dinov2/models/vision_transformer.py``), so ``num_heads = width // 64``. The resize rule
    follows the hub models (``dinov2/hub/backbones.py``): ``interpolate_offset`` 0.1 without
    registers, ``interpolate_antialias`` with them.
    """
    for key in (
        "patch_embed.proj.weight",
        "pos_embed",
        "cls_token",
        "norm.weight",
        "blocks.0.mlp.fc2.weight",
    ):
        if key not in sd:
            raise ConversionError(f"not an original DINOv2 state dict: no {key!r}")
    conv = sd["patch_embed.proj.weight"]
    width, in_channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    if width % 64:
        raise ConversionError(f"width {width} is not a multiple of 64; DINOv2 heads are 64 wide")
    hidden = sd["blocks.0.mlp.fc2.weight"].shape[1]
    registers = sd.get("reg_token")
    return dinov2_config(
        width=width,
        depth=count_blocks(sd, "blocks.", BLOCK_KEYS),
        num_heads=width // 64,
        num_registers=registers.shape[1] if registers is not None else 0,
        mlp_dim=hidden,
        swiglu=sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * hidden,
        image_size=_grid_side(sd["pos_embed"], "original DINOv2 state dict") * patch,
        patch_size=patch,
        in_channels=in_channels,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        mask_token="mask_token" in sd,
        layer_scale_init=LAYER_SCALE_INIT if "blocks.0.ls1.gamma" in sd else None,  # values come from sd
    )


def from_original_dinov2(sd: StateDict) -> VisionTransformer:
    """An original facebookresearch/dinov2 backbone state dict (``dinov2_vit*14[_reg4]_pretrain.pth``).

    Returns the equivalent :class:`VisionTransformer`: ``tokens`` = ``x_norm_patchtokens``,
    ``pooled`` = ``x_norm_clstoken``; other resolutions are resized with the original's rule.
    """
    state = state_dict_from_original(sd)
    config = config_from_original(state)
    return build_loaded(lambda: VisionTransformer(config), state, "original DINOv2 state dict")


TRANSFORMERS = {"Dinov2Model": from_hf_dinov2, "Dinov2WithRegistersModel": from_hf_dinov2}
ORIGINAL = {"dinov2": from_original_dinov2}
