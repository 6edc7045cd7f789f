"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"): drop a whole
residual branch per sample while training. The per-block rates grow linearly with depth, the
paper's "linear decay rule" (its section 3) in the form timm, DINOv2, SAM, Swin and PVT use:
0 at the first block, the configured rate at the last."""

from __future__ import annotations

import torch
import torch.nn as nn

from vlmzoo.errors import ConfigError


def check_drop_path_rate(rate: float, where: str) -> None:
    """Raise :class:`ConfigError` (``where`` names the field, e.g. ``"ViTConfig.drop_path_rate"``)
    unless 0 <= ``rate`` < 1: the last block's branch would otherwise be dropped always (or never
    defined)."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ConfigError(
            f"{where}={rate!r}: must be >= 0 and < 1 (the probability of dropping the last block's branch)"
        )


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """The drop probability of each of ``depth`` blocks: 0 for the first, rising linearly to
    ``rate`` for the last (timm's ``torch.linspace(0, drop_path_rate, depth)``; a single block
    gets 0). Raises :class:`ConfigError` for a rate outside [0, 1)."""
    check_drop_path_rate(rate, "drop_path_rate")
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


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
