"""LLaVA's projector: a linear layer or an MLP per token (Liu et al. 2023, "Visual Instruction
Tuning", and "Improved Baselines with Visual Instruction Tuning" for LLaVA-1.5; the original is
``build_vision_projector`` in llava/model/multimodal_projector/builder.py).

``depth=1`` is LLaVA v1's ``linear``; ``depth=2`` is v1.5's ``mlp2x_gelu`` (Linear -> GELU ->
Linear); ``mlp{N}x_gelu`` generalises; ``depth=0`` is LLaVA's ``identity`` (for encoders whose
tokens already have the LLM's width, such as Vary's fused towers). The module is an
``nn.Sequential`` so its keys are the original ``mm_projector.{0,2}`` ones. Token count is
unchanged: M = N. The splice into the text is :class:`~vlmzoo.adapters.prefix.PrefixAdapter`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import Activation, make_activation
from vlmzoo.registry import register, register_architecture


@dataclass
class MLPProjectorConfig(Config):
    """``in_dim`` (encoder width) and ``out_dim`` (LLM hidden size) are filled by the VLM when None."""

    kind = "adapter"

    in_dim: int | None = None
    out_dim: int | None = None
    depth: int = 2
    act: Activation = "gelu"
    bias: bool = True

    def validate(self) -> None:
        self._check_non_negative("depth")
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)


@register_architecture
class MLPProjector(PrefixAdapter):
    """[B, N, in_dim] -> [B, N, out_dim], the same MLP applied to every visual token."""

    config_class = MLPProjectorConfig

    def __init__(self, config: MLPProjectorConfig):
        super().__init__()
        if config.in_dim is None or config.out_dim is None:
            raise InputError("MLPProjector needs in_dim and out_dim (a VisionLanguageModel fills them in)")
        self.config = config
        if config.depth == 0:
            if config.in_dim != config.out_dim:
                raise ConfigError(
                    f"an identity projector (depth=0) needs in_dim == out_dim, got {config.in_dim} -> {config.out_dim}"
                )
            self.proj = nn.Identity()
            return
        layers: list[nn.Module] = [nn.Linear(config.in_dim, config.out_dim, bias=config.bias)]
        for _ in range(config.depth - 1):
            layers += [
                make_activation(config.act),
                nn.Linear(config.out_dim, config.out_dim, bias=config.bias),
            ]
        self.proj = nn.Sequential(*layers)

    def num_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def wrap_units(self) -> list[nn.Module]:
        """None: two Linears are not worth a unit of their own (they stay in the root unit)."""
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to recompute: the projector's activations are one [B, N, out_dim] tensor."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.config.in_dim:
            raise InputError(
                f"MLPProjector expects {self.config.in_dim}-dim tokens, got {tuple(tokens.shape)}"
            )
        return self.proj(tokens)


register(
    "identity",
    "adapter",
    MLPProjectorConfig(depth=0),
    MLPProjector,
    "no projection (tokens already LLM-wide)",
)
register("linear", "adapter", MLPProjectorConfig(depth=1), MLPProjector, "LLaVA v1 linear projector")
register("mlp2x_gelu", "adapter", MLPProjectorConfig(depth=2), MLPProjector, "LLaVA-1.5 MLP projector")
register("mlp3x_gelu", "adapter", MLPProjectorConfig(depth=3), MLPProjector, "3-layer GELU MLP projector")
# Real sizes: CLIP-L/14 width 1024 into Vicuna-7B (4096) / Vicuna-13B (5120) hidden sizes.
register(
    "llava-1.5-7b-projector",
    "adapter",
    MLPProjectorConfig(1024, 4096, depth=2),
    MLPProjector,
    "LLaVA-1.5-7B mlp2x_gelu projector",
)
register(
    "llava-1.5-13b-projector",
    "adapter",
    MLPProjectorConfig(1024, 5120, depth=2),
    MLPProjector,
    "LLaVA-1.5-13B mlp2x_gelu projector",
)
register(
    "llava-v1-7b-projector",
    "adapter",
    MLPProjectorConfig(1024, 4096, depth=1),
    MLPProjector,
    "LLaVA v1 linear projector (7B)",
)
