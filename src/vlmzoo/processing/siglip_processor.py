"""SigLIP's and SigLIP 2's input pipeline: images -> pixels, texts -> ids padded to 64.

What the released models expect (transformers' ``SiglipProcessor`` / ``Siglip2Processor``, the
model cards; Zhai et al. 2023, section 4: text is padded to 64 tokens in training):

* **Images**, fixed resolution (``SiglipImageProcessor``): resize to ``size`` x ``size`` (no
  crop, aspect ratio not kept), bicubic (SigLIP 2's fixed-resolution releases: bilinear, their
  ``preprocessor_config.json`` says ``resample: 2``), rescale 1/255, mean and std 0.5. So400m/14 at 384:
  the image is resized to 384 and the tower reads its top-left 378 x 378 pixels (27 x 27 patches;
  transformers' stride-14 convolution drops the last 6 rows and columns), so ``keep=378``.
* **Images**, NaFlex (SigLIP 2 ``*-naflex``): :mod:`vlmzoo.processing.siglip_naflex`.
* **Text**: the model's tokenizer (SigLIP: a SentencePiece English vocabulary of 32,000;
  SigLIP 2: Gemma's, 256,000), **padded to ``max_length`` = 64** and truncated to it, as the
  models were trained (the last position, pooled by the text tower, is then a pad or EOS token).
  By default no attention mask is returned: big_vision's text tower has none, and transformers'
  ``SiglipProcessor`` returns only ``input_ids``; ``return_attention_mask=True`` returns the
  tokenizer's mask (what ``Siglip2Processor`` passes on).

Saved as every vlmzoo processor is: ``vlmzoo_processor.json`` plus the tokenizer's own files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.image_input import Alpha, load_image
from vlmzoo.processing.processor import TokenizedProcessor, load_processor_files, save_processor_files
from vlmzoo.processing.siglip_naflex import SIGLIP_MEAN, SIGLIP_STD, NaFlexConfig, NaFlexImageProcessor

Resample = Literal["bicubic", "bilinear"]


def siglip_image_recipe(size: int = 224, resample: Resample = "bicubic") -> ImageProcessorConfig:
    """SigLIP's images: resize to ``size`` x ``size`` (bicubic; SigLIP 2's fixed-resolution
    releases: bilinear), mean and std 0.5."""
    return ImageProcessorConfig(
        size=size, crop_size=size, mean=SIGLIP_MEAN, std=SIGLIP_STD, resample=resample, do_center_crop=False
    )


@dataclass
class SigLIPProcessorConfig(Config):
    """What a :class:`SigLIPProcessor` does (module docstring).

    Exactly one of ``image`` (fixed resolution, default SigLIP's 224 px; ``keep``: the top-left
    square the tower reads, None for all of it) and ``naflex`` (with ``image=None``) is set. ``max_length``: tokens per text (padded and truncated to
    it). ``tokenizer``: where to load the tokenizer from when none is given (a hub id or folder).
    """

    kind = "siglip_processor"

    family: str = "siglip"
    image: ImageProcessorConfig | None = field(default_factory=siglip_image_recipe)
    keep: int | None = None
    naflex: NaFlexConfig | None = None
    max_length: int = 64
    return_attention_mask: bool = False
    alpha: Alpha = "white"
    exif_transpose: bool = False
    tokenizer: str | None = None

    def validate(self) -> None:
        if not self.family.strip():
            self._fail("family", "must name the family (saved with the processor)")
        if (self.image is None) == (self.naflex is None):
            self._fail("image", "set exactly one of image (fixed resolution) and naflex (then image=None)")
        if self.keep is not None:
            if self.image is None:
                self._fail("keep", "only a fixed-resolution recipe (image=...) keeps a top-left square")
            self._check_positive("keep")
            if self.keep > self.image.size:
                self._fail("keep", f"must be <= the resized size {self.image.size}")
        self._check_positive("max_length")
        if self.tokenizer is not None and not self.tokenizer.strip():
            self._fail("tokenizer", "must be a tokenizer folder or hub id, or None for the caller's")


class SigLIPProcessor(TokenizedProcessor):
    """Images and texts for a SigLIP / SigLIP 2 model (module docstring)."""

    def __init__(self, config: SigLIPProcessorConfig, tokenizer: Any = None) -> None:
        super().__init__(config, tokenizer)
        self._images = (
            ImageProcessor(config.image, config.alpha)
            if config.image is not None
            else NaFlexImageProcessor(config.naflex, config.alpha)
        )

    def images(self, images: Any) -> dict[str, torch.Tensor]:
        """A flat list of images (paths, PIL images, uint8 HWC arrays; or one of them) -> the
        model's image inputs: ``pixel_values`` [n, 3, S, S], or for NaFlex ``pixel_values``
        [n, N, p·p·3], ``pixel_attention_mask`` [n, N] and ``spatial_shapes`` [n, 2]."""
        items = list(images) if isinstance(images, list | tuple) else [images]
        if not items:
            raise InputError("got no images")
        c = self.config
        # Files are opened here; every PIL image, array and tensor then meets the config's alpha
        # setting inside the image processor.
        read = [
            load_image(i, exif_transpose=c.exif_transpose) if isinstance(i, str | os.PathLike) else i
            for i in items
        ]
        if isinstance(self._images, NaFlexImageProcessor):
            return self._images(read)
        pixels = self._images(read)
        if c.keep is not None:
            pixels = pixels[..., : c.keep, : c.keep].contiguous()
        return {"pixel_values": pixels}

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """[n, max_length] token ids, padded and truncated to ``max_length`` (a ``tokenizer``
        callable for :mod:`vlmzoo.eval.clip`)."""
        return self.text(texts)["input_ids"]

    def text(self, texts: str | list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` [n, max_length] (and ``attention_mask`` when ``return_attention_mask``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("got no texts")
        out = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        result = {"input_ids": out["input_ids"]}
        if self.config.return_attention_mask and "attention_mask" in out:
            result["attention_mask"] = out["attention_mask"]
        return result

    def __call__(self, text: str | list[str] | None = None, images: Any = None) -> dict[str, torch.Tensor]:
        """Texts and/or images -> the model's keyword inputs (see :meth:`text`, :meth:`images`)."""
        if text is None and images is None:
            raise InputError("pass text=, images= or both")
        out: dict[str, torch.Tensor] = {}
        if text is not None:
            out |= self.text(text)
        if images is not None:
            out |= self.images(images)
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vlmzoo_processor.json`` and the tokenizer's files (when it has one)."""
        return save_processor_files(directory, self.config, self._tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None) -> SigLIPProcessor:
        """Read a processor saved by :meth:`save_pretrained`."""
        config, tokenizer = load_processor_files(directory, SigLIPProcessorConfig, tokenizer)
        return cls(config, tokenizer)


def siglip_processor_config(
    config: Any, tokenizer: str | None = None, size: int | None = None, resample: Resample = "bicubic"
) -> SigLIPProcessorConfig:
    """The processor of a SigLIP model or vision-tower config: NaFlex with the tower's patch size
    and a budget of its ``num_patches``, or fixed resolution at the tower's ``image_size``.

    ``size``: the release's own resize when the tower reads less of it (So400m/14: 384, of which
    the tower keeps the top-left 378 x 378). ``resample``: SigLIP's bicubic, or the bilinear of
    SigLIP 2's fixed-resolution releases. ``tokenizer``: the hub id of the model's tokenizer.
    """
    vision = getattr(config, "vision", config)
    text = getattr(config, "text", None)
    length = int(text.context_length) if text is not None else 64  # the releases' 64
    if not hasattr(vision, "patch_size") or not hasattr(vision, "image_size"):
        raise ConfigError(f"{type(config).__name__} is not a SigLIP model or vision tower config")
    if hasattr(vision, "num_patches"):  # a NaFlex tower
        naflex = NaFlexConfig(patch_size=vision.patch_size, max_num_patches=vision.num_patches)
        return SigLIPProcessorConfig(
            family="siglip2-naflex",
            image=None,
            naflex=naflex,
            max_length=length,
            alpha="refuse",  # Siglip2ImageProcessor converts no mode: RGBA fails there
            tokenizer=tokenizer,
        )
    native = int(vision.image_size)
    resize = native if size is None else size
    keep = native if resize != native else None
    return SigLIPProcessorConfig(
        image=siglip_image_recipe(resize, resample),
        keep=keep,
        max_length=length,
        alpha="white",  # SiglipImageProcessor: do_convert_rgb=True, transformers' convert_to_rgb
        tokenizer=tokenizer,
    )
