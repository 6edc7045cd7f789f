"""Non-overlapping window partitioning of a channels-last token grid (ViTDet / SAM:
segment-anything's ``modeling/image_encoder.py`` ``window_partition`` / ``window_unpartition``).

A [B, H, W, C] grid is padded bottom/right with zeros to multiples of the window side, cut into
``w x w`` windows that are folded into the batch, and put back (crop included) afterwards. The
padded tokens are ordinary zero vectors: SAM does not mask them, so they take part in the
attention of the windows on the bottom/right border, and the output of those windows
depends on the padding — this is what the released weights were trained with. No shifting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a [B, H, W, C] grid into windows: returns ([B·nh·nw, w, w, C], padded (Hp, Wp)).

    H and W are zero-padded at the bottom/right up to the next multiple of ``window_size``
    (e.g. SAM's 64x64 grid with window 14 -> 70x70, 5x5 = 25 windows per image). Windows are
    ordered image-major, then row-major over the window grid (the original's order).
    """
    if window_size <= 0:
        raise ValueError(f"window_size must be positive, got {window_size}")
    _, h, w, _ = x.shape
    pad_h, pad_w = -h % window_size, -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros, bottom/right; never masked (as SAM)
    windows = rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) wh ww c", wh=window_size, ww=window_size)
    return windows, (h + pad_h, w + pad_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, hw: tuple[int, int], pad_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B·nh·nw, w, w, C] -> [B, H, W, C] (padding cropped).

    ``hw`` is the grid before padding, ``pad_hw`` the padded grid returned by the partition.
    """
    (h, w), (hp, wp) = hw, pad_hw
    x = rearrange(
        windows, "(b nh nw) wh ww c -> b (nh wh) (nw ww) c", nh=hp // window_size, nw=wp // window_size
    )
    if (hp, wp) != (h, w):
        x = x[:, :h, :w]
    return x.contiguous()
