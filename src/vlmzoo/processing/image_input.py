"""Reading images the way the released pipelines read them, before any resize.

Three steps come before a model's resize/crop/normalise recipe, and the originals differ in each:

* **Opening a file.** LLaVA (llava/eval/run_llava.py ``load_image``), LAVIS (its data sets) and
  Vary (vary/demo/run_qwen_vary.py ``load_image``) all do ``Image.open(path).convert('RGB')``:
  no ``ImageOps.exif_transpose``, so a photo whose EXIF says "rotate 90" is fed in sensor order.
  transformers' ``load_image`` applies the EXIF orientation. :func:`load_image` follows the
  originals by default (``exif_transpose=False``) and names the file when it cannot be read.
* **Alpha.** ``Image.convert('RGB')`` drops the alpha channel (a transparent pixel keeps its
  colour, whatever it is: often black); transformers' ``convert_to_rgb`` (image_transforms.py,
  5.x), which its image processors call when ``do_convert_rgb`` is set (CLIP, SigLIP, BLIP,
  LLaVA, LLaVA-NeXT, OneVision, Idefics3, SAM), composites RGBA, LA, palette transparency and
  ``transparency`` colour keys onto white first. Each processor config has an ``alpha`` field,
  set by each family's preset to what that family's reference pipeline does (the table in
  docs/concepts.md, "Image modes"): ``"drop"`` (the original repositories: LLaVA's
  ``Image.open(path).convert('RGB')``, open_clip's ``_convert_to_rgb``, OpenAI CLIP's
  ``_convert_image_to_rgb``, LAVIS, Vary, Donut, Nougat), ``"white"`` (transformers'
  ``convert_to_rgb``: SigLIP, whose reference is ``SiglipImageProcessor``) or ``"refuse"`` (an
  :class:`InputError` for an image with transparency: SigLIP 2 NaFlex, whose
  ``Siglip2ImageProcessor`` converts nothing and fails on a fourth channel). Grey (L, 1),
  palette (P), CMYK, YCbCr, LAB and HSV go through Pillow's conversion in every mode: grey is
  replicated.
  4-channel arrays and tensors are RGBA and follow the same setting
  (:class:`~vlmzoo.processing.image.ImageProcessor`).
* **Bit depth.** Pillow converts 16-bit grey (``I;16``), 32-bit integer (``I``) and float (``F``)
  images to RGB by *clipping* each value to 0..255, so a 16-bit scan (values up to 65535) becomes
  an almost white image and a float image in [0, 1] an almost black one. Every original pipeline
  would do exactly that, silently; :func:`to_rgb` refuses these modes instead and says how to
  bring the image to 8 bits (the scaling is the user's knowledge, not vlmzoo's guess).
* **Padding to a square.** LLaVA-1.5's ``image_aspect_ratio="pad"`` (llava/mm_utils.py
  ``expand2square``) pastes the image centred, offset ``(long - short) // 2``, on a square canvas
  filled with the image processor's mean colour ``tuple(int(m * 255) for m in image_mean)``
  ((122, 116, 104) for CLIP), before the CLIP recipe. :func:`expand_to_square`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmzoo.errors import InputError

# How transparency is handled (module docstring): dropped, composited on white, or refused.
Alpha = Literal["drop", "white", "refuse"]
ALPHA_MODES: tuple[str, ...] = ("drop", "white", "refuse")


def load_image(source: str | os.PathLike | Image.Image, *, exif_transpose: bool = False) -> Image.Image:
    """A PIL image from a path (or a PIL image, returned as is apart from the EXIF step).

    The pixels are decoded now (``Image.load``), so a truncated or corrupt file fails here, with
    its name, rather than deep inside preprocessing.
    """
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source) if exif_transpose else source
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"cannot read an image from a {type(source).__name__}; pass a file path or a PIL image"
        )
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist (or is not a file); check the path")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(
            f"cannot read image file {str(path)!r} ({type(e).__name__}: {e}); "
            "pass a PNG/JPEG/WebP/... file that Pillow can open"
        ) from e
    return ImageOps.exif_transpose(image) if exif_transpose else image


# Modes whose values are not 0..255: Pillow's convert("RGB") clips them (see the module docstring).
_HIGH_DEPTH = {
    "I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit integer",
    "F": "32-bit float",
}  # fmt: skip


def check_alpha(alpha: str) -> None:
    """Refuse an ``alpha`` setting that is not one of :data:`ALPHA_MODES` (every reader of it checks here)."""
    if alpha not in ALPHA_MODES:
        raise InputError(f"alpha={alpha!r}: expected one of {', '.join(map(repr, ALPHA_MODES))}")


# Modes with an alpha band. LAB's "A" band is the a* colour axis, not alpha (Pillow's own
# has_transparency_data lists these modes too), so a band named "A" is not enough.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` has an alpha band (RGBA, LA, PA, premultiplied RGBa / La) or a
    ``transparency`` entry (palette transparency, a PNG colour key): transformers' test."""
    return image.mode in _ALPHA_MODES or image.info.get("transparency") is not None


def to_rgb(image: Image.Image, alpha: Alpha = "drop") -> Image.Image:
    """An RGB copy of ``image``: ``alpha="drop"`` is ``Image.convert('RGB')`` (the original
    repositories), ``"white"`` composites any transparency onto white first (transformers'
    ``convert_to_rgb``), ``"refuse"`` raises :class:`InputError` for an image with transparency.

    16-bit, 32-bit and float images are refused (Pillow would clip their values to 0..255), as
    are modes Pillow cannot turn into RGB, each naming the fix. Premultiplied ``La`` is
    un-premultiplied to ``LA`` first (Pillow converts it to nothing else); CMYK, YCbCr, LAB and HSV
    go through Pillow's colour conversion (LAB's "A" band is a colour axis, not alpha)."""
    check_alpha(alpha)
    mode = image.mode
    if image.mode in _HIGH_DEPTH:
        values = np.asarray(image)  # getextrema fails on big-endian I;16B
        lo, hi = float(values.min()), float(values.max())
        raise InputError(
            f"image of mode {image.mode!r} ({_HIGH_DEPTH[image.mode]} values, here {lo:g}..{hi:g}) would "
            "be clipped to 0..255 by the RGB conversion every released pipeline uses; convert it to 8 "
            "bits first with the scaling your data needs, e.g. Image.fromarray((np.asarray(img) / 257)"
            ".astype(np.uint8)) for 16-bit values or (np.asarray(img) * 255).round().astype(np.uint8) "
            "for floats in [0, 1]"
        )
    if image.mode == "La":  # premultiplied grey + alpha: Pillow converts it to LA only
        image = image.convert("LA")
    if alpha != "drop" and has_transparency(image):
        if alpha == "refuse":
            raise InputError(
                f"image of mode {mode!r} has transparency, and this processor's reference pipeline "
                "has no conversion for it; composite it yourself, or set the processor's alpha to "
                "'white' (transformers' convert_to_rgb: onto white) or 'drop' (PIL's convert('RGB'): "
                "transparent pixels keep their colour)"
            )
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise InputError(
            f"Pillow cannot convert an image of mode {image.mode!r} to RGB ({e}); convert it to RGB "
            "yourself (e.g. with ImageCms for LAB) before passing it"
        ) from e


def mean_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The padding colour LLaVA derives from normalisation means in [0, 1]: ``int(m * 255)``
    (truncation, not rounding: CLIP's mean gives (122, 116, 104))."""
    r, g, b = (int(m * 255) for m in mean)
    return r, g, b


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre ``image`` (RGB) on a ``max(w, h)`` square canvas of colour ``fill``; square images are
    returned unchanged. The offset of the short side is ``(long - short) // 2``, as in LLaVA."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas
