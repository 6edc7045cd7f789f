"""Swin Transformer (Liu et al. 2021) and FLatten-Swin (Han et al. 2023, "FLatten Transformer",
ICCV; FLatten-Transformer's ``models/flatten_swin.py``).

A hierarchical encoder: a 4x4 patch embedding with LayerNorm, then four stages of pre-LN blocks
at strides 4, 8, 16, 32. Stage s has ``width·2^s`` channels; a patch merging (concatenate each
2x2 neighbourhood, LayerNorm(4C), Linear(4C -> 2C, no bias)) ends stages 1–3 — the original
layout (microsoft/Swin-Transformer's ``models/swin_transformer.py`` ``BasicLayer``), not timm's
"downsample at the start of the next stage". A final LayerNorm
follows stage 4 (Donut and Nougat drop it: ``final_norm=False``).

Attention per stage (``stage_attention``; FLatten's ``ATTN_TYPE`` in ``cfgs/flatten_swin_*.yaml``):

- ``"shifted_window"`` (Swin's W-MSA/SW-MSA): ``window_size`` windows with a relative position
  bias table, shifted by window // 2 on every second block.
- ``"focused_linear"`` (FLatten's "L" stages): focused linear attention inside
  ``linear_window_size`` windows. FLatten-Swin sets that window to 56, and a window at least
  as large as the stage's feature map is clamped to it with no shift, so at 224 px stages 1 (56x56)
  and 2 (28x28) become global linear attention over the whole map: ``ATTN_TYPE: LLSS``. The
  linear attention has no shift mask (FLatten's ``FocusedLinearAttention.forward`` accepts a
  ``mask`` argument and never reads it).

Windows are clamped the way the original Swin does it: when the *shorter* side of a stage's map
is <= the window, the window becomes that side on both axes and the shift 0 (``min(input_resolution)
<= window_size`` in microsoft/Swin-Transformer's ``SwinTransformerBlock.__init__``, copied by timm
0.5.4's ``models/swin_transformer.py`` — the timm facebookresearch/nougat's ``setup.py`` pins and
clovaai/donut's README was tested with — and by transformers' ``SwinLayer`` /
``DonutSwinLayer.set_shift_and_window_size``).
Non-square maps use the same rule: it is the shorter side, not each axis, that decides (timm >= 0.9
clamps per axis instead; see :func:`vlmzoo.convert.swin.from_timm_swin`). The rule is applied twice:

- at construction, on the native grid of each stage (``image_size`` may be (H, W)), because there
  it fixes what is stored: timm 0.5.4 builds a clamped stage's bias table for the clamped window
  and registers no ``attn_mask`` for its blocks, so the table has the size the original saved;
- at run time, on the actual (possibly padded-to-window-multiples) map, as transformers does on
  every call, so other resolutions, non-square ones included, run as transformers' ``SwinModel``
  and ``DonutSwinModel`` do. The originals cannot run them at all (timm 0.5.4's ``PatchEmbed``
  asserts the native size, its ``PatchMerging`` even sides).

The two agree wherever every stage's native shorter side exceeds the window — true of every released
Donut and Nougat encoder (the smallest maps, 80x60 with window 10 and 28x21 with window 7, hold
8x6 and 4x3 windows). Padding is zeros, unmasked, at the bottom/right, as in transformers; patch
merging pads odd maps by one row/column (ceil(n / 2)). transformers stores the clamp in the layer
(``self.window_size`` / ``self.shift_size`` are overwritten on the first small input and stay so)
and cannot run a map whose shorter side is *below* the window (its bias is built for the full
window); vlmzoo re-derives the clamp per call and reads a clamped window's bias from the table.

Donut (Kim et al. 2022, "OCR-free Document Understanding Transformer") and Nougat (Blecher et al.
2023, "Nougat: Neural Optical Understanding for Academic Documents") use this encoder on portrait
canvases, (H, W) = (2560, 1920) and (896, 672), with Swin-B widths, depths (2, 2, 14, 2) and no
final norm (sizes: the presets below, with their sources): clovaai/donut's
``donut/model.py`` ``SwinEncoder.forward`` runs ``patch_embed``, ``pos_drop`` and ``layers`` only, so
``model.norm`` is saved but unused, and transformers' ``DonutSwinModel`` has no final layernorm.
H and W must be multiples of the patch size: transformers would zero-pad the pixels bottom/right,
the originals assert the exact canvas; vlmzoo raises :class:`InputError` (a canvas that is not a
multiple of the patch size is a preprocessing mistake, not an image to pad silently).

``VisionOutput`` of a hierarchical encoder:

- ``tokens``: the last stage, [B, H/32·W/32, 8·width], after the final norm (if any);
- ``grid``: that stage's (H/32, W/32) (odd maps round up at each merging);
- ``hidden_states``: (patch embedding, stage 1, ..., stage 4) — each stage's output at its own
  resolution, *before* its patch merging and before the final norm, [B, h_s·w_s, C_s];
- ``pooled``: the mean of ``tokens`` (``pool="mean"``, transformers' ``pooler_output``).

Parameter names follow the original Swin / FLatten-Swin checkpoints (the module attributes of
the two ``models/*.py`` files above):
``patch_embed.{proj,norm}``, ``layers.{s}.blocks.{b}.{norm1,attn.qkv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}`` (L blocks: ``attn.dwc``, ``attn.scale``,
``attn.positional_encoding`` instead of the table), ``layers.{s}.downsample.{norm,reduction}``,
``norm``. ``relative_position_index`` is a non-persistent buffer (not in the state dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.config import Config
from vlmzoo.encoders.base import (
    Indices,
    OutputFormat,
    VisionOutput,
    check_output_fmt,
    stage_intermediates,
    take_indices,
)
from vlmzoo.layers import Block, ImageSize, PatchEmbed, check_drop_path_rate, drop_path_rates, image_hw
from vlmzoo.layers.block_attention import FocusedLinearBackend
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.stack import BlockStack
from vlmzoo.layers.swin_attention import ShiftedWindowAttention
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin

SwinStageAttention = Literal["shifted_window", "focused_linear"]


@dataclass
class SwinConfig(Config):
    """Sizes and switches of a Swin / FLatten-Swin encoder (module docstring).

    ``width`` is stage 1's channel count (Swin's ``embed_dim``; vlmzoo keeps ``embed_dim`` for
    projection heads, as in :class:`ViTConfig`). ``depths``, ``num_heads`` and ``stage_attention``
    have one entry per stage. ``image_size`` is the native input, an int (square) or (H, W): the
    size the windows are clamped at when the model is built (module docstring). ``window_size`` is
    the softmax stages' window (7 for 224 px models, 12 for 384 px ones), ``linear_window_size``
    the focused-linear stages' (FLatten: 56, i.e. the whole map at 224 px). ``norm_eps`` is the
    blocks' and the final norm's eps (transformers' ``layer_norm_eps``); the patch-embedding and
    merging norms keep ``nn.LayerNorm``'s default 1e-5, as in the original and transformers.
    """

    kind = "encoder"

    image_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_channels: int = 3
    width: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    stage_attention: tuple[SwinStageAttention, ...] = ("shifted_window",) * 4
    linear_window_size: int = 56
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    patch_norm: bool = True
    final_norm: bool = True
    focusing_factor: float = 3.0
    dwc_kernel_size: int = 5
    focused_linear_backend: FocusedLinearBackend = "auto"  # the kernel of its focused linear attention
    drop_path_rate: float = 0.0
    pool: Literal["mean", "none"] = "mean"

    def validate(self) -> None:
        self._check_positive("patch_size", "in_channels", "width", "mlp_ratio", "norm_eps")
        self._check_positive("window_size", "linear_window_size", "focusing_factor", "dwc_kernel_size")
        check_drop_path_rate(self.drop_path_rate, f"{type(self).__name__}.drop_path_rate")
        if any(side <= 0 for side in self.native_size):
            self._fail("image_size", "must be a positive int or an (H, W) pair of positive ints")
        if any(side % self.patch_size for side in self.native_size):
            self._fail("image_size", f"every side must be divisible by patch_size={self.patch_size}")
        if not self.depths or any(d <= 0 for d in self.depths):
            self._fail("depths", "must be a non-empty tuple of positive block counts")
        for name in ("num_heads", "stage_attention"):
            if len(getattr(self, name)) != len(self.depths):
                self._fail(
                    name,
                    f"has {len(getattr(self, name))} entries but SwinConfig.depths={self.depths} has "
                    f"{len(self.depths)}: every per-stage field needs one entry per stage",
                )
        for s, heads in enumerate(self.num_heads):
            if heads <= 0 or self.stage_dim(s) % heads:
                self._fail(
                    "num_heads", f"stage {s}: width {self.stage_dim(s)} is not divisible by {heads} heads"
                )
        if self.dwc_kernel_size % 2 == 0:
            self._fail("dwc_kernel_size", "must be odd (the DWC keeps the map size with padding k // 2)")

    @property
    def native_size(self) -> tuple[int, int]:
        """(H, W) of the native input (``image_size`` as a pair)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def stage_dim(self, stage: int) -> int:
        """Channels of stage ``stage`` (0-based): ``width · 2^stage``."""
        return self.width * 2**stage

    def stage_grids(self, image_size: ImageSize | None = None) -> list[tuple[int, int]]:
        """The token grid of every stage for an image of ``image_size`` (default: native).

        Patch merging pads odd sides, so each merge maps n to ceil(n / 2).
        """
        h, w = self.native_size if image_size is None else image_hw(image_size, self.native_size[0])
        grid = (h // self.patch_size, w // self.patch_size)
        grids = [grid]
        for _ in self.depths[1:]:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            grids.append(grid)
        return grids


class PatchMerging(nn.Module):
    """Swin's downsampling: [B, H·W, C] on (H, W) -> [B, ⌈H/2⌉·⌈W/2⌉, 2C].

    Each 2x2 neighbourhood is concatenated in the order x[0::2, 0::2], x[1::2, 0::2],
    x[0::2, 1::2], x[1::2, 1::2] (the original's, and transformers' and timm's), normed, and
    projected without bias. Odd sides are zero-padded at the bottom/right first (transformers).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = grid
        x = x.unflatten(1, grid)
        if h % 2 or w % 2:
            x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = rearrange(x, "b (h r) (w s) c -> b (h w) (s r c)", r=2, s=2)  # row offset varies fastest
        return self.reduction(self.norm(x)), ((h + 1) // 2, (w + 1) // 2)


class SwinStage(BlockStack, nn.Module):
    """One stage: ``blocks`` on a fixed-width grid, then an optional ``downsample`` (patch merging)."""

    def __init__(self, blocks: list[Block], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, h·w, C] -> [B, h·w, C] (the stage output before downsampling)."""
        for block in self.blocks:
            x = self.run_block(block, x, grid=grid)
        return x

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)


class NormedPatchEmbed(PatchEmbed):
    """Swin's (and PVT's) patch embedding: the strided conv of :class:`PatchEmbed`, then a
    LayerNorm ``norm`` (``nn.LayerNorm``'s default eps 1e-5 in both originals)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, norm: bool = True, eps: float = 1e-5):
        super().__init__(in_channels, dim, patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = super().forward(pixel_values)
        return self.norm(x), grid


def _stage_window(window: int, native_grid: tuple[int, int]) -> tuple[int, bool]:
    """(window, shifted blocks allowed) for a stage, by the original's clamp at the native grid.

    The shorter side decides, for non-square maps too: ``if min(self.input_resolution) <=
    self.window_size`` in microsoft/Swin-Transformer's and timm 0.5.4's ``SwinTransformerBlock``
    (the window becomes that side on both axes, the shift 0). timm 0.5.4 sizes each stage's
    ``input_resolution`` as ``patch_grid // 2**stage``; ceil(n / 2) here is the same for the even
    maps it accepts (its ``PatchMerging`` asserts even sides) and matches transformers' padding
    for odd ones.
    """
    side = min(native_grid)
    return (side, False) if side <= window else (window, True)


@register_architecture
class SwinTransformer(BlockStack, HubMixin, nn.Module):
    """Swin / FLatten-Swin encoder: [B, C, H, W] -> :class:`VisionOutput` (module docstring).

    H and W must be multiples of ``patch_size``; windows pad as needed.
    """

    config_class = SwinConfig

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = NormedPatchEmbed(c.in_channels, c.width, c.patch_size, norm=c.patch_norm)
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))  # one linear rule over all stages
        grids = c.stage_grids()
        self.layers = nn.ModuleList()
        for s, (depth, heads, kind) in enumerate(zip(c.depths, c.num_heads, c.stage_attention, strict=True)):
            dim = c.stage_dim(s)
            blocks = [
                Block(
                    dim,
                    heads,
                    int(dim * c.mlp_ratio),
                    act="gelu",
                    norm_eps=c.norm_eps,
                    drop_path=rates[sum(c.depths[:s]) + b],
                    attn=self._attention(kind, dim, heads, grids[s], odd_block=b % 2 == 1),
                )
                for b in range(depth)
            ]
            last = s == len(c.depths) - 1
            self.layers.append(SwinStage(blocks, None if last else PatchMerging(dim)))
        self.norm = (
            nn.LayerNorm(c.stage_dim(len(c.depths) - 1), eps=c.norm_eps) if c.final_norm else nn.Identity()
        )

    def _attention(
        self, kind: str, dim: int, heads: int, grid: tuple[int, int], odd_block: bool
    ) -> nn.Module:
        """The token mixer of one block: Swin window attention or FLatten's windowed linear attention.

        Shift window // 2 on odd blocks unless the window covers the native map
        (``SwinTransformerBlock.__init__`` of both originals sets shift 0 there).
        """
        c = self.config
        if kind == "shifted_window":
            window, shiftable = _stage_window(c.window_size, grid)
            shift = window // 2 if shiftable and odd_block else 0
            return ShiftedWindowAttention(
                dim, heads, window, shift, qkv_bias=c.qkv_bias, clamp="shorter_side"
            )
        window, shiftable = _stage_window(c.linear_window_size, grid)
        shift = window // 2 if shiftable and odd_block else 0
        return FocusedLinearWindowAttention(
            dim,
            heads,
            window,
            shift,
            qkv_bias=c.qkv_bias,
            focusing_factor=c.focusing_factor,
            kernel_size=c.dwc_kernel_size,
            backend=c.focused_linear_backend,
        )

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens`` (the last stage's)."""
        return self.config.stage_dim(len(self.config.depths) - 1)

    def stack_parts(self) -> list[BlockStack]:
        """The stages: each runs (and checkpoints) its own blocks."""
        return list(self.layers)

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Number of tokens in ``VisionOutput.tokens`` for an image of ``image_size`` (default native)."""
        h, w = self.config.stage_grids(image_size)[-1]
        return h * w

    def run_stages(self, pixel_values: torch.Tensor, last: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """The patch embedding, then stages 0 .. ``last`` - 1 — the one stage loop of
        :meth:`forward` and :meth:`forward_intermediates`.

        Returns [(tokens [B, h·w, C], (h, w))]: entry 0 the patch embeddings, entry s + 1 stage
        s's output before its patch merging (``hidden_states``); no merging runs after stage
        ``last`` - 1.
        """
        x, grid = self.patch_embed(pixel_values)
        outputs = [(x, grid)]
        for s, stage in enumerate(self.layers[:last]):
            x = stage(x, grid)
            outputs.append((x, grid))
            if stage.downsample is not None and s + 1 < last:
                x, grid = stage.downsample(x, grid)
        return outputs

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """[B, C, H, W] -> VisionOutput; H and W multiples of ``patch_size``."""
        outputs = self.run_stages(pixel_values, len(self.layers))
        x, grid = outputs[-1]
        tokens = self.norm(x)
        pooled = tokens.mean(dim=1) if self.config.pool == "mean" else None
        return VisionOutput(
            tokens=tokens,
            grid=grid,
            hidden_states=tuple(h for h, _ in outputs) if output_hidden_states else None,
            pooled=pooled,
        )

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: Indices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: OutputFormat = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """Stage outputs, as timm 1.0.31's ``SwinTransformer.forward_intermediates``.

        ``indices`` count stages from 0 (index s = ``hidden_states[s + 1]``: the stage's output
        before the patch merging, which timm runs at the start of the next stage; ``None`` all,
        an int n the last n, a sequence those, negative from the end), returned in stage order.
        Each is [B, C_s, h_s, w_s] (``"NCHW"``) or [B, h_s·w_s, C_s] (``"NLC"``, which timm's
        Swin does not offer). ``norm`` applies the final norm to the last stage only (it is
        sized for it). ``stop_early`` runs stages only up to the last index taken.

        Returns the list (``intermediates_only``) or (final features [B, h, w, C] — channels
        last, as timm — of the last stage run, through the final norm when that is the last
        stage, intermediates).
        """
        reshape = check_output_fmt(output_fmt)
        num_stages = len(self.layers)
        take, max_index = take_indices(num_stages, indices)
        last = max_index + 1 if stop_early else num_stages
        outputs = self.run_stages(pixel_values, last)
        intermediates = stage_intermediates(outputs, take, num_stages, self.norm if norm else None, reshape)
        if intermediates_only:
            return intermediates
        x, grid = outputs[-1]
        if last == num_stages:
            x = self.norm(x)
        return x.unflatten(1, grid), intermediates

    def prune_intermediate_layers(
        self, indices: Indices = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (timm 1.0.31's ``prune_intermediate_layers``):
        the final norm goes with ``prune_norm`` or when stages go (it is sized for the last one),
        the pooling (``pool="none"``) with ``prune_head`` or when stages go. The config follows
        (``depths``, ``num_heads``, ``stage_attention``, ``final_norm``, ``pool``); the new last
        stage loses its patch merging. Returns the absolute indices kept.
        """
        c = self.config
        take, max_index = take_indices(len(self.layers), indices)
        kept = max_index + 1
        prune_end = kept < len(self.layers)
        fields: dict[str, Any] = dict(
            depths=c.depths[:kept], num_heads=c.num_heads[:kept], stage_attention=c.stage_attention[:kept]
        )
        if prune_norm or prune_end:
            fields["final_norm"] = False
        if prune_head or prune_end:
            fields["pool"] = "none"
        self.config = c.replace(**fields)
        self.layers = self.layers[:kept]
        self.layers[-1].downsample = None
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        return take


# --- presets --------------------------------------------------------------------------------
# Swin-T/S/B (Liu et al. 2021, section 3.3 "Architecture Variants"): patch 4, window 7, MLP 4x,
# head dim 32.
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
# FLatten-Swin: ATTN_TYPE "LLSS" with the linear stages' window 56 (cfgs/flatten_swin_t.yaml).
FLATTEN_SWIN_ATTENTION: tuple[SwinStageAttention, ...] = (
    "focused_linear",
    "focused_linear",
    "shifted_window",
    "shifted_window",
)

SWIN_PRESETS: dict[str, SwinConfig] = {}
for _size, (_dim, _depths, _heads) in SWIN_SIZES.items():
    SWIN_PRESETS[f"swin-{_size}"] = SwinConfig(width=_dim, depths=_depths, num_heads=_heads)
    SWIN_PRESETS[f"flatten-swin-{_size}"] = SwinConfig(
        width=_dim, depths=_depths, num_heads=_heads, stage_attention=FLATTEN_SWIN_ATTENTION
    )
# Tiny variants for tests and CPU demos: 64 px -> 16, 8, 4, 2 grids, window 2, a few 100k params.
SWIN_PRESETS["swin-tiny"] = SwinConfig(
    image_size=64, width=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=2
)
SWIN_PRESETS["flatten-swin-tiny"] = SWIN_PRESETS["swin-tiny"].replace(
    stage_attention=FLATTEN_SWIN_ATTENTION, linear_window_size=16
)


# Donut and Nougat encoders: Swin-B widths (embed 128, heads 4-8-16-32, patch 4) with depths
# (2, 2, 14, 2), no final norm, and their portrait canvases (H, W). Donut: clovaai/donut's
# donut/model.py (SwinEncoder; DonutConfig defaults input_size [2560, 1920], window_size 10,
# encoder_layer [2, 2, 14, 2]) and naver-clova-ix/donut-base's config.json (DonutSwinConfig
# image_size [2560, 1920], window_size 10): 80x60 = 4,800 tokens of width 1024. Nougat:
# facebookresearch/nougat's config/train_nougat.yaml and nougat/model.py NougatConfig (input_size
# [896, 672], window_size 7): 28x21 = 588 tokens. Both build timm's SwinTransformer with its
# default drop_path_rate 0.1 (as does DonutSwinConfig). No pooling: their decoders read the tokens.
_DONUT_WIDTHS = dict(width=128, depths=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), final_norm=False, pool="none")
DONUT_PRESETS: dict[str, SwinConfig] = {
    "donut-base-encoder": SwinConfig(
        image_size=(2560, 1920), window_size=10, drop_path_rate=0.1, **_DONUT_WIDTHS
    ),
    "nougat-encoder": SwinConfig(image_size=(896, 672), window_size=7, drop_path_rate=0.1, **_DONUT_WIDTHS),
    # Tests: a non-square canvas whose every stage holds several windows and shifts (grids 48x32,
    # 24x16, 12x8, 6x4 with window 2; all even and window multiples, as timm 0.5.4 requires).
    "donut-swin-tiny": SwinConfig(
        image_size=(192, 128),
        width=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=2,
        final_norm=False,
        pool="none",
    ),
}

_DESCRIPTIONS = {
    "swin": "Swin Transformer (shifted windows)",
    "flatten": "FLatten-Swin (focused linear attention in stages 1-2, LLSS)",
    "donut-base-encoder": "Donut's Swin encoder (2560x1920 canvas, window 10, no final norm)",
    "nougat-encoder": "Nougat's Swin encoder (896x672 canvas, window 7, no final norm)",
    "donut-swin-tiny": "Donut-style Swin encoder (non-square canvas, no final norm)",
}
for _name, _cfg in SWIN_PRESETS.items():
    _description = _DESCRIPTIONS["flatten" if _name.startswith("flatten") else "swin"]
    register(_name, "encoder", _cfg, SwinTransformer, _description + (" (tiny)" if "tiny" in _name else ""))
for _name, _cfg in DONUT_PRESETS.items():
    register(
        _name, "encoder", _cfg, SwinTransformer, _DESCRIPTIONS[_name] + (" (tiny)" if "tiny" in _name else "")
    )
