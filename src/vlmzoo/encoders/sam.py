"""The Segment Anything image encoder (Kirillov et al. 2023, appendix A): a ViTDet-style plain
ViT (segment-anything's ``segment_anything/modeling/image_encoder.py`` ``ImageEncoderViT``).

What sets it apart from the CLIP-style ViT in ``vit.py``:

- Channels-last throughout: the patch embedding gives a [B, H', W', D] grid (no CLS token) and an
  absolute ``pos_embed`` of shape (1, 64, 64, D) for 1024 px (zero-init) is added to it.
- Most blocks attend inside 14 x 14 windows; the grid is zero-padded bottom/right to a multiple
  of 14 first and the padded tokens are *not* masked (``window_partition`` pads with zeros and
  ``Attention`` takes no mask). No shift. Blocks listed in
  ``global_attn_indexes`` attend over the whole grid.
- Every attention adds decomposed relative positions computed from the unscaled query
  (``add_decomposed_rel_pos``; :mod:`vlmzoo.layers.rel_pos`).
- No final norm: a neck (1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, 256 channels, no
  conv bias, LN eps 1e-6) turns the last block's grid into the output map (``ImageEncoderViT.neck``).

``VisionOutput.tokens`` is the neck output flattened row-major: [B, H'·W', 256] with
``grid = (H', W')``; ``hidden_states`` are the embeddings (entry 0) and every block's output,
flattened to [B, H'·W', D].

Other resolutions. The original (and transformers' ``SamVisionModel``) accept only the native
size. timm resizes ``pos_embed`` bicubically with antialias and lets the global blocks resize
their relative-position tables (linear, as the original ``get_rel_pos``); window blocks keep
their 14 x 14 tables. vlmzoo does the same by default (``pos_embed_resize="bicubic_antialias"``);
``"none"`` restores the original's refusal. An input whose token grid exceeds
``max_grid_scale`` x the native grid on a side is refused: the global blocks would stretch their
(2·64 − 1)-row tables over offsets never trained, and their [B, heads, N, N] attention bias grows
with the fourth power of the side (4x SAM's grid is already 17 GB per head and image in fp32).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.config import Config
from vlmzoo.encoders.base import Indices, OutputFormat, VisionOutput, check_output_fmt, take_indices
from vlmzoo.errors import InputError
from vlmzoo.layers import (
    Activation,
    DropPath,
    ImageSize,
    LayerNorm2d,
    Mlp,
    PatchEmbed,
    PosEmbedResize,
    RelPosAttention,
    check_drop_path_rate,
    drop_path_rates,
    image_hw,
    resize_pos_embed,
    window_partition,
    window_unpartition,
)
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class SamConfig(Config):
    """Sizes and switches of a SAM / ViTDet image encoder.

    ``image_size`` is the native resolution ``pos_embed`` and the global blocks' relative-position
    tables are stored for. ``window_size=0`` makes every block global. ``neck_dim=None`` drops the
    neck (tokens are then the last block's output, width ``width``). ``mlp_dim`` overrides
    ``width * mlp_ratio``. ``pos_embed_resize`` and ``max_grid_scale`` govern other input sizes
    (module docstring).
    """

    kind = "encoder"

    image_size: int = 1024
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None
    act: Activation = "gelu"
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    neck_dim: int | None = 256
    neck_eps: float = 1e-6
    pos_embed_resize: PosEmbedResize = "bicubic_antialias"
    max_grid_scale: float = 4.0
    drop_path_rate: float = 0.0

    def validate(self) -> None:
        self._check_positive(
            "image_size", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio"
        )
        self._check_positive("norm_eps", "neck_eps", "max_grid_scale")
        self._check_non_negative("window_size")
        check_drop_path_rate(self.drop_path_rate, f"{type(self).__name__}.drop_path_rate")
        self._check_divisible("width", "num_heads")
        self._check_divisible("image_size", "patch_size")
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            self._fail("mlp_dim", "must be positive or None")
        if self.neck_dim is not None and self.neck_dim <= 0:
            self._fail("neck_dim", "must be positive or None")
        if self.max_grid_scale < 1:
            self._fail("max_grid_scale", "must be >= 1 (the native grid must be allowed)")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad or len(set(self.global_attn_indexes)) != len(self.global_attn_indexes):
            self._fail("global_attn_indexes", f"must be distinct block indexes in 0 .. {self.depth - 1}")

    @property
    def grid(self) -> tuple[int, int]:
        """The native token grid (H', W')."""
        return (self.image_size // self.patch_size,) * 2

    @property
    def mlp_hidden_dim(self) -> int:
        """The MLP's hidden width: ``mlp_dim`` or ``width * mlp_ratio``."""
        return self.mlp_dim if self.mlp_dim is not None else int(self.width * self.mlp_ratio)

    def is_windowed(self, index: int) -> bool:
        """Whether block ``index`` attends inside windows (else over the whole grid)."""
        return self.window_size > 0 and index not in self.global_attn_indexes


class SamBlock(nn.Module):
    """Pre-LN block on a channels-last grid, windowed or global: [B, H, W, C] -> [B, H, W, C].

    ``x + attn(norm1(x))`` where a windowed block pads/partitions the normed grid into
    ``window_size`` windows (padding unmasked, as segment-anything's ``Block``), then ``x + mlp(norm2(x))``.
    ``input_size`` is the grid the global attention's relative-position tables are built for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        window_size: int,
        input_size: tuple[int, int],
        act: Activation = "gelu",
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_rel_pos: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        table_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = RelPosAttention(dim, num_heads, table_size, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim, act=act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        h, w = x.shape[1:3]
        y = self.norm1(x)
        if self.window_size > 0:
            windows, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(windows), self.window_size, (h, w), pad_hw)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_architecture
class SamEncoder(BlockStack, HubMixin, nn.Module):
    """SAM image encoder: [B, C, H, W] -> :class:`VisionOutput` (tokens [B, H'·W', out_dim]).

    Parameter names follow the original's (``patch_embed.proj``, ``pos_embed``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2}``, ``neck.0..3``)
    except the MLP, ``mlp.fc1/fc2`` as in timm (the original's ``mlp.lin1/lin2``).
    """

    config_class = SamConfig

    def __init__(self, config: SamConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c.in_channels, c.width, c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, *c.grid, c.width)) if c.use_abs_pos else None
        rates = drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            SamBlock(
                c.width,
                c.num_heads,
                c.mlp_hidden_dim,
                window_size=c.window_size if c.is_windowed(i) else 0,
                input_size=c.grid,
                act=c.act,
                qkv_bias=c.qkv_bias,
                norm_eps=c.norm_eps,
                use_rel_pos=c.use_rel_pos,
                drop_path=rate,
            )
            for i, rate in enumerate(rates)
        )
        self.neck = (
            nn.Sequential(
                nn.Conv2d(c.width, c.neck_dim, kernel_size=1, bias=False),
                LayerNorm2d(c.neck_dim, eps=c.neck_eps),
                nn.Conv2d(c.neck_dim, c.neck_dim, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(c.neck_dim, eps=c.neck_eps),
            )
            if c.neck_dim is not None
            else None
        )

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens``."""
        return self.config.neck_dim if self.config.neck_dim is not None else self.config.width

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Number of tokens in ``VisionOutput.tokens`` for an image of ``image_size`` (default native)."""
        h, w = self._grid_of(image_size)
        return h * w

    def _grid_of(self, image_size: ImageSize | None) -> tuple[int, int]:
        c = self.config
        h, w = image_hw(image_size, c.image_size)
        return h // c.patch_size, w // c.patch_size

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise :class:`InputError` when this encoder cannot run on a token ``grid`` (H', W')."""
        c = self.config
        if grid == c.grid:
            return
        native = f"{c.grid[0]}x{c.grid[1]} ({c.image_size}px)"
        if c.use_abs_pos and c.pos_embed_resize == "none":
            raise InputError(
                f"image gives a {grid[0]}x{grid[1]} token grid but pos_embed is for {native} and "
                f"pos_embed_resize='none' (the original SAM accepts only its native size; pad to "
                f"{c.image_size}x{c.image_size} or set pos_embed_resize='bicubic_antialias')"
            )
        limit = int(c.max_grid_scale * c.grid[0]), int(c.max_grid_scale * c.grid[1])
        if grid[0] > limit[0] or grid[1] > limit[1]:
            raise InputError(
                f"image gives a {grid[0]}x{grid[1]} token grid, more than max_grid_scale="
                f"{c.max_grid_scale:g} x the native {native}: the global blocks' relative-position "
                f"tables (2·{c.grid[0]}-1 rows) are resized by linear interpolation to at most "
                f"{limit[0]}x{limit[1]} tokens ({limit[0] * c.patch_size}x{limit[1] * c.patch_size}px) "
                f"and their attention bias grows with the 4th power of the side; "
                f"raise max_grid_scale to allow it"
            )

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, H', W', width] absolute position embedding for a token grid (resized when not native)."""
        c = self.config
        if grid == c.grid:
            return self.pos_embed
        flat = rearrange(self.pos_embed, "1 h w c -> 1 (h w) c")
        flat = resize_pos_embed(flat, c.grid, grid, num_prefix_tokens=0, mode=c.pos_embed_resize)
        return rearrange(flat, "1 (h w) c -> 1 h w c", h=grid[0], w=grid[1])

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + absolute position embedding: [B, C, H, W] -> [B, H', W', width]."""
        x, grid = self.patch_embed(pixel_values)
        self.check_grid(grid)
        x = rearrange(x, "b (h w) c -> b h w c", h=grid[0], w=grid[1])
        if self.pos_embed is not None:
            x = x + self.position_embedding(grid)
        return x

    def run_blocks(
        self, x: torch.Tensor, keep: Collection[int], last: int
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run blocks 1 .. ``last`` on the embeddings ``x`` [B, H', W', width] — the one block
        loop of :meth:`forward_blocks` and :meth:`forward_intermediates`.

        Returns (block ``last``'s output, {``hidden_states`` index: [B, H', W', width]} for the
        indices in ``keep``, ascending; 0 is the embeddings).
        """
        kept = {0: x} if 0 in keep else {}
        for index, block in enumerate(self.blocks[:last], start=1):
            x = self.run_block(block, x)
            if index in keep:
                kept[index] = x
        return x, kept

    def forward_blocks(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """[B, C, H, W] -> (last block output [B, H', W', width], hidden states or None).

        Hidden states are [B, H'·W', width]: the embeddings (entry 0) and every block's output.
        """
        depth = len(self.blocks)
        x, kept = self.run_blocks(
            self.embed(pixel_values), range(depth + 1) if output_hidden_states else (), depth
        )
        if not output_hidden_states:
            return x, None
        return x, tuple(rearrange(h, "b y x c -> b (y x) c") for h in kept.values())

    def head_map(self, x: torch.Tensor) -> torch.Tensor:
        """The output map [B, out_dim, H'', W''] from the last block's [B, width, H', W']: the
        neck (if any; subclasses add what follows it)."""
        return self.neck(x) if self.neck is not None else x

    def forward_map(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """[B, C, H, W] -> (output map [B, out_dim, H'', W''] — :meth:`head_map`'s, hidden states)."""
        x, hidden = self.forward_blocks(pixel_values, output_hidden_states)
        return self.head_map(rearrange(x, "b h w c -> b c h w")), hidden

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: Indices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: OutputFormat = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """Block outputs, as timm 1.0.31's ``VisionTransformerSAM.forward_intermediates``.

        ``indices`` count blocks from 0 (index k = ``hidden_states[k + 1]``; ``None`` all, an
        int n the last n, a sequence those, negative from the end), returned in block order.
        Each is [B, width, H', W'] (``"NCHW"``) or [B, H'·W', width] (``"NLC"``, which timm's
        SAM does not offer). ``norm`` passes each through the neck, as timm does (SAM has no final
        norm: its neck's LayerNorm2d's are the nearest thing; the width becomes ``neck_dim``).
        ``stop_early`` runs blocks only up to the last index taken.

        Returns the list (``intermediates_only``) or (the output map of the last block run —
        [B, out_dim, H'', W''] as :meth:`forward` makes it —, intermediates).
        """
        reshape = check_output_fmt(output_fmt)
        take, max_index = take_indices(len(self.blocks), indices)
        last = max_index + 1 if stop_early else len(self.blocks)
        x, kept = self.run_blocks(self.embed(pixel_values), {i + 1 for i in take}, last)
        intermediates = []
        for y in kept.values():
            y = rearrange(y, "b h w c -> b c h w")
            if norm and self.neck is not None:
                y = self.neck(y)
            intermediates.append(y.contiguous() if reshape else rearrange(y, "b c h w -> b (h w) c"))
        if intermediates_only:
            return intermediates
        return self.head_map(rearrange(x, "b h w c -> b c h w")), intermediates

    def prune_intermediate_layers(
        self, indices: Indices = None, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (timm 1.0.31's ``prune_intermediate_layers``
        for SAM: the default ``None`` keeps every block); ``prune_norm`` drops the neck, which timm
        treats as SAM's final norm (``neck_dim=None``: ``out_dim`` becomes ``width``). SAM has no
        head, so ``prune_head`` changes nothing. The config follows (``depth``,
        ``global_attn_indexes``). Returns the absolute indices kept.
        """
        take, max_index = take_indices(len(self.blocks), indices)
        depth = max_index + 1
        c = self.config
        fields: dict[str, Any] = dict(
            depth=depth, global_attn_indexes=tuple(i for i in c.global_attn_indexes if i < depth)
        )
        if prune_norm:
            fields["neck_dim"] = None
        self.config = c.replace(**fields)
        self.blocks = self.blocks[:depth]
        if prune_norm:
            self.neck = None
        return take

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        """[B, C, H, W] -> VisionOutput: tokens [B, H'·W', out_dim] (row-major), grid (H', W').

        H and W must be multiples of ``patch_size``; see the module docstring for sizes other than
        ``image_size``.
        """
        x, hidden = self.forward_map(pixel_values, output_hidden_states)
        return VisionOutput(
            tokens=rearrange(x, "b c h w -> b (h w) c"), grid=(x.shape[-2], x.shape[-1]), hidden_states=hidden
        )


# --- presets --------------------------------------------------------------------------------
def sam_config(width: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> SamConfig:
    """A released SAM image encoder size (segment-anything's ``build_sam.py``): 1024 px, patch 16,
    window 14, neck 256."""
    return SamConfig(width=width, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn_indexes)


SAM_PRESETS: dict[str, SamConfig] = {
    "sam-vit-b": sam_config(768, 12, 12, (2, 5, 8, 11)),
    "sam-vit-l": sam_config(1024, 24, 16, (5, 11, 17, 23)),
    "sam-vit-h": sam_config(1280, 32, 16, (7, 15, 23, 31)),
    # Tests and CPU demos: an 8x8 grid with window 3 (padded to 9x9, so the border windows see
    # zero padding) and two global blocks; a few hundred thousand parameters.
    "sam-vit-tiny": SamConfig(
        image_size=64,
        patch_size=8,
        width=64,
        depth=4,
        num_heads=4,
        window_size=3,
        global_attn_indexes=(1, 3),
        neck_dim=32,
    ),
}

for _name, _cfg in SAM_PRESETS.items():
    register(_name, "encoder", _cfg, SamEncoder, "Segment Anything image encoder (ViTDet-style)")
