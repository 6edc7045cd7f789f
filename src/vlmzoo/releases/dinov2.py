"""DINOv2 ViT-S/B/L/g, with and without registers: the transformers ports by Meta (``facebook/dinov2-*``).

``facebook/dinov2-{small,base,large,giant}`` hold a ``Dinov2Model``;
``facebook/dinov2-with-registers-{small,base,large,giant}`` a ``Dinov2WithRegistersModel``
(4 registers). Both converters are in ``vlmzoo/convert/dinov2.py``.
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_SIZES = {"s14": "small", "b14": "base", "l14": "large", "g14": "giant"}
_LICENCE = "Apache-2.0 (facebookresearch/dinov2)"

ENCODERS = {
    f"dinov2-vit-{size}": Release(
        f"facebook/dinov2-{word}",
        TRANSFORMERS_FILES,
        "transformers",
        "Dinov2Model",
        licence=_LICENCE,
        description="DINOv2, transformers port",
    )
    for size, word in _SIZES.items()
} | {
    f"dinov2-vit-{size}-reg4": Release(
        f"facebook/dinov2-with-registers-{word}",
        TRANSFORMERS_FILES,
        "transformers",
        "Dinov2WithRegistersModel",
        licence=_LICENCE,
        description="DINOv2 with 4 registers, transformers port",
    )
    for size, word in _SIZES.items()
}
