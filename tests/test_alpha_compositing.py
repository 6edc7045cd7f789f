"""Transparency is treated as each family's original pipeline does: dropped, composited on white,
or refused with an error that names the choices."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmzoo.errors import InputError
from vlmzoo.processing.image_input import has_transparency, to_rgb

RED_TRANSPARENT = (255, 0, 0, 0)


def _rgba():
    return Image.new("RGBA", (4, 4), RED_TRANSPARENT)


def test_drop_keeps_the_colour_of_transparent_pixels():
    assert to_rgb(_rgba(), "drop").getpixel((0, 0)) == (255, 0, 0)


def test_white_composites_transparent_pixels_onto_white():
    assert to_rgb(_rgba(), "white").getpixel((0, 0)) == (255, 255, 255)


def test_white_composites_half_transparent_pixels_by_their_alpha():
    r, g, b = to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 128)), "white").getpixel((0, 0))
    assert r == g == b and 120 <= r <= 130


def test_la_images_are_composited_too():
    assert to_rgb(Image.new("LA", (2, 2), (0, 0)), "white").getpixel((0, 0)) == (255, 255, 255)


def test_palette_transparency_is_composited():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert has_transparency(image)
    assert to_rgb(image, "white").getpixel((0, 0)) == (255, 255, 255)


def test_refuse_names_the_other_choices():
    with pytest.raises(InputError, match="'white'.*'drop'"):
        to_rgb(_rgba(), "refuse")


def test_an_opaque_rgb_image_is_accepted_by_every_mode():
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    assert {to_rgb(image, mode).getpixel((0, 0)) for mode in ("drop", "white", "refuse")} == {(1, 2, 3)}


def test_an_unknown_alpha_mode_is_refused():
    with pytest.raises(InputError, match="alpha='black'"):
        to_rgb(_rgba(), "black")


def _processor(alpha):
    from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig

    config = ImageProcessorConfig(size=8, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return ImageProcessor(config, alpha=alpha)


def test_a_four_channel_uint8_array_is_read_as_rgba():
    array = np.zeros((8, 8, 4), dtype=np.uint8)
    array[..., 0] = 255  # red, fully transparent
    white = _processor("white")(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.allclose(_processor("white")(array), white)


def test_a_four_channel_tensor_is_refused_when_the_family_refuses():
    with pytest.raises(InputError):
        _processor("refuse")(torch.rand(4, 8, 8))
