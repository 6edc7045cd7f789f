"""Any-resolution tiling: LLaVA-NeXT (v1.6) and LLaVA-OneVision's projector with image-size packing.

An image is cut into tiles of the encoder's resolution on the best grid among ``grid_pinpoints``,
plus a *base* view of the whole image; every view goes through the encoder and the MLP projector,
and this adapter packs one image's views into one run of embeddings (Liu et al. 2024, "LLaVA-NeXT:
Improved reasoning, OCR, and world knowledge"; the original is ``prepare_inputs_labels_for_multimodal``
in LLaVA-VL/LLaVA-NeXT's llava/model/llava_arch.py, transformers' ``pack_image_features`` in
modeling_llava_next.py / modeling_llava_onevision.py)::

    views [1 + rows·cols, g², C] ─► MLP ─► base [g², D]  +  tiles ─► one (rows·g) x (cols·g) map
                                                           ─► unpad to the image's aspect ─► (OneVision:
                                                           bilinear down to at most max_tiles·g²)
                                                           ─► image_newline after every row
    one image = base (g²) + rows″ · (cols″ + 1) embeddings

Sizes are (height, width) throughout, and so are the pairs of ``grid_pinpoints``, as in
transformers. LLaVA-NeXT's original code reads both as (width, height) (PIL's ``size``); the
candidates are then the same set in another order, and a full tie (a small square image: 1x2
against 2x1) picks the first in list order, so the original converter swaps its pairs
(:func:`vlmzoo.convert.llava.from_original_llava`) to keep its choice.

An image given without a size (``image_sizes`` None, or a row of zeros) is one untiled view:
its g² embeddings and one ``image_newline`` (transformers' single-view branch; OneVision feeds the
images of a multi-image sample this way). So with no ``image_sizes`` the adapter is a fixed-length
prefix adapter (M = N + 1) that compiles into one graph like LLaVA-1.5's; tiled images take as
many tokens as their size asks (:func:`image_tokens`), which the host computes from ``image_sizes``
(``tolist``): a graph break under ``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.adapters.base import PaddingSide, Prepared
from vlmzoo.adapters.mlp import MLPProjector, MLPProjectorConfig
from vlmzoo.errors import InputError
from vlmzoo.registry import register, register_architecture

Size = tuple[int, int]  # (height, width)

# transformers' LlavaNextConfig default; LLaVA-NeXT's v1.6 checkpoints list the same five grids of 336 px.
NEXT_PINPOINTS: tuple[Size, ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# transformers' LlavaOnevisionConfig default: every (384 i, 384 j), i, j in 1..6, rows first.
ONEVISION_PINPOINTS: tuple[Size, ...] = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


# --- the tiling maths (pure functions of sizes) -----------------------------------------------
def select_best_resolution(size: Size, pinpoints: Sequence[Size]) -> Size:
    """The canvas (height, width) among ``pinpoints`` an image of ``size`` (height, width) is tiled on.

    Each candidate scales the image to fit (aspect kept); the one keeping most of its pixels wins
    (``min(scaled area, original area)``), then the one wasting least canvas, then the first in
    list order (llava/mm_utils.py ``select_best_resolution``; transformers' image_processing_utils.py).
    """
    h, w = size
    best, best_kept, best_waste = pinpoints[0], -1, math.inf
    for canvas_h, canvas_w in pinpoints:
        scale = min(canvas_w / w, canvas_h / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        waste = canvas_w * canvas_h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (canvas_h, canvas_w), kept, waste
    return best


def tile_grid(size: Size, pinpoints: Sequence[Size], tile_size: int) -> Size:
    """(rows, cols) of ``tile_size`` tiles an image of ``size`` is cut into."""
    canvas_h, canvas_w = select_best_resolution(size, pinpoints)
    return canvas_h // tile_size, canvas_w // tile_size


def unpadded_grid(size: Size, grid_h: int, grid_w: int) -> Size:
    """The part of a (grid_h, grid_w) feature map that holds the image rather than its padding.

    The image was fitted into the canvas along one side and centred along the other; the map keeps
    ``new = int(round(side · scale, 7))`` rows (or columns) and drops ``(grid - new) // 2`` on each
    end, so an odd difference keeps one row of padding (transformers' ``unpad_image``; the original
    llava_arch.py ``unpad_image`` truncates without the 7-digit rounding).
    """
    h, w = size
    if w / h > grid_w / grid_h:
        new_h = int(round(h * (grid_w / w), 7))
        return grid_h - 2 * ((grid_h - new_h) // 2), grid_w
    new_w = int(round(w * (grid_h / h), 7))
    return grid_h, grid_w - 2 * ((grid_w - new_w) // 2)


def capped_grid(grid_h: int, grid_w: int, g: int, max_tiles: int | None) -> Size:
    """OneVision's ``anyres_max_{max_tiles}`` rule: a map of more than ~``max_tiles`` tiles' worth
    of tokens is resized (bilinear) by ``ratio = sqrt(h·w / (max_tiles·g²))`` when ratio > 1.1, to
    ``(int(h // ratio), int(w // ratio))`` (llava_arch.py; modeling_llava_onevision.py)."""
    if max_tiles is None:
        return grid_h, grid_w
    ratio = math.sqrt(grid_h * grid_w / (max_tiles * g * g))
    if ratio > 1.1:
        return int(grid_h // ratio), int(grid_w // ratio)
    return grid_h, grid_w


def is_tiled(size: Size) -> bool:
    """Whether an ``image_sizes`` row asks for tiling (a row of zeros is one untiled view)."""
    return size[0] > 0 and size[1] > 0


def num_views(size: Size, pinpoints: Sequence[Size], tile_size: int) -> int:
    """Encoder inputs of one image: its tiles + the base view (1 for an untiled image)."""
    if not is_tiled(size):
        return 1
    rows, cols = tile_grid(size, pinpoints, tile_size)
    return rows * cols + 1


def image_tokens(
    size: Size, pinpoints: Sequence[Size], tile_size: int, g: int, max_tiles: int | None = None
) -> int:
    """Embeddings one image of ``size`` (height, width) becomes, for g x g tokens per view.

    Tiled: ``g² + h″·(w″ + 1)`` (base, the unpadded and possibly capped map, one newline per row);
    untiled: ``g² + 1``. This is transformers' ``LlavaNextProcessor._get_number_of_features`` (with
    the CLS already dropped) and ``LlavaOnevisionProcessor``'s.
    """
    if not is_tiled(size):
        return g * g + 1
    rows, cols = tile_grid(size, pinpoints, tile_size)
    h, w = capped_grid(*unpadded_grid(size, rows * g, cols * g), g, max_tiles)
    return g * g + h * (w + 1)


def _sizes(image_sizes: torch.Tensor | Sequence[Sequence[int]]) -> list[Size]:
    """``image_sizes`` [n, 2] (height, width) -> a list of int pairs, checked."""
    rows = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else [list(s) for s in image_sizes]
    if any(len(r) != 2 for r in rows):
        raise InputError(f"image_sizes must be [n_img, 2] (height, width) rows, got {rows[:3]}...")
    sizes = [(int(h), int(w)) for h, w in rows]
    bad = [s for s in sizes if min(s) < 0 or (min(s) == 0 and max(s) != 0)]
    if bad:
        raise InputError(
            f"image_sizes rows must be positive (height, width), or (0, 0) for an untiled view; got {bad[:3]}"
        )
    return sizes


# --- the adapter --------------------------------------------------------------------------------
@dataclass
class AnyResConfig(MLPProjectorConfig):
    """LLaVA's MLP projector plus the tiling it packs (see the module docstring).

    ``tile_size``: the side of a tile in pixels (the encoder's resolution in the released
    pipelines: 336 for NeXT's CLIP-L/14-336, 384 for OneVision's SigLIP, whose stride-14
    convolution reads 378 of them); ``grid_pinpoints``: the candidate canvases (height, width),
    multiples of ``tile_size``, in tie-break order; ``max_tiles``: OneVision's
    ``vision_aspect_ratio="anyres_max_{max_tiles}"`` cap (None for LLaVA-NeXT: no cap).
    """

    tile_size: int = 336
    grid_pinpoints: tuple[tuple[int, int], ...] = field(default_factory=lambda: NEXT_PINPOINTS)
    max_tiles: int | None = None

    def validate(self) -> None:
        super().validate()
        self._check_positive("tile_size")
        if self.max_tiles is not None:
            self._check_positive("max_tiles")
        if not self.grid_pinpoints:
            self._fail("grid_pinpoints", "must be a non-empty tuple of (height, width) pairs")
        if any(side <= 0 or side % self.tile_size for pair in self.grid_pinpoints for side in pair):
            self._fail(
                "grid_pinpoints", f"every side must be a positive multiple of tile_size={self.tile_size}"
            )
        if len(set(self.grid_pinpoints)) != len(self.grid_pinpoints):
            self._fail("grid_pinpoints", "lists a canvas twice")


@register_architecture
class AnyResProjector(MLPProjector):
    """The MLP projector (keys ``proj.*``) + ``image_newline`` [out_dim], packing tiled images.

    ``image_sizes`` [n_img, 2] (height, width of each original image, in placeholder order) say how
    many of the encoder's inputs belong to each image (:func:`num_views`, base view first) and how
    many embeddings it becomes (:func:`image_tokens`).
    """

    config_class = AnyResConfig

    def __init__(self, config: AnyResConfig):
        super().__init__(config)
        # transformers initialises it N(0, 1/sqrt(D)) (LlavaNextModel.__init__).
        self.image_newline = nn.Parameter(torch.randn(config.out_dim) * config.out_dim**-0.5)

    # --- what an image costs ---------------------------------------------------------------
    def num_tokens(self, num_input_tokens: int) -> int:
        """M of an untiled image: its N embeddings and one ``image_newline``."""
        return num_input_tokens + 1

    def _grid_side(self, num_encoder_tokens: int) -> int:
        g = math.isqrt(num_encoder_tokens)
        if g * g != num_encoder_tokens:
            raise InputError(
                f"any-resolution tiling needs a square token grid per view, got {num_encoder_tokens} "
                "tokens (drop the CLS token: feature_tokens='patch')"
            )
        return g

    def views_per_image(self, image_sizes: torch.Tensor | Sequence[Sequence[int]]) -> list[int]:
        """Encoder inputs of each image (tiles + base), from ``image_sizes`` [n, 2]."""
        c = self.config
        return [num_views(s, c.grid_pinpoints, c.tile_size) for s in _sizes(image_sizes)]

    def count_images(self, num_inputs: int, image_sizes: torch.Tensor | None) -> int:
        """One image per input without ``image_sizes``; else one per row, whose views must add up
        to the ``num_inputs`` given."""
        if image_sizes is None:
            return num_inputs
        views = self.views_per_image(image_sizes)
        if sum(views) != num_inputs:
            raise InputError(
                f"image_sizes ask for {sum(views)} views ({views}: tiles + base per image) but "
                f"pixel_values hold {num_inputs}; pass each image's views flat, in placeholder order "
                "(the any-resolution processor's pixel_values)"
            )
        return len(views)

    def image_positions(
        self, num_encoder_tokens: int, num_images: int, image_sizes: torch.Tensor | None = None
    ) -> list[int]:
        if image_sizes is None:
            return super().image_positions(num_encoder_tokens, num_images)
        c, g = self.config, self._grid_side(num_encoder_tokens)
        return [image_tokens(s, c.grid_pinpoints, c.tile_size, g, c.max_tiles) for s in _sizes(image_sizes)]

    # --- packing ------------------------------------------------------------------------------
    def pack(
        self, embeds: torch.Tensor, image_sizes: torch.Tensor | None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Projected views [n_views, g², D] -> each image's embeddings.

        Without ``image_sizes``: [n, g² + 1, D] (every view an untiled image). With them: a list of
        [M_i, D], M_i = :func:`image_tokens` of image i.
        """
        newline = self.image_newline.to(embeds.dtype)
        if image_sizes is None:
            return torch.cat([embeds, newline.expand(embeds.shape[0], 1, -1)], dim=1)
        c, g = self.config, self._grid_side(embeds.shape[1])
        out, start = [], 0
        for size in _sizes(image_sizes):
            views = num_views(size, c.grid_pinpoints, c.tile_size)
            image = embeds[start : start + views]
            start += views
            if views == 1:
                out.append(torch.cat([image[0], newline[None]]))
                continue
            rows, cols = tile_grid(size, c.grid_pinpoints, c.tile_size)
            d = image.shape[-1]
            # Tiles are row-major; each is a g x g map: one (rows·g) x (cols·g) map, channels first.
            grid = (
                image[1:].reshape(rows, cols, g, g, d).permute(4, 0, 2, 1, 3).reshape(d, rows * g, cols * g)
            )
            h, w = unpadded_grid(size, rows * g, cols * g)
            top, left = (rows * g - h) // 2, (cols * g - w) // 2
            grid = grid[:, top : top + h, left : left + w]
            capped = capped_grid(h, w, g, c.max_tiles)
            if capped != (h, w):
                grid = F.interpolate(grid[None], size=capped, mode="bilinear")[0]
            grid = torch.cat([grid, newline[:, None, None].expand(-1, grid.shape[1], 1)], dim=2)
            out.append(torch.cat([image[0], grid.flatten(1).transpose(0, 1)]))
        return out

    def forward(
        self, tokens: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encoder tokens of every view [n_views, N, in_dim] -> each image's embeddings (:meth:`pack`
        of the projected views): [n, N + 1, out_dim] without ``image_sizes``, else [M_i, out_dim] each."""
        return self.pack(super().forward(tokens), image_sizes)

    def visual_features(
        self, tokens: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """What is spliced into the text: :meth:`forward`."""
        return self(tokens, image_sizes)

    def prepare(
        self,
        decoder: Any,
        input_ids: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        padding_side: PaddingSide | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> Prepared:
        """``inputs_embeds`` with every image's packed embeddings spliced in at its placeholder."""
        features = None if visual_tokens is None else self.visual_features(visual_tokens, image_sizes)
        embeds, mask, labels = self.splice(
            decoder, input_ids, features, attention_mask, labels, padding_side=padding_side
        )
        return Prepared(attention_mask=mask, labels=labels, inputs_embeds=embeds)


# Real sizes: CLIP-L/14-336 (1024) into Vicuna-7B / Mistral-7B (4096) and Vicuna-13B (5120);
# SigLIP so400m (1152) into Qwen2-0.5B (896) / Qwen2-7B (3584).
register(
    "llava-next-7b-projector",
    "adapter",
    AnyResConfig(1024, 4096),
    AnyResProjector,
    "LLaVA-NeXT (v1.6) 7B any-resolution projector",
)
register(
    "llava-next-13b-projector",
    "adapter",
    AnyResConfig(1024, 5120),
    AnyResProjector,
    "LLaVA-NeXT (v1.6) 13B any-resolution projector",
)
register(
    "llava-onevision-0.5b-projector",
    "adapter",
    AnyResConfig(1152, 896, tile_size=384, grid_pinpoints=ONEVISION_PINPOINTS, max_tiles=9),
    AnyResProjector,
    "LLaVA-OneVision 0.5B projector (anyres_max_9)",
)
register(
    "llava-onevision-7b-projector",
    "adapter",
    AnyResConfig(1152, 3584, tile_size=384, grid_pinpoints=ONEVISION_PINPOINTS, max_tiles=9),
    AnyResProjector,
    "LLaVA-OneVision 7B projector (anyres_max_9)",
)
