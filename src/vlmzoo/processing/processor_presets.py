"""The processor of each published family, found by model or encoder name.

Each recipe states what the released pipeline does, with its source:

* **LLaVA-1.5** (llava/mm_utils.py ``process_images`` with ``image_aspect_ratio="pad"``):
  ``expand2square`` filled with the CLIP mean colour, then the CLIPImageProcessor of
  openai/clip-vit-large-patch14-336 (bicubic shortest side 336, centre crop 336 with
  transformers' floor offsets, CLIP mean/std); the ``vicuna_v1`` template; Llama's BOS.
* **BLIP-2** (LAVIS lavis/processors/blip_processors.py ``BlipImageEvalProcessor(224)``):
  bicubic resize to 224 x 224 (no crop), CLIP mean/std; the ``blip2`` template; the 32 query
  embeddings go before OPT's BOS ``</s>`` (LAVIS concatenates them in front of the embedded
  prompt, transformers' ``Blip2Processor`` writes the image tokens before BOS).
* **OpenFlamingo** (open_clip's ``image_transform`` for ViT-L-14 openai, used by
  open_flamingo/src/factory.py): torchvision's bicubic resize 224 + centre crop 224 (round
  offsets), CLIP mean/std; the ``openflamingo`` template; no BOS (GPT-NeoX / MPT tokenizer), to
  which factory.py adds ``<|endofchunk|>`` and ``<image>``.
* **Vary-toy** (Vary-toy vary/demo/run_qwen_vary.py): stream 1 the CLIPImageProcessor of
  openai/clip-vit-large-patch14 (224, floor crop), stream 2 ``BlipImageEvalProcessor(1024)``:
  bicubic 1024 x 1024 with CLIP mean/std; ``<imgpad>`` placeholders; Qwen chat; no BOS. Its
  tokenizer is Qwen's tiktoken one (remote code), so it is passed in, never loaded implicitly.
* **Vary** (Vary vary/demo/run_qwen_vary.py): stream 2 is vary/model/plug/transforms.py
  ``test_transform``, albumentations ``Resize(1024, 1024)`` (OpenCV bilinear) + ImageNet
  mean/std. Pillow's bilinear is used here: it equals OpenCV's when upsampling and differs when
  shrinking (Pillow filters over the source footprint, OpenCV samples 2 x 2 pixels).
* **CLIP** encoders (openai/CLIP clip/clip.py ``_transform``): bicubic resize + centre crop
  (torchvision, round offsets), CLIP mean/std.
* **DINOv2** (dinov2/data/transforms.py ``make_classification_eval_transform``, the hub
  models' evaluation): bicubic resize 256, centre crop 224, ImageNet mean/std.
* **SAM** (segment_anything/utils/transforms.py ``ResizeLongestSide`` + ``Sam.preprocess``):
  bilinear longest side 1024, 0-255 normalisation, zero padding bottom/right to 1024 x 1024.
* **BLIP** (salesforce/BLIP data/__init__.py ``transform_test``, models/blip.py ``init_tokenizer``):
  bicubic resize to the preset's size (no crop), CLIP mean/std; bert-base-uncased + ``[DEC]`` /
  ``[ENC]``; "a picture of " for the captioners. A
  :class:`~vlmzoo.processing.blip_processor.BLIPProcessor`.
* **SigLIP** and **SigLIP 2** (transformers' ``SiglipProcessor`` / ``Siglip2Processor``): bicubic
  (SigLIP 2: bilinear) resize to the tower's size (no crop), mean/std 0.5 (So400m/14: resized to 384, the tower reads
  the top-left 378 x 378); NaFlex towers: aspect-preserving resize into the patch budget,
  patches, padding (:mod:`~vlmzoo.processing.siglip_naflex`); text padded to 64 tokens as SigLIP
  was trained, with the release's own tokenizer. A
  :class:`~vlmzoo.processing.siglip_processor.SigLIPProcessor`.
* **Donut** and **Nougat**: a :class:`~vlmzoo.processing.document_processor.DocumentProcessor`
  (their page recipes, task prompts, JSON / markdown outputs; that module's docstring), on the
  model's own canvas.

Tiny presets use the same recipes at their encoders' sizes.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, UnknownModelError
from vlmzoo.models.blip import BLIPConfig
from vlmzoo.models.siglip import SIGLIP2_PRESETS, SIGLIP_PRESETS, SigLIPConfig
from vlmzoo.processing.anyres import AnyResProcessor, AnyResProcessorConfig, llava_next, llava_onevision
from vlmzoo.processing.blip_processor import BLIPProcessor, BLIPProcessorConfig, blip_processor_config
from vlmzoo.processing.document_processor import DocumentProcessor, DocumentProcessorConfig, donut, nougat
from vlmzoo.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageProcessorConfig,
)
from vlmzoo.processing.processor import (
    PROCESSOR_FILE,
    ImageStreamConfig,
    Processor,
    ProcessorConfig,
    saved_config_class,
)
from vlmzoo.processing.siglip_processor import SigLIPProcessor, SigLIPProcessorConfig, siglip_processor_config
from vlmzoo.processing.templates import TEMPLATES
from vlmzoo.registry import get_entry, list_models


def _clip(size: int, rounding: str = "round") -> ImageStreamConfig:
    return ImageStreamConfig(ImageProcessorConfig.clip(size).replace(crop_rounding=rounding))


def _square(
    size: int, mean: tuple[float, float, float], std: tuple[float, float, float], resample: str = "bicubic"
) -> ImageStreamConfig:
    """A plain resize to ``size`` x ``size`` (no crop): BLIP's eval transform, Vary's 1024 stream."""
    recipe = ImageProcessorConfig(
        size=size, crop_size=size, mean=mean, std=std, resample=resample, do_center_crop=False
    )
    return ImageStreamConfig(recipe)


def llava(image_size: int = 336) -> ProcessorConfig:
    """LLaVA-1.5: expand2square (mean colour) + CLIP recipe at ``image_size``, ``vicuna_v1``, -200 per image."""
    stream = _clip(image_size, "floor").replace(pad_to_square=True)
    return ProcessorConfig(
        family="llava-1.5",
        image=stream,
        template=TEMPLATES["vicuna_v1"],
        alpha="drop",  # LLaVA: Image.open(path).convert('RGB') (llava/eval/model_vqa_loader.py, run_llava.py)
        image_token_id=-200,
        tokenizer="liuhaotian/llava-v1.5-7b",
    )


def blip2(image_size: int = 224) -> ProcessorConfig:
    """BLIP-2 OPT: bicubic ``image_size`` square, ``Question: {} Answer:``, query tokens before BOS."""
    return ProcessorConfig(
        family="blip2",
        image=_square(image_size, CLIP_MEAN, CLIP_STD),
        template=TEMPLATES["blip2"],
        alpha="drop",  # LAVIS's data sets: Image.open(path).convert("RGB") before BlipImageEvalProcessor
        image_token_id=-200,
        tokenizer="facebook/opt-2.7b",
    )


def openflamingo(image_size: int = 224) -> ProcessorConfig:
    """OpenFlamingo: open_clip's CLIP recipe, ``<image>``/``<|endofchunk|>`` few-shot VQA prompts, no BOS."""
    return ProcessorConfig(
        family="openflamingo",
        image=_clip(image_size),
        template=TEMPLATES["openflamingo"],
        alpha="drop",  # open_clip's image_transform ends in _convert_to_rgb: image.convert('RGB')
        add_bos=False,
        tokenizer="anas-awadalla/mpt-1b-redpajama-200b",
        add_tokens=("<|endofchunk|>", "<image>"),
    )


def vary_toy(clip_size: int = 224, vocab_size: int = 1024) -> ProcessorConfig:
    """Vary-toy: CLIP ``clip_size`` + bicubic ``vocab_size`` square (CLIP mean/std), Qwen chat."""
    return ProcessorConfig(
        family="vary-toy",
        image=_clip(clip_size, "floor"),
        second_image=_square(vocab_size, CLIP_MEAN, CLIP_STD),
        template=TEMPLATES["vary_toy"],
        alpha="drop",  # Vary-toy's load_image: Image.open(path).convert('RGB') (vary/demo/run_qwen_vary.py)
        image_token="<imgpad>",
        add_bos=False,
    )


def vary_base(clip_size: int = 224, vocab_size: int = 1024) -> ProcessorConfig:
    """Vary: CLIP ``clip_size`` + bilinear ``vocab_size`` square (ImageNet mean/std), Qwen chat."""
    return ProcessorConfig(
        family="vary",
        image=_clip(clip_size, "floor"),
        second_image=_square(vocab_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        template=TEMPLATES["vary_base"],
        alpha="drop",  # Vary's load_image: Image.open(path).convert('RGB') (vary/demo/run_qwen_vary.py)
        image_token="<imgpad>",
        add_bos=False,
    )


def clip_encoder(image_size: int = 224) -> ProcessorConfig:
    """OpenAI CLIP's transform (torchvision: bicubic resize, round-offset centre crop)."""
    # OpenAI CLIP's _transform: _convert_image_to_rgb, image.convert("RGB") (clip/clip.py)
    return ProcessorConfig(family="clip", image=_clip(image_size), alpha="drop")


def dinov2_encoder(image_size: int = 224) -> ProcessorConfig:
    """DINOv2's evaluation transform: resize 256/224 of the crop, centre crop, ImageNet mean/std."""
    # The hub models store 518 px position embeddings but were evaluated at 224 (resize 256).
    crop = min(image_size, 224)
    recipe = ImageProcessorConfig(
        size=round(crop * 256 / 224), crop_size=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    # DINOv2's data sets decode with Image.open(f).convert(mode="RGB") (dinov2/data/decoders.py)
    return ProcessorConfig(family="dinov2", image=ImageStreamConfig(recipe), alpha="drop")


def sam_encoder(image_size: int = 1024) -> ProcessorConfig:
    """SAM: longest side ``image_size`` (bilinear), 0-255 normalisation, zero padding to a square."""
    # SAM reads cv2.imread(path) (3 channels: alpha dropped) -> RGB (segment_anything's scripts/amg.py)
    recipe = ImageProcessorConfig.sam(image_size)
    return ProcessorConfig(family="sam", image=ImageStreamConfig(recipe), alpha="drop")


def _encoder_size(config: Config) -> int:
    return int(config.image_size)


def _canvas(config: Config) -> tuple[int, int]:
    size = config.encoder.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _vary_sizes(config: Config) -> tuple[int, int]:
    encoder = config.encoder
    return int(encoder.first.image_size), int(encoder.second.image_size)


def _siglip_family(name: str) -> Callable[[Any], SigLIPProcessorConfig]:
    """A published SigLIP preset: the tokenizer of its google/<name> repo; So400m/14 at 384 is
    resized to 384 (its config.json's image_size) and read at 378; SigLIP 2 resizes bilinearly."""
    size = 384 if name.endswith("patch14-384") else None
    resample = "bilinear" if name.startswith("siglip2-") else "bicubic"  # their preprocessor_config.json
    return lambda c: siglip_processor_config(c, tokenizer=f"google/{name}", size=size, resample=resample)


# SigLIP presets with a release (every name but the tiny ones is a google/<name> repo).
_SIGLIP: list[tuple[str, str, Callable[[Any], Any]]] = [
    (name, "model", _siglip_family(name))
    for name in (*SIGLIP_PRESETS, *SIGLIP2_PRESETS)
    if "tiny" not in name
]

# name pattern -> (registry kind, config of the preset -> processor config). First match wins.
_FAMILIES: list[tuple[str, str, Callable[[Any], ProcessorConfig]]] = [
    *_SIGLIP,
    ("siglip*", "model", siglip_processor_config),  # the tiny ones: no published tokenizer
    ("siglip*", "encoder", siglip_processor_config),
    (
        "*llava-onevision*",
        "model",
        lambda c: llava_onevision(
            c.adapter.tile_size,
            c.encoder.image_size // c.encoder.patch_size,
            trim_to=None if c.encoder.image_size == c.adapter.tile_size else c.encoder.image_size,
        ),
    ),
    (
        "*llava-next*",
        "model",
        lambda c: llava_next(c.adapter.tile_size, c.encoder.image_size // c.encoder.patch_size),
    ),
    (
        "llava-v1.6-*",
        "model",
        lambda c: llava_next(c.adapter.tile_size, c.encoder.image_size // c.encoder.patch_size),
    ),
    ("*llava*", "model", lambda c: llava(_encoder_size(c.encoder))),
    ("*blip2*", "model", lambda c: blip2(_encoder_size(c.encoder))),
    ("*blip*", "model", blip_processor_config),  # BLIP: blip-*, tiny-blip* (after *blip2*: first match wins)
    ("*openflamingo*", "model", lambda c: openflamingo(_encoder_size(c.encoder))),
    ("vary-base", "model", lambda c: vary_base(*_vary_sizes(c))),
    ("*vary*", "model", lambda c: vary_toy(*_vary_sizes(c))),
    # The fine-tunes' config.json (official branch): align_long_axis false, max_length 128 / 8.
    (
        "donut-docvqa",
        "model",
        lambda c: donut(
            _canvas(c), task="docvqa", max_length=128, tokenizer="naver-clova-ix/donut-base-finetuned-docvqa"
        ),
    ),
    (
        "donut-rvlcdip",
        "model",
        lambda c: donut(
            _canvas(c), task="rvlcdip", max_length=8, tokenizer="naver-clova-ix/donut-base-finetuned-rvlcdip"
        ),
    ),
    # donut-base's own config.json has align_long_axis true (the pre-training pages).
    ("donut-base", "model", lambda c: donut(_canvas(c), align_long_axis=True)),
    ("*donut*", "model", lambda c: donut(_canvas(c))),
    ("nougat-*", "model", lambda c: nougat(_canvas(c))),
    ("clip-*", "encoder", lambda c: clip_encoder(_encoder_size(c))),
    ("dinov2-*", "encoder", lambda c: dinov2_encoder(_encoder_size(c))),
    ("sam-*", "encoder", lambda c: sam_encoder(_encoder_size(c))),
    # EVA (BLIP-2's tower): LAVIS's reading, convert("RGB"), as blip2 above
    (
        "eva-*",
        "encoder",
        lambda c: blip2(_encoder_size(c)).replace(family="eva", template=None, alpha="drop"),
    ),
]


# The processor class of each kind of processor config.
PROCESSORS: dict[
    type[Config], type[Processor] | type[DocumentProcessor] | type[BLIPProcessor] | type[SigLIPProcessor]
] = {
    ProcessorConfig: Processor,
    DocumentProcessorConfig: DocumentProcessor,
    BLIPProcessorConfig: BLIPProcessor,
    SigLIPProcessorConfig: SigLIPProcessor,
    AnyResProcessorConfig: AnyResProcessor,
}


def processor_for(
    name_or_config: str | Config | Any,
) -> ProcessorConfig | DocumentProcessorConfig | BLIPProcessorConfig | SigLIPProcessorConfig:
    """The :class:`ProcessorConfig` of a registered model or encoder: by ``name``, or by its config
    (or a module built from one: its ``.config``). The family's recipe is applied at the config's
    own image size, with its image token id. A config matches a preset it equals; a VLM config
    also matches a preset with the same encoder and kind of adapter (e.g. ``max_length`` changed).
    """
    if isinstance(name_or_config, str):
        return _by_name(name_or_config)
    config = getattr(name_or_config, "config", name_or_config)
    for pattern, kind, make in _FAMILIES:
        for name in list_models(pattern, kind=kind):
            if _same_family(get_entry(name, kind).config, config, kind):
                return _with_token(make(config), config, kind)
    raise UnknownModelError(
        f"no registered preset has a config like this {type(config).__name__}; pass the name of the "
        "family's preset (e.g. vlmzoo.create_processor('llava-1.5-7b')) or build a ProcessorConfig"
    )


def _same_family(preset: Config, config: Config, kind: str) -> bool:
    if isinstance(preset, BLIPConfig) and isinstance(config, BLIPConfig):
        return True  # one BLIP recipe, sized from the config itself (blip_processor_config)
    if preset == config:
        return True
    if isinstance(preset, SigLIPConfig):
        return False  # one tokenizer per release: only the preset's own config has it
    if kind != "model" or type(preset) is not type(config):
        return False
    return preset.encoder == config.encoder and type(preset.adapter) is type(config.adapter)


def _with_token(processor: ProcessorConfig, preset: Config, kind: str) -> ProcessorConfig:
    if kind == "model" and getattr(processor, "template", None) is not None:
        return processor.replace(image_token_id=preset.image_token_id)
    return processor


def _by_name(name: str) -> ProcessorConfig:
    for pattern, kind, make in _FAMILIES:
        if fnmatch.fnmatchcase(name, pattern) and name in list_models(kind=kind):
            preset = get_entry(name, kind).config
            return _with_token(make(preset), preset, kind)
    known = [n for pattern, kind, _ in _FAMILIES for n in list_models(pattern, kind=kind)]
    raise UnknownModelError(
        f"no processor is known for {name!r}; known names: {', '.join(sorted(set(known)))}. For "
        "another model, build a ProcessorConfig from a family in vlmzoo.processing.processor_presets"
    )


def create_processor(
    name_or_path: str | os.PathLike, tokenizer: Any = None, **overrides: Any
) -> Processor | DocumentProcessor | BLIPProcessor | SigLIPProcessor:
    """The processor of a registered model/encoder name, or one saved in a directory.

    ``tokenizer``: a transformers tokenizer, or a local directory / hub id for ``AutoTokenizer``
    (default: the one saved beside the processor, else the family's published tokenizer, loaded
    on first use). ``overrides`` replace the processor config's fields. Donut and Nougat get a
    :class:`~vlmzoo.processing.document_processor.DocumentProcessor`, the others a :class:`Processor`.
    """
    path = Path(name_or_path)
    if (path / PROCESSOR_FILE).is_file():
        saved = saved_config_class(path)
        cls = next((p for c, p in PROCESSORS.items() if c.__name__ == saved), None)
        if cls is None:
            raise ConfigError(f"{str(path)!r} holds a processor of unknown kind {saved!r}; save it again")
        processor = cls.from_pretrained(path, tokenizer)
        if overrides:
            processor = cls(processor.config.replace(**overrides), processor._tokenizer)
        return processor
    config = processor_for(str(name_or_path))
    if overrides:
        config = config.replace(**overrides)
    if isinstance(tokenizer, str | os.PathLike):
        config, tokenizer = config.replace(tokenizer=str(tokenizer)), None
    return PROCESSORS[type(config)](config, tokenizer)
