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

Windows are clamped the way the original Swin does it (and transformers' ``SwinLayer``): when the
shorter side of a stage's map is <= the window, the window becomes that side and the shift 0.
At construction this uses the native resolution (so the bias table / positional encoding has the
size the original builds); at run time it is re-applied to the actual map, which may be padded to
window multiples (zeros, unmasked, as in transformers) — so other resolutions, non-square ones
included, run as in transformers' ``SwinModel``. Patch merging pads odd maps by one row/column.

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
from typing import Literal

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.config import Config
from vlmzoo.encoders.base import VisionOutput
from vlmzoo.layers import Block, ImageSize, PatchEmbed, check_drop_path_rate, drop_path_rates, image_hw
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
    have one entry per stage. ``window_size`` is
    the softmax stages' window (7 for 224 px models, 12 for 384 px ones), ``linear_window_size``
    the focused-linear stages' (FLatten: 56, i.e. the whole map at 224 px). ``norm_eps`` is the
    blocks' and the final norm's eps (transformers' ``layer_norm_eps``); the patch-embedding and
    merging norms keep ``nn.LayerNorm``'s default 1e-5, as in the original and transformers.
    """

    kind = "encoder"

    image_size: int = 224
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
    drop_path_rate: float = 0.0
    pool: Literal["mean", "none"] = "mean"

    def validate(self) -> None:
        self._check_positive("image_size", "patch_size", "in_channels", "width", "mlp_ratio", "norm_eps")
        self._check_positive("window_size", "linear_window_size", "focusing_factor", "dwc_kernel_size")
        check_drop_path_rate(self.drop_path_rate, f"{type(self).__name__}.drop_path_rate")
        self._check_divisible("image_size", "patch_size")
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

    def stage_dim(self, stage: int) -> int:
        """Channels of stage ``stage`` (0-based): ``width · 2^stage``."""
        return self.width * 2**stage

    def stage_grids(self, image_size: ImageSize | None = None) -> list[tuple[int, int]]:
        """The token grid of every stage for an image of ``image_size`` (default: native).

        Patch merging pads odd sides, so each merge maps n to ceil(n / 2).
        """
        h, w = image_hw(image_size, self.image_size)
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
    """(window, shifted blocks allowed) for a stage, by the original's clamp at the native grid."""
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

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """[B, C, H, W] -> VisionOutput; H and W multiples of ``patch_size``."""
        x, grid = self.patch_embed(pixel_values)
        hidden = [x]
        for stage in self.layers:
            x = stage(x, grid)
            hidden.append(x)
            if stage.downsample is not None:
                x, grid = stage.downsample(x, grid)
        tokens = self.norm(x)
        pooled = tokens.mean(dim=1) if self.config.pool == "mean" else None
        return VisionOutput(
            tokens=tokens,
            grid=grid,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            pooled=pooled,
        )


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

_DESCRIPTIONS = {
    "swin": "Swin Transformer (shifted windows)",
    "flatten": "FLatten-Swin (focused linear attention in stages 1-2, LLSS)",
}
for _name, _cfg in SWIN_PRESETS.items():
    _description = _DESCRIPTIONS["flatten" if _name.startswith("flatten") else "swin"]
    register(_name, "encoder", _cfg, SwinTransformer, _description + (" (tiny)" if "tiny" in _name else ""))
