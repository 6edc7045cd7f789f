"""The SigLIP 2 NaFlex vision tower (Tschannen et al. 2025, "SigLIP 2", section 2.4.2).

NaFlex ("native flexible") runs one tower at any resolution and aspect ratio. Each image is resized
so that its patch grid (h, w) keeps the aspect ratio and holds at most ``max_num_patches``
patches (:mod:`vlmzoo.processing.siglip_naflex`), cut into patches and padded to the same
sequence length. What changes against SigLIP's tower (:mod:`vlmzoo.encoders.siglip`):

- the patch embedding is a Linear over flattened ``p x p x C`` patches (row, column, channel:
  transformers' ``Siglip2VisionEmbeddings``, the image processor's ``convert_image_to_patches``),
  the same map as a stride-p convolution with its weight permuted;
- the learned position table (a ``sqrt(num_patches)`` square, 16 x 16 for the released towers) is
  resized **per image** to that image's (h, w) with bilinear interpolation, ``align_corners=False``
  and **antialiasing** (transformers' ``resize_positional_embeddings``, equal to
  ``F.interpolate(mode="bilinear", antialias=True)``); padding positions take the first position's
  embedding, as transformers' does (only their own, never-read outputs depend on it);
- padding patches are hidden from every query of every block (a key-padding mask) and from the
  MAP head's probe (``key_padding_mask`` of transformers' pooling head).

The blocks, the final LayerNorm and the MAP head are SigLIP's. Inputs are the processor's patch
sequence ``[B, N, C·p·p]`` with ``spatial_shapes`` [B, 2] and ``pixel_attention_mask`` [B, N]
(transformers' ``Siglip2VisionModel`` arguments), or a plain image batch ``[B, C, H, W]`` (H, W
multiples of the patch), which is cut into patches here: every vlmzoo encoder takes images.

The fixed-resolution SigLIP 2 releases (``google/siglip2-base-patch16-224`` ... ``-512``,
``so400m-patch14-384``, ...) are not NaFlex: their ``config.json`` is a ``SiglipConfig``
(``model_type: siglip``, a stride-p convolution, a fixed position grid) and they load into
SigLIP's own classes (:mod:`vlmzoo.models.siglip`'s ``siglip2-*`` presets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.encoders.base import (
    Indices,
    OutputFormat,
    VisionOutput,
    check_output_fmt,
    take_indices,
    to_map,
)
from vlmzoo.encoders.siglip import SIGLIP_SIZES, MAPHead
from vlmzoo.errors import InputError
from vlmzoo.layers import Activation, Block, ImageSize, image_hw
from vlmzoo.layers.patch_embed import check_finite, check_image
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin


@dataclass
class Siglip2VisionConfig(Config):
    """A SigLIP 2 NaFlex vision tower (defaults: B/16, transformers' ``Siglip2VisionConfig``).

    ``num_patches`` is the size of the learned position table, a square (256 = 16 x 16);
    ``image_size`` (a property, ``sqrt(num_patches) · patch_size``) is the square image whose
    grid is that table, used when a plain image batch needs a default size. ``map_head=False`` is
    transformers' ``vision_use_head=False``. ``feature_layer`` indexes ``hidden_states`` (0 =
    embeddings, -1 = last block) and ``feature_norm`` applies the final norm to it: the default
    tokens are transformers' ``last_hidden_state``.
    """

    kind = "encoder"

    num_patches: int = 256
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    act: Activation = "gelu_tanh"
    norm_eps: float = 1e-6
    map_head: bool = True
    feature_layer: int = -1
    feature_norm: bool = True

    def validate(self) -> None:
        self._check_positive(
            "num_patches", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_dim"
        )
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            self._fail("num_patches", "the position table is a square grid: must be a perfect square")
        self._check_divisible("width", "num_heads")
        if not self.norm_eps > 0 or self.norm_eps == float("inf"):
            self._fail("norm_eps", "must be a finite number > 0")
        if not -(self.depth + 1) <= self.feature_layer <= self.depth:
            self._fail("feature_layer", f"must index hidden_states: -{self.depth + 1} .. {self.depth}")

    @property
    def position_grid(self) -> int:
        """Side of the square position table."""
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        """The square image whose patch grid is the position table."""
        return self.position_grid * self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return (self.position_grid, self.position_grid)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: ``patch_size² · in_channels``."""
        return self.patch_size * self.patch_size * self.in_channels


@dataclass
class NaFlexVisionOutput(VisionOutput):
    """:class:`VisionOutput` of a NaFlex batch, with what says which tokens are real.

    ``tokens`` [B, N, width] hold padding rows where ``mask`` is 0; ``mask`` [B, N] (1 = patch,
    0 = padding) and ``spatial_shapes`` [B, 2] (each image's patch grid (h, w); its first h·w
    tokens are its patches in row-major order). ``grid`` is the common (h, w) when every image has
    it and there is no padding, else ``(1, N)``: one grid cannot describe mixed shapes.
    """

    mask: torch.Tensor | None = None
    spatial_shapes: torch.Tensor | None = None


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)·(W/p), p·p·C]: row-major patches, each flattened (row, column,
    channel) as transformers' ``convert_image_to_patches``."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def resize_position_table(table: torch.Tensor, shape: tuple[int, int], length: int) -> torch.Tensor:
    """A square [S·S, D] position table resized to an (h, w) grid and padded to ``length`` rows.

    Bilinear, ``align_corners=False``, antialiased (a triangle filter widened by the scale when
    shrinking), computed in float32 (transformers' ``resize_positional_embeddings``); rows past
    h·w repeat row 0. Returns [length, D] in the table's dtype.
    """
    side = math.isqrt(table.shape[0])
    h, w = shape
    grid = table.reshape(side, side, -1).permute(2, 0, 1)[None].float()
    resized = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    rows = resized[0].flatten(1).t().to(table.dtype)
    if length > h * w:
        rows = torch.cat([rows, rows[:1].expand(length - h * w, -1)])
    return rows


@register_architecture
class Siglip2VisionTransformer(BlockStack, HubMixin, nn.Module):
    """SigLIP 2 NaFlex image encoder -> :class:`NaFlexVisionOutput` (see the module docstring).

    ``pooled`` [B, width] is the masked MAP head over the final-normed last block
    (transformers' ``pooler_output``, the image embedding); ``embeds`` is None (no projection).
    """

    config_class = Siglip2VisionConfig

    def __init__(self, config: Siglip2VisionConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Linear(c.patch_dim, c.width)
        self.pos_embed = nn.Parameter(c.width**-0.5 * torch.randn(1, c.num_patches, c.width))
        self.blocks = nn.ModuleList(
            Block(c.width, c.num_heads, c.mlp_dim, act=c.act, norm_eps=c.norm_eps) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.attn_pool = MAPHead(c.width, c.num_heads, c.mlp_dim, c.act, c.norm_eps) if c.map_head else None

    @property
    def out_dim(self) -> int:
        """Channel width of ``VisionOutput.tokens``."""
        return self.config.width

    def wrap_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def num_tokens(self, image_size: ImageSize | None = None) -> int:
        """Tokens of a plain [B, C, H, W] image of ``image_size`` (default: the table's square);
        a processor's patch sequence has its own length, ``max_num_patches``."""
        h, w = image_hw(image_size, self.config.image_size)
        p = self.config.patch_size
        return (h // p) * (w // p)

    # --- inputs ---------------------------------------------------------------------------------
    def _from_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        c = self.config
        # channels, dtype, device, whole patches, finite values: every encoder's image checks
        h, w = check_image(pixel_values, c.in_channels, c.patch_size, self.patch_embed.weight.device)
        shape = (h // c.patch_size, w // c.patch_size)
        return patchify(pixel_values, c.patch_size), [shape] * pixel_values.shape[0]

    def _check_sequence(
        self, patches: torch.Tensor, spatial_shapes: torch.Tensor | None, mask: torch.Tensor | None
    ) -> list[tuple[int, int]]:
        c = self.config
        b, n, d = patches.shape
        if d != c.patch_dim:
            raise InputError(
                f"patches of {d} values, the tower takes {c.patch_size}x{c.patch_size}x{c.in_channels} = "
                f"{c.patch_dim}"
            )
        if not patches.is_floating_point() or b == 0 or n == 0:
            raise InputError(
                f"patches must be a non-empty float [B, N, C·p·p] tensor, got {patches.dtype} {(b, n, d)}"
            )
        check_finite(patches)
        if spatial_shapes is None:
            raise InputError("a [B, N, C·p·p] patch sequence needs spatial_shapes [B, 2] (each image's grid)")
        if tuple(spatial_shapes.shape) != (b, 2) or spatial_shapes.is_floating_point():
            raise InputError(
                f"spatial_shapes must be an integer [B, 2] = [{b}, 2] tensor, got "
                f"{spatial_shapes.dtype} {tuple(spatial_shapes.shape)}"
            )
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        bad = [s for s in shapes if s[0] <= 0 or s[1] <= 0 or s[0] * s[1] > n]
        if bad:
            raise InputError(f"spatial_shapes {bad[:3]} do not fit {n} patches of at least 1 x 1")
        if mask is not None:
            if tuple(mask.shape) != (b, n):
                raise InputError(f"pixel_attention_mask must be [B, N] = [{b}, {n}], got {tuple(mask.shape)}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise InputError("pixel_attention_mask must hold 0 (padding) and 1 (patch) only")
            if not bool(mask.bool().any(dim=1).all()):
                raise InputError("pixel_attention_mask has an image without any patch")
        return shapes

    def position_embedding(self, shapes: list[tuple[int, int]], length: int) -> torch.Tensor:
        """[B, length, width]: the table resized to each image's grid (one resize per distinct shape)."""
        table = self.pos_embed[0]
        resized: dict[tuple[int, int], torch.Tensor] = {}
        for shape in shapes:
            if shape not in resized:
                resized[shape] = resize_position_table(table, shape, length)
        return torch.stack([resized[s] for s in shapes])

    def _prepare(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None,
        spatial_shapes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor | None]:
        """(embedded patches + positions [B, N, width], each image's grid, mask [B, N] bool, the
        blocks' key-padding mask or None when nothing is padded)."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim not in (3, 4):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else pixel_values
            raise InputError(
                f"pixel_values must be [B, C, H, W] images or [B, N, C·p·p] patches, got {shape}"
            )
        if pixel_values.ndim == 4:
            patches, shapes = self._from_images(pixel_values)
        else:
            patches = pixel_values
            shapes = self._check_sequence(patches, spatial_shapes, pixel_attention_mask)
        n, device = patches.shape[1], patches.device
        padded = pixel_values.ndim == 3 and (
            pixel_attention_mask is not None or any(h * w < n for h, w in shapes)
        )
        if pixel_attention_mask is None:
            lengths = torch.tensor([h * w for h, w in shapes], device=device)
            mask = torch.arange(n, device=device)[None] < lengths[:, None]
        else:
            mask = pixel_attention_mask.to(device).bool()
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        x = x + self.position_embedding(shapes, n).to(x.dtype)
        return x, shapes, mask, (mask[:, None, None, :] if padded else None)

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> NaFlexVisionOutput:
        """Images [B, C, H, W], or patches [B, N, C·p·p] with ``spatial_shapes`` [B, 2] and
        ``pixel_attention_mask`` [B, N] (default: each image's first h·w patches are real).

        Blocks after ``feature_layer`` run only when needed (the MAP head, ``output_hidden_states``).
        """
        c = self.config
        x, shapes, mask, attn_mask = self._prepare(pixel_values, pixel_attention_mask, spatial_shapes)
        n = x.shape[1]
        feature_index = c.feature_layer % (c.depth + 1)
        last = c.depth if output_hidden_states or self.attn_pool is not None else feature_index
        hidden = [x] if output_hidden_states else None
        tokens = x
        for index, block in enumerate(self.blocks[:last], start=1):
            x = self.run_block(block, x, attn_mask=attn_mask)
            if hidden is not None:
                hidden.append(x)
            if index == feature_index:
                tokens = x
        if c.feature_norm:
            tokens = self.norm(tokens)
        pooled = None
        if self.attn_pool is not None:
            pooled = self.attn_pool(self.norm(x), mask if attn_mask is not None else None)
        same = len(set(shapes)) == 1 and shapes[0][0] * shapes[0][1] == n
        return NaFlexVisionOutput(
            tokens=tokens,
            grid=shapes[0] if same else (1, n),
            hidden_states=tuple(hidden) if hidden is not None else None,
            pooled=pooled,
            mask=mask.long(),
            spatial_shapes=torch.tensor(shapes, dtype=torch.long, device=x.device),
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
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> Any:
        """Block outputs as :meth:`VisionTransformer.forward_intermediates` gives them (timm
        1.0.31's arguments and results; there are no prefix tokens, so ``return_prefix_tokens``
        changes nothing). ``"NCHW"`` maps need one grid for the batch without padding (plain
        images); a mixed NaFlex batch takes ``output_fmt="NLC"`` (padding rows included, see
        ``pixel_attention_mask``)."""
        reshape = check_output_fmt(output_fmt)
        take, max_index = take_indices(len(self.blocks), indices)
        x, shapes, _, attn_mask = self._prepare(pixel_values, pixel_attention_mask, spatial_shapes)
        if reshape and (len(set(shapes)) != 1 or shapes[0][0] * shapes[0][1] != x.shape[1]):
            raise InputError(
                "output_fmt='NCHW' needs one patch grid for the whole batch and no padding; "
                "use output_fmt='NLC' for a NaFlex batch of mixed shapes"
            )
        last = max_index + 1 if stop_early else len(self.blocks)
        intermediates = []
        for index, block in enumerate(self.blocks[:last]):
            x = self.run_block(block, x, attn_mask=attn_mask)
            if index in take:
                intermediates.append(self.norm(x) if norm else x)
        if reshape:
            intermediates = [to_map(y, shapes[0]) for y in intermediates]
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": intermediates}
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


# --- presets --------------------------------------------------------------------------------
def siglip2_vision_config(size: str, patch_size: int = 16, num_patches: int = 256) -> Siglip2VisionConfig:
    """The SigLIP 2 NaFlex tower of ``size`` ("base", "so400m"): SigLIP's widths and depths."""
    width, depth, heads, mlp = SIGLIP_SIZES[size]
    return Siglip2VisionConfig(
        num_patches=num_patches,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
    )


SIGLIP2_VISION_PRESETS: dict[str, Siglip2VisionConfig] = {
    # google/siglip2-base-patch16-naflex, google/siglip2-so400m-patch16-naflex (config.json:
    # num_patches 256, the SigLIP sizes).
    "siglip2-base-patch16-naflex": siglip2_vision_config("base"),
    "siglip2-so400m-patch16-naflex": siglip2_vision_config("so400m"),
    # For tests: a 4 x 4 position table of 8-px patches (32 px), 2 blocks of width 32.
    "siglip2-vit-tiny": Siglip2VisionConfig(
        num_patches=16, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64
    ),
}

for _name, _cfg in SIGLIP2_VISION_PRESETS.items():
    register(
        _name, "encoder", _cfg, Siglip2VisionTransformer, "SigLIP 2 NaFlex vision tower (any aspect ratio)"
    )
