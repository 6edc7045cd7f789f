"""Input preprocessing: images -> normalized ``pixel_values``."""

from vlmzoo.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAM_MEAN,
    SAM_STD,
    ImageProcessor,
    ImageProcessorConfig,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAM_MEAN",
    "SAM_STD",
    "ImageProcessor",
    "ImageProcessorConfig",
]
