"""The CLIP text tower (Radford et al. 2021, section 2.4; openai/CLIP's ``clip/model.py``
``encode_text``): a causal transformer pooled at EOT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.errors import InputError
from vlmzoo.layers import Activation, Block
from vlmzoo.layers.stack import BlockStack
from vlmzoo.layers.token_input import check_token_ids
from vlmzoo.registry import register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class TextTransformerConfig(Config):
    """Sizes of the CLIP text tower.

    ``pooling`` picks the end-of-text token whose feature becomes the text embedding:
    ``"argmax"`` is OpenAI's rule (the largest id, since EOT = 49407 is the last id of the
    vocabulary); ``"eos_token"`` is transformers' rule for modern configs (the first position
    whose id equals ``eos_token_id``). They differ only when ids above EOT or repeated EOTs occur.
    """

    kind = "encoder"

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    act: Activation = "quick_gelu"
    norm_eps: float = 1e-5
    embed_dim: int | None = 512
    proj_bias: bool = False
    pooling: Literal["argmax", "eos_token"] = "argmax"
    eos_token_id: int = 49407

    def validate(self) -> None:
        self._check_positive("vocab_size", "context_length", "width", "depth", "num_heads", "mlp_ratio")
        self._check_divisible("width", "num_heads")
        if self.norm_eps <= 0:
            self._fail("norm_eps", "must be > 0")
        if self.embed_dim is not None and self.embed_dim <= 0:
            self._fail("embed_dim", "must be positive or None")
        if not 0 <= self.eos_token_id < self.vocab_size:
            self._fail("eos_token_id", f"must be a token id in [0, {self.vocab_size})")


@dataclass
class TextOutput:
    """``tokens`` [B, L, width] final-normed; ``pooled`` [B, width] at EOT; ``embeds`` [B, embed_dim];
    ``hidden_states`` (embeddings, then every block) when requested."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    embeds: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@register_architecture
class TextTransformer(BlockStack, HubMixin, nn.Module):
    """CLIP text encoder: token ids [B, L] (L <= context_length) -> :class:`TextOutput`."""

    config_class = TextTransformerConfig

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(0.01 * torch.randn(1, c.context_length, c.width))
        self.blocks = nn.ModuleList(
            Block(c.width, c.num_heads, int(c.width * c.mlp_ratio), act=c.act, norm_eps=c.norm_eps)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.head = nn.Linear(c.width, c.embed_dim, bias=c.proj_bias) if c.embed_dim else None

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        check_token_ids(input_ids, attention_mask, self.config.vocab_size, self.config.context_length)

    def eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B] index of the token whose feature is pooled (see ``TextTransformerConfig.pooling``)."""
        if self.config.pooling == "argmax":
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == self.config.eos_token_id
        if not bool(is_eos.any(dim=-1).all()):
            raise InputError(f"pooling='eos_token' but a row has no eos_token_id={self.config.eos_token_id}")
        return is_eos.int().argmax(dim=-1)  # first occurrence

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> TextOutput:
        """``input_ids`` [B, L]; ``attention_mask`` [B, L] (1 = token, 0 = padding), optional.

        Attention is causal; padding keys are masked as well (they follow EOT, so the pooled
        feature is the same with or without the mask).
        """
        self._check(input_ids, attention_mask)
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.pos_embed[:, :length]
        mask, causal = None, True
        if attention_mask is not None:
            causal = False
            mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = mask[None, None] & attention_mask.bool()[:, None, None, :]
            # A query that sees no key at all (left padding) would give NaN: let it see itself.
            blind = ~mask.any(dim=-1, keepdim=True)
            mask = mask | (blind & torch.eye(length, dtype=torch.bool, device=x.device))
        hidden = [x] if output_hidden_states else None  # kept only when asked (peak memory)
        for block in self.blocks:
            x = self.run_block(block, x, attn_mask=mask, is_causal=causal)
            if hidden is not None:
                hidden.append(x)
        tokens = self.norm(x)
        pooled = tokens[torch.arange(tokens.shape[0], device=x.device), self.eot_positions(input_ids)]
        return TextOutput(
            tokens=tokens,
            pooled=pooled,
            embeds=self.head(pooled) if self.head is not None else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
        )
