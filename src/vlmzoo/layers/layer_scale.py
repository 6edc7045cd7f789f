"""LayerScale (CaiT, Touvron et al. 2021): a learned per-channel gain on a residual branch."""

from __future__ import annotations

import torch
import torch.nn as nn


class LayerScale(nn.Module):
    """``x * gamma`` with ``gamma`` of shape [dim], initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
