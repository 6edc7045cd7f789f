"""The SigLIP towers (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

Vision: a ViT without CLS token (learned position embeddings over the patch grid only), the final
LayerNorm on every token, and a multihead attention-pooling ("MAP") head that reads the image
embedding off those tokens (big_vision's ``big_vision/models/vit.py`` ``MAPHead``; transformers'
``SiglipMultiheadAttentionPoolingHead``). The trunk is :class:`VisionTransformer` itself: the
config subclasses :class:`ViTConfig` and this module adds only the head, so feature selection for
VLMs (``feature_layer``, ``feature_tokens``) is the ViT's and gives (H/p)·(W/p) tokens.

Text: a pre-LN transformer with **bidirectional** attention (no causal mask), learned positions,
a final LayerNorm, the feature of the **last** position pooled (SigLIP trains with text padded to
``context_length``, so that position is a pad/EOS token) and a biased linear ``head``
(big_vision's ``big_vision/models/proj/image_text/text_transformer.py``, ``pool_type="last"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.encoders.clip_text import TextOutput
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.layers import Activation, Block
from vlmzoo.layers.attention import CrossAttention
from vlmzoo.layers.mlp import Mlp
from vlmzoo.layers.stack import BlockStack
from vlmzoo.layers.token_input import check_token_ids
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


# --- vision ---------------------------------------------------------------------------------
@dataclass
class SiglipVisionConfig(ViTConfig):
    """A SigLIP vision tower: a :class:`ViTConfig` with SigLIP's defaults plus the MAP head.

    Defaults are SigLIP B/16-224 (transformers' ``SiglipVisionConfig``): no CLS token, tanh GELU,
    LayerNorm eps 1e-6, final norm on all tokens. ``pool`` stays ``"none"`` and ``embed_dim``
    ``None``: the pooled image embedding is the MAP head's output (``map_head=True``), of width
    ``width`` (SigLIP has no vision projection). ``map_head=False`` is transformers'
    ``vision_use_head=False`` (no pooled output).
    """

    class_token: bool = False
    act: Activation = "gelu_tanh"
    pool: Literal["cls", "mean", "none"] = "none"
    map_head: bool = True

    def validate(self) -> None:
        super().validate()
        if self.class_token:
            self._fail("class_token", "SigLIP has no CLS token (the MAP head pools)")
        if self.pool != "none":
            self._fail("pool", "must be 'none': the MAP head is SigLIP's pooling")
        if self.embed_dim is not None:
            self._fail("embed_dim", "must be None: SigLIP's image embedding is the MAP head output")
        if self.map_head and not self.final_norm:
            self._fail(
                "final_norm",
                "the MAP head reads the final-normed tokens (post_layernorm): set final_norm=True, or map_head=False",
            )


class MAPHead(nn.Module):
    """Multihead attention pooling: [B, N, C] -> [B, C].

    A learned ``probe`` query attends to the tokens (no residual around the attention), then
    ``h + mlp(norm(h))`` (big_vision's ``MAPHead``; Lee et al. 2019, "Set Transformer", PMA).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, act: Activation, norm_eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = CrossAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim, act=act)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` [B, N, C]; ``mask`` [B, N] (1 = token, 0 = padding the probe must not see:
        SigLIP 2's NaFlex sequences, transformers' ``key_padding_mask``), optional."""
        attn_mask = mask.bool()[:, None, None, :] if mask is not None else None
        h = self.attn(self.probe.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens, attn_mask)
        h = h + self.mlp(self.norm(h))
        return h[:, 0]


@register_architecture
class SiglipVisionTransformer(VisionTransformer):
    """SigLIP image encoder: [B, C, H, W] -> :class:`VisionOutput`.

    ``tokens`` follow the ViT feature selection (default: every patch token of the last block,
    before the final norm: (H/p)·(W/p) of them); ``pooled`` is the MAP head on the final-normed
    last block (transformers' ``pooler_output``, SigLIP's image embedding); ``embeds`` is None, as
    for every ViT without a projection head.
    Other image sizes resize the position embeddings (``pos_embed_resize``, bicubic as
    transformers' ``interpolate_pos_encoding``).
    """

    config_class = SiglipVisionConfig

    def __init__(self, config: SiglipVisionConfig):
        super().__init__(config)
        c = config
        self.attn_pool = (
            MAPHead(c.width, c.num_heads, c.mlp_hidden_dim, c.act, c.norm_eps) if c.map_head else None
        )

    @property
    def uses_last_block(self) -> bool:
        """The MAP head reads the last block, whichever layer a VLM takes its features from."""
        return self.attn_pool is not None

    def pool_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the MAP head over the final-normed tokens, None): no projection, SigLIP's image
        embedding is ``pooled``."""
        return (self.attn_pool(self.norm(x)) if self.attn_pool is not None else None), None


# --- text -----------------------------------------------------------------------------------
@dataclass
class SiglipTextConfig(Config):
    """Sizes of the SigLIP text tower (defaults: B/16, transformers' ``SiglipTextConfig``).

    ``embed_dim`` is the output width of the ``head`` (transformers' ``projection_size``, which
    defaults to ``width``).
    """

    kind = "encoder"

    vocab_size: int = 32000
    context_length: int = 64
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    act: Activation = "gelu_tanh"
    norm_eps: float = 1e-6
    embed_dim: int = 768

    def validate(self) -> None:
        self._check_positive(
            "vocab_size", "context_length", "width", "depth", "num_heads", "mlp_dim", "embed_dim"
        )
        self._check_divisible("width", "num_heads")
        if not self.norm_eps > 0 or self.norm_eps == float("inf"):
            self._fail("norm_eps", "must be a finite number > 0")


@register_architecture
class SiglipTextTransformer(BlockStack, HubMixin, nn.Module):
    """SigLIP text encoder: token ids [B, L] (L <= context_length) -> :class:`TextOutput`."""

    config_class = SiglipTextConfig

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(0.01 * torch.randn(1, c.context_length, c.width))
        self.blocks = nn.ModuleList(
            Block(c.width, c.num_heads, c.mlp_dim, act=c.act, norm_eps=c.norm_eps) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.head = nn.Linear(c.width, c.embed_dim)

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        check_token_ids(input_ids, attention_mask, self.config.vocab_size, self.config.context_length)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> TextOutput:
        """``input_ids`` [B, L]; ``attention_mask`` [B, L] (1 = token, 0 = padding), optional.

        Attention is bidirectional; with a mask, padding keys are hidden from every query.
        ``pooled`` [B, width] is the last position's final-normed feature, ``embeds``
        [B, embed_dim] its ``head`` projection (transformers' ``pooler_output``). SigLIP was
        trained on text padded to ``context_length`` without a mask: pad the same way to get
        its embeddings.
        """
        self._check(input_ids, attention_mask)
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.pos_embed[:, :length]
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]
            # A row with no token at all would give NaN: let every query see every key there.
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        hidden = [x] if output_hidden_states else None
        for block in self.blocks:
            x = self.run_block(block, x, attn_mask=mask)
            if hidden is not None:
                hidden.append(x)
        tokens = self.norm(x)
        pooled = tokens[:, -1]
        return TextOutput(
            tokens=tokens,
            pooled=pooled,
            embeds=self.head(pooled),
            hidden_states=tuple(hidden) if hidden is not None else None,
        )


# --- presets --------------------------------------------------------------------------------
# Sizes of the released towers (transformers' siglip/convert_siglip_to_hf.py; timm's
# vit_*_siglip_* defs in timm/models/vision_transformer.py): both towers share width, depth,
# heads and MLP width.
SIGLIP_SIZES: dict[str, tuple[int, int, int, int]] = {
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "so400m": (1152, 27, 16, 4304),
    # SigLIP 2's g-opt (google/siglip2-giant-opt-*: width 1536 rather than ViT-g's 1408); its
    # text tower is So400m's with a 1152 -> 1536 head (models/siglip.py).
    "giant-opt": (1536, 40, 16, 6144),
}


def siglip_vision_config(size: str, image_size: int, patch_size: int) -> SiglipVisionConfig:
    """The SigLIP vision tower of ``size`` ("base", "large", "so400m") at ``image_size``.

    Its ``tokens`` are transformers' ``last_hidden_state`` (the last block through
    ``post_layernorm``); a VLM picks its own layer and norm (``feature_layer``, ``feature_norm``:
    LLaVA-OneVision reads the last block before the norm)."""
    width, depth, heads, mlp = SIGLIP_SIZES[size]
    return SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        feature_norm=True,
    )


def siglip_text_config(size: str, vocab_size: int = 32000, context_length: int = 64) -> SiglipTextConfig:
    """The SigLIP text tower of ``size`` (English ``c4_en`` vocabulary of 32,000 by default)."""
    width, depth, heads, mlp = SIGLIP_SIZES[size]
    return SiglipTextConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        embed_dim=width,
    )


SIGLIP_VISION_PRESETS: dict[str, SiglipVisionConfig] = {
    "siglip-base-patch16-224": siglip_vision_config("base", 224, 16),
    "siglip-base-patch16-384": siglip_vision_config("base", 384, 16),
    "siglip-large-patch16-256": siglip_vision_config("large", 256, 16),
    "siglip-large-patch16-384": siglip_vision_config("large", 384, 16),
    # 384 px is not a multiple of 14: transformers' stride-14 convolution drops the last 6 pixel
    # rows and columns (27 x 27 = 729 patches), so the tower's native size is 27 x 14 = 378.
    "siglip-so400m-patch14-384": siglip_vision_config("so400m", 378, 14),
    # The fixed-resolution SigLIP 2 towers (google/siglip2-*-patch*-<size>): SigLIP's architecture
    # (their config.json is a SiglipConfig), SigLIP's sizes; g-opt is width 1536, 40 blocks.
    **{
        f"siglip2-{size}-patch{patch}-{image}": siglip_vision_config(size, image // patch * patch, patch)
        for size, patch, images in (
            ("base", 16, (224, 256, 384, 512)),
            ("base", 32, (256,)),
            ("large", 16, (256, 384, 512)),
            ("so400m", 14, (224, 384)),
            ("so400m", 16, (256, 384, 512)),
            ("giant-opt", 16, (256, 384)),
        )
        for image in images
    },
    # For tests: 32 px, 8 px patches (4x4 grid), 2 blocks of width 32.
    "siglip-vit-tiny": SiglipVisionConfig(
        image_size=32, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64, feature_norm=True
    ),
}

for _name, _cfg in SIGLIP_VISION_PRESETS.items():
    register(_name, "encoder", _cfg, SiglipVisionTransformer, "SigLIP vision tower (no CLS, MAP head)")
