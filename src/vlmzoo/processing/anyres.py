"""Any-resolution images for LLaVA-NeXT (v1.6) and LLaVA-OneVision: tiles + a base view per image.

One image becomes ``1 + rows·cols`` views of ``tile_size`` pixels (llava/mm_utils.py
``process_anyres_image`` in LLaVA-VL/LLaVA-NeXT; transformers' ``LlavaNextImageProcessor`` /
``LlavaOnevisionImageProcessor``, whose PIL backends these steps equal pixel for pixel):

1. the canvas: :func:`~vlmzoo.adapters.anyres.select_best_resolution` among ``grid_pinpoints``;
2. the image resized into it, aspect kept (bicubic; the fitted side is the canvas's, the other
   ``min(ceil(side · scale), canvas side)``: transformers' ``get_patch_output_size``) and centred
   on a **black** canvas (offsets ``(canvas - new) // 2``, the odd pixel at the bottom / right);
3. the canvas cut into row-major tiles; the *base* view is the whole image resized to
   ``tile_size`` squared, aspect ignored (as the original does), placed first;
4. every view then goes through the family's recipe (NeXT: the CLIP recipe at 336, a no-op
   resize and crop on a 336 view; OneVision: resize to 384 x 384, mean = std = 0.5).

OneVision tiles only the image of a one-image sample (``tile_multi_image=False``): each image
of a multi-image sample is padded to a square with the recipe's mean colour and resized, one
view, written in ``image_sizes`` as (0, 0) (the adapter then packs it untiled). ``trim_to`` keeps
the top-left ``trim_to`` pixels of each view: SigLIP-so400m's stride-14 convolution reads 378 of
OneVision's 384 (transformers ignores the rest), and vlmzoo's encoder takes multiples of its patch.

The processor returns ``pixel_values`` [Σ views, 3, S, S] flat in placeholder order and
``image_sizes`` [n_img, 2] (height, width), what :class:`~vlmzoo.models.vlm.VisionLanguageModel`
takes. For a model that expects every image's placeholders written out (converted transformers
models, ``expand_image_tokens=False``) each ``<image>`` becomes as many ids as the image takes
(:func:`~vlmzoo.adapters.anyres.image_tokens`), the count transformers' processors write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vlmzoo.adapters.anyres import (
    NEXT_PINPOINTS,
    ONEVISION_PINPOINTS,
    image_tokens,
    select_best_resolution,
)
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.binding import check_binding
from vlmzoo.processing.image import ImageProcessorConfig
from vlmzoo.processing.image_input import expand_to_square, mean_fill
from vlmzoo.processing.processor import (
    ImageStreamConfig,
    Processor,
    ProcessorConfig,
    _images_per_text,
    _tiles,
    decoder_context,
)
from vlmzoo.processing.templates import TEMPLATES, TemplateConfig

Size = tuple[int, int]


# --- the image steps ---------------------------------------------------------------------------
def fitted_size(size: Size, canvas: Size) -> Size:
    """(height, width) of an image of ``size`` resized into ``canvas``, aspect kept (transformers'
    ``get_patch_output_size``; llava/mm_utils.py ``resize_and_pad_image``)."""
    h, w = size
    canvas_h, canvas_w = canvas
    # The scale is a float first, as in both originals: 300 px * (336 / 300) is 336.00000000000006,
    # so a 300 px side fitted to 336 becomes 337 (then clipped to the canvas), as they do.
    scale_w, scale_h = canvas_w / w, canvas_h / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), canvas_h), canvas_w
    return canvas_h, min(math.ceil(w * scale_h), canvas_w)


def tile_views(
    image: Image.Image, pinpoints: Sequence[Size], tile_size: int, resample: int = Image.Resampling.BICUBIC
) -> list[Image.Image]:
    """An RGB image -> [base, tile_0, ..., tile_{rows·cols - 1}] (PIL images of ``tile_size`` squared)."""
    w, h = image.size
    canvas_h, canvas_w = select_best_resolution((h, w), pinpoints)
    new_h, new_w = fitted_size((h, w), (canvas_h, canvas_w))
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
    canvas.paste(
        image.resize((new_w, new_h), resample=resample), ((canvas_w - new_w) // 2, (canvas_h - new_h) // 2)
    )
    tiles = [
        canvas.crop((left, top, left + tile_size, top + tile_size))
        for top in range(0, canvas_h, tile_size)
        for left in range(0, canvas_w, tile_size)
    ]
    return [image.resize((tile_size, tile_size), resample=resample), *tiles]


def flat_views(pixel_values: torch.Tensor, views_per_image: Sequence[int]) -> torch.Tensor:
    """transformers' padded ``pixel_values`` [n_img, max_views, 3, S, S] -> vlmzoo's flat
    [Σ views, 3, S, S] (each image's first ``views_per_image[i]`` views; the rest is zero padding)."""
    if pixel_values.ndim != 5 or pixel_values.shape[0] != len(views_per_image):
        raise InputError(
            f"expected [n_img={len(views_per_image)}, max_views, 3, S, S] pixel values, got "
            f"{tuple(pixel_values.shape)}"
        )
    return torch.cat([pixels[:n] for pixels, n in zip(pixel_values, views_per_image, strict=True)])


# --- the processor -------------------------------------------------------------------------------
@dataclass
class AnyResProcessorConfig(ProcessorConfig):
    """A :class:`ProcessorConfig` that tiles (see the module docstring).

    ``image`` is the recipe every view goes through. ``tile_size``, ``grid_pinpoints`` (height,
    width) and ``max_tiles`` are the model's tiling (its ``AnyResConfig``); ``view_grid`` is g, the
    side of the token grid of one view (24 for CLIP-L/14-336, 27 for SigLIP-so400m/14-384), which
    with them gives each image's token count. ``written_out``: write each image's placeholders out
    (the model's ``expand_image_tokens=False``) rather than one per image. ``tile_multi_image``:
    tile the images of multi-image samples too (NeXT) or not (OneVision). ``trim_to``: keep the
    top-left ``trim_to`` x ``trim_to`` pixels of every view (None: all).
    """

    tile_size: int = 336
    grid_pinpoints: tuple[tuple[int, int], ...] = field(default_factory=lambda: NEXT_PINPOINTS)
    max_tiles: int | None = None
    view_grid: int = 24
    written_out: bool = False
    tile_multi_image: bool = True
    trim_to: int | None = None

    def validate(self) -> None:
        super().validate()
        self._check_positive("tile_size", "view_grid")
        if self.max_tiles is not None:
            self._check_positive("max_tiles")
        if self.trim_to is not None and not 0 < self.trim_to <= self.tile_size:
            self._fail("trim_to", f"must be in 1 .. tile_size={self.tile_size}, or None")
        if not self.grid_pinpoints:
            self._fail("grid_pinpoints", "must be a non-empty tuple of (height, width) pairs")
        if any(side <= 0 or side % self.tile_size for pair in self.grid_pinpoints for side in pair):
            self._fail(
                "grid_pinpoints", f"every side must be a positive multiple of tile_size={self.tile_size}"
            )
        if len(set(self.grid_pinpoints)) != len(self.grid_pinpoints):
            self._fail("grid_pinpoints", "lists a canvas twice")
        if self.image is None:
            self._fail("image", "an any-resolution processor needs the image recipe of its views")
        if self.second_image is not None:
            self._fail("second_image", "any-resolution tiling has one image stream: set second_image=None")


class AnyResProcessor(Processor):
    """Images -> flat views + ``image_sizes``; prompts with one placeholder per image, or each
    image's placeholders written out (``written_out``)."""

    config: AnyResProcessorConfig

    def image_views(self, image: Any, tile: bool = True, index: int = 0) -> tuple[torch.Tensor, Size]:
        """One image (path, PIL, uint8 array) -> (views [1 + rows·cols, 3, S', S'], its
        ``image_sizes`` row: (height, width), or (0, 0) untiled)."""
        cfg = self.config
        pil = self._read(image, index)
        recipe = self._recipes[0]
        if tile:
            views, size = tile_views(pil, cfg.grid_pinpoints, cfg.tile_size), (pil.size[1], pil.size[0])
        else:  # OneVision's multi-image samples: a square of the mean colour, one view
            views, size = [expand_to_square(pil, mean_fill(cfg.image.recipe.mean))], (0, 0)
        pixels = torch.stack([recipe(view)[0] for view in views])
        if cfg.trim_to is not None:
            pixels = pixels[..., : cfg.trim_to, : cfg.trim_to].contiguous()
        return pixels, size

    def image_inputs(
        self, per_text: Sequence[Sequence[Any]]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every sample's images -> (``pixel_values`` [Σ views, 3, S', S'], ``image_sizes`` [n, 2])."""
        views, sizes, index = [], [], 0
        for images in per_text:
            tile = self.config.tile_multi_image or len(images) == 1
            for image in images:
                pixels, size = self.image_views(image, tile, index)
                views.append(pixels)
                sizes.append(size)
                index += 1
        if not views:
            return None, None
        return torch.cat(views), torch.tensor(sizes, dtype=torch.long)

    def model_image_inputs(self, images_of: Sequence[Sequence[Any]]) -> tuple[Any, dict[str, torch.Tensor]]:
        """The views of every image flat, and their ``image_sizes`` (the model's tiling input)."""
        pixel_values, image_sizes = self.image_inputs(images_of)
        return pixel_values, {} if image_sizes is None else {"image_sizes": image_sizes}

    def encode_rows(
        self, texts: Sequence[str], images_of: Sequence[Sequence[Any]], image_inputs: dict[str, torch.Tensor]
    ) -> list[list[int]]:
        """Each prompt's ids, every image's placeholders written out when the model takes them so."""
        counts = self.image_token_counts(image_inputs.get("image_sizes"))
        rows, start = [], 0
        for text, images in zip(texts, images_of, strict=True):
            rows.append(self.encode(text, len(images), counts[start : start + len(images)]))
            start += len(images)
        return rows

    def image_token_counts(self, image_sizes: torch.Tensor | None) -> list[int]:
        """Positions each image takes in the decoder (:func:`~vlmzoo.adapters.anyres.image_tokens`)."""
        if image_sizes is None:
            return []
        cfg = self.config
        return [
            image_tokens((int(h), int(w)), cfg.grid_pinpoints, cfg.tile_size, cfg.view_grid, cfg.max_tiles)
            for h, w in image_sizes.tolist()
        ]

    def encode(self, text: str, num_images: int, counts: Sequence[int] | None = None) -> list[int]:
        """Token ids of one prompt (:meth:`Processor.encode`); with ``written_out``, the k-th
        placeholder becomes ``counts[k]`` image ids."""
        ids = super().encode(text, num_images)
        if not self.config.written_out:
            return ids
        if counts is None or len(counts) != num_images:
            raise InputError(f"{num_images} images need their token counts to write them out, got {counts}")
        image_id, out, k = self.image_token_id, [], 0
        for t in ids:
            if t == image_id:
                out.extend([t] * counts[k])
                k += 1
            else:
                out.append(t)
        return out

    def __call__(
        self, text: str | Sequence[str], images: Any = None, padding_side: str = "left"
    ) -> dict[str, Any]:
        """Like :meth:`Processor.__call__`, plus ``image_sizes`` [n_img, 2]; ``pixel_values`` are
        every image's views flat in placeholder order."""
        texts = [text] if isinstance(text, str) else list(text)
        per_text = _images_per_text(images, len(texts), isinstance(text, str))
        pixel_values, image_sizes = self.image_inputs(per_text)
        counts = self.image_token_counts(image_sizes)
        rows, start = [], 0
        for t, ims in zip(texts, per_text, strict=True):
            rows.append(self.encode(t, len(ims), counts[start : start + len(ims)]))
            start += len(ims)
        return self.pad(rows, padding_side) | {"pixel_values": pixel_values, "image_sizes": image_sizes}

    def for_model(self, model: Any) -> AnyResProcessor:
        """This processor with ``model``'s image id, tiling and placeholder style (the image id
        checked against the tokenizer as :meth:`Processor.for_model` does)."""
        if not _tiles(model):
            raise ConfigError(
                f"an AnyResProcessor tiles images for an any-resolution model (LLaVA-NeXT, OneVision), "
                f"but this model's adapter is a {type(getattr(model.adapter, 'config', model.adapter)).__name__}, "
                "which reads one view per image; use the model's own processor "
                "(vlmzoo.create_processor(<its preset name>), e.g. a Processor of processing.processor_presets.llava)"
            )
        vlm, adapter = model.config, model.adapter.config
        expand = bool(getattr(vlm, "expand_image_tokens", True))
        check_binding(self, vlm.image_token_id, expand, None)  # positions differ per image size
        config = self.config.replace(
            image_token_id=vlm.image_token_id,
            tokens_per_image=1,
            written_out=not expand,
            tile_size=adapter.tile_size,
            grid_pinpoints=adapter.grid_pinpoints,
            max_tiles=adapter.max_tiles,
            view_grid=math.isqrt(model.encoder.num_tokens()),
            context=vlm.max_length or decoder_context(model.decoder.lm.config),
        )
        return AnyResProcessor(config, self._tokenizer)

    @classmethod
    def from_pretrained(cls, directory: Any, tokenizer: Any = None) -> AnyResProcessor:
        from vlmzoo.processing.processor import load_processor_files

        config, tokenizer = load_processor_files(directory, AnyResProcessorConfig, tokenizer)
        return cls(config, tokenizer)


# --- the published recipes -------------------------------------------------------------------------
# LLaVA-OneVision's conversation (LLaVA-VL/LLaVA-NeXT llava/conversation.py ``conv_qwen``, "qwen_1_5").
QWEN_1_5 = TemplateConfig(
    name="qwen_1_5",
    system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    user="<|im_start|>user\n{}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{}<|im_end|>\n",
    generation="<|im_start|>assistant\n",
    image="<image>\n",
    stop=("<|im_end|>",),
)


def llava_next(
    image_size: int = 336, view_grid: int = 24, tokenizer: str | None = None
) -> AnyResProcessorConfig:
    """LLaVA-NeXT (v1.6): the CLIP recipe at ``image_size`` (transformers' floor crop offsets) on
    every view, the five 1x2 .. 3x1 grids of ``image_size`` tiles, ``vicuna_v1``, -200 per image."""
    pins = tuple((h * image_size // 336, w * image_size // 336) for h, w in NEXT_PINPOINTS)
    recipe = ImageProcessorConfig.clip(image_size).replace(crop_rounding="floor")
    return AnyResProcessorConfig(
        family="llava-next",
        image=ImageStreamConfig(recipe),
        template=TEMPLATES["vicuna_v1"],
        alpha="drop",  # LLaVA-NeXT's eval: Image.open(path).convert("RGB") (llava/eval/model_vqa.py)
        image_token_id=-200,
        tokenizer=tokenizer or "liuhaotian/llava-v1.6-vicuna-7b",
        tile_size=image_size,
        grid_pinpoints=pins,
        view_grid=view_grid,
    )


def llava_onevision(
    image_size: int = 384, view_grid: int = 27, trim_to: int | None = 378, tokenizer: str | None = None
) -> AnyResProcessorConfig:
    """LLaVA-OneVision: resize every view to ``image_size`` squared (bicubic, mean = std = 0.5, the
    hub's preprocessor_config.json), 1x1 .. 6x6 grids, ``anyres_max_9``, ``qwen_1_5``; images of
    multi-image samples untiled."""
    pins = tuple((h * image_size // 384, w * image_size // 384) for h, w in ONEVISION_PINPOINTS)
    recipe = ImageProcessorConfig(
        size=image_size, crop_size=image_size, mean=(0.5,) * 3, std=(0.5,) * 3, do_center_crop=False
    )
    return AnyResProcessorConfig(
        family="llava-onevision",
        image=ImageStreamConfig(recipe),
        template=QWEN_1_5,
        alpha="drop",  # LLaVA-VL/LLaVA-NeXT's OneVision eval: Image.open(path).convert("RGB")
        image_token_id=-200,
        add_bos=False,
        tokenizer=tokenizer or "lmms-lab/llava-onevision-qwen2-7b-ov",
        tile_size=image_size,
        grid_pinpoints=pins,
        max_tiles=9,
        view_grid=view_grid,
        tile_multi_image=False,
        trim_to=trim_to,
    )


__all__ = [
    "QWEN_1_5",
    "AnyResProcessor",
    "AnyResProcessorConfig",
    "fitted_size",
    "flat_views",
    "llava_next",
    "llava_onevision",
    "tile_views",
]
