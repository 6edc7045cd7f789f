"""Image preprocessing (resize -> center crop -> rescale -> normalize) without torchvision.

Two paths, chosen by input type:

* **PIL path** for PIL images and uint8 arrays/tensors: the image is resized with Pillow, so
  the result is bit-for-bit the recipe torchvision (OpenAI CLIP) and Hugging Face's PIL
  processors apply to PIL images.
* **Float path** for float arrays/tensors in [0, 1]: ``F.interpolate(bicubic, antialias=True)``
  on the float image. It agrees with the PIL path up to rounding (Pillow quantises the resized
  image to uint8; this path keeps full precision), i.e. a few 1e-3 in normalized units.

Center-crop offsets: torchvision (and so the OpenAI CLIP recipe) uses
``int(round((h - crop) / 2))`` while Hugging Face's image processors (PIL and torchvision
backends alike) use ``(h - crop) // 2``. They differ by one pixel when ``h - crop`` is
3 mod 4; ``ImageProcessorConfig.crop_rounding`` selects the rule (``"floor"`` for HF parity).

SAM's recipe (``ImageProcessorConfig.sam``; segment-anything's ``utils/transforms.py``
``ResizeLongestSide`` and ``modeling/sam.py`` ``Sam.preprocess``) instead resizes the *longest* side to
1024 (the other side ``int(old · 1024 / max(h, w) + 0.5)``), bilinearly, normalises in 0-255
space (``rescale_factor=1``, mean/std in pixel units) and pads bottom/right with zeros — after
normalisation, as the original and Hugging Face's ``SamImageProcessorPil`` do — to a square.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmzoo.config import Config
from vlmzoo.errors import InputError
from vlmzoo.processing.image_input import Alpha, check_alpha, to_rgb

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# SAM normalises 0-255 pixels: ImageNet mean/std times 255 (pixel_mean / pixel_std of
# segment-anything's modeling/sam.py).
SAM_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_LAYOUTS = "PIL images, numpy HW/HWC/NHWC arrays, torch HW/CHW/BCHW tensors, or lists of these"


@dataclass
class ImageProcessorConfig(Config):
    """How images become ``pixel_values``.

    ``size`` is the shortest-side target of the aspect-preserving resize; ``crop_size`` the
    side of the square center crop. With ``do_center_crop=False`` the image is resized
    straight to ``size x size`` (aspect ratio not kept: the SigLIP-style recipe), since a
    batch needs one shape. ``crop_rounding`` picks torchvision's (``"round"``) or Hugging
    Face's (``"floor"``) crop offset, see the module docstring. ``longest_edge=True`` is SAM's
    recipe: the longest side is resized to ``size`` (aspect kept, half-up rounding), and the
    normalised image is zero-padded bottom/right to ``size x size`` (needs
    ``do_center_crop=False``; ``crop_size`` is then unused).
    """

    kind = "image_processor"

    size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Literal["bicubic", "bilinear"] = "bicubic"
    do_center_crop: bool = True
    rescale_factor: float = 1 / 255
    crop_rounding: Literal["round", "floor"] = "round"
    longest_edge: bool = False

    def validate(self) -> None:
        self._check_positive("size", "crop_size", "rescale_factor")
        if any(s <= 0 for s in self.std):
            self._fail("std", "every channel std must be > 0 (it is a divisor)")
        if self.do_center_crop and self.crop_size > self.size:
            self._fail("crop_size", f"must be <= size={self.size} when do_center_crop=True")
        if self.longest_edge and self.do_center_crop:
            self._fail(
                "longest_edge", "longest-side resizing pads, it does not crop: set do_center_crop=False"
            )

    @classmethod
    def clip(cls, image_size: int = 224) -> ImageProcessorConfig:
        """The OpenAI CLIP recipe: bicubic shortest-side resize, center crop, CLIP mean/std."""
        return cls(size=image_size, crop_size=image_size, mean=CLIP_MEAN, std=CLIP_STD)

    @classmethod
    def sam(cls, long_side: int = 1024) -> ImageProcessorConfig:
        """The SAM recipe (segment-anything's ``ResizeLongestSide`` + ``Sam.preprocess``): bilinear longest-side resize to ``long_side``, 0-255
        normalisation with SAM mean/std, zero padding bottom/right to ``long_side`` squared."""
        return cls(
            size=long_side,
            crop_size=long_side,
            mean=SAM_MEAN,
            std=SAM_STD,
            resample="bilinear",
            do_center_crop=False,
            rescale_factor=1.0,
            longest_edge=True,
        )


class ImageProcessor:
    """Turns images into normalized ``pixel_values`` of shape ``[B, 3, crop, crop]`` (float32, CPU).

    ``alpha``: what becomes of transparency (:func:`~vlmzoo.processing.image_input.to_rgb`), for PIL
    images with an alpha band or palette transparency and for 4-channel arrays and tensors (read
    as RGBA): ``"drop"`` (PIL's ``convert('RGB')``, the original repositories), ``"white"``
    (composited onto white, transformers' ``convert_to_rgb``) or ``"refuse"``. A processor passes
    its family's setting; built alone, the recipe drops alpha as OpenAI CLIP's transform does.
    """

    def __init__(self, config: ImageProcessorConfig, alpha: Alpha = "drop") -> None:
        check_alpha(alpha)
        self.config = config
        self.alpha = alpha
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images: Any) -> torch.Tensor:
        """Preprocess one image or a batch.

        Args:
            images: a PIL image; a numpy array ``[H, W]``, ``[H, W, C]`` or ``[N, H, W, C]``
                (uint8 0-255 or float 0-1); a torch tensor ``[H, W]``, ``[C, H, W]`` or
                ``[B, C, H, W]`` (uint8 or float 0-1); or a list/tuple of these. C is 1, 3 or 4
                (gray is replicated; a fourth channel is alpha, handled as ``self.alpha`` says).

        Returns:
            ``pixel_values`` ``[B, 3, crop_size, crop_size]`` float32 (``[B, 3, size, size]``
            when ``do_center_crop=False``, padded at the bottom/right with ``longest_edge``).
        """
        items = list(_split(images, self.alpha))
        if not items:
            raise InputError(f"got an empty batch; pass at least one image ({_LAYOUTS})")
        return torch.stack([self._one(item) for item in items])

    # --- one image ------------------------------------------------------------------------
    def _one(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """One image (PIL, uint8 HWC array, or float CHW tensor in [0, 1]) -> ``[3, crop, crop]``."""
        if isinstance(image, Image.Image):
            return self._from_pil(image)
        if isinstance(image, np.ndarray):  # uint8 HWC, 3 or 4 channels, or HW (floats were split as tensors)
            return self._from_pil(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image))
        return self._from_float(image)

    def _from_pil(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        _check_extent(h, w)
        # Gray is replicated; alpha as the family's pipeline treats it; 16-bit and float modes are
        # refused rather than clipped (to_rgb).
        image = to_rgb(image, self.alpha)
        new_h, new_w = self._resized_hw(h, w)
        # Pillow returns a copy when the size is unchanged, so no special case is needed.
        image = image.resize((new_w, new_h), resample=_PIL_RESAMPLE[self.config.resample])
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return self._crop_normalize(x.to(torch.float32) * self.config.rescale_factor)

    def _from_float(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        new_h, new_w = self._resized_hw(h, w)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(
                x[None], size=(new_h, new_w), mode=self.config.resample, align_corners=False, antialias=True
            )[0]
        # Bicubic overshoots; Pillow clamps to [0, 255] when it stores uint8, so clamp likewise.
        x = x.clamp(0.0, 1.0) * (255.0 * self.config.rescale_factor)  # [0,1] stands for 0..255
        return self._crop_normalize(x)

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """Target (height, width) of the resize; the long side is truncated like torchvision/HF."""
        size = self.config.size
        # SAM: scale the longest side to `size`, round half up (ResizeLongestSide.get_preprocess_shape)
        if self.config.longest_edge:
            scale = size / max(h, w)
            # At least 1 px: SAM and HF would crash on a 0-px side of an extremely thin image.
            return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        if not self.config.do_center_crop:
            return size, size
        if h <= w:
            return size, int(size * w / h)
        return int(size * h / w), size

    def _crop_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[3, H, W]`` rescaled floats -> center crop -> ``(x - mean) / std`` (-> SAM's zero padding)."""
        if self.config.do_center_crop:
            c = self.config.crop_size
            h, w = x.shape[-2:]
            if self.config.crop_rounding == "round":  # torchvision: round-half-even of a .5
                top, left = round((h - c) / 2.0), round((w - c) / 2.0)
            else:  # Hugging Face image processors
                top, left = (h - c) // 2, (w - c) // 2
            x = x[:, top : top + c, left : left + c]
        x = (x - self._mean) / self._std
        if self.config.longest_edge:  # zeros *after* normalisation, bottom/right (Sam.preprocess)
            size = self.config.size
            x = F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))
        return x.contiguous()


# --- input normalisation --------------------------------------------------------------------
def _split(images: Any, alpha: Alpha = "drop") -> Iterator[Image.Image | np.ndarray | torch.Tensor]:
    """Yield single images: PIL images, uint8 ``[H, W, C]`` arrays, or float ``[C, H, W]`` tensors
    (float RGBA already turned into RGB as ``alpha`` says; uint8 RGBA goes through Pillow)."""
    if isinstance(images, list | tuple):
        for item in images:
            if isinstance(item, list | tuple):
                raise InputError("nested lists of images are not supported; pass one flat list")
            yield from _split(item, alpha)
    elif isinstance(images, Image.Image):
        yield images
    elif isinstance(images, np.ndarray):
        if images.ndim not in (2, 3, 4):
            raise InputError(
                f"numpy image of shape {images.shape}: expected HW, HWC or NHWC with C in 1, 3, 4"
            )
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise InputError(f"unsupported image dtype {images.dtype}; pass uint8 (0-255) or float (0-1)")
        batch = images[None] if images.ndim < 4 else images
        batch = batch[..., None] if images.ndim == 2 else batch
        nchw = torch.from_numpy(np.array(batch, order="C")).permute(0, 3, 1, 2)  # copy: may be read-only
        for img in _checked(nchw, images.shape, "HWC/NHWC", alpha):
            # uint8 stays numpy HWC for the Pillow path; floats are CHW tensors.
            yield img.permute(1, 2, 0).numpy() if img.dtype == torch.uint8 else img
    elif isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.ndim not in (2, 3, 4):
            raise InputError(
                f"tensor image of shape {tuple(t.shape)}: expected HW, CHW or BCHW with C in 1, 3, 4"
            )
        batch = t[None, None] if t.ndim == 2 else (t[None] if t.ndim == 3 else t)
        for img in _checked(batch, tuple(t.shape), "CHW/BCHW", alpha):
            # uint8 tensors go through Pillow so they match PIL input exactly.
            yield img.permute(1, 2, 0).contiguous().numpy() if img.dtype == torch.uint8 else img
    else:
        raise InputError(f"unsupported image type {type(images).__name__}; expected {_LAYOUTS}")


def _checked(
    batch: torch.Tensor, shape: tuple[int, ...], layout: str, alpha: Alpha = "drop"
) -> list[torch.Tensor]:
    """Validate a ``[N, C, H, W]`` view of the input; return per-image CHW tensors (uint8, C kept,
    for the Pillow path; float32 with 3 channels)."""
    n, c, h, w = batch.shape
    if c not in (1, 3, 4):
        hint = ""
        if c > 4 and layout == "HWC/NHWC" and len(shape) >= 3 and shape[-3] in (1, 3, 4):
            hint = " (looks channels-first: transpose to HWC)"
        elif c > 4 and layout == "CHW/BCHW" and shape[-1] in (1, 3, 4):
            hint = " (looks channels-last: permute to CHW)"
        raise InputError(
            f"image of shape {tuple(shape)} has {c} channels; expected 1, 3 or 4 in layout {layout}{hint}"
        )
    if n == 0:
        raise InputError(f"got an empty batch of shape {tuple(shape)}")
    _check_extent(h, w)
    if batch.dtype == torch.uint8:
        return list(batch)
    if not batch.is_floating_point():
        raise InputError(f"unsupported image dtype {batch.dtype}; pass uint8 (0-255) or float (0-1)")
    x = batch.to(torch.float32)
    if not torch.isfinite(x).all():
        raise InputError("image contains NaN or inf pixels")
    lo, hi = x.min().item(), x.max().item()
    if hi > 1.5:
        raise InputError(f"float image has max {hi:.3g}: looks like 0-255 data; pass uint8 or divide by 255")
    if lo < -0.5:
        raise InputError(f"float image has min {lo:.3g}: expected values in [0, 1] (already normalized?)")
    if c == 4:
        x = _float_rgb(x, alpha, shape)
    return list(x.expand(-1, 3, -1, -1) if c == 1 else x)  # gray -> RGB, like PIL


def _float_rgb(x: torch.Tensor, alpha: Alpha, shape: tuple[int, ...]) -> torch.Tensor:
    """``[N, 4, H, W]`` float RGBA in [0, 1] -> ``[N, 3, H, W]``: alpha dropped, composited onto
    white (transformers' ``convert_to_rgb`` for float arrays: ``a·rgb + (1 - a)·1``), or refused."""
    if alpha == "refuse":
        raise InputError(
            f"image of shape {tuple(shape)} has 4 channels (RGBA), and this processor's reference "
            "pipeline has no conversion for alpha; pass 3 channels (composite it yourself), or set "
            "the processor's alpha to 'white' (onto white) or 'drop' (alpha ignored)"
        )
    rgb = x[:, :3]
    if alpha == "drop":
        return rgb
    a = x[:, 3:4].clamp(0.0, 1.0)
    return a * rgb + (1.0 - a)


def _check_extent(h: int, w: int) -> None:
    if h <= 0 or w <= 0:
        raise InputError(f"image has zero size (height={h}, width={w})")
