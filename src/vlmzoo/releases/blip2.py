"""BLIP-2 OPT-2.7B: the transformers port by Salesforce (``Salesforce/blip2-opt-2.7b``).

A ``Blip2ForConditionalGeneration`` (EVA ViT-g/14, Q-Former, OPT-2.7B) in sharded files with an
index; ``vlmzoo/convert/blip2.py`` converts the whole model.
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

MODELS = {
    "blip2-opt-2.7b": Release(
        "Salesforce/blip2-opt-2.7b",
        TRANSFORMERS_FILES,
        "transformers",
        "Blip2ForConditionalGeneration",
        licence="MIT (salesforce/LAVIS)",
        description="BLIP-2 OPT-2.7B, transformers port",
    ),
}
