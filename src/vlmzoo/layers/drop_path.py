"""Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample while training."""

from __future__ import annotations

import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Zero the branch for a random ``p`` fraction of samples, scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
