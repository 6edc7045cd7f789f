"""Patch embedding: a strided convolution that turns an image into a grid of tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.errors import InputError, require

ImageSize = int | tuple[int, int]


def image_hw(image_size: ImageSize | Sequence[int] | None, native: int) -> tuple[int, int]:
    """(H, W) of an image size given as an int (a square), an (H, W) pair, or ``None`` (the
    encoder's native ``native`` x ``native``) — the argument of every encoder's ``num_tokens``.

    Anything else (a bool, a float, a non-positive side, a sequence of another length) is an
    :class:`InputError` naming the value, instead of a token count computed from nonsense.
    """
    size = native if image_size is None else image_size
    if isinstance(size, int) and not isinstance(size, bool):
        pair: tuple = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        pair = tuple(size)
    else:
        raise InputError(f"image_size must be an int or an (H, W) pair of ints, got {image_size!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in pair):
        raise InputError(f"image_size sides must be positive integers, got {image_size!r}")
    return pair[0], pair[1]


def check_image(
    pixel_values: torch.Tensor, in_channels: int, multiple_of: int, device: torch.device | None = None
) -> tuple[int, int]:
    """Validate a [B, C, H, W] batch; return (H, W). Raises :class:`InputError` naming the problem.

    ``device``: where the encoder's weights are (the pixels must be there too). NaN/inf pixels
    are refused (:func:`check_finite`, the policy in docs/errors.md).
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise InputError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise InputError(
            f"pixel_values must have shape [B, C, H, W], got {tuple(pixel_values.shape)} "
            f"({pixel_values.ndim} dims)"
        )
    b, c, h, w = pixel_values.shape
    if b == 0:
        raise InputError("pixel_values is an empty batch (B = 0)")
    if c != in_channels:
        raise InputError(
            f"pixel_values has {c} channels but the encoder expects {in_channels} "
            f"(shape {tuple(pixel_values.shape)}; channels-last input must be permuted to [B, C, H, W])"
        )
    if not pixel_values.is_floating_point():
        raise InputError(f"pixel_values must be a floating-point tensor, got {pixel_values.dtype}")
    if device is not None and pixel_values.device != device:
        raise InputError(
            f"pixel_values are on {pixel_values.device} but the encoder's weights are on {device}; "
            "move one of them with .to()"
        )
    if h % multiple_of or w % multiple_of:
        raise InputError(
            f"image size {h}x{w} is not a multiple of the patch size {multiple_of}; "
            f"resize or pad to e.g. {h // multiple_of * multiple_of or multiple_of}x"
            f"{w // multiple_of * multiple_of or multiple_of}"
        )
    check_finite(pixel_values)
    return h, w


def check_finite(pixel_values: torch.Tensor) -> None:
    """Refuse NaN/inf pixels, which would silently turn every output token into NaN.

    One fp32 sum (NaN and inf propagate through it) instead of an elementwise ``isfinite``: no
    temporary the size of the batch; the exact counts are computed only to word the error. Costs
    a host sync on CUDA; inside a ``torch.compile`` graph it is an assertion instead
    (:func:`vlmzoo.errors.require`). Skipped on the meta device (no values).
    """
    if pixel_values.device.type == "meta":
        return
    total = pixel_values.sum(dtype=torch.float32 if pixel_values.element_size() < 4 else None)
    require(torch.isfinite(total), lambda: _non_finite_message(pixel_values), _NON_FINITE)


_NON_FINITE = "pixel_values contain NaN or inf values, or are too large to be normalised pixels"


def _non_finite_message(pixel_values: torch.Tensor) -> str:
    nan, inf = int(pixel_values.isnan().sum()), int(pixel_values.isinf().sum())
    if nan or inf:
        return (
            f"pixel_values contain {nan} NaN and {inf} inf values (of {pixel_values.numel()}); "
            "check the image loading and normalisation"
        )
    return f"pixel_values are too large to be normalised pixels (max |x| = {pixel_values.abs().max().item():.3g})"


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> tokens [B, (H/p)·(W/p), dim] in row-major order, plus the grid (H/p, W/p)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_image(pixel_values, self.in_channels, self.patch_size, self.proj.weight.device)
        x = self.proj(pixel_values.to(self.proj.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        return rearrange(x, "b c h w -> b (h w) c"), grid
