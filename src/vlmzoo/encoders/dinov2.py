"""DINOv2 (Oquab et al. 2023) and DINOv2 with registers (Darcet et al. 2024) as ViT presets.

DINOv2 is a plain pre-LN ViT, so it is expressed with :class:`VisionTransformer` and a
:class:`ViTConfig`; this file only names the published sizes (``vit_small`` .. ``vit_giant2`` in
facebookresearch/dinov2's ``dinov2/models/vision_transformer.py``, whose functions are cited
below) and records what sets DINOv2 apart from the CLIP towers in ``vit.py``:

- Patch 14 with position embeddings stored for 518 px (37x37 = 1369 patches + 1 CLS row).
  LayerScale on both residual branches (``ls1.gamma``/``ls2.gamma``, ``dinov2/layers/block.py``),
  LayerNorm eps 1e-6, exact GELU, bias on qkv/proj/FFN and on the patch conv, a final
  LayerNorm, no ``ln_pre``.
- ViT-g/14 uses a packed SwiGLU FFN with hidden width 4096 (= ((int(4·1536·2/3) + 7) // 8)·8,
  ``dinov2/layers/swiglu_ffn.py``), not a round ratio of the width, hence ``mlp_dim``.
- A learned ``mask_token`` replaces masked patches *before* CLS and position embeddings
  (``prepare_tokens_with_masks``). It is part of every released checkpoint (and of
  transformers' models), so the presets have it.
- Register variants insert 4 register tokens right after CLS *after* the position embeddings
  are added (registers get no position embedding): tokens are [CLS, reg x4, patches]
  (``prepare_tokens_with_masks`` again).
- Position-embedding resizing differs between releases and peers (the original's
  ``interpolate_pos_encoding`` against transformers' ``Dinov2Embeddings``), so each preset and
  converter names its rule: the original models without registers scale by
  ``(target + 0.1) / 37`` (``"bicubic_offset"``, a DINO v1 kludge kept for parity); the register
  models resize to the target size with antialias (``"bicubic_antialias"``). transformers'
  ``Dinov2Model`` instead resizes by size without antialias (``"bicubic"``), timm always with
  antialias: the converters in ``vlmzoo.convert.dinov2`` / ``timm_vit`` set the matching rule.

VLM defaults: the selected tokens are the final-normed patch tokens (``feature_norm=True``,
the original's ``x_norm_patchtokens``); ``pooled`` is the final-normed CLS token
(``x_norm_clstoken``, both from ``forward_features``).
"""

from __future__ import annotations

from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.layers import PosEmbedResize
from vlmzoo.registry import register

# The released weights overwrite LayerScale; 1e-5 is DINOv2's training init (``layerscale`` in
# dinov2/configs/ssl_default_config.yaml) and timm's ``init_values`` for these models.
LAYER_SCALE_INIT = 1e-5


def dinov2_config(
    width: int,
    depth: int,
    num_heads: int,
    num_registers: int = 0,
    mlp_dim: int | None = None,
    swiglu: bool = False,
    image_size: int = 518,
    patch_size: int = 14,
    pos_embed_resize: PosEmbedResize | None = None,
    **overrides: object,
) -> ViTConfig:
    """A DINOv2 ViT config: LayerScale, eps 1e-6, GELU MLP (or packed SwiGLU when ``swiglu``).

    ``mlp_dim`` is the FFN hidden width (SwiGLU: of each half); ``None`` means 4 x ``width``.

    ``pos_embed_resize`` defaults to the original release's rule: ``"bicubic_offset"`` without
    registers, ``"bicubic_antialias"`` with them (``interpolate_offset`` 0.1 / ``interpolate_antialias``
    in dinov2's ``hub/backbones.py``). ``overrides`` are further
    :class:`ViTConfig` fields.
    """
    if pos_embed_resize is None:
        pos_embed_resize = "bicubic_antialias" if num_registers else "bicubic_offset"
    fields: dict[str, object] = dict(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.0,
        mlp_dim=mlp_dim,
        act="silu" if swiglu else "gelu",  # SwiGLU's gate is SiLU; the field documents it
        swiglu=swiglu,
        qkv_bias=True,
        patch_bias=True,
        class_token=True,
        num_registers=num_registers,
        mask_token=True,
        pre_norm=False,
        final_norm=True,
        norm_eps=1e-6,
        layer_scale_init=LAYER_SCALE_INIT,
        pos_embed_resize=pos_embed_resize,
        pool="cls",
        feature_tokens="patch",
        feature_norm=True,
    )
    return ViTConfig(**{**fields, **overrides})  # type: ignore[arg-type]


# name: (width, depth, heads, SwiGLU hidden or None) — dinov2's vit_small/base/large/giant2;
# head dim 64 throughout.
DINOV2_SIZES: dict[str, tuple[int, int, int, int | None]] = {
    "s14": (384, 12, 6, None),
    "b14": (768, 12, 12, None),
    "l14": (1024, 24, 16, None),
    "g14": (1536, 40, 24, 4096),
}
_PAPER_NAMES = {"s14": "ViT-S/14", "b14": "ViT-B/14", "l14": "ViT-L/14", "g14": "ViT-g/14"}

DINOV2_PRESETS: dict[str, ViTConfig] = {}
_DESCRIPTIONS: dict[str, str] = {}
for _size, (_width, _depth, _heads, _swiglu) in DINOV2_SIZES.items():
    for _registers, _suffix in ((0, ""), (4, "-reg4")):
        _name = f"dinov2-vit-{_size}{_suffix}"
        DINOV2_PRESETS[_name] = dinov2_config(
            _width, _depth, _heads, _registers, mlp_dim=_swiglu, swiglu=_swiglu is not None
        )
        _DESCRIPTIONS[_name] = f"DINOv2 ViT-{_size[0].upper()}/14" + (
            " with 4 registers" if _registers else ""
        )
# Tiny towers for tests and CPU demos: 56 px -> 4x4 patches, same structure and resize rules.
DINOV2_PRESETS["dinov2-vit-tiny"] = dinov2_config(64, 2, 4, image_size=56)
DINOV2_PRESETS["dinov2-vit-tiny-reg4"] = dinov2_config(64, 2, 4, num_registers=4, image_size=56)

for _name, _cfg in DINOV2_PRESETS.items():
    _description = _DESCRIPTIONS.get(_name, "tiny DINOv2-style ViT for tests and demos")
    register(_name, "encoder", _cfg, VisionTransformer, _description)
