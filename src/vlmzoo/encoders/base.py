"""The encoder contract: what every vision encoder returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vlmzoo.errors import ConfigError


@dataclass
class VisionOutput:
    """What a vision encoder's ``forward(pixel_values)`` returns.

    - ``tokens``: [B, N, C] the selected features (layer, prefix tokens and norm chosen by the
      encoder config) — what an adapter consumes. ``C`` equals the encoder's ``out_dim``.
    - ``grid``: (H', W') the spatial token grid; the last H'·W' tokens are the patch tokens in
      row-major order.
    - ``hidden_states``: when requested, the [B, P + H'·W', width] output of the embeddings
      (entry 0) and of every block (entry k), P prefix tokens (CLS, registers) included.
      Hierarchical encoders (Swin, PVT) have no single width: their entries are the patch
      embeddings and each *stage's* output (see the encoder's docstring); ``tokens`` and
      ``grid`` then belong to the last stage.
    - ``pooled``: [B, width] the pooled, final-normed feature (CLS or mean), if the encoder pools.
    - ``embeds``: [B, embed_dim] ``pooled`` after the projection head (CLIP's image embedding).
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooled: torch.Tensor | None = None
    embeds: torch.Tensor | None = None


# --- multi-layer features (timm's ``forward_intermediates`` contract) ------------------------
# Every encoder offers ``forward_intermediates(pixel_values, indices=None, norm=False,
# stop_early=False, output_fmt="NCHW", intermediates_only=False)`` with the semantics of timm
# 1.0.31 (``timm/models/vision_transformer.py`` ``VisionTransformer.forward_intermediates``):
# ``indices`` count blocks (ViT, SAM) or stages (Swin, PVT) from 0 — never the embeddings —
# and the intermediates come back in block order, each index once.
OutputFormat = Literal["NCHW", "NLC"]
Indices = int | Sequence[int] | None
OUTPUT_FORMATS: tuple[str, ...] = ("NCHW", "NLC")


def take_indices(num_features: int, indices: Indices) -> tuple[list[int], int]:
    """(absolute indices, largest) of the features to take, as timm's ``feature_take_indices``
    (``timm/models/_features.py``): ``None`` = all, an int n = the last n, a sequence = those
    indices (negative ones count from the end). Out-of-range indices are a :class:`ConfigError`.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, bool):
        raise ConfigError(f"indices={indices!r}: expected an int (last n) or a sequence of indices")
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ConfigError(f"indices={indices}: the last n must be 1 .. {num_features}")
        taken = list(range(num_features - indices, num_features))
    else:
        if not isinstance(indices, Sequence) or isinstance(indices, str) or not indices:
            raise ConfigError(f"indices={indices!r}: expected an int (last n) or a non-empty sequence")
        taken = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not -num_features <= i < num_features:
                raise ConfigError(
                    f"indices={list(indices)!r}: {i!r} is not an index of {num_features} features "
                    f"(-{num_features} .. {num_features - 1})"
                )
            taken.append(i % num_features)
    return taken, max(taken)


def check_output_fmt(output_fmt: str) -> bool:
    """Whether ``output_fmt`` asks for maps ("NCHW") rather than tokens ("NLC"); else ConfigError."""
    if output_fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output_fmt={output_fmt!r}: must be one of {list(OUTPUT_FORMATS)}")
    return output_fmt == "NCHW"


def to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, H'·W', C] row-major patch tokens -> [B, C, H', W'] (contiguous, as timm returns them)."""
    return tokens.unflatten(1, grid).permute(0, 3, 1, 2).contiguous()


def stage_intermediates(
    outputs: list[tuple[torch.Tensor, tuple[int, int]]],
    take: list[int],
    num_stages: int,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
    reshape: bool,
) -> list[torch.Tensor]:
    """A hierarchical encoder's ``forward_intermediates`` list: stage ``s`` is ``outputs[s + 1]``
    (tokens [B, P + h·w, C_s], grid), taken in stage order; ``norm`` (the final norm, sized for the
    last stage) applies to the last stage only; prefix tokens (PVT's CLS) are dropped; maps
    [B, C_s, h, w] when ``reshape``."""
    intermediates = []
    for s in sorted(set(take)):
        y, grid = outputs[s + 1]
        if norm is not None and s == num_stages - 1:
            y = norm(y)
        y = y[:, y.shape[1] - grid[0] * grid[1] :]
        intermediates.append(to_map(y, grid) if reshape else y)
    return intermediates
