"""The encoder contract: what every vision encoder returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
