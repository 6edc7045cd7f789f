"""Emu's Causal Transformer (Sun et al. 2023, "Emu: Generative Pretraining in Multimodality",
section 2.1) as a prefix adapter.

    visual tokens [n, N, in_dim] ─► ln_visual ─────────────────────┐ (keys and values)
    causal_tokens [1, M, width] ─► depth x (causal self-attention, cross-attention, FFN)
        ─► final_norm ─► projection ─► [n, M, out_dim]

M learned queries (32 in Emu) read the image encoder's tokens through cross-attention, like
BLIP-2's Q-Former, but attend to each other *causally*: query i sees queries 0..i only, so the
M visual embeddings form a 1-D causal sequence that the LLM can regress one after another
(section 2.1: the Causal Transformer turns 2-D spatial signals into a 1-D causal sequence).

The stack is a T5 decoder (baaivision/Emu's Emu1/models/causal_former.py builds
``T5ForConditionalGeneration(T5Config.from_pretrained("t5-base")).decoder`` with the keys and
values of its cross-attention reading ``encoder_width`` = the EVA width, Emu1/models/modeling_t5.py),
so every block is T5's (Raffel et al. 2020, section 2.1):

- pre-norm residual sub-layers with T5's RMS norm (scale only, no mean, no bias; eps 1e-6);
- attention without the 1/sqrt(head_dim) scaling (T5 folds it into the initialisation of ``q``)
  and bias-free ``q``, ``k``, ``v``, ``o`` of inner width ``num_heads * head_dim``;
- a learned relative position bias (``num_buckets`` buckets, log-spaced up to ``max_distance``,
  one scalar per head, causal buckets: only the distance to earlier queries), added to the
  self-attention logits of every block; the first block owns it in T5 and shares it, vlmzoo
  keeps it at the root (:attr:`CausalFormer.relative_attention_bias`);
- cross-attention without position bias, over all image tokens;
- a bias-free ReLU FFN (``wi``, ``wo`` in T5; ``mlp.fc1``, ``mlp.fc2`` here);
- a final RMS norm.

``ln_visual`` (Emu's LayerNorm(1408, eps 1e-6) on the EVA features, Emu1/models/modeling_emu.py)
is the adapter's first step, so any encoder can feed it; ``input_norm=False`` leaves it out.
``projection`` Linear(width -> out_dim, with bias) maps to the LLM's embedding width. Sizes are
t5-base's: width 768, 12 blocks, 12 heads of 64, FFN 3072, 32 buckets, max distance 128.
Dropout (0.1 in t5-base) is not modelled; outputs in eval mode are unaffected. The T5 decoder's
token embedding table, which Emu keeps but never uses (the queries are ``causal_tokens``), is
not built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import Activation, Mlp
from vlmzoo.registry import register, register_architecture


@dataclass
class CausalFormerConfig(Config):
    """Sizes of a Causal Transformer; ``in_dim`` / ``out_dim`` are filled by the VLM when None.

    ``in_dim`` is the vision encoder's width (read by ``ln_visual`` and the cross-attention keys
    and values). ``out_dim`` is the LLM's embedding width (``projection``); a standalone adapter
    with ``out_dim=None`` has no projection and returns its ``width``-wide query outputs.
    ``head_dim`` is T5's ``d_kv``: the attention's inner width is ``num_heads * head_dim``.
    ``num_buckets`` / ``max_distance`` are T5's ``relative_attention_num_buckets`` /
    ``relative_attention_max_distance``.
    """

    kind = "adapter"

    num_query_tokens: int = 32
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    head_dim: int = 64
    mlp_dim: int = 3072
    act: Activation = "relu"
    norm_eps: float = 1e-6
    num_buckets: int = 32
    max_distance: int = 128
    input_norm: bool = True
    input_norm_eps: float = 1e-6
    in_dim: int | None = None
    out_dim: int | None = None

    def validate(self) -> None:
        self._check_positive(
            "num_query_tokens",
            "width",
            "depth",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "norm_eps",
            "num_buckets",
            "max_distance",
            "input_norm_eps",
        )
        if self.num_buckets < 2:
            self._fail("num_buckets", "must be >= 2 (half the buckets are exact distances, half log-spaced)")
        if self.max_distance <= self.num_buckets // 2:
            self._fail(
                "max_distance",
                f"must exceed num_buckets // 2 = {self.num_buckets // 2} (the log-spaced buckets span "
                "the distances between the two)",
            )
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)


def relative_position_buckets(
    length: int, num_buckets: int, max_distance: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """[length, length] bucket of query i attending to key j in a causal (decoder) stack.

    T5's unidirectional ``_relative_position_bucket`` (Raffel et al. 2020, section 2.1): the
    distance d = max(i - j, 0) (later keys share bucket 0; the causal mask hides them anyway);
    distances below ``num_buckets // 2`` get their own bucket, larger ones a log-spaced bucket up
    to ``max_distance``, beyond which they share the last.
    """
    position = torch.arange(length, device=device)
    distance = (position[:, None] - position[None, :]).clamp(min=0)
    exact = num_buckets // 2
    # The clamp keeps log() finite where the exact branch is taken (torch.where evaluates both).
    log_spaced = exact + (
        torch.log(distance.clamp(min=exact).float() / exact)
        / math.log(max_distance / exact)
        * (num_buckets - exact)
    ).to(torch.long)
    log_spaced = log_spaced.clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, log_spaced)


class CausalFormerAttention(nn.Module):
    """T5 attention: [B, M, width] queries over a context [B, N, context_dim] -> [B, M, width].

    Bias-free ``q`` / ``k`` / ``v`` / ``o`` with inner width ``num_heads * head_dim`` and no
    1/sqrt(head_dim) scaling of the logits; ``bias`` (relative positions, masks) is added to them.
    """

    def __init__(self, width: int, num_heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.q = nn.Linear(width, inner, bias=False)
        self.k = nn.Linear(context_dim or width, inner, bias=False)
        self.v = nn.Linear(context_dim or width, inner, bias=False)
        self.o = nn.Linear(inner, width, bias=False)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``bias``: additive, broadcastable to [B, heads, M, N]."""
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.num_heads)
            for t in (self.q(x), self.k(context), self.v(context))
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(rearrange(out, "b h n d -> b n (h d)"))


class CausalFormerBlock(nn.Module):
    """One T5 decoder block: [B, M, width] queries, [B, N, context_dim] image tokens -> [B, M, width].

    ``x += self_attn(norm(x))`` (causal, with the relative position bias), ``x +=
    cross_attn(norm(x), context)``, ``x += mlp(norm(x))``; T5's ``layer.0`` / ``layer.1`` /
    ``layer.2`` (Emu1/models/modeling_t5.py ``T5Block``).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        context_dim: int,
        act: Activation = "relu",
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.self_attn_norm = nn.RMSNorm(width, eps=norm_eps)
        self.self_attn = CausalFormerAttention(width, num_heads, head_dim)
        self.cross_attn_norm = nn.RMSNorm(width, eps=norm_eps)
        self.cross_attn = CausalFormerAttention(width, num_heads, head_dim, context_dim)
        self.mlp_norm = nn.RMSNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_dim, act=act, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, self_bias: torch.Tensor) -> torch.Tensor:
        """``self_bias`` [1, heads, M, M]: relative position bias plus the causal mask."""
        h = self.self_attn_norm(x)
        x = x + self.self_attn(h, h, self_bias)
        x = x + self.cross_attn(self.cross_attn_norm(x), context)
        return x + self.mlp(self.mlp_norm(x))


@register_architecture
class CausalFormer(PrefixAdapter):
    """Emu's Causal Transformer adapter: [n, N, in_dim] visual tokens -> [n, num_query_tokens, out_dim].

    ``ln_visual`` (absent with ``input_norm=False``), ``causal_tokens`` [1, M, width] (normal(0,
    0.02), as Emu), ``relative_attention_bias`` Embedding(num_buckets, num_heads), ``blocks``,
    ``final_norm`` and ``projection`` (absent when ``out_dim`` is None).
    """

    config_class = CausalFormerConfig

    def __init__(self, config: CausalFormerConfig):
        super().__init__()
        c = config
        if c.in_dim is None:
            raise ConfigError(
                "CausalFormerConfig.in_dim=None: the Causal Transformer needs the vision encoder's width "
                "(a VisionLanguageModel fills it in)"
            )
        self.config = c
        self.ln_visual = nn.LayerNorm(c.in_dim, eps=c.input_norm_eps) if c.input_norm else None
        self.causal_tokens = nn.Parameter(0.02 * torch.randn(1, c.num_query_tokens, c.width))
        self.relative_attention_bias = nn.Embedding(c.num_buckets, c.num_heads)
        self.blocks = nn.ModuleList(
            CausalFormerBlock(c.width, c.num_heads, c.head_dim, c.mlp_dim, c.in_dim, c.act, c.norm_eps)
            for _ in range(c.depth)
        )
        self.final_norm = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.projection = nn.Linear(c.width, c.out_dim) if c.out_dim is not None else None
        self._init_t5_weights()

    def _init_t5_weights(self) -> None:
        """T5's initialisation (transformers' ``T5PreTrainedModel._init_weights``, factor 1): the
        missing 1/sqrt(head_dim) of the logits is in the std of ``q``; norms start at 1."""
        c = self.config
        inner = c.num_heads * c.head_dim
        nn.init.normal_(self.relative_attention_bias.weight, std=c.width**-0.5)
        for block in self.blocks:
            for attn in (block.self_attn, block.cross_attn):
                nn.init.normal_(attn.q.weight, std=(c.width * c.head_dim) ** -0.5)
                nn.init.normal_(attn.k.weight, std=c.width**-0.5)
                nn.init.normal_(attn.v.weight, std=c.width**-0.5)
                nn.init.normal_(attn.o.weight, std=inner**-0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=c.width**-0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=c.mlp_dim**-0.5)

    @property
    def out_dim(self) -> int:
        """Width of the outputs: the LLM's embedding width, or ``width`` without a projection."""
        return self.config.out_dim if self.config.out_dim is not None else self.config.width

    def num_tokens(self, num_input_tokens: int) -> int:
        """M = ``num_query_tokens``, whatever the number of visual tokens."""
        return self.config.num_query_tokens

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def self_attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[1, heads, M, M]: the relative position bias, and -inf where query i would see a later
        query j > i (the causal mask)."""
        c = self.config
        m = c.num_query_tokens
        device = self.relative_attention_bias.weight.device
        buckets = relative_position_buckets(m, c.num_buckets, c.max_distance, device)
        bias = rearrange(self.relative_attention_bias(buckets), "i j h -> 1 h i j").to(dtype)
        future = torch.ones(m, m, dtype=torch.bool, device=device).triu(diagonal=1)
        return bias.masked_fill(future, float("-inf"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, N, in_dim] visual tokens -> [n, num_query_tokens, out_dim] LLM input embeddings."""
        c = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[-1] != c.in_dim:
            raise InputError(
                f"CausalFormer expects visual tokens [n, N, {c.in_dim}] (its in_dim), "
                f"got {getattr(tokens, 'shape', type(tokens).__name__)}"
            )
        dtype = self.causal_tokens.dtype
        # Image tokens follow the adapter's dtype (the frozen encoder may run in half precision).
        context = tokens.to(dtype)
        if self.ln_visual is not None:
            context = self.ln_visual(context)
        x = self.causal_tokens.expand(tokens.shape[0], -1, -1)
        bias = self.self_attention_bias(dtype)
        for block in self.blocks:
            x = self.run_block(block, x, context, bias)
        x = self.final_norm(x)
        return self.projection(x) if self.projection is not None else x


# --- presets --------------------------------------------------------------------------------
CAUSAL_FORMER_PRESETS: dict[str, tuple[CausalFormerConfig, str]] = {
    "causal-former": (
        CausalFormerConfig(),
        "Emu's Causal Transformer (a t5-base decoder stack, 32 causal queries)",
    ),
    "emu-14b-causal-former": (
        CausalFormerConfig(in_dim=1408, out_dim=5120),
        "Emu-14B's Causal Transformer between EVA-CLIP ViT-g/14 (1408) and LLaMA-13B (5120)",
    ),
    "tiny-causal-former": (
        CausalFormerConfig(
            num_query_tokens=4,
            width=32,
            depth=2,
            num_heads=4,
            head_dim=8,
            mlp_dim=64,
            num_buckets=8,
            max_distance=16,
        ),
        "tiny Causal Transformer for tests and CPU demos",
    ),
}

for _name, (_cfg, _description) in CAUSAL_FORMER_PRESETS.items():
    register(_name, "adapter", _cfg, CausalFormer, _description)
