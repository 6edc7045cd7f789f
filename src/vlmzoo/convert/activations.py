"""Peer activation names -> vlmzoo's ``Activation`` names, shared by every converter.

A wrong activation converts without any error and silently changes the features (OpenAI CLIP
was trained with QuickGELU, x·sigmoid(1.702x), openai/CLIP's ``clip/model.py``; its weights in a
GELU model give wrong features with no error), so an unknown one is refused, never guessed.
"""

from __future__ import annotations

import torch.nn as nn

from vlmzoo.errors import ConversionError
from vlmzoo.layers import Activation

# transformers' ACT2FN keys (``config.hidden_act``).
HF_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def from_hf_activation(name: str, where: str = "hidden_act") -> Activation:
    """The vlmzoo activation for a transformers ``hidden_act`` string."""
    if name not in HF_ACTIVATIONS:
        raise ConversionError(f"{where}={name!r} has no vlmzoo equivalent; known: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def from_module_activation(act: nn.Module) -> Activation:
    """The vlmzoo activation for an activation module (timm's layers, torch's)."""
    kind = type(act).__name__
    if kind == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if kind == "QuickGELU":
        return "quick_gelu"
    if kind == "SiLU":
        return "silu"
    if kind == "ReLU":
        return "relu"
    raise ConversionError(f"activation module {kind} has no vlmzoo equivalent")
