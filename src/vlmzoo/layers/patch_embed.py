"""Patch embedding: a strided convolution that turns an image into a grid of tokens."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.errors import InputError


def check_image(pixel_values: torch.Tensor, in_channels: int, multiple_of: int) -> tuple[int, int]:
    """Validate a [B, C, H, W] batch; return (H, W). Raises :class:`InputError` naming the problem."""
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
    if h % multiple_of or w % multiple_of:
        raise InputError(
            f"image size {h}x{w} is not a multiple of the patch size {multiple_of}; "
            f"resize or pad to e.g. {h // multiple_of * multiple_of or multiple_of}x"
            f"{w // multiple_of * multiple_of or multiple_of}"
        )
    return h, w


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> tokens [B, (H/p)·(W/p), dim] in row-major order, plus the grid (H/p, W/p)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_image(pixel_values, self.in_channels, self.patch_size)
        x = self.proj(pixel_values.to(self.proj.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        return rearrange(x, "b c h w -> b (h w) c"), grid
