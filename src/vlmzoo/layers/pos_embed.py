"""Absolute position embeddings resized to any token grid, the way each original model does it.

The originals disagree, and their numbers differ by more than parity tolerances, so the method
is a config choice rather than one "best" resize:

- ``"bicubic"``: transformers' ``interpolate_pos_encoding`` (CLIP, SigLIP, Dinov2Model): bicubic to
  the target size, no antialias.
- ``"bicubic_antialias"``: timm's ``resample_abs_pos_embed`` and DINOv2-with-registers (the
  original release and transformers' ``Dinov2WithRegistersModel``): bicubic to the
  target size with ``antialias=True``.
- ``"bicubic_offset"``: the original DINOv2 without registers: bicubic driven by
  ``scale_factor = (target + 0.1) / source`` — a DINO v1 kludge against float rounding in the
  output size, kept for parity: PyTorch then maps coordinates with that scale, so values differ
  from a size-based resize (dinov2's ``models/vision_transformer.py`` ``interpolate_pos_encoding``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

PosEmbedResize = Literal["bicubic", "bicubic_antialias", "bicubic_offset", "none"]


def resize_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: PosEmbedResize = "bicubic",
) -> torch.Tensor:
    """Resize [1, P + Ho·Wo, C] position embeddings to [1, P + Hn·Wn, C].

    The first ``num_prefix_tokens`` rows (CLS) are kept as they are; the grid rows are
    interpolated in float32 and cast back. Returns ``pos_embed`` itself when the grid is unchanged.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if mode == "none":
        raise ValueError(f"position-embedding resizing is off; cannot go from grid {old_grid} to {new_grid}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = rearrange(grid.float(), "1 (h w) c -> 1 c h w", h=old_grid[0], w=old_grid[1])
    if mode == "bicubic_offset":
        offset = 0.1
        scale = ((new_grid[0] + offset) / old_grid[0], (new_grid[1] + offset) / old_grid[1])
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        grid = F.interpolate(
            grid, size=new_grid, mode="bicubic", align_corners=False, antialias=mode == "bicubic_antialias"
        )
    if tuple(grid.shape[-2:]) != tuple(new_grid):
        raise RuntimeError(f"resized grid {tuple(grid.shape[-2:])} != requested {new_grid}")
    grid = rearrange(grid, "1 c h w -> 1 (h w) c").to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
