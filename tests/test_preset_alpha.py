"""Every registered processor preset states what becomes of transparency, as its family's
reference pipeline does, rather than inheriting a field's default."""

import dataclasses
from contextlib import contextmanager

import pytest

from vlmzoo.processing.anyres import AnyResProcessorConfig
from vlmzoo.processing.blip_processor import BLIPProcessorConfig
from vlmzoo.processing.document_image import DocumentImageConfig
from vlmzoo.processing.image_input import ALPHA_MODES
from vlmzoo.processing.processor import ProcessorConfig
from vlmzoo.processing.processor_presets import _FAMILIES, processor_for
from vlmzoo.processing.siglip_processor import SigLIPProcessorConfig
from vlmzoo.registry import list_models

# family -> alpha mode, with the reference pipeline it follows
EXPECTED = {
    "llava-1.5": "drop",  # LLaVA: Image.open(path).convert('RGB')
    "llava-next": "drop",  # LLaVA-NeXT's eval: convert('RGB')
    "llava-onevision": "drop",  # LLaVA-VL/LLaVA-NeXT: convert('RGB')
    "blip2": "drop",  # LAVIS's data sets
    "eva": "drop",  # LAVIS (BLIP-2's tower)
    "blip": "drop",  # salesforce/BLIP's data sets
    "openflamingo": "drop",  # open_clip's _convert_to_rgb
    "vary-toy": "drop",  # Vary-toy's load_image
    "vary": "drop",  # Vary's load_image
    "clip": "drop",  # OpenAI CLIP's _convert_image_to_rgb
    "dinov2": "drop",  # DINOv2's ImageDataDecoder
    "sam": "drop",  # segment_anything reads with cv2.imread
    "donut": "drop",  # clovaai/donut's prepare_input
    "nougat": "drop",  # facebookresearch/nougat's prepare_input
    "siglip": "white",  # transformers' SiglipImageProcessor: convert_to_rgb
    "siglip2-naflex": "refuse",  # transformers' Siglip2ImageProcessor converts no mode
}

PRESETS = sorted({name for pattern, kind, _ in _FAMILIES for name in list_models(pattern, kind=kind)})
CONFIG_CLASSES = (
    ProcessorConfig,
    AnyResProcessorConfig,
    BLIPProcessorConfig,
    SigLIPProcessorConfig,
    DocumentImageConfig,
)


def _alpha(config):
    return config.alpha if hasattr(config, "alpha") else config.image.alpha


@contextmanager
def _alpha_default(value):
    """Every processor config class's ``alpha`` default set to ``value`` for a while."""
    saved = []
    for cls in CONFIG_CLASSES:
        init = cls.__init__
        names = [f.name for f in dataclasses.fields(cls)]
        defaults = list(init.__defaults__)
        defaults[names.index("alpha") - (len(names) - len(defaults))] = value
        saved.append((init, init.__defaults__))
        init.__defaults__ = tuple(defaults)
    try:
        yield
    finally:
        for init, defaults in saved:
            init.__defaults__ = defaults


def test_every_registered_preset_has_its_familys_reference_alpha():
    wrong = {}
    for name in PRESETS:
        config = processor_for(name)
        if EXPECTED.get(config.family) != _alpha(config):
            wrong[name] = (config.family, _alpha(config))
    assert not wrong, f"add the family to EXPECTED with its reference pipeline, or fix the preset: {wrong}"


@pytest.mark.parametrize("default", ["refuse", "white"])
def test_every_preset_states_its_alpha_rather_than_taking_the_default(default):
    before = {name: _alpha(processor_for(name)) for name in PRESETS}
    with _alpha_default(default):
        assert ProcessorConfig(family="probe").alpha == default  # the patch took
        after = {name: _alpha(processor_for(name)) for name in PRESETS}
    assert after == before


def test_the_expected_modes_are_known_modes():
    assert set(EXPECTED.values()) <= set(ALPHA_MODES)
