"""SigLIP 2's NaFlex image preprocessing: resize to fit a patch budget, cut into patches, pad.

What transformers' ``Siglip2ImageProcessorPil`` / ``Siglip2ImageProcessor`` do (big_vision's
NaFlex preprocessing, Tschannen et al. 2025, section 2.4.2), per image:

1. **Target size**: the largest scale ``s`` (found by bisection over [1e-6, 100] to a width of
   1e-5) such that ``ceil(H·s / p)·p`` x ``ceil(W·s / p)·p`` (each side at least one patch) holds
   at most ``max_num_patches`` patches. The aspect ratio is kept up to the rounding of each side
   to whole patches.
2. **Resize** to that size, bilinear (Pillow's, with its antialiasing when shrinking: bit-exact
   with ``Siglip2ImageProcessorPil``; transformers' default torchvision backend resizes the uint8
   tensor and lands a few pixels one uint8 level away), rescale by 1/255, normalise with mean and
   std 0.5.
3. **Patches**: [h·w, p·p·C], each patch flattened (row, column, channel), row-major over the
   grid; padded with zero patches to ``max_num_patches``.

Returns ``pixel_values`` [B, max_num_patches, p·p·3], ``pixel_attention_mask`` [B,
max_num_patches] (1 = patch, 0 = padding) and ``spatial_shapes`` [B, 2] (h, w): the inputs of
:class:`~vlmzoo.encoders.siglip2.Siglip2VisionTransformer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmzoo.config import Config
from vlmzoo.errors import InputError
from vlmzoo.processing.image_input import Alpha, check_alpha, to_rgb

SIGLIP_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SIGLIP_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass
class NaFlexConfig(Config):
    """The NaFlex recipe: ``patch_size``, ``max_num_patches`` (256 for the released towers, and the
    sequence length every image is padded to), ``resample``, ``mean`` / ``std``."""

    kind = "image_processor"

    patch_size: int = 16
    max_num_patches: int = 256
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD
    rescale_factor: float = 1 / 255

    def validate(self) -> None:
        self._check_positive("patch_size", "max_num_patches", "rescale_factor")
        if any(not s > 0 for s in self.std):
            self._fail("std", "every channel std must be > 0 (it is a divisor)")


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """(height, width) in pixels, multiples of ``patch_size``, of an image resized to fit
    ``max_num_patches`` (step 1 of the module docstring)."""

    def side(scale: float, size: int) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    eps = 1e-5
    low, high = eps / 10, 100.0
    while high - low >= eps:
        middle = (low + high) / 2
        if (side(middle, height) / patch_size) * (side(middle, width) / patch_size) <= max_num_patches:
            low = middle
        else:
            high = middle
    return side(low, height), side(low, width)


class NaFlexImageProcessor:
    """Images -> the NaFlex batch (module docstring). ``alpha``: what becomes of transparency
    (:func:`~vlmzoo.processing.image_input.to_rgb`); ``"refuse"`` by default, as
    ``Siglip2ImageProcessor`` converts no mode (its ``do_convert_rgb`` is unset) and fails on a
    fourth channel."""

    def __init__(self, config: NaFlexConfig | None = None, alpha: Alpha = "refuse") -> None:
        check_alpha(alpha)
        self.config = config if config is not None else NaFlexConfig()
        self.alpha = alpha
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images: Any) -> dict[str, torch.Tensor]:
        """``images``: a PIL image, a uint8 HWC array, a float CHW tensor in [0, 1], or a list of
        these -> ``pixel_values``, ``pixel_attention_mask``, ``spatial_shapes``."""
        items = list(images) if isinstance(images, list | tuple) else [images]
        if not items:
            raise InputError("got an empty batch; pass at least one image")
        c = self.config
        pixels = torch.zeros(len(items), c.max_num_patches, c.patch_size * c.patch_size * 3)
        mask = torch.zeros(len(items), c.max_num_patches, dtype=torch.long)
        shapes = torch.zeros(len(items), 2, dtype=torch.long)
        for i, item in enumerate(items):
            image = self._resized(item)
            patches = self._patches(image)
            pixels[i, : len(patches)] = patches
            mask[i, : len(patches)] = 1
            shapes[i] = torch.tensor([image.shape[1] // c.patch_size, image.shape[2] // c.patch_size])
        return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def _resized(self, image: Any) -> torch.Tensor:
        """One image -> [3, h·p, w·p] normalised float32."""
        c = self.config
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise InputError(f"numpy images must be uint8 HWC, got {image.dtype}")
            if image.ndim == 3 and image.shape[-1] == 1:  # H x W x 1 is grey (Pillow reads H x W only)
                image = image[..., 0]
            try:
                image = Image.fromarray(image)
            except TypeError as e:  # a shape Pillow has no mode for
                raise InputError(
                    f"numpy image of shape {image.shape}: pass uint8 H x W (grey), H x W x 3 (RGB) or "
                    "H x W x 4 (RGBA) pixels"
                ) from e
        if isinstance(image, Image.Image):
            image = to_rgb(image, self.alpha)  # 16-bit / float modes refused rather than clipped
            h, w = naflex_size(image.height, image.width, c.patch_size, c.max_num_patches)
            image = image.resize((w, h), resample=_RESAMPLE[c.resample])
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()
            x = x * c.rescale_factor
        elif isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point():
            if image.shape[0] != 3:
                raise InputError(
                    f"float image tensors must be [3, H, W] in [0, 1], got {tuple(image.shape)}"
                    + (": composite the alpha channel yourself first" if image.shape[0] == 4 else "")
                )
            h, w = naflex_size(image.shape[1], image.shape[2], c.patch_size, c.max_num_patches)
            x = F.interpolate(
                image[None].float(), size=(h, w), mode=c.resample, align_corners=False, antialias=True
            )[0]
            x = x.clamp(0.0, 1.0) * (255.0 * c.rescale_factor)  # [0, 1] stands for 0..255
        else:
            raise InputError(
                f"unsupported image {type(image).__name__}: pass PIL images, uint8 HWC arrays or float "
                "[3, H, W] tensors in [0, 1]"
            )
        return (x - self._mean) / self._std

    def _patches(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] -> [(H/p)·(W/p), p·p·3], (row, column, channel) inside a patch."""
        p = self.config.patch_size
        ch, h, w = image.shape
        x = image.reshape(ch, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
        return x.reshape((h // p) * (w // p), p * p * ch)
