"""BLIP-2's Querying Transformer (Li et al. 2023, "BLIP-2", Section 3.1) as a prefix adapter.

    query_tokens [1, M, width] ─► LayerNorm ─► depth x PostLNLayer ─► language_projection ─► [B, M, out_dim]
                                                   ▲ cross-attention (every k-th layer)
    visual tokens [B, N, in_dim] ──────────────────┘

M learned queries (32 in BLIP-2) read the frozen image encoder's tokens through cross-attention
and come out as M embeddings for the LLM, whatever the number N of visual tokens. The Q-Former
is a BERT encoder (bert-base sizes: 768 wide, 12 layers, 12 heads, FFN 3072, LayerNorm eps
1e-12), so its layers are **post-LN**, ``LN(x + sublayer(x))``, unlike the pre-LN ViT blocks:
:class:`vlmzoo.layers.post_ln.PostLNLayer`, the layer BLIP's MED text transformer is built of
too. Layer ``i`` gets cross-attention parameters only when it reads the visual tokens, so the
parameter set is exactly BLIP-2's. In each layer the query FFN is ``mlp`` (LAVIS's
``intermediate_query`` / ``output_query``).

Only the query path is modelled: the stage-2 (generative) BLIP-2 models drop the Q-Former's word
and position embeddings, text FFNs and LM head (LAVIS blip2_opt.py sets them to None), and so
does vlmzoo. Dropout (0.1 in BERT) is not modelled; outputs in eval mode are unaffected.

Parameter names follow the structure, not BERT's; ``vlmzoo.convert.blip2`` maps the LAVIS keys
(lavis/models/blip2_models/Qformer.py) and transformers' (models/blip_2/modeling_blip_2.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from vlmzoo.adapters.prefix import PrefixAdapter
from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import Activation
from vlmzoo.layers.post_ln import PostLNLayer
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture


@dataclass
class QFormerConfig(Config):
    """Sizes of a Q-Former; ``in_dim`` / ``out_dim`` are filled by the VLM when None.

    ``in_dim`` is the vision encoder's width (the cross-attention keys and values read it).
    ``out_dim`` is the LLM's hidden size (``language_projection``, LAVIS's ``opt_proj``); a
    standalone Q-Former with ``out_dim=None`` has no projection and returns its ``width``-wide
    query outputs (BLIP-2 stage 1, or a converted bare ``Blip2QFormerModel``).
    Layer ``i`` has cross-attention iff ``i % cross_attention_freq == 0`` (layers 0, 2, ..., 10).
    """

    kind = "adapter"

    num_query_tokens: int = 32
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    cross_attention_freq: int = 2
    act: Activation = "gelu"
    norm_eps: float = 1e-12
    in_dim: int | None = None
    out_dim: int | None = None

    def validate(self) -> None:
        self._check_positive(
            "num_query_tokens", "width", "depth", "num_heads", "mlp_dim", "cross_attention_freq", "norm_eps"
        )
        self._check_divisible("width", "num_heads")
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)

    def has_cross_attention(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) cross-attends to the visual tokens (LAVIS Qformer.py:
        ``layer_num % cross_attention_freq == 0``)."""
        return layer % self.cross_attention_freq == 0


# The Q-Former's layer is the shared post-LN BERT layer; the name stays public (vlmzoo.adapters).
QFormerLayer = PostLNLayer


class QFormerModel(BlockStack, nn.Module):
    """The BERT part of the Q-Former, without its learned queries or projection.

    [B, M, width] query embeddings + [B, N, in_dim] visual tokens -> [B, M, width]. This is what
    LAVIS calls ``Qformer.bert`` and transformers ``Blip2QFormerModel`` (both take the query
    embeddings as input): the embedding LayerNorm on the queries, then ``depth`` layers.
    """

    def __init__(self, config: QFormerConfig):
        super().__init__()
        c = config
        if c.in_dim is None:
            raise ConfigError(
                "QFormerConfig.in_dim=None: the Q-Former needs the vision encoder's width "
                "(a VisionLanguageModel fills it in)"
            )
        self.config = c
        self.layernorm = nn.LayerNorm(c.width, eps=c.norm_eps)  # BERT's embeddings.LayerNorm
        self.layers = nn.ModuleList(
            PostLNLayer(
                c.width,
                c.num_heads,
                c.mlp_dim,
                c.in_dim if c.has_cross_attention(i) else None,
                act=c.act,
                norm_eps=c.norm_eps,
            )
            for i in range(c.depth)
        )

    def forward(self, query_embeds: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """query_embeds: [B, M, width]; visual: [B, N, in_dim] -> [B, M, width]."""
        c = self.config
        if visual.ndim != 3 or visual.shape[-1] != c.in_dim:
            raise InputError(
                f"the Q-Former expects visual tokens [B, N, {c.in_dim}] (its in_dim), "
                f"got {tuple(visual.shape)}"
            )
        if query_embeds.ndim != 3 or query_embeds.shape[-1] != c.width:
            raise InputError(
                f"the Q-Former expects query embeddings [B, M, {c.width}], got {tuple(query_embeds.shape)}"
            )
        # Visual tokens follow the Q-Former's dtype (BLIP-2 keeps the Q-Former in fp32 while the
        # frozen ViT may run in fp16).
        visual = visual.to(self.layernorm.weight.dtype)
        x = self.layernorm(query_embeds)  # BertEmbeddings' LayerNorm, on the queries alone (LAVIS Qformer.py)
        for layer in self.layers:
            x = self.run_block(layer, x, context=visual)
        return x

    def wrap_units(self) -> list[nn.Module]:
        return list(self.layers)


@register_architecture
class QFormer(PrefixAdapter):
    """BLIP-2's Q-Former adapter: [B, N, in_dim] visual tokens -> [B, num_query_tokens, out_dim].

    ``query_tokens`` [1, M, width] (normal(0, 0.02) init, as LAVIS), ``qformer`` the BERT layers
    (:class:`QFormerModel`), ``language_projection`` Linear(width -> out_dim), absent when
    ``out_dim`` is None. Names follow transformers' ``Blip2ForConditionalGeneration``.
    """

    config_class = QFormerConfig

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = c = config
        self.query_tokens = nn.Parameter(0.02 * torch.randn(1, c.num_query_tokens, c.width))
        self.qformer = QFormerModel(c)
        self.language_projection = nn.Linear(c.width, c.out_dim) if c.out_dim is not None else None
        self._init_bert_weights()

    def _init_bert_weights(self) -> None:
        """BERT's init (normal(0, 0.02) weights, zero biases, unit LayerNorms) on the layers.

        BLIP-2 starts the self-attention and FFNs from bert-base and the cross-attention from
        this init; with no checkpoint at hand, the whole stack gets it.
        """
        for module in self.qformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def out_dim(self) -> int:
        """Width of the outputs: the LLM's hidden size, or ``width`` without a projection."""
        return self.config.out_dim if self.config.out_dim is not None else self.config.width

    def num_tokens(self, num_input_tokens: int) -> int:
        """M = ``num_query_tokens``, whatever the number of visual tokens."""
        return self.config.num_query_tokens

    def stack_parts(self) -> list[BlockStack]:
        """The BERT layers' stack (the queries and the projection stay in the root unit)."""
        return [self.qformer]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, in_dim] visual tokens -> [B, num_query_tokens, out_dim] LLM input embeddings."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
            raise InputError(
                f"QFormer expects visual tokens [B, N, {self.config.in_dim}], "
                f"got {getattr(tokens, 'shape', type(tokens).__name__)}"
            )
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        x = self.qformer(queries, tokens)
        return self.language_projection(x) if self.language_projection is not None else x


# --- presets --------------------------------------------------------------------------------
register("qformer", "adapter", QFormerConfig(), QFormer, "BLIP-2 Q-Former (bert-base sizes, 32 queries)")
register(
    "blip2-opt-2.7b-qformer",
    "adapter",
    QFormerConfig(in_dim=1408, out_dim=2560),
    QFormer,
    "BLIP-2 Q-Former between EVA ViT-g/14 (1408) and OPT-2.7B (2560)",
)
register(
    "tiny-qformer",
    "adapter",
    QFormerConfig(num_query_tokens=4, width=32, depth=2, num_heads=4, mlp_dim=64),
    QFormer,
    "tiny Q-Former for tests and CPU demos",
)
