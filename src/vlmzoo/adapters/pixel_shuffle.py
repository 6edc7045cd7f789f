"""Pixel shuffle (space-to-depth) connectors: s x s neighbouring tokens become one, then a projection.

    tokens [n, g·g, C] ─► pixel shuffle ─► [n, (g/s)·(g/s), C·s²] ─► [LayerNorm] ─► Linear (─► act ─► Linear) ─► [n, M, D]

Each output token is the concatenation of an s x s block of the (square, row-major) token grid, so
an image costs s² times fewer positions in the text while every encoder feature still reaches the
projection. Two published connectors are this module with different fields:

- Idefics3 / SmolVLM (Laurençon et al. 2024, "Building and better understanding vision-language
  models"; transformers' idefics3/modeling_idefics3.py ``Idefics3Connector`` and
  smolvlm/modeling_smolvlm.py ``SmolVLMConnector``): the shuffle
  then one bias-free Linear (``norm=False, depth=1, bias=False``). Scale factor 2 for Idefics3-8B,
  3 for SmolVLM-2.2B, 4 for SmolVLM-256M / 500M (their ``config.json`` ``scale_factor``).
- InternVL 1.5 / 2 / 2.5 (Chen et al. 2024, "How Far Are We to GPT-4V?"; OpenGVLab/
  InternVL's internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py ``pixel_shuffle``
  and ``mlp1``; transformers' ``InternVLMultiModalProjector``): the shuffle with
  ``downsample_ratio`` 0.5 (s = 2), then LayerNorm(C·s²) -> Linear -> GELU -> Linear, biased
  (``norm=True, depth=2, bias=True``).

Element order (the same in both codes, and in transformers' ``InternVLModel.pixel_shuffle``): output
token (i, j) of the (g/s) x (g/s) grid, in row-major order, holds input cell (s·i + a, s·j + b) at
channels ``(a·s + b)·C .. (a·s + b + 1)·C``. InternVL's original ``ps_version="v1"`` skips the
last transpose of its shuffle, so its output grid is transposed (token (i, j) holds block (j, i)):
``transposed=True``. The original's config default is ``"v1"``; its training scripts pass
``--ps_version 'v2'`` (the order above).

The grid is read off the token count: N = g², as both originals do (``int(N ** 0.5)``), so the
tokens must be patch tokens only (select them in the encoder: ``feature_tokens="patch"``; InternVL
drops its ViT's CLS token before the shuffle) and the grid square with a side divisible by s.
Anything else is refused with the sizes and the fix, never reshaped into a wrong grid.

The projection is an ``nn.Sequential`` ``proj`` so that InternVL's original keys (``mlp1.0`` the
LayerNorm, ``mlp1.1`` and ``mlp1.3`` the Linears) are its keys; ``vlmzoo.convert.connectors``
maps transformers' names. The splice into the text is
:class:`~vlmzoo.adapters.prefix.PrefixAdapter`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError, VlmzooError
from vlmzoo.layers import Activation, make_activation
from vlmzoo.registry import register, register_architecture


@dataclass
class PixelShuffleConfig(Config):
    """A pixel shuffle by ``scale_factor`` and its projection; defaults are Idefics3's connector.

    ``in_dim`` (encoder width C) and ``out_dim`` (LLM hidden size D) are filled by the VLM when
    None. The projection reads C·s² features: ``norm`` puts a LayerNorm (eps ``norm_eps``) first,
    ``depth`` Linears follow with ``act`` between them (1: Idefics3's Linear, 2: InternVL's MLP),
    with biases when ``bias``. ``transposed`` is InternVL's ``ps_version="v1"`` order.
    """

    kind = "adapter"

    in_dim: int | None = None
    out_dim: int | None = None
    scale_factor: int = 2
    norm: bool = False
    depth: int = 1
    act: Activation = "gelu"
    bias: bool = False
    norm_eps: float = 1e-5
    transposed: bool = False

    def validate(self) -> None:
        self._check_positive("scale_factor", "depth", "norm_eps")
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)

    @property
    def shuffled_dim(self) -> int:
        """C·s², the width of a shuffled token (what the projection reads)."""
        if self.in_dim is None:
            raise ConfigError("PixelShuffleConfig.in_dim=None: the encoder width is not known yet")
        return self.in_dim * self.scale_factor**2


def square_grid_side(num_tokens: int, scale_factor: int, error: type[VlmzooError] = ConfigError) -> int:
    """g, the side of the square grid of ``num_tokens`` = g² tokens, checked divisible by ``scale_factor``.

    Raises ``error`` naming the sizes and the fix: a count that is no square (prefix tokens such as
    CLS kept, or a non-square grid) or a side that ``scale_factor`` does not divide.
    """
    side = math.isqrt(num_tokens)
    if num_tokens < 1 or side * side != num_tokens:
        raise error(
            f"pixel shuffle needs the patch tokens of a square grid (N = g*g), got N={num_tokens}: an "
            "encoder that keeps prefix tokens (CLS, registers) must select the patch tokens only "
            "(feature_tokens='patch'); a non-square grid (H' != W') cannot be shuffled, use a square image size"
        )
    s = scale_factor
    if side % s:
        factors = [d for d in range(2, side + 1) if side % d == 0][:3]
        other = (
            f"a scale factor dividing {side} ({', '.join(map(str, factors))})" if factors else "no shuffle"
        )
        raise error(
            f"the {side}x{side} token grid is not divisible by scale_factor={s}: choose an image size "
            f"whose grid side is a multiple of {s} (e.g. {side + s - side % s} patches a side) or {other}"
        )
    return side


def pixel_shuffle(tokens: torch.Tensor, scale_factor: int, transposed: bool = False) -> torch.Tensor:
    """Space-to-depth on a square row-major grid: [n, g·g, C] -> [n, (g/s)², C·s²].

    Output token (i, j) holds input cells (s·i + a, s·j + b) at channels (a·s + b)·C + c
    (transformers' ``Idefics3Connector.pixel_shuffle``, InternVL's ``pixel_shuffle`` with
    ``ps_version="v2"``); ``transposed=True`` lays the output grid out column-major instead
    (InternVL's ``"v1"``: token (i, j) holds block (j, i)). Raises :class:`InputError` for a token
    count that is no square grid with a side divisible by ``scale_factor``.
    """
    if tokens.ndim != 3:
        raise InputError(f"pixel shuffle expects tokens [n, N, C], got {tuple(tokens.shape)}")
    n, num, c = tokens.shape
    s = scale_factor
    g = square_grid_side(num, s, InputError)
    # [n, row-block i, row offset a, column-block j, column offset b, C] -> [n, i, j, a, b, C]
    blocks = tokens.reshape(n, g // s, s, g // s, s, c)
    order = (0, 3, 1, 2, 4, 5) if transposed else (0, 1, 3, 2, 4, 5)
    return blocks.permute(*order).reshape(n, (g // s) ** 2, s * s * c)


@register_architecture
class PixelShuffleProjector(PrefixAdapter):
    """[n, g·g, in_dim] -> [n, (g/s)², out_dim]: the pixel shuffle, then the projection ``proj``."""

    config_class = PixelShuffleConfig

    def __init__(self, config: PixelShuffleConfig):
        super().__init__()
        if config.in_dim is None or config.out_dim is None:
            raise InputError(
                "PixelShuffleProjector needs in_dim and out_dim (a VisionLanguageModel fills them in)"
            )
        self.config = c = config
        width = c.shuffled_dim
        layers: list[nn.Module] = [nn.LayerNorm(width, eps=c.norm_eps)] if c.norm else []
        layers.append(nn.Linear(width, c.out_dim, bias=c.bias))
        for _ in range(c.depth - 1):
            layers += [make_activation(c.act), nn.Linear(c.out_dim, c.out_dim, bias=c.bias)]
        self.proj = nn.Sequential(*layers)

    def num_tokens(self, num_input_tokens: int) -> int:
        """M = N / s²; raises :class:`ConfigError` for an encoder whose tokens cannot be shuffled."""
        side = square_grid_side(num_input_tokens, self.config.scale_factor)
        return (side // self.config.scale_factor) ** 2

    def wrap_units(self) -> list[nn.Module]:
        """None: a norm and one or two Linears stay in the root unit, as LLaVA's projector does."""
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to recompute: the activations are a few [n, M, width] tensors."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, g·g, in_dim] -> [n, (g/s)², out_dim]."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.config.in_dim:
            raise InputError(
                f"PixelShuffleProjector expects tokens [n, N, {self.config.in_dim}], got {tuple(tokens.shape)}"
            )
        return self.proj(pixel_shuffle(tokens, self.config.scale_factor, self.config.transposed))


IDEFICS3 = PixelShuffleConfig(scale_factor=2)
INTERNVL = PixelShuffleConfig(scale_factor=2, norm=True, depth=2, bias=True)

register(
    "pixel-shuffle-linear",
    "adapter",
    IDEFICS3,
    PixelShuffleProjector,
    "Idefics3/SmolVLM connector: 2x2 pixel shuffle + bias-free Linear (N/4 tokens)",
)
register(
    "pixel-shuffle-mlp",
    "adapter",
    INTERNVL,
    PixelShuffleProjector,
    "InternVL mlp1: 2x2 pixel shuffle + LayerNorm, Linear, GELU, Linear (N/4 tokens)",
)
# Real sizes (the released config.json files): Idefics3-8B reads SigLIP so400m (1152) into
# Llama-3.1-8B (4096) at scale 2; SmolVLM-256M / 500M read SigLIP B/16-512 (768) into SmolLM2-135M
# (576) / SmolLM2-360M (960) at scale 4 (64 tokens per 512 px image).
register(
    "idefics3-8b-connector",
    "adapter",
    IDEFICS3.replace(in_dim=1152, out_dim=4096),
    PixelShuffleProjector,
    "Idefics3-8B connector (scale 2, 1152*4 -> 4096)",
)
register(
    "smolvlm-256m-connector",
    "adapter",
    IDEFICS3.replace(in_dim=768, out_dim=576, scale_factor=4),
    PixelShuffleProjector,
    "SmolVLM-256M connector (scale 4, 768*16 -> 576)",
)
register(
    "smolvlm-500m-connector",
    "adapter",
    IDEFICS3.replace(in_dim=768, out_dim=960, scale_factor=4),
    PixelShuffleProjector,
    "SmolVLM-500M connector (scale 4, 768*16 -> 960)",
)
