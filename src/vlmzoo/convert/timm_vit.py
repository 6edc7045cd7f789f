"""timm ``VisionTransformer`` -> vlmzoo :class:`VisionTransformer` (SPEC §1.7).

vlmzoo's ViT uses timm's parameter names, so the weights carry over almost as they are; the work
is reading the config off the module (timm models do not keep a config object) and refusing
variants the vlmzoo ViT does not express instead of converting them wrongly.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from vlmzoo.checkpoint import load_state_dict_strict
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.errors import ConversionError
from vlmzoo.layers import Activation


def _activation(act: nn.Module) -> Activation:
    kind = type(act).__name__
    if kind == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if kind == "QuickGELU":
        return "quick_gelu"
    if kind in ("SiLU", "ReLU"):
        return kind.lower()  # type: ignore[return-value]
    raise ConversionError(f"timm activation {kind} has no vlmzoo equivalent")


def _unsupported(model: Any) -> list[str]:
    block = model.blocks[0]
    problems = []
    if getattr(model, "attn_pool", None) is not None:
        problems.append("attention-pool head (attn_pool)")
    if not isinstance(model.fc_norm, nn.Identity):
        problems.append("fc_norm after pooling")
    if getattr(model, "num_reg_tokens", 0):
        problems.append("register tokens (convert DINOv2-style models with their own converter)")
    if model.no_embed_class:
        problems.append("no_embed_class position embeddings")
    if not isinstance(block.attn.q_norm, nn.Identity):
        problems.append("qk-norm")
    if not isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity):
        problems.append("attention output norm (scale_attn_norm)")
    if not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
        problems.append("MLP norm (scale_mlp_norm)")
    if type(block).__name__ != "Block":
        problems.append(f"block type {type(block).__name__}")
    if type(block.mlp).__name__ != "Mlp":
        problems.append(f"MLP type {type(block.mlp).__name__}")
    if model.global_pool not in ("token", "avg", ""):
        problems.append(f"global_pool={model.global_pool!r}")
    if not isinstance(model.norm, nn.LayerNorm):
        problems.append(f"final norm {type(model.norm).__name__}")
    return problems


def config_from_timm(model: Any) -> ViTConfig:
    """Read a :class:`ViTConfig` off a timm ``VisionTransformer`` instance."""
    if type(model).__name__ != "VisionTransformer":
        raise ConversionError(f"{type(model).__name__} is not a timm VisionTransformer")
    problems = _unsupported(model)
    if problems:
        raise ConversionError(
            f"timm model uses features vlmzoo's ViT does not express: {', '.join(problems)}"
        )
    block, proj = model.blocks[0], model.patch_embed.proj
    width = model.embed_dim
    img_h, img_w = model.patch_embed.img_size
    if img_h != img_w:
        raise ConversionError(f"non-square native image size {img_h}x{img_w} is not supported")
    head = model.head if isinstance(model.head, nn.Linear) else None
    pool = {"token": "cls", "avg": "mean", "": "none"}[model.global_pool]
    return ViTConfig(
        image_size=img_h,
        patch_size=proj.kernel_size[0],
        in_channels=proj.in_channels,
        width=width,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / width,
        act=_activation(block.mlp.act),
        qkv_bias=block.attn.qkv.bias is not None,
        patch_bias=proj.bias is not None,
        class_token=model.cls_token is not None,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        norm_eps=model.norm.eps,
        layer_scale_init=1.0 if not isinstance(block.ls1, nn.Identity) else None,
        pos_embed_resize="bicubic_antialias",  # timm's resample_abs_pos_embed
        pool=pool if head is not None or pool != "none" else "none",
        embed_dim=head.out_features if head is not None else None,
        proj_bias=head is not None and head.bias is not None,
    )


def from_timm_vit(model: Any) -> VisionTransformer:
    """Convert a timm ``VisionTransformer`` (e.g. ``vit_base_patch16_clip_224``) with its weights."""
    config = config_from_timm(model)
    dropped = ("fc_norm.",) if config.embed_dim else ("fc_norm.", "head.")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(dropped)}
    ours = VisionTransformer(config)
    load_state_dict_strict(ours, sd, source=f"timm {type(model).__name__}")
    return ours


TIMM = {"VisionTransformer": from_timm_vit}
