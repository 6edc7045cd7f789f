"""Vision Transformer (Dosovitskiy et al. 2021) in the variants VLMs use: CLIP, timm, DINOv2-style.

One configurable model covers the published towers: OpenAI CLIP (no patch bias, ``ln_pre``,
QuickGELU, projection without bias — openai/CLIP's ``clip/model.py`` ``VisionTransformer``), timm's
``vit_*_clip_*`` (exact GELU, projection with bias), and the LayerScale / register-token / SwiGLU
variants. Feature selection for VLMs (layer -2, drop CLS, pre/post norm) is configuration, never a
code change (LLaVA's ``mm_vision_select_layer=-2`` and ``mm_vision_select_feature="patch"``,
``llava/model/multimodal_encoder/clip_encoder.py``).

Attention is a per-block choice (``block_attention``): global softmax by default, or ViTDet
windows, Swin shifted windows, PVT spatial reduction, CSWin stripes or FLatten focused linear
attention (:mod:`vlmzoo.layers.block_attention`). "Replace the first 4 blocks of CLIP
by focused linear attention" is ``config.with_attention("focused_linear", blocks=range(4))``.
CLS and register tokens attend globally in every block and are visible to every window/stripe
(the reasons are in :mod:`vlmzoo.layers.spatial_attention`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.encoders.base import (
    Indices,
    OutputFormat,
    VisionOutput,
    check_output_fmt,
    take_indices,
    to_map,
)
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import (
    Activation,
    Block,
    ImageSize,
    PatchEmbed,
    PosEmbedResize,
    check_drop_path_rate,
    drop_path_rates,
    image_hw,
    resize_pos_embed,
)
from vlmzoo.layers.block_attention import (
    AttentionOptions,
    BlockAttention,
    FocusedLinearBackend,
    build_block_attention,
    shift_sizes,
)
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class ViTConfig(Config):
    """Sizes and variant switches of a Vision Transformer.

    ``image_size`` is the native resolution the position embeddings are stored for; other
    sizes (multiples of ``patch_size``, non-square too) resize them with ``pos_embed_resize``.
    ``feature_layer`` indexes ``hidden_states`` (0 = embeddings, k = block k, -1 = last block,
    -2 = penultimate as in LLaVA); a tuple of indices selects several layers and concatenates
    them along channels, in the order given (``out_dim`` = ``width`` x their number), as
    transformers' ``LlavaModel.get_image_features`` does with a list-valued
    ``vision_feature_layer`` (VipLLaVA's default is (-2, -5, -8, -11, 6)). ``feature_tokens``
    keeps (``"all"``) or drops (``"patch"``) the CLS/register tokens of each selected layer;
    ``feature_norm`` applies the final norm to each selected layer.
    ``mlp_dim`` sets the MLP hidden width exactly (for SwiGLU: the width of each half), overriding
    ``width * mlp_ratio`` (DINOv2-g's 4096 is not a round ratio of 1536: dinov2's
    ``layers/swiglu_ffn.py`` rounds 2/3 of 4 x 1536 up to a multiple of 8).
    ``mask_token`` adds DINOv2's learned token that replaces masked patches (dinov2's
    ``models/vision_transformer.py`` ``prepare_tokens_with_masks``).

    ``block_attention``: one attention type per block (empty = all ``"global"``); the types and
    what they add are listed in :mod:`vlmzoo.layers.block_attention`. Their hyperparameters:
    ``window_size`` (``window``, ``shifted_window``), ``sr_ratio`` (``spatial_reduction``),
    ``stripe_width`` (``cross_shaped``), ``focusing_factor`` and ``dwc_kernel_size``
    (``focused_linear``; FLatten's 3 and 5, ``MODEL.LA.FOCUSING_FACTOR`` / ``KERNEL_SIZE`` in its
    ``config.py``). :meth:`with_attention` edits the layout.
    """

    kind = "encoder"

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None
    act: Activation = "gelu"
    swiglu: bool = False
    qkv_bias: bool | Literal["qv"] = True  # "qv": EVA's q_bias/v_bias, no k bias (LAVIS eva_vit.py)
    patch_bias: bool = True
    class_token: bool = True
    num_registers: int = 0
    mask_token: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    norm_eps: float = 1e-6
    layer_scale_init: float | None = None
    drop_path_rate: float = 0.0
    pos_embed_resize: PosEmbedResize = "bicubic"
    pool: Literal["cls", "mean", "none"] = "cls"
    embed_dim: int | None = None
    proj_bias: bool = False
    feature_layer: int | tuple[int, ...] = -1
    feature_tokens: Literal["patch", "all"] = "patch"
    feature_norm: bool = False
    block_attention: tuple[BlockAttention, ...] = ()
    window_size: int = 14
    sr_ratio: int = 2
    stripe_width: int = 7
    focusing_factor: float = 3.0
    dwc_kernel_size: int = 5
    focused_linear_backend: FocusedLinearBackend = "auto"  # the kernel of its focused linear attention

    def validate(self) -> None:
        self._check_positive(
            "image_size", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio"
        )
        self._check_non_negative("num_registers")
        check_drop_path_rate(self.drop_path_rate, f"{type(self).__name__}.drop_path_rate")
        self._check_divisible("width", "num_heads")
        self._check_divisible("image_size", "patch_size")
        if self.norm_eps <= 0:
            self._fail("norm_eps", "must be > 0")
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            self._fail("mlp_dim", "must be positive or None")
        if self.embed_dim is not None and self.embed_dim <= 0:
            self._fail("embed_dim", "must be positive or None")
        if self.layer_scale_init is not None and self.layer_scale_init <= 0:
            # timm's init_values=0 means "no LayerScale"; here that is None, not a zero gamma.
            self._fail("layer_scale_init", "must be > 0, or None for no LayerScale")
        if self.pool == "cls" and not self.class_token:
            self._fail("pool", "'cls' pooling needs class_token=True: set it, or pool='mean' or 'none'")
        if self.embed_dim is not None and self.pool == "none":
            self._fail(
                "embed_dim",
                "a projection head maps one pooled vector per image, but pool='none' keeps every token: "
                "for patch tokens (a VLM's encoder) pass embed_dim=None; for an image embedding set "
                "pool='cls' or 'mean'",
            )
        self._validate_feature_layer()
        self._validate_attention()

    def _validate_feature_layer(self) -> None:
        span = f"-{self.depth + 1} .. {self.depth}"
        if isinstance(self.feature_layer, int):
            if not -(self.depth + 1) <= self.feature_layer <= self.depth:
                self._fail("feature_layer", f"must index hidden_states: {span}")
            return
        if not self.feature_layer:
            self._fail("feature_layer", "needs at least one layer: an int or a non-empty tuple of indices")
        bad = [i for i in self.feature_layer if not -(self.depth + 1) <= i <= self.depth]
        if bad:
            self._fail("feature_layer", f"every entry must index hidden_states ({span}); {bad} do not")

    @property
    def feature_indices(self) -> tuple[int, ...]:
        """The ``hidden_states`` indices ``feature_layer`` selects, made absolute (0 .. depth), in order."""
        layers = (self.feature_layer,) if isinstance(self.feature_layer, int) else self.feature_layer
        return tuple(i % (self.depth + 1) for i in layers)

    def _validate_attention(self) -> None:
        if self.block_attention and len(self.block_attention) != self.depth:
            self._fail(
                "block_attention",
                f"needs one entry per block (depth={self.depth}), got {len(self.block_attention)}; "
                "() means every block is 'global'",
            )
        self._check_positive("window_size", "sr_ratio", "stripe_width", "focusing_factor", "dwc_kernel_size")
        kinds = set(self.attention_types)
        if "cross_shaped" in kinds and self.num_heads % 2:
            self._fail(
                "block_attention",
                f"'cross_shaped' splits the heads in two: num_heads={self.num_heads} is odd",
            )
        if "spatial_reduction" in kinds and min(self.grid) < self.sr_ratio:  # as PvtConfig checks
            self._fail(
                "sr_ratio",
                f"the native {self.grid[0]}x{self.grid[1]} token grid is smaller than the reduction",
            )
        for kind in ("spatial_reduction", "focused_linear"):
            if kind in kinds and self.qkv_bias == "qv":
                self._fail(
                    "block_attention", f"{kind!r} does not support qkv_bias='qv' (EVA's q/v-only biases)"
                )
        if "focused_linear" in kinds and self.dwc_kernel_size % 2 == 0:
            self._fail("dwc_kernel_size", "must be odd (the DWC keeps the grid size with padding k // 2)")

    @property
    def attention_types(self) -> tuple[str, ...]:
        """The attention type of every block (``block_attention``, or all ``"global"``)."""
        return self.block_attention or ("global",) * self.depth

    def with_attention(
        self, kind: BlockAttention, blocks: Iterable[int] | None = None, **fields: object
    ) -> ViTConfig:
        """A copy in which ``blocks`` (indexes, negative counting from the end; default: all) use
        attention ``kind``; ``fields`` set other fields too, e.g. ``window_size=14``.

        ``clip.with_attention("focused_linear", blocks=range(4))`` replaces the first 4 blocks.
        """
        indexes = range(self.depth) if blocks is None else list(blocks)
        layout = list(self.attention_types)
        for i in indexes:
            if isinstance(i, bool) or not isinstance(i, int) or not -self.depth <= i < self.depth:
                raise ConfigError(
                    f"ViTConfig.with_attention: block index {i!r} is not in 0 .. {self.depth - 1}"
                )
            layout[i] = kind
        return self.replace(block_attention=tuple(layout), **fields)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.patch_size,) * 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_registers

    @property
    def mlp_hidden_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else int(self.width * self.mlp_ratio)


@register_architecture
class VisionTransformer(BlockStack, HubMixin, nn.Module):
    """ViT encoder: [B, C, H, W] -> :class:`VisionOutput` (tokens [B, N, out_dim]).

    Token order is [CLS, registers..., patches...]. Position embeddings cover CLS + patches
    (registers get none, as in dinov2's ``prepare_tokens_with_masks``, which inserts them after
    the position embeddings are added). With ``mask_token``,
    patches flagged in ``masks`` are replaced by the learned token before CLS and position
    embeddings are added (the same function).
    """

    config_class = ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c.in_channels, c.width, c.patch_size, bias=c.patch_bias)
        scale = c.width**-0.5
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, c.width)) if c.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.num_registers, c.width)) if c.num_registers else None
        # Only when enabled, so towers without one (CLIP) keep their exact parameter counts.
        self.mask_token = nn.Parameter(torch.zeros(1, c.width)) if c.mask_token else None
        num_pos = int(c.class_token) + c.grid[0] * c.grid[1]
        self.pos_embed = nn.Parameter(scale * torch.randn(1, num_pos, c.width))
        self.norm_pre = nn.LayerNorm(c.width, eps=c.norm_eps) if c.pre_norm else nn.Identity()
        rates = drop_path_rates(c.drop_path_rate, c.depth)
        options = AttentionOptions(
            window_size=c.window_size,
            sr_ratio=c.sr_ratio,
            stripe_width=c.stripe_width,
            focusing_factor=c.focusing_factor,
            dwc_kernel_size=c.dwc_kernel_size,
            focused_linear_backend=c.focused_linear_backend,
        )
        kinds = c.attention_types
        shifts = shift_sizes(kinds, c.window_size)
        self.blocks = nn.ModuleList(
            Block(
                c.width,
                c.num_heads,
                c.mlp_hidden_dim,
                act=c.act,
                qkv_bias=c.qkv_bias,
                norm_eps=c.norm_eps,
                layer_scale_init=c.layer_scale_init,
                drop_path=rate,
                swiglu=c.swiglu,
                attn=build_block_attention(
                    kind, c.width, c.num_heads, c.grid, c.num_prefix_tokens, c.qkv_bias, options, shift
                ),
            )
            for rate, kind, shift in zip(rates, kinds, shifts, strict=True)
        )
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps) if c.final_norm else nn.Identity()
        self.head = nn.Linear(c.width, c.embed_dim, bias=c.proj_bias) if c.embed_dim else None

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens``: ``width`` per selected layer."""
        return self.config.width * len(self.config.feature_indices)

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Number of tokens in ``VisionOutput.tokens`` for an image of ``image_size`` (default native)."""
        c = self.config
        h, w = image_hw(image_size, c.image_size)
        n = (h // c.patch_size) * (w // c.patch_size)
        return n + (c.num_prefix_tokens if c.feature_tokens == "all" else 0)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, P + H'·W', width] position embeddings for a token grid (resized when not native)."""
        c = self.config
        if grid != c.grid and c.pos_embed_resize == "none":
            raise InputError(
                f"image gives a {grid[0]}x{grid[1]} token grid but the position embeddings are for "
                f"{c.grid[0]}x{c.grid[1]} ({c.image_size}px) and pos_embed_resize='none'"
            )
        return resize_pos_embed(self.pos_embed, c.grid, grid, int(c.class_token), c.pos_embed_resize)

    def embed(
        self, pixel_values: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + masking + CLS + position embedding + registers + pre-norm: [B, P + H'·W', width].

        ``masks``: optional bool [B, H'·W'] (True = replace that patch by ``mask_token``).
        """
        x, grid = self.patch_embed(pixel_values)
        if masks is not None:
            self._check_masks(masks, x.shape[:2], grid)
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(grid)
        if self.reg_token is not None:
            x = torch.cat([x[:, :1], self.reg_token.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return self.norm_pre(x), grid

    def _check_masks(self, masks: torch.Tensor, shape: tuple[int, int], grid: tuple[int, int]) -> None:
        if self.mask_token is None:
            raise InputError("masks were given but this encoder has no mask token (config mask_token=False)")
        if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
            kind = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise InputError(f"masks must be a bool tensor (True = masked patch), got {kind}")
        if tuple(masks.shape) != tuple(shape):
            raise InputError(
                f"masks must have shape [B, H'·W'] = {tuple(shape)} for this batch "
                f"({grid[0]}x{grid[1]} patch grid), got {tuple(masks.shape)}"
            )

    @property
    def uses_last_block(self) -> bool:
        """Whether the outputs need the last block even when the features come from an earlier one
        (pooling; a subclass's own head)."""
        return self.config.pool != "none"

    def pool_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pooled [B, width], embeds [B, embed_dim]) from the last block's output [B, N, width]."""
        c = self.config
        if c.pool == "none":
            return None, None
        final = self.norm(x)
        pooled = final[:, 0] if c.pool == "cls" else final[:, c.num_prefix_tokens :].mean(dim=1)
        return pooled, self.head(pooled) if self.head is not None else None

    def run_blocks(
        self, x: torch.Tensor, grid: tuple[int, int], keep: Collection[int], last: int
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run blocks 1 .. ``last`` on the embeddings ``x`` [B, N, width] — the one block loop of
        :meth:`forward` and :meth:`forward_intermediates`.

        Returns (block ``last``'s output, {``hidden_states`` index: [B, N, width]} for the indices
        in ``keep``, ascending; 0 is the embeddings). Other outputs are not held: keeping all of
        them costs depth x [B, N, C] of peak memory and page faults on every call (measured 2-3%
        of a CLIP-B/16 forward on CPU).
        """
        kept = {0: x} if 0 in keep else {}
        for index, block in enumerate(self.blocks[:last], start=1):
            x = self.run_block(block, x, grid=grid)
            if index in keep:
                kept[index] = x
        return x, kept

    def select_features(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """The selected layers [B, P + N, width] each -> ``VisionOutput.tokens`` [B, N', out_dim]:
        each through the final norm (``feature_norm``), prefix tokens dropped (``feature_tokens="patch"``),
        then concatenated along channels (transformers' ``LlavaModel.get_image_features``)."""
        c = self.config
        if c.feature_norm:
            layers = [self.norm(y) for y in layers]
        if c.feature_tokens == "patch":
            layers = [y[:, c.num_prefix_tokens :] for y in layers]
        return layers[0] if len(layers) == 1 else torch.cat(layers, dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        masks: torch.Tensor | None = None,
    ) -> VisionOutput:
        """[B, C, H, W] -> VisionOutput; H and W multiples of ``patch_size``.

        ``masks``: optional bool [B, H'·W'] marking patches to replace by the mask token
        (needs ``mask_token=True``; DINOv2's iBOT-style masking, Oquab et al. 2023, section 4).

        Blocks after the last selected feature layer run only when they are needed (pooling, a
        projection head, or ``output_hidden_states``).
        """
        c = self.config
        x, grid = self.embed(pixel_values, masks)
        features = c.feature_indices
        last = c.depth if output_hidden_states or self.uses_last_block else max(features)
        x, kept = self.run_blocks(x, grid, range(last + 1) if output_hidden_states else features, last)
        pooled, embeds = self.pool_outputs(x)
        return VisionOutput(
            tokens=self.select_features([kept[i] for i in features]),
            grid=grid,
            hidden_states=tuple(kept.values()) if output_hidden_states else None,
            pooled=pooled,
            embeds=embeds,
        )

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: Indices = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: OutputFormat = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> Any:
        """Block outputs for dense heads and multi-layer features, as timm 1.0.31's
        ``VisionTransformer.forward_intermediates`` (same arguments, order and results).

        ``indices``: which blocks (0-based: index k is the output of block k, ``hidden_states[k + 1]``;
        the embeddings are never returned): ``None`` all, an int n the last n, a sequence those
        (negative from the end); returned in block order, each once. ``norm`` applies the final
        norm to each. Prefix tokens (CLS, registers) are split off: each intermediate is
        [B, width, H', W'] (``"NCHW"``) or [B, H'·W', width] (``"NLC"``), or a (spatial,
        [B, P, width] prefix) pair with ``return_prefix_tokens``. ``stop_early`` runs blocks only
        up to the last index taken.

        Returns the list of intermediates (``intermediates_only``), or (final features
        [B, P + H'·W', width] — the last block run, through the final norm — , intermediates), or
        with ``output_dict`` a dict with ``"image_intermediates"``, ``"image_intermediates_prefix"``
        (when ``return_prefix_tokens`` and the model has prefix tokens) and ``"image_features"``
        (unless ``intermediates_only``).
        """
        c = self.config
        reshape = check_output_fmt(output_fmt)
        take, max_index = take_indices(len(self.blocks), indices)
        x, grid = self.embed(pixel_values)
        last = max_index + 1 if stop_early else len(self.blocks)
        x, kept = self.run_blocks(x, grid, {i + 1 for i in take}, last)
        intermediates = [self.norm(y) if norm else y for y in kept.values()]
        prefix = None
        if c.num_prefix_tokens:
            prefix = [y[:, : c.num_prefix_tokens] for y in intermediates]
            intermediates = [y[:, c.num_prefix_tokens :] for y in intermediates]
        if reshape:
            intermediates = [to_map(y, grid) for y in intermediates]
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": intermediates}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix is not None:
            intermediates = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: Indices = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (timm 1.0.31's
        ``prune_intermediate_layers``); ``prune_norm`` drops the final norm (``final_norm=False``),
        ``prune_head`` the pooling and projection head (``pool="none"``, ``embed_dim=None``).

        The config follows (``depth``, ``block_attention``), so the pruned module saves and
        loads as what it is; a ``feature_layer`` that no longer indexes ``hidden_states`` is a
        :class:`ConfigError` (negative ones count from the new last block). Returns the absolute
        indices kept.
        """
        c = self.config
        take, max_index = take_indices(len(self.blocks), indices)
        depth = max_index + 1
        fields: dict[str, Any] = dict(depth=depth, block_attention=c.block_attention[:depth])
        if prune_norm:
            fields["final_norm"] = False
        if prune_head:
            fields.update(pool="none", embed_dim=None)
        self.config = c.replace(**fields)  # validated before anything changes
        self.blocks = self.blocks[:depth]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.head = None
        return take


# --- presets --------------------------------------------------------------------------------
# OpenAI CLIP towers (openai/CLIP's clip/model.py build_model; sizes of the released ViT-B/32,
# B/16, L/14, L/14@336): head dim 64, MLP 4x, QuickGELU, no patch bias, ln_pre, LayerNorm eps
# 1e-5, projection without bias.
def clip_vision_config(image_size: int, patch_size: int, width: int, depth: int, embed_dim: int) -> ViTConfig:
    """The OpenAI CLIP vision tower of the given size."""
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=width // 64,
        act="quick_gelu",
        patch_bias=False,
        pre_norm=True,
        norm_eps=1e-5,
        embed_dim=embed_dim,
        proj_bias=False,
    )


CLIP_VISION_PRESETS: dict[str, ViTConfig] = {
    "clip-vit-b32": clip_vision_config(224, 32, 768, 12, 512),
    "clip-vit-b16": clip_vision_config(224, 16, 768, 12, 512),
    "clip-vit-l14": clip_vision_config(224, 14, 1024, 24, 768),
    "clip-vit-l14-336": clip_vision_config(336, 14, 1024, 24, 768),
    # Tiny towers for tests and CPU demos: same structure, a few hundred thousand parameters.
    "clip-vit-tiny": clip_vision_config(32, 8, 64, 2, 32).replace(num_heads=4),
    "clip-vit-tiny-p4": clip_vision_config(32, 4, 64, 2, 32).replace(num_heads=4),
    # The `vlmzoo demo` tower: 48 px images, 6x6 patches, 2 heads of 32 (learns in ~1 CPU minute).
    "demo-vit": clip_vision_config(48, 8, 64, 2, 32).replace(num_heads=2),
}

for _name, _cfg in CLIP_VISION_PRESETS.items():
    register(_name, "encoder", _cfg, VisionTransformer, "OpenAI CLIP vision tower")


# BLIP image encoders (salesforce/BLIP's models/blip.py ``create_vit``, models/vit.py): timm's
# pre-LN ViT/16 (patch bias, qkv bias, exact GELU, LayerNorm eps 1e-6), CLS first, and every token
# through the final ``norm`` (the text side cross-attends all of them; ITC reads the CLS).
# ``create_vit`` trains the large tower with drop path 0.1 (base: 0).
def blip_vision_config(
    image_size: int, width: int, depth: int, num_heads: int, drop_path: float = 0.0
) -> ViTConfig:
    """The BLIP image encoder of the given size (patch 16)."""
    return ViTConfig(
        image_size=image_size,
        patch_size=16,
        width=width,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=drop_path,
        pool="none",
        feature_tokens="all",
        feature_norm=True,
    )


BLIP_VISION_PRESETS: dict[str, ViTConfig] = {
    "blip-vit-b16": blip_vision_config(224, 768, 12, 12),
    "blip-vit-l16": blip_vision_config(224, 1024, 24, 16, drop_path=0.1),
    "blip-vit-tiny": blip_vision_config(32, 48, 2, 4).replace(patch_size=8),
}

for _name, _cfg in BLIP_VISION_PRESETS.items():
    register(
        _name, "encoder", _cfg, VisionTransformer, "BLIP image encoder (all tokens through the final norm)"
    )
