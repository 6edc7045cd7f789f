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


# One tiny config per vision encoder family (every registered vision architecture).
TINY_ENCODERS = [
    "clip-vit-tiny",
    "dinov2-vit-tiny-reg4",
    "eva-vit-tiny",
    "sam-vit-tiny",
    "vary-vocab-tiny",
    "vary-toy-encoder-tiny",
    "swin-tiny",
    "flatten-swin-tiny",
    "pvt-tiny",
    "flatten-pvt-tiny",
    "siglip-vit-tiny",
    "siglip2-vit-tiny",
]


def pixels_for(
    encoder: torch.nn.Module,
    batch: int = 2,
    dtype: torch.dtype = torch.float32,
    magnitude: float | None = None,
):
    """A batch at the encoder's native size, one tensor per tower for a fused encoder: standard
    normal, or uniform in [-magnitude, magnitude]."""
    towers = getattr(encoder, "towers", None)
    sizes = (
        [t.config.image_size for t in towers.values()] if towers is not None else [encoder.config.image_size]
    )
    if magnitude is None:
        images = [torch.randn(batch, 3, s, s).to(dtype) for s in sizes]
    else:
        images = [((torch.rand(batch, 3, s, s) * 2 - 1) * magnitude).to(dtype) for s in sizes]
    return tuple(images) if towers is not None else images[0]
