"""Vary-toy's vision side and GOT-OCR2's tower as Vary's vision vocabulary.

- ``vary-toy-encoder`` from ``HaoranWei/Vary-toy`` (Ucas-HaoranWei/Vary-toy): the whole Vary-toy
  checkpoint, of which ``from_original(sd, "vary-encoder")`` reads the CLIP-L tower
  (``vision_tower.*``), the vocabulary (``vision_tower_high.*``) and the two projectors
  (``mm_projector``, ``mm_projector_vary``), locating the prefix from anchor keys.
- ``vary-vocab`` from GOT-OCR2: transformers' port ``stepfun-ai/GOT-OCR-2.0-hf``
  (``GotOcr2ForConditionalGeneration``: the SAM-B tower + ``conv_upsampler1/2`` are Vary's
  ``net_2`` / ``net_3``), or the original ``stepfun-ai/GOT-OCR2_0`` (``model.vision_tower_high.*``,
  read by the ``vary`` layout).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

# Any of the weight layouts transformers' save_pretrained writes (the Qwen-based remote-code
# checkpoints are saved with it).
_CHECKPOINT_FILES = tuple(f for f in TRANSFORMERS_FILES if f != "config.json")

ENCODERS = {
    "vary-toy-encoder": Release(
        "HaoranWei/Vary-toy",
        _CHECKPOINT_FILES,
        "original",
        "vary-encoder",
        description="Vary-toy's vision side: CLIP-L/14 + vision vocabulary + projectors",
    ),
    "vary-vocab": (
        Release(
            "stepfun-ai/GOT-OCR-2.0-hf",
            TRANSFORMERS_FILES,
            "transformers",
            "GotOcr2ForConditionalGeneration",
            description="GOT-OCR2's SAM-B tower + conv_upsampler1/2, transformers port",
        ),
        Release(
            "stepfun-ai/GOT-OCR2_0",
            ("model.safetensors",),
            "original",
            "vary",
            description="GOT-OCR2's vision_tower_high (original release)",
        ),
    ),
}
