"""Donut (``naver-clova-ix/donut-base``) and Nougat (``facebook/nougat-small`` / ``-base``).

- ``naver-clova-ix/donut-base``, branch ``main``: transformers' ``VisionEncoderDecoderModel`` port
  (``DonutSwinModel`` + ``MBartForCausalLM``; ``pytorch_model.bin``), the default; its ``official``
  branch holds clovaai/donut's own ``DonutModel`` checkpoint and ``config.json`` (``input_size``),
  which donut-python loads with ``revision="official"`` — the alternative source.
- ``naver-clova-ix/donut-base-finetuned-docvqa`` / ``-rvlcdip``: the DocVQA and RVL-CDIP
  fine-tunes (transformers ports). The CORD-v2 fine-tune is not declared: its vocabulary size
  (the tokens its receipts' fields add) is not known here, so no preset can have its sizes.
- ``facebook/nougat-small`` / ``facebook/nougat-base``: transformers' port of the 0.1.0-small /
  0.1.0-base releases. The original files are GitHub release assets of facebookresearch/nougat,
  not on the Hub; convert a downloaded ``pytorch_model.bin`` with
  ``from_original(path, "nougat")`` (its ``config.json`` beside it).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_DONUT_LICENCE = "MIT (clovaai/donut)"
_NOUGAT_LICENCE = "CC-BY-NC-4.0 weights (facebookresearch/nougat)"

MODELS = {
    "donut-base": (
        Release(
            "naver-clova-ix/donut-base",
            TRANSFORMERS_FILES,
            "transformers",
            "VisionEncoderDecoderModel",
            licence=_DONUT_LICENCE,
            description="Donut pretrained on SynthDoG + IIT-CDIP, transformers port",
        ),
        Release(
            "naver-clova-ix/donut-base",
            ("config.json", "pytorch_model.bin"),
            "original",
            "donut",
            revision="official",
            config_options={"image_size": "input_size"},
            licence=_DONUT_LICENCE,
            description="Donut, clovaai/donut's own checkpoint (official branch)",
        ),
    ),
    **{
        f"donut-{task}": Release(
            f"naver-clova-ix/donut-base-finetuned-{task}",
            TRANSFORMERS_FILES,
            "transformers",
            "VisionEncoderDecoderModel",
            licence=_DONUT_LICENCE,
            description=f"Donut fine-tuned on {name}, transformers port",
        )
        for task, name in {"docvqa": "DocVQA", "rvlcdip": "RVL-CDIP"}.items()
    },
    **{
        f"nougat-{size}": Release(
            f"facebook/nougat-{size}",
            TRANSFORMERS_FILES,
            "transformers",
            "VisionEncoderDecoderModel",
            licence=_NOUGAT_LICENCE,
            description=f"Nougat 0.1.0-{size}, transformers port",
        )
        for size in ("small", "base")
    },
}
