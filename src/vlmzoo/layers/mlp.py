"""Feed-forward blocks: the transformer MLP and its activations."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "silu", "relu"]


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 · x): the GELU approximation OpenAI CLIP was trained with (openai/CLIP's
    ``clip/model.py`` ``QuickGELU``; the 1.702 is Hendrycks & Gimpel 2016, section 2).

    Loading OpenAI weights into an exact-GELU model gives subtly wrong features without any
    error, which is why every vlmzoo config names its activation explicitly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: Activation) -> nn.Module:
    """The activation module for a config's ``act`` field."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


class Mlp(nn.Module):
    """``fc1 -> act -> fc2``: [..., dim] -> [..., dim] (hidden width ``hidden_dim``)."""

    def __init__(self, dim: int, hidden_dim: int, act: Activation = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_activation(act)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Packed SwiGLU: ``fc1`` gives [x1 | x2], output ``fc2(silu(x1) * x2)`` (DINOv2-g's ``w12``/``w3``)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(x1) * x2)
