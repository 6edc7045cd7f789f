"""Pyramid Vision Transformer v1 (Wang et al. 2021) and FLatten-PVT (Han et al. 2023, "FLatten
Transformer", ICCV; FLatten-Transformer's ``models/flatten_pvt.py``).

Four stages at strides 4, 8, 16, 32. Each stage embeds the previous map with a non-overlapping
strided conv (patch 4, then 2, 2, 2) + LayerNorm, adds its own absolute position embedding, and
runs pre-LN blocks whose attention is PVT's spatial-reduction attention: keys/values from the map
shrunk by ``sr_ratios`` (8, 4, 2, 1) with a strided conv + LayerNorm
(:mod:`vlmzoo.layers.spatial_reduction_attention`). PVT v1 puts a CLS token in front of the last
stage only (with its own position-embedding row) and ends with a LayerNorm over all tokens.

FLatten-PVT (``ATTN_TYPE: LLLL``) replaces every stage's attention by focused linear attention
over the whole map with *no* spatial reduction (``MODEL.LA.PVT_LA_SR_RATIOS`` default 1111 in
FLatten-Transformer's ``config.py``):
the reduction conv and norm disappear, a DWC, a temperature and a positional encoding the size of
the stage's map appear. The positional encoding and DWC are tied to the H x W grid, so the
FLatten-PVT presets drop PVT v1's CLS token and mean-pool (inferred: the FLatten code adds an
``num_patches``-row positional encoding to the keys, which cannot hold a CLS row — not confirmed
from a released checkpoint). With ``class_token=True`` a focused-linear stage treats CLS as a
prefix token (global, no positional encoding/DWC; :mod:`vlmzoo.layers.spatial_attention`).

Other resolutions: position embeddings are resized bilinearly (no antialias, align_corners False;
the CLS row kept), as PVT v1's ``_get_pos_embed``; transformers' ``PvtModel`` runs the native size
only. Inputs must be multiples of the total stride (32 for the standard patch sizes), so that
no stage drops rows.

``VisionOutput``: ``tokens`` = the last stage's patch tokens after the final norm
[B, H/32·W/32, C_4] (CLS dropped), ``grid`` = (H/32, W/32), ``pooled`` = the normed CLS token
(``pool="cls"``) or the mean of ``tokens`` (``"mean"``), ``hidden_states`` = (stage-1 embeddings,
stage 1, ..., stage 4) outputs before the final norm, CLS included in stage 4.

Parameter names: ``patch_embeds.{i}.{proj,norm}``, ``pos_embeds.{i}``, ``cls_token``,
``stages.{i}.{j}.{norm1,attn.{q,kv,sr,norm,proj},norm2,mlp.fc1,mlp.fc2}``, ``norm`` — PVT's
(``patch_embed{i+1}``, ``pos_embed{i+1}``, ``block{i+1}``) as lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.config import Config
from vlmzoo.encoders.base import (
    Indices,
    OutputFormat,
    VisionOutput,
    check_output_fmt,
    stage_intermediates,
    take_indices,
    to_map,
)
from vlmzoo.encoders.swin import NormedPatchEmbed
from vlmzoo.errors import InputError
from vlmzoo.layers import Block, ImageSize, check_drop_path_rate, check_image, drop_path_rates, image_hw
from vlmzoo.layers.block_attention import FocusedLinearBackend
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.spatial_reduction_attention import SpatialReductionAttention
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin

PvtStageAttention = Literal["spatial_reduction", "focused_linear"]


@dataclass
class PvtConfig(Config):
    """Sizes and switches of a PVT v1 / FLatten-PVT encoder (module docstring); per-stage tuples.

    ``sr_ratios`` apply to ``"spatial_reduction"`` stages; ``"focused_linear"`` stages never reduce
    (FLatten's ``PVT_LA_SR_RATIOS`` default 1111). ``norm_eps`` is the blocks' and the final norm's eps (PVT v1: 1e-6); ``embed_norm_eps`` the
    patch-embedding and spatial-reduction norms' (PVT v1 builds those with ``nn.LayerNorm``'s
    default 1e-5; transformers uses its single ``layer_norm_eps`` for all).
    """

    kind = "encoder"

    image_size: int = 224
    in_channels: int = 3
    widths: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8.0, 8.0, 4.0, 4.0)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (4, 2, 2, 2)
    stage_attention: tuple[PvtStageAttention, ...] = ("spatial_reduction",) * 4
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    embed_norm_eps: float = 1e-5
    class_token: bool = True
    focusing_factor: float = 3.0
    dwc_kernel_size: int = 5
    focused_linear_backend: FocusedLinearBackend = "auto"  # the kernel of its focused linear attention
    drop_path_rate: float = 0.0
    pool: Literal["cls", "mean", "none"] = "cls"

    def validate(self) -> None:
        self._check_positive("image_size", "in_channels", "norm_eps", "embed_norm_eps", "focusing_factor")
        self._check_positive("dwc_kernel_size")
        check_drop_path_rate(self.drop_path_rate, f"{type(self).__name__}.drop_path_rate")
        if not self.depths or any(d <= 0 for d in self.depths):
            self._fail("depths", "must be a non-empty tuple of positive block counts")
        for name in ("widths", "num_heads", "mlp_ratios", "sr_ratios", "patch_sizes", "stage_attention"):
            if len(getattr(self, name)) != len(self.depths):
                self._fail(
                    name,
                    f"has {len(getattr(self, name))} entries but PvtConfig.depths={self.depths} has "
                    f"{len(self.depths)}: every per-stage field needs one entry per stage",
                )
        for name in ("widths", "num_heads", "mlp_ratios", "sr_ratios", "patch_sizes"):
            if any(v <= 0 for v in getattr(self, name)):
                self._fail(name, "entries must be positive")
        for dim, heads in zip(self.widths, self.num_heads, strict=True):
            if dim % heads:
                self._fail("num_heads", f"width {dim} is not divisible by {heads} heads")
        if self.image_size % self.stride:
            self._fail("image_size", f"must be a multiple of the total stride {self.stride}")
        for s, (grid, sr) in enumerate(zip(self.stage_grids(), self.sr_ratios, strict=True)):
            if self.stage_attention[s] == "spatial_reduction" and min(grid) < sr:
                self._fail(
                    "sr_ratios", f"stage {s}: the {grid[0]}x{grid[1]} map is smaller than sr_ratio {sr}"
                )
        if self.pool == "cls" and not self.class_token:
            self._fail("pool", "'cls' pooling needs class_token=True: set it, or pool='mean' or 'none'")
        if self.dwc_kernel_size % 2 == 0:
            self._fail("dwc_kernel_size", "must be odd (the DWC keeps the map size with padding k // 2)")

    @property
    def stride(self) -> int:
        """The last stage's stride: the product of the patch sizes (32 for PVT)."""
        out = 1
        for p in self.patch_sizes:
            out *= p
        return out

    def stage_grids(self, image_size: ImageSize | None = None) -> list[tuple[int, int]]:
        """The token grid of every stage for an image of ``image_size`` (default: native)."""
        h, w = image_hw(image_size, self.image_size)
        grids = []
        for p in self.patch_sizes:
            h, w = h // p, w // p
            grids.append((h, w))
        return grids


@register_architecture
class PyramidVisionTransformer(BlockStack, HubMixin, nn.Module):
    """PVT v1 / FLatten-PVT encoder: [B, C, H, W] -> :class:`VisionOutput` (module docstring)."""

    config_class = PvtConfig

    def __init__(self, config: PvtConfig):
        super().__init__()
        self.config = c = config
        num_stages = len(c.depths)
        grids = c.stage_grids()
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))  # one linear rule over all stages
        self.patch_embeds = nn.ModuleList()
        self.pos_embeds = nn.ParameterList()
        self.stages = nn.ModuleList()
        for s in range(num_stages):
            dim, last = c.widths[s], s == num_stages - 1
            in_channels = c.in_channels if s == 0 else c.widths[s - 1]
            self.patch_embeds.append(
                NormedPatchEmbed(in_channels, dim, c.patch_sizes[s], eps=c.embed_norm_eps)
            )
            prefix = int(last and c.class_token)
            rows = prefix + grids[s][0] * grids[s][1]
            self.pos_embeds.append(nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, rows, dim), std=0.02)))
            self.stages.append(
                nn.ModuleList(
                    Block(
                        dim,
                        c.num_heads[s],
                        int(dim * c.mlp_ratios[s]),
                        act="gelu",
                        norm_eps=c.norm_eps,
                        drop_path=rates[sum(c.depths[:s]) + b],
                        attn=self._attention(s, prefix),
                    )
                    for b in range(c.depths[s])
                )
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.widths[-1])) if c.class_token else None
        self.norm = nn.LayerNorm(c.widths[-1], eps=c.norm_eps)

    def _attention(self, stage: int, num_prefix_tokens: int) -> nn.Module:
        c = self.config
        dim, heads = c.widths[stage], c.num_heads[stage]
        if c.stage_attention[stage] == "spatial_reduction":
            return SpatialReductionAttention(
                dim,
                heads,
                c.sr_ratios[stage],
                num_prefix_tokens,
                qkv_bias=c.qkv_bias,
                norm_eps=c.embed_norm_eps,
            )
        # FLatten-PVT "L" blocks: global focused linear attention, sr 1 (PVT_LA_SR_RATIOS 1111).
        return FocusedLinearWindowAttention(
            dim,
            heads,
            None,
            num_prefix_tokens=num_prefix_tokens,
            qkv_bias=c.qkv_bias,
            focusing_factor=c.focusing_factor,
            kernel_size=c.dwc_kernel_size,
            backend=c.focused_linear_backend,
            native_grid=c.stage_grids()[stage],
        )

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens`` (the last stage's)."""
        return self.config.widths[-1]

    def wrap_units(self) -> list[nn.Module]:
        """Every stage's blocks, in order (the patch embeddings stay in the root unit)."""
        return [block for stage in self.stages for block in stage]

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Number of tokens in ``VisionOutput.tokens`` for an image of ``image_size`` (default native)."""
        h, w = self.config.stage_grids(image_size)[-1]
        return h * w

    def position_embedding(self, stage: int, grid: tuple[int, int]) -> torch.Tensor:
        """[1, P + h·w, C] position embeddings of ``stage`` for a ``grid`` map: bilinear resize of
        the grid rows (PVT v1's ``_get_pos_embed``), prefix (CLS) row unchanged."""
        pos = self.pos_embeds[stage]
        native = self.config.stage_grids()[stage]
        if tuple(grid) == tuple(native):
            return pos
        prefix = pos.shape[1] - native[0] * native[1]
        patch = rearrange(pos[:, prefix:], "1 (h w) c -> 1 c h w", h=native[0])
        patch = F.interpolate(patch.float(), size=grid, mode="bilinear", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:, :prefix], rearrange(patch, "1 c h w -> 1 (h w) c")], dim=1)

    def run_stages(self, pixel_values: torch.Tensor, last: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Stages 0 .. ``last`` - 1 (each: patch embedding, position embedding, blocks) — the one
        stage loop of :meth:`forward` and :meth:`forward_intermediates`.

        Returns [(tokens [B, P + h·w, C], (h, w))]: entry 0 stage 1's embeddings, entry s + 1
        stage s's output (``hidden_states``; the last stage's starts with CLS when it has one).
        """
        c = self.config
        h, w = check_image(pixel_values, c.in_channels, 1, self.norm.weight.device)
        if h % c.stride or w % c.stride:
            raise InputError(
                f"image size {h}x{w} is not a multiple of PVT's total stride {c.stride}; resize or pad to "
                f"e.g. {max(h // c.stride, 1) * c.stride}x{max(w // c.stride, 1) * c.stride}"
            )
        x, outputs = pixel_values, []
        num_stages = len(self.stages)
        for s, (embed, blocks) in enumerate(zip(self.patch_embeds[:last], self.stages[:last], strict=True)):
            tokens, grid = embed(x)
            if s == num_stages - 1 and self.cls_token is not None:
                tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            tokens = tokens + self.position_embedding(s, grid)
            if s == 0:
                outputs.append((tokens, grid))
            for block in blocks:
                tokens = self.run_block(block, tokens, grid=grid)
            outputs.append((tokens, grid))
            x = rearrange(tokens[:, -grid[0] * grid[1] :], "b (h w) c -> b c h w", h=grid[0])
        return outputs

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """[B, C, H, W] -> VisionOutput; H and W multiples of the total stride (32)."""
        c = self.config
        outputs = self.run_stages(pixel_values, len(self.stages))
        tokens, grid = outputs[-1]
        final = self.norm(tokens)
        prefix = int(self.cls_token is not None)
        pooled = None
        if c.pool == "cls":
            pooled = final[:, 0]
        elif c.pool == "mean":
            pooled = final[:, prefix:].mean(dim=1)
        return VisionOutput(
            tokens=final[:, prefix:],
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
        """Stage outputs with the arguments of timm 1.0.31's ``PyramidVisionTransformerV2.forward_intermediates``
        (timm has no PVT v1).

        ``indices`` count stages from 0 (index s = ``hidden_states[s + 1]``; ``None`` all, an int
        n the last n, a sequence those, negative from the end), returned in stage order, CLS
        dropped: [B, C_s, h_s, w_s] (``"NCHW"``) or [B, h_s·w_s, C_s] (``"NLC"``). ``norm``
        applies the final norm to the last stage only (it is sized for it, as Swin's).
        ``stop_early`` runs stages only up to the last index taken.

        Returns the list (``intermediates_only``) or (final features [B, C, h, w] — the last stage
        run, through the final norm when that is the last stage, CLS dropped —, intermediates).
        """
        reshape = check_output_fmt(output_fmt)
        num_stages = len(self.stages)
        take, max_index = take_indices(num_stages, indices)
        last = max_index + 1 if stop_early else num_stages
        outputs = self.run_stages(pixel_values, last)
        intermediates = stage_intermediates(outputs, take, num_stages, self.norm if norm else None, reshape)
        if intermediates_only:
            return intermediates
        x, grid = outputs[-1]
        if last == num_stages:
            x = self.norm(x)
        return to_map(x[:, x.shape[1] - grid[0] * grid[1] :], grid), intermediates


# --- presets --------------------------------------------------------------------------------
# PVT v1 (Wang et al. 2021, Table 1): widths 64/128/320/512, heads 1/2/5/8, MLP ratios
# 8/8/4/4, reduction 8/4/2/1, qkv bias; the sizes differ only in depth.
PVT_DEPTHS: dict[str, tuple[int, ...]] = {
    "t": (2, 2, 2, 2),
    "s": (3, 4, 6, 3),
    "m": (3, 4, 18, 3),
    "l": (3, 8, 27, 3),
}
FLATTEN_PVT_ATTENTION: tuple[PvtStageAttention, ...] = ("focused_linear",) * 4  # ATTN_TYPE "LLLL"

PVT_PRESETS: dict[str, PvtConfig] = {}
for _size, _depths in PVT_DEPTHS.items():
    PVT_PRESETS[f"pvt-{_size}"] = PvtConfig(depths=_depths)
    PVT_PRESETS[f"flatten-pvt-{_size}"] = PvtConfig(
        depths=_depths, stage_attention=FLATTEN_PVT_ATTENTION, class_token=False, pool="mean"
    )
# Tiny variants for tests and CPU demos: 64 px -> 16, 8, 4, 2 grids.
PVT_PRESETS["pvt-tiny"] = PvtConfig(
    image_size=64,
    widths=(16, 32, 48, 64),
    depths=(1, 1, 1, 1),
    num_heads=(1, 2, 2, 4),
    mlp_ratios=(2.0, 2.0, 2.0, 2.0),
    sr_ratios=(4, 2, 2, 1),
)
PVT_PRESETS["flatten-pvt-tiny"] = PVT_PRESETS["pvt-tiny"].replace(
    stage_attention=FLATTEN_PVT_ATTENTION, class_token=False, pool="mean"
)

for _name, _cfg in PVT_PRESETS.items():
    _description = (
        "FLatten-PVT (focused linear attention in every stage, LLLL)"
        if _name.startswith("flatten")
        else "Pyramid Vision Transformer v1 (spatial-reduction attention)"
    )
    register(
        _name,
        "encoder",
        _cfg,
        PyramidVisionTransformer,
        _description + (" (tiny)" if "tiny" in _name else ""),
    )
