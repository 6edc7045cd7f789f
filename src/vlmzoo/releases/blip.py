"""BLIP (Li et al. 2022): the transformers ports by Salesforce on the Hub.

- ``Salesforce/blip-image-captioning-base`` / ``-large``: ``BlipForConditionalGeneration``
  (salesforce/BLIP's COCO captioners ``model_base_caption_capfilt_large.pth`` /
  ``model_large_caption.pth``, 384 px) -> ``blip-base-caption`` / ``blip-large-caption``;
- ``Salesforce/blip-itm-base-coco`` / ``blip-itm-large-coco``: ``BlipForImageTextRetrieval``
  (the COCO retrieval checkpoints ``model_base_retrieval_coco.pth`` / ``model_large_retrieval_coco.pth``,
  without the momentum encoders, queues and ``temp``) -> ``blip-base-retrieval`` / ``blip-large-retrieval``;
- ``Salesforce/blip-vqa-base``: ``BlipForQuestionAnswering`` -> ``blip-base-vqa`` (384 px; the
  original ``model_base_vqa_capfilt_large.pth`` is fine-tuned at 480).

The ports keep BLIP's weights; their ``config.json`` gives the image encoder LayerNorm eps 1e-5
where salesforce/BLIP's vit.py uses 1e-6, and vlmzoo follows the config it converts (see
:mod:`vlmzoo.convert.blip`). salesforce/BLIP's own ``model_*.pth`` files (pretraining
``model_base.pth``, ``model_base_capfilt_large.pth``, ``model_large.pth`` included) are published
on storage.googleapis.com, not on the Hub, so they are not a release here: convert a downloaded
file with ``vlmzoo.convert.from_original(path, "blip")``.
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

_LICENCE = "BSD-3-Clause (salesforce/BLIP)"

# preset -> (Hub repo, transformers class, what it is)
_PORTS = {
    "blip-base-caption": (
        "Salesforce/blip-image-captioning-base",
        "BlipForConditionalGeneration",
        "BLIP ViT-B/16 COCO captioner (CapFilt-L), transformers port",
    ),
    "blip-large-caption": (
        "Salesforce/blip-image-captioning-large",
        "BlipForConditionalGeneration",
        "BLIP ViT-L/16 COCO captioner, transformers port",
    ),
    "blip-base-retrieval": (
        "Salesforce/blip-itm-base-coco",
        "BlipForImageTextRetrieval",
        "BLIP ViT-B/16 COCO image-text retrieval (ITC + ITM), transformers port",
    ),
    "blip-large-retrieval": (
        "Salesforce/blip-itm-large-coco",
        "BlipForImageTextRetrieval",
        "BLIP ViT-L/16 COCO image-text retrieval (ITC + ITM), transformers port",
    ),
    "blip-base-vqa": (
        "Salesforce/blip-vqa-base",
        "BlipForQuestionAnswering",
        "BLIP ViT-B/16 VQAv2 (CapFilt-L), transformers port",
    ),
}

MODELS = {
    preset: Release(repo, TRANSFORMERS_FILES, "transformers", cls, licence=_LICENCE, description=text)
    for preset, (repo, cls, text) in _PORTS.items()
}
