"""Segment Anything ViT-B/L/H image encoders: the transformers ports by Meta (``facebook/sam-vit-*``).

Each repo holds a whole ``SamModel``; ``vlmzoo/convert/sam.py`` keeps its ``vision_encoder``
(the prompt encoder and mask decoder are not part of the encoder preset). The original
``sam_vit_*.pth`` files are published on dl.fbaipublicfiles.com, not on the Hub, so they are not
a release here (convert a downloaded file with ``from_original(path, "segment-anything")``).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_LICENCE = "Apache-2.0 (facebookresearch/segment-anything)"

ENCODERS = {
    f"sam-vit-{size}": Release(
        f"facebook/sam-vit-{word}",
        TRANSFORMERS_FILES,
        "transformers",
        "SamModel",
        licence=_LICENCE,
        description="SAM image encoder, transformers port",
    )
    for size, word in {"b": "base", "l": "large", "h": "huge"}.items()
}
