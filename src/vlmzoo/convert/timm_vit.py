"""timm ``VisionTransformer`` -> vlmzoo :class:`VisionTransformer` (timm's ``models/vision_transformer.py``).

vlmzoo's ViT uses timm's parameter names, so the weights carry over almost as they are; the work
is reading the config off the module (timm models do not keep a config object) and refusing
variants the vlmzoo ViT does not express instead of converting them wrongly.

Besides the CLIP towers this covers timm's DINOv2 models (``vit_*_patch14_dinov2``,
``vit_*_patch14_reg4_dinov2``): LayerScale, the packed SwiGLU of ViT-g (``SwiGLUPacked``: SiLU on
the first half of ``fc1``'s output times the second half, as DINOv2's ``w12``) and register
tokens. timm stores the register models with ``no_embed_class=True`` (its ``_convert_dinov2`` folds
``pos_embed[:, 0]`` into ``cls_token``): CLS already
carries its position embedding and ``pos_embed`` has patch rows only. vlmzoo keeps a CLS row, so
it gets a zero row and ``cls_token`` is taken as it is — identical outputs, at every size, since
both resize only the patch rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vlmzoo.convert.activations import from_module_activation
from vlmzoo.convert.state_dict import build_loaded
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.errors import ConversionError


def _unsupported(model: Any) -> list[str]:
    block = model.blocks[0]
    problems = []
    if getattr(model, "attn_pool", None) is not None:
        problems.append("attention-pool head (attn_pool)")
    if not isinstance(model.fc_norm, nn.Identity):
        problems.append("fc_norm after pooling")
    if getattr(model, "num_reg_tokens", 0) and not model.no_embed_class:
        # timm would add position embeddings to the registers; vlmzoo's registers have none, as
        # DINOv2's prepare_tokens_with_masks inserts them after the position embeddings
        problems.append("register tokens with position embeddings (no_embed_class=False)")
    if model.pos_embed is None:
        problems.append("no absolute position embedding")
    if not isinstance(block.attn.q_norm, nn.Identity):
        problems.append("qk-norm")
    if not isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity):
        problems.append("attention output norm (scale_attn_norm)")
    if not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity):
        problems.append("MLP norm (scale_mlp_norm)")
    if type(block).__name__ != "Block":
        problems.append(f"block type {type(block).__name__}")
    if type(block.mlp).__name__ not in ("Mlp", "GluMlp"):
        problems.append(f"MLP type {type(block.mlp).__name__}")
    if type(block.mlp).__name__ == "GluMlp" and (
        block.mlp.gate_last or type(block.mlp.act).__name__ != "SiLU"
    ):
        problems.append("GLU MLP other than SwiGLUPacked (SiLU gate on the first half)")
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
    swiglu = type(block.mlp).__name__ == "GluMlp"
    # DINOv2's VLM feature is the final-normed patch tokens (as the original's x_norm_patchtokens
    # and the vlmzoo presets); timm keeps its architecture name when built by create_model.
    dinov2 = "dinov2" in str((getattr(model, "pretrained_cfg", None) or {}).get("architecture", ""))
    return ViTConfig(
        image_size=img_h,
        patch_size=proj.kernel_size[0],
        in_channels=proj.in_channels,
        width=width,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / width,
        mlp_dim=block.mlp.fc1.out_features // 2 if swiglu else None,  # packed: fc1 holds both halves
        act=from_module_activation(block.mlp.act),
        swiglu=swiglu,
        qkv_bias=block.attn.qkv.bias is not None,
        patch_bias=proj.bias is not None,
        class_token=model.cls_token is not None,
        num_registers=getattr(model, "num_reg_tokens", 0),
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        norm_eps=model.norm.eps,
        # Only an init (the weights overwrite it): timm's init_values for its DINOv2 defs, else 1.
        layer_scale_init=(1e-5 if dinov2 else 1.0) if not isinstance(block.ls1, nn.Identity) else None,
        pos_embed_resize="bicubic_antialias",  # timm's resample_abs_pos_embed
        pool=pool if head is not None or pool != "none" else "none",
        embed_dim=head.out_features if head is not None else None,
        proj_bias=head is not None and head.bias is not None,
        feature_norm=dinov2,
    )


def from_timm_vit(model: Any) -> VisionTransformer:
    """Convert a timm ``VisionTransformer`` (e.g. ``vit_base_patch16_clip_224``,
    ``vit_small_patch14_reg4_dinov2``) with its weights.

    ``tokens`` follow the config defaults (DINOv2 models: final-normed patch tokens, equal to
    ``forward_features(x)[:, num_prefix_tokens:]``); position embeddings are resized like timm's
    ``dynamic_img_size`` (bicubic, antialias).
    """
    config = config_from_timm(model)
    dropped = ("fc_norm.",) if config.embed_dim else ("fc_norm.", "head.")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(dropped)}
    if model.no_embed_class and config.class_token:
        # CLS already holds its position embedding in timm (no_embed_class): give it a zero row here.
        pos = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    return build_loaded(lambda: VisionTransformer(config), sd, f"timm {type(model).__name__}")


TIMM = {"VisionTransformer": from_timm_vit}
