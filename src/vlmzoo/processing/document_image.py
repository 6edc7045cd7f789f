"""Document-image preprocessing of Donut and Nougat: a page onto a fixed (H, W) canvas.

Both originals share one recipe (clovaai/donut's donut/model.py ``SwinEncoder.prepare_input``;
facebookresearch/nougat's nougat/model.py ``SwinEncoder.prepare_input``, which adds the margin
crop), run on PIL images:

1. ``img.convert("RGB")`` (alpha dropped, as :func:`~vlmzoo.processing.image_input.to_rgb`;
   ``DocumentImageConfig.alpha``, ``"drop"`` as both originals).
2. Nougat only: **crop margins** (nougat/model.py ``crop_margin``): the grey image
   (``convert("L")``) is stretched to 0..255 by its own min and max, and the page is cropped to the
   bounding box of the pixels below 200; a uniform image is kept whole.
3. **Align the long axis** (off by default in both): a landscape page for a portrait canvas (or
   the reverse) is turned 90° clockwise (torchvision ``rotate(img, -90, expand=True)``, an exact
   transpose).
4. **Resize the shortest edge** to ``min(H, W)`` (torchvision ``resize``: bilinear through Pillow,
   the long side ``int(min(H, W) * long / short)``).
5. **Thumbnail** into the canvas (``PIL.Image.thumbnail((W, H))``: only shrinks, keeps the aspect
   ratio with Pillow's rounding, bicubic, ``reducing_gap=2.0``).
6. **Pad** with black (``ImageOps.expand``, fill 0) to (H, W): centred (``delta // 2`` before) at
   test time, a uniformly random offset in ``[0, delta]`` per axis in training.
7. ``ToTensor`` (/255) and ImageNet normalisation (timm's ``IMAGENET_DEFAULT_MEAN``/``STD``).

transformers' processors differ from the originals (checked against transformers 5.x
``DonutImageProcessorPil`` / ``NougatImageProcessorPil``): both truncate the thumbnail's short
side (``int(w * h' / h)``) where Pillow's ``thumbnail`` may round up (it keeps whichever of floor
and ceil is closer to the aspect ratio), so a page can come out one pixel wider or taller and
every pixel is then resampled differently; Donut's thumbnail there is bilinear without the
reducing gap, and Donut normalises with mean = std = 0.5 where the original used ImageNet's
statistics (the converted checkpoints on the Hub inherited 0.5). The presets follow the
originals; ``reference="transformers"`` gives transformers' choices, for parity with it.

``do_resize=False`` feeds a page at its own size (after the margin crop and alignment): no resize,
thumbnail or padding. The Swin encoders of both models need sides that are multiples of their
output stride (patch 4 and three 2x merges: 32), so other sizes are refused with an
:class:`InputError` naming the size and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from vlmzoo.config import Config
from vlmzoo.errors import InputError
from vlmzoo.processing.image import IMAGENET_MEAN, IMAGENET_STD
from vlmzoo.processing.image_input import Alpha, load_image, to_rgb

Resample = Literal["bilinear", "bicubic"]
Reference = Literal["original", "transformers"]
DocumentImage = Image.Image | np.ndarray | str | os.PathLike

DONUT_CANVAS: tuple[int, int] = (2560, 1920)  # donut-base (H, W), clovaai/donut's DonutConfig.input_size
NOUGAT_CANVAS: tuple[int, int] = (896, 672)  # facebookresearch/nougat's config/train_nougat.yaml input_size
# transformers' DonutImageProcessor default (IMAGENET_STANDARD_MEAN / _STD).
HALF_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
HALF_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass
class DocumentImageConfig(Config):
    """How a document page becomes ``pixel_values`` ``[3, H, W]`` on a fixed canvas.

    ``canvas`` is (height, width). ``crop_margin`` is Nougat's margin crop, with the grey
    ``margin_threshold`` (pixels darker than it, after stretching the page to 0..255, are content).
    ``resample`` is the shortest-edge resize's filter; the ``thumbnail_*`` fields describe the fit
    into the canvas: ``"pillow"`` rounding is ``PIL.Image.thumbnail`` (the originals), ``"floor"``
    truncates the scaled side (transformers). ``stride`` is the encoder's output stride: the canvas,
    and with ``do_resize=False`` every page, must be a multiple of it. ``alpha``: what becomes of a
    page's transparency (:func:`~vlmzoo.processing.image_input.to_rgb`): ``"drop"``, the originals'
    ``convert("RGB")``.
    """

    kind = "document_image"

    canvas: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_margin: bool = False
    margin_threshold: int = 200
    align_long_axis: bool = False
    do_resize: bool = True
    resample: Resample = "bilinear"
    thumbnail_resample: Resample = "bicubic"
    thumbnail_reducing_gap: float | None = 2.0
    thumbnail_rounding: Literal["pillow", "floor"] = "pillow"
    stride: int = 32
    alpha: Alpha = "drop"

    def validate(self) -> None:
        self._check_positive("stride")
        h, w = self.canvas
        if h <= 0 or w <= 0:
            self._fail("canvas", "height and width must be positive")
        if h % self.stride or w % self.stride:
            self._fail(
                "canvas",
                f"height and width must be multiples of stride={self.stride} (the Swin output stride)",
            )
        if any(not 0.0 <= m <= 1.0 for m in self.mean):
            self._fail("mean", "every channel mean must be in [0, 1] (pixels are rescaled to 0..1 first)")
        if any(s <= 0 for s in self.std):
            self._fail("std", "every channel std must be > 0 (it is a divisor)")
        if not 1 <= self.margin_threshold <= 255:
            self._fail("margin_threshold", "must be in 1..255 (a grey level of the stretched page)")
        if self.thumbnail_reducing_gap is not None and self.thumbnail_reducing_gap < 1.0:
            self._fail("thumbnail_reducing_gap", "must be None or >= 1.0 (Pillow's reducing_gap)")

    @classmethod
    def donut(
        cls,
        canvas: tuple[int, int] = DONUT_CANVAS,
        *,
        align_long_axis: bool = False,
        reference: Reference = "original",
    ) -> DocumentImageConfig:
        """Donut's recipe (clovaai/donut's ``SwinEncoder.prepare_input``) on ``canvas`` (H, W).

        Fine-tunes use other canvases and turn ``align_long_axis`` on or off (their
        ``config.json``). ``reference="transformers"`` is ``DonutImageProcessor``'s: bilinear
        thumbnail without the reducing gap, floor rounding, mean = std = 0.5.
        """
        if reference == "transformers":
            return cls(
                canvas=canvas,
                mean=HALF_MEAN,
                std=HALF_STD,
                align_long_axis=align_long_axis,
                thumbnail_resample="bilinear",
                thumbnail_reducing_gap=None,
                thumbnail_rounding="floor",
            )
        # clovaai/donut's SwinEncoder.prepare_input: img.convert("RGB"), alpha dropped
        return cls(canvas=canvas, align_long_axis=align_long_axis, alpha="drop")

    @classmethod
    def nougat(
        cls, canvas: tuple[int, int] = NOUGAT_CANVAS, *, reference: Reference = "original"
    ) -> DocumentImageConfig:
        """Nougat's recipe (facebookresearch/nougat's ``SwinEncoder.prepare_input``): margin crop
        at grey 200, then Donut's steps, ImageNet normalisation. ``reference="transformers"`` is
        ``NougatImageProcessor``'s (the same but for floor rounding of the thumbnail)."""
        rounding: Literal["pillow", "floor"] = "floor" if reference == "transformers" else "pillow"
        # facebookresearch/nougat's prepare_input: img.convert("RGB") after the margin crop, alpha dropped
        return cls(canvas=canvas, crop_margin=True, thumbnail_rounding=rounding, alpha="drop")


def preprocess_document(
    image: DocumentImage,
    config: DocumentImageConfig,
    *,
    random_padding: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One page -> normalised ``pixel_values`` ``[3, H, W]`` float32 (``H, W = config.canvas``).

    Args:
        image: a PIL image, a uint8 numpy array ``[H, W]`` or ``[H, W, C]`` (C in 1, 3, 4), or a
            path to an image file.
        config: the recipe (:meth:`DocumentImageConfig.donut`, :meth:`DocumentImageConfig.nougat`).
        random_padding: place the page at a random offset on the canvas (training) instead of
            centring it (test time); the offsets are drawn from ``generator``, so a seeded
            generator reproduces them.
        generator: the random source of ``random_padding`` (torch's default generator if None).

    Returns:
        ``[3, H, W]``; with ``config.do_resize=False`` the page's own size after the margin crop and
        alignment, which must be a multiple of ``config.stride`` on both sides.
    """
    page = _as_rgb(image, config.alpha)
    if config.crop_margin:
        page = crop_margins(page, config.margin_threshold)
    if config.align_long_axis:
        page = _align_long_axis(page, config.canvas)
    if not config.do_resize:
        w, h = page.size
        if h % config.stride or w % config.stride:
            raise InputError(
                f"page of size {h}x{w} (height x width{', after the margin crop' if config.crop_margin else ''}) "
                f"is not a multiple of {config.stride} (the Swin output stride) on both sides; resize or pad "
                f"it to {_round_up(h, config.stride)}x{_round_up(w, config.stride)}, or keep do_resize=True "
                f"to fit it into the {config.canvas[0]}x{config.canvas[1]} canvas"
            )
        return _normalize(_to_tensor(page), config)
    page = _resize_shortest_edge(page, min(config.canvas), config.resample)
    page = _thumbnail(page, config)
    return _normalize(_pad(_to_tensor(page), config.canvas, random_padding, generator), config)


def preprocess_documents(
    images: Sequence[DocumentImage],
    config: DocumentImageConfig,
    *,
    random_padding: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A batch of pages -> ``[n, 3, H, W]`` (see :func:`preprocess_document`); random offsets are
    drawn page by page, in order, from ``generator``."""
    if isinstance(images, str | os.PathLike | Image.Image | np.ndarray):
        raise InputError("preprocess_documents takes a list of pages; use preprocess_document for one page")
    pages = [
        preprocess_document(image, config, random_padding=random_padding, generator=generator)
        for image in images
    ]
    if not pages:
        raise InputError("got an empty batch; pass at least one page")
    sizes = sorted({tuple(p.shape[-2:]) for p in pages})
    if len(sizes) > 1:
        raise InputError(
            f"pages of different sizes {sizes} (do_resize=False keeps each page's size) cannot form a "
            "batch; bring them to one size or keep do_resize=True"
        )
    return torch.stack(pages)


def crop_margins(image: Image.Image, threshold: int = 200) -> Image.Image:
    """Nougat's margin crop (facebookresearch/nougat's nougat/model.py ``crop_margin``).

    The grey image is stretched to 0..255 by its min and max; the result is ``image`` cropped to
    the bounding box of the pixels darker than ``threshold``. A uniform image is returned as is.
    """
    grey = np.asarray(image.convert("L"), dtype=np.uint8)
    lo, hi = grey.min(), grey.max()
    if lo == hi:
        return image
    # The same float64 arithmetic as the original, so pixels at the threshold fall the same way.
    content = (grey - lo) / (hi - lo) * 255 < threshold
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    # The darkest pixel stretches to 0 < threshold, so rows and cols are never empty.
    return image.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


# --- steps ------------------------------------------------------------------------------------
def _as_rgb(image: DocumentImage, alpha: Alpha = "drop") -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(
                f"numpy page of dtype {image.dtype}: pass uint8 pixels (0-255) in HW or HWC layout"
            )
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise InputError(f"numpy page of shape {image.shape}: expected HW or HWC with C in 1, 3, 4")
        if 0 in image.shape[:2]:
            raise InputError(f"page has zero size (shape {image.shape})")
        image = Image.fromarray(np.ascontiguousarray(image))
    elif not isinstance(image, Image.Image | str | os.PathLike):
        raise InputError(
            f"cannot read a page from a {type(image).__name__}; pass a PIL image, a uint8 HWC array "
            "or an image file path"
        )
    page = load_image(image)
    if page.width == 0 or page.height == 0:
        raise InputError(f"page has zero size (width={page.width}, height={page.height})")
    # Both originals: convert("RGB"), alpha dropped without compositing (the config's default).
    return to_rgb(page, alpha)


def _align_long_axis(page: Image.Image, canvas: tuple[int, int]) -> Image.Image:
    h, w = canvas
    if (h > w and page.width > page.height) or (h < w and page.width < page.height):
        # rotate(-90, expand=True) is Pillow's exact ROTATE_270 transpose: 90° clockwise.
        return page.transpose(Image.Transpose.ROTATE_270)
    return page


def _resize_shortest_edge(page: Image.Image, size: int, resample: Resample) -> Image.Image:
    w, h = page.size
    # torchvision's resize(int) (and transformers' shortest_edge): the long side is truncated.
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return page.resize((new_w, new_h), resample=_PIL_RESAMPLE[resample])


def _thumbnail(page: Image.Image, config: DocumentImageConfig) -> Image.Image:
    h, w = config.canvas
    resample = _PIL_RESAMPLE[config.thumbnail_resample]
    if config.thumbnail_rounding == "pillow":
        # The originals' call itself, so Pillow's own rounding rule applies (it has changed
        # between Pillow releases). It works in place: `page` is always our own resized copy.
        page.thumbnail((w, h), resample=resample, reducing_gap=config.thumbnail_reducing_gap)
        return page
    # transformers' thumbnail: clamp both sides to the canvas, then truncate the scaled one.
    new_h, new_w = min(page.height, h), min(page.width, w)
    if (new_h, new_w) == (page.height, page.width):
        return page
    if page.height > page.width:
        new_w = int(page.width * new_h / page.height)
    elif page.width > page.height:
        new_h = int(page.height * new_w / page.width)
    return page.resize((new_w, new_h), resample=resample, reducing_gap=config.thumbnail_reducing_gap)


def _to_tensor(page: Image.Image) -> torch.Tensor:
    """RGB page -> uint8 ``[3, h, w]``."""
    return torch.from_numpy(np.array(page, dtype=np.uint8)).permute(2, 0, 1)


def _pad(
    x: torch.Tensor, canvas: tuple[int, int], random_padding: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """uint8 ``[3, h, w]`` -> uint8 ``[3, H, W]``, black around the page."""
    h, w = canvas
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    if random_padding:
        # The originals draw the left offset first, then the top one (np.random.randint(0, delta + 1)).
        left = int(torch.randint(0, dw + 1, (), generator=generator))
        top = int(torch.randint(0, dh + 1, (), generator=generator))
    else:
        left, top = dw // 2, dh // 2
    out = torch.zeros(3, h, w, dtype=torch.uint8)
    out[:, top : top + x.shape[-2], left : left + x.shape[-1]] = x
    return out


def _normalize(x: torch.Tensor, config: DocumentImageConfig) -> torch.Tensor:
    """uint8 ``[3, h, w]`` -> ``(x / 255 - mean) / std`` float32, in torchvision's ToTensor/Normalize order."""
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    return ((x.to(torch.float32) / 255.0 - mean) / std).contiguous()


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k
