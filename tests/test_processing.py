"""Tests for vlmzoo.processing: parity with HF / torchvision recipes, batching, input errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing import CLIP_MEAN, CLIP_STD, ImageProcessor, ImageProcessorConfig

# (width, height): landscape, portrait, square, smaller than 224, and margins of 3 mod 4
# (303 - 224 = 79), where torchvision's round and HF's floor crop offsets disagree.
SIZES = [(300, 200), (200, 333), (224, 224), (100, 150), (303, 224), (160, 217)]


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradient plus noise, so resizing is exercised on edges and on flat areas."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def clip() -> ImageProcessor:
    return ImageProcessor(ImageProcessorConfig.clip(224))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [_random_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


# --- parity ---------------------------------------------------------------------------------
def test_floor_crop_matches_hf_slow_pil_clip_processor(images):
    transformers = pytest.importorskip("transformers")
    # In transformers 5.x CLIPImageProcessor is the torchvision backend; the PIL one is *Pil.
    hf = transformers.CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    ours = ImageProcessor(ImageProcessorConfig.clip(224).replace(crop_rounding="floor"))
    for image in images:
        expected = hf(image, return_tensors="pt")["pixel_values"]
        got = ours(image)
        assert got.shape == expected.shape == (1, 3, 224, 224)
        assert (got - expected).abs().max().item() <= 1e-4, image.size


def test_default_round_crop_matches_torchvision_openai_clip_recipe(clip, images):
    T = pytest.importorskip("torchvision.transforms")
    recipe = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    for image in images:
        assert (clip(image)[0] - recipe(image)).abs().max().item() <= 1e-4, image.size


def test_round_and_floor_crops_differ_by_one_pixel_when_margin_is_3_mod_4(clip):
    image = _random_image(303, 224)  # resized to 303x224: horizontal margin 79
    floor = ImageProcessor(clip.config.replace(crop_rounding="floor"))(image)
    rounded = clip(image)  # left = round(39.5) = 40 vs floor 39
    assert not torch.equal(rounded, floor)
    assert torch.equal(rounded[..., :-1], floor[..., 1:])


def test_uint8_array_and_tensor_match_pil_input_exactly(clip, images):
    image = images[0]
    expected = clip(image)
    hwc = np.array(image)
    assert torch.equal(clip(hwc), expected)
    assert torch.equal(clip(torch.from_numpy(hwc).permute(2, 0, 1)), expected)


def test_float_tensor_path_agrees_with_pil_path_up_to_rounding(clip, images):
    for image in images:
        chw = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        diff = (clip(chw) - clip(image)).abs()
        assert diff.mean().item() < 0.05, image.size


def test_float_numpy_hwc_matches_float_tensor_chw(clip, images):
    hwc = np.array(images[1]).astype(np.float32) / 255
    assert torch.allclose(clip(hwc), clip(torch.from_numpy(hwc).permute(2, 0, 1)), atol=1e-6)


# --- batching and channels ------------------------------------------------------------------
def test_list_of_three_images_gives_batch_of_three(clip, images):
    out = clip(images[:3])
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out[1], clip(images[1])[0])


def test_single_image_gives_batch_of_one(clip, images):
    assert clip(images[0]).shape == (1, 3, 224, 224)


def test_nhwc_numpy_batch_matches_per_image(clip):
    batch = np.stack([np.array(_random_image(256, 240, seed=s)) for s in range(2)])
    out = clip(batch)
    assert out.shape == (2, 3, 224, 224)
    assert torch.equal(out[1], clip(batch[1])[0])


def test_grayscale_and_rgba_become_three_channels(clip, images):
    gray, rgba = images[0].convert("L"), images[0].convert("RGBA")
    assert clip([gray, rgba]).shape == (2, 3, 224, 224)
    assert torch.equal(clip(rgba), clip(images[0]))  # alpha is dropped, not composited
    gray_float = torch.from_numpy(np.array(gray)).float()[None] / 255  # [1, H, W]
    assert clip(gray_float).shape == (1, 3, 224, 224)


def test_no_center_crop_resizes_to_square(images):
    config = ImageProcessorConfig(size=64, crop_size=64, mean=CLIP_MEAN, std=CLIP_STD, do_center_crop=False)
    assert ImageProcessor(config)(images[:2]).shape == (2, 3, 64, 64)


def test_module_imports_neither_torchvision_nor_transformers():
    code = "import sys, vlmzoo.processing; print('torchvision' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- errors ---------------------------------------------------------------------------------
def test_empty_list_raises(clip):
    with pytest.raises(InputError, match="empty batch"):
        clip([])


def test_wrong_channel_count_names_shape_and_layouts(clip):
    with pytest.raises(InputError, match=r"shape \(32, 32, 2\).*HWC/NHWC"):
        clip(np.zeros((32, 32, 2), dtype=np.uint8))
    with pytest.raises(InputError, match=r"shape \(3, 32, 32\).*channels-first"):
        clip(np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match=r"shape \(32, 32, 3\).*CHW/BCHW"):
        clip(torch.zeros(32, 32, 3))


def test_zero_size_image_raises(clip):
    with pytest.raises(InputError, match="zero size"):
        clip(Image.new("RGB", (0, 10)))
    with pytest.raises(InputError, match="zero size"):
        clip(torch.zeros(3, 0, 8))


def test_unsupported_type_is_named(clip):
    with pytest.raises(InputError, match="unsupported image type str"):
        clip("cat.jpg")
    with pytest.raises(InputError, match="unsupported image dtype int64"):
        clip(np.zeros((8, 8, 3), dtype=np.int64))


def test_float_image_in_0_255_range_raises(clip):
    with pytest.raises(InputError, match="looks like 0-255 data; pass uint8 or divide by 255"):
        clip(torch.full((3, 8, 8), 200.0))


def test_nan_or_inf_pixels_raise(clip):
    for bad in (float("nan"), float("inf")):
        x = torch.rand(3, 8, 8)
        x[0, 0, 0] = bad
        with pytest.raises(InputError, match="NaN or inf"):
            clip(x)


# --- config ---------------------------------------------------------------------------------
def test_crop_larger_than_size_is_a_config_error():
    with pytest.raises(ConfigError, match="crop_size"):
        ImageProcessorConfig(size=224, crop_size=256, mean=CLIP_MEAN, std=CLIP_STD)


def test_non_positive_std_is_a_config_error():
    with pytest.raises(ConfigError, match="std"):
        ImageProcessorConfig(size=224, crop_size=224, mean=CLIP_MEAN, std=(0.2, -0.1, 0.2))


def test_config_round_trips_through_json():
    config = ImageProcessorConfig.clip(336)
    assert ImageProcessorConfig.from_json(config.to_json()) == config


# --- SAM: longest-side resize, 0-255 normalisation, zero padding (segment-anything's ResizeLongestSide + Sam.preprocess) -----------------
# (width, height): landscape, portrait, square, upscaled, and sides whose scaled size ends in .5-ish
SAM_SIZES = [(300, 200), (200, 333), (64, 64), (50, 30), (31, 97)]


def test_sam_recipe_matches_hf_sam_image_processor_pil():
    transformers = pytest.importorskip("transformers")
    hf = transformers.SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    ours = ImageProcessor(ImageProcessorConfig.sam(64))
    for i, (w, h) in enumerate(SAM_SIZES):
        image = _random_image(w, h, seed=i)
        expected = hf(image, return_tensors="pt")
        got = ours(image)
        assert got.shape == expected["pixel_values"].shape == (1, 3, 64, 64)
        assert (got - expected["pixel_values"]).abs().max().item() <= 1e-4, image.size
        new_h, new_w = (int(s) for s in expected["reshaped_input_sizes"][0])
        assert not got[0, :, new_h:].any() and not got[0, :, :, new_w:].any()  # zeros bottom/right


def test_sam_longest_side_rounds_half_up_and_pads_after_normalising():
    ours = ImageProcessor(ImageProcessorConfig.sam(1024))
    assert ours._resized_hw(480, 640) == (768, 1024)
    assert ours._resized_hw(1000, 3) == (1024, 3)  # 3.072 -> 3
    assert ours._resized_hw(2, 3) == (683, 1024)  # 682.67 -> 683
    assert ours._resized_hw(3000, 1) == (1024, 1)  # 0.34 would be 0 px: kept at 1
    white = ours(torch.ones(3, 8, 16))  # float path: 1.0 stands for 255
    sam = ImageProcessorConfig.sam()
    expected = (255 - torch.tensor(sam.mean)) / torch.tensor(sam.std)
    assert torch.allclose(white[0, :, 0, 0], expected) and not white[0, :, 512:].any()


def test_sam_config_refuses_center_crop():
    with pytest.raises(ConfigError, match="longest_edge"):
        ImageProcessorConfig.sam().replace(do_center_crop=True)
