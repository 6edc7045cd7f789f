"""EVA-CLIP ViT-g/14 as BLIP-2's frozen image encoder (Fang et al. 2023; Li et al. 2023, BLIP-2
section 3.4; LAVIS's ``lavis/models/eva_vit.py``).

No new module: EVA is a :class:`VisionTransformer` with a few switches —

- attention biases ``q_bias`` and ``v_bias`` only (``qkv_bias="qv"``; the k bias is fixed at zero),
  so LAVIS's ``visual_encoder.blocks.{i}.attn.{q_bias,v_bias}`` load 1:1;
- exact GELU, pre-LN blocks with LayerNorm eps 1e-6, no LayerScale, absolute position embeddings
  (bicubic-resized for other image sizes, as LAVIS does at load time);
- the MLP width ``int(1408 * 4.3637) = 6144`` (EVA's ratio, kept so the rounding is EVA's own);
- 39 blocks: the 40-block EVA ViT-g without its last block;
- BLIP-2 feeds the Q-Former all 257 tokens (CLS kept) of the last block after one more LayerNorm
  (LAVIS ``ln_vision``, transformers ``post_layernorm``), which is this ViT's final ``norm``
  applied to the selected layer: ``feature_norm=True``, ``feature_tokens="all"``, no pooling.

LAVIS's ``ln_vision`` uses eps 1e-5 while transformers (and vlmzoo, whose ViT has one eps) use the
blocks' 1e-6; the difference is far below fp16 resolution of the features.
"""

from __future__ import annotations

from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.registry import register

EVA_MLP_RATIO = 4.3637  # EVA ViT-g's ratio: int(1408 * 4.3637) = 6144


def eva_vit_config(
    image_size: int = 224,
    patch_size: int = 14,
    width: int = 1408,
    depth: int = 39,
    num_heads: int = 16,
    mlp_ratio: float = EVA_MLP_RATIO,
) -> ViTConfig:
    """An EVA ViT as BLIP-2 uses it: q/v biases, exact GELU, all tokens through the final norm."""
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        act="gelu",
        qkv_bias="qv",
        patch_bias=True,
        class_token=True,
        pre_norm=False,
        final_norm=True,
        norm_eps=1e-6,
        pos_embed_resize="bicubic",
        pool="none",
        feature_layer=-1,
        feature_tokens="all",
        feature_norm=True,
    )


EVA_PRESETS: dict[str, ViTConfig] = {
    # BLIP-2's encoder: 224 px -> 16x16 patches + CLS = 257 tokens of width 1408.
    "eva-vit-g14": eva_vit_config(),
    # The COCO-caption BLIP-2 fine-tunes run it at 364 px (26x26 + 1 = 677 tokens).
    "eva-vit-g14-364": eva_vit_config(image_size=364),
    # Same structure, a few hundred thousand parameters, for tests and CPU demos.
    "eva-vit-tiny": eva_vit_config(
        image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_ratio=4.0
    ),
}

for _name, _cfg in EVA_PRESETS.items():
    register(_name, "encoder", _cfg, VisionTransformer, "EVA ViT (BLIP-2 image encoder)")
