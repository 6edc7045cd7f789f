"""The adapter contract: how visual tokens reach the language model.

Two kinds, and the VLM does not care which (DESIGN, "Contracts between the parts"):

- **prefix** adapters (LLaVA MLP, BLIP-2 Q-Former) map visual tokens [B, N, C_enc] to
  embeddings [B, M, C_llm] that the VLM splices into the text at the image placeholders. They
  have ``in_dim``, ``out_dim`` and ``num_tokens(N) -> M``.
- **cross-attention** adapters (Flamingo) insert gated cross-attention layers into the decoder
  with ``attach(decoder)`` and are conditioned on the visual tokens before each LM call with
  ``condition(visual_tokens, input_ids, image_token_id)``; the placeholders stay in the text.

``injection`` names the kind; ``in_dim`` / ``out_dim`` are config fields that a VLM fills from
its encoder and decoder when left as ``None``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn

from vlmzoo.layers.stack import BlockStack
from vlmzoo.weights.hub import HubMixin

Injection = Literal["prefix", "cross_attention"]


class PrefixAdapter(BlockStack, HubMixin, nn.Module):
    """Base of adapters whose outputs are spliced into the text as M extra embeddings."""

    injection: ClassVar[Injection] = "prefix"

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def num_tokens(self, num_input_tokens: int) -> int:
        """M, the number of embeddings produced from N visual tokens."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """[B, N, in_dim] -> [B, M, out_dim]."""
        raise NotImplementedError
