"""Shared fixtures: small random peer models (transformers, timm) built without any download."""

from __future__ import annotations

import pytest
import torch

# Tiny models: one thread avoids oversubscription overhead (and is what CI cores can give).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def randomize_(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with noise so that no zero/one init hides a mapping bug."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module
