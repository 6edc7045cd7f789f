"""SigLIP 2: the NaFlex tower, model and preprocessing equal transformers' Siglip2*; presets have
the releases' sizes; the fixed-resolution releases are SigLIP models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmzoo.convert import from_transformers
from vlmzoo.encoders.siglip import SiglipVisionTransformer
from vlmzoo.encoders.siglip2 import Siglip2VisionConfig, Siglip2VisionTransformer, patchify
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.siglip import SIGLIP2_PRESETS, SIGLIP_PRESETS, SigLIP2Config, SigLIP2Model, SigLIPModel
from vlmzoo.processing.siglip_naflex import NaFlexConfig, NaFlexImageProcessor, naflex_size
from vlmzoo.registry import create_encoder, create_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4
# A 4 x 4 position table of 4-px patches; sequences of 30 patches hold grids up to 5 x 6.
VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    patch_size=4,
    num_patches=16,
)
TEXT = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
    max_position_embeddings=10,
)  # fmt: skip
LENGTH = 30


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def _hf_model():
    config = transformers.Siglip2Config(vision_config=VISION, text_config=TEXT)
    return _randomised(transformers.Siglip2Model(config))


def _batch(shapes: list[tuple[int, int]], length: int = LENGTH):
    """A NaFlex batch: random patches, each image's first h·w positions real, the rest padding."""
    torch.manual_seed(1)
    pixels = torch.randn(len(shapes), length, 3 * 4 * 4)
    mask = torch.zeros(len(shapes), length, dtype=torch.long)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
    return pixels, mask, torch.tensor(shapes)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# Same shape as the table, upsampled, downsampled, wide and tall, and a full sequence (no padding).
SHAPES = [[(4, 4)], [(5, 6)], [(2, 3)], [(1, 7)], [(6, 5)]]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@torch.no_grad()
def test_naflex_tower_matches_transformers_at_one_spatial_shape(shapes):
    hf = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**VISION))
    hf = _randomised(hf)
    ours = from_transformers(hf).eval()
    assert isinstance(ours, Siglip2VisionTransformer)
    pixels, mask, spatial = _batch(shapes * 2)
    ref = hf(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=spatial)
    out = ours(pixels, pixel_attention_mask=mask, spatial_shapes=spatial)
    assert _diff(out.pooled, ref.pooler_output) <= TOL
    assert _diff(out.tokens, ref.last_hidden_state) <= TOL  # padding rows included


@torch.no_grad()
def test_a_batch_mixing_shapes_and_padding_matches_transformers_image_by_image():
    hf = _hf_model()
    ours = from_transformers(hf).eval()
    shapes = [(4, 4), (5, 6), (2, 3), (1, 7)]
    pixels, mask, spatial = _batch(shapes)
    ref = hf.vision_model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=spatial)
    out = ours.visual(pixels, pixel_attention_mask=mask, spatial_shapes=spatial)
    assert _diff(out.pooled, ref.pooler_output) <= TOL
    assert _diff(out.tokens, ref.last_hidden_state) <= TOL
    assert out.mask.tolist() == mask.tolist() and out.spatial_shapes.tolist() == spatial.tolist()
    assert out.grid == (1, LENGTH)  # no single grid for mixed shapes
    # each image alone, without padding, gives the same embedding: the padding is invisible
    for i, (h, w) in enumerate(shapes):
        alone = ours.visual(pixels[i : i + 1, : h * w], spatial_shapes=spatial[i : i + 1]).pooled
        assert _diff(alone, out.pooled[i : i + 1]) <= TOL


@torch.no_grad()
def test_siglip2_model_logits_and_loss_match_transformers():
    hf = _hf_model()
    ours = from_transformers(hf).eval()
    assert isinstance(ours, SigLIP2Model)
    pixels, mask, spatial = _batch([(4, 4), (5, 6), (2, 3), (3, 3)])
    ids = torch.randint(0, 64, (4, 10))
    ref = hf(
        input_ids=ids,
        pixel_values=pixels,
        pixel_attention_mask=mask,
        spatial_shapes=spatial,
        return_loss=True,
    )
    out = ours(pixels, ids, return_loss=True, pixel_attention_mask=mask, spatial_shapes=spatial)
    assert _diff(out.logits_per_image, ref.logits_per_image) <= TOL
    assert _diff(out.image_embeds, ref.image_embeds) <= TOL
    assert _diff(out.text_embeds, ref.text_embeds) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


@torch.no_grad()
def test_text_tower_matches_siglip2_text_model():
    hf = _randomised(transformers.Siglip2TextModel(transformers.Siglip2TextConfig(**TEXT)))
    ours = from_transformers(hf).eval()
    ids = torch.randint(0, 64, (3, 10))
    assert _diff(ours(ids).embeds, hf(input_ids=ids).pooler_output) <= TOL


@torch.no_grad()
def test_plain_images_are_cut_into_the_processors_patches():
    encoder = create_encoder("siglip2-vit-tiny").eval()
    images = torch.randn(2, 3, 24, 40)
    patches = patchify(images, 8)
    assert patches.shape == (2, 15, 192)
    # patch (row 1, column 2) holds pixels [8:16, 16:24], flattened row, column, channel
    assert torch.equal(patches[0, 1 * 5 + 2], images[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1))
    a = encoder(images)
    b = encoder(patches, spatial_shapes=torch.tensor([[3, 5], [3, 5]]))
    assert a.grid == (3, 5) and _diff(a.pooled, b.pooled) == 0.0
    assert encoder.num_tokens((24, 40)) == 15 == a.tokens.shape[1]


def test_patch_sequences_without_spatial_shapes_or_with_a_bad_mask_are_refused():
    encoder = create_encoder("siglip2-vit-tiny")
    patches = torch.randn(1, 16, 192)
    with pytest.raises(InputError, match="spatial_shapes"):
        encoder(patches)
    with pytest.raises(InputError, match="do not fit"):
        encoder(patches, spatial_shapes=torch.tensor([[5, 4]]))
    with pytest.raises(InputError, match="0 \\(padding\\) and 1"):
        encoder(patches, spatial_shapes=torch.tensor([[4, 4]]), pixel_attention_mask=torch.full((1, 16), 2))
    with pytest.raises(InputError, match="not a multiple of the patch size"):
        encoder(torch.randn(1, 3, 30, 32))


def test_config_refuses_a_position_table_that_is_not_square():
    with pytest.raises(ConfigError, match=r"Siglip2VisionConfig\.num_patches"):
        Siglip2VisionConfig(num_patches=200)
    config = SIGLIP2_PRESETS["siglip2-tiny"]
    assert SigLIP2Config.from_json(config.to_json()) == config


def test_a_tiny_naflex_model_trains_one_step_with_finite_gradients():
    model = create_model("siglip2-tiny")
    pixels = torch.randn(2, 16, 192)
    out = model(
        pixels,
        torch.randint(0, 1000, (2, 16)),
        return_loss=True,
        pixel_attention_mask=torch.tensor([[1] * 16, [1] * 6 + [0] * 10]),
        spatial_shapes=torch.tensor([[4, 4], [2, 3]]),
    )
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- presets ----------------------------------------------------------------------------------
SIZES = {  # (width, depth, heads, mlp)
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "so400m": (1152, 27, 16, 4304),
    "giant-opt": (1536, 40, 16, 6144),
}


def _tower(size: str) -> dict:
    width, depth, heads, mlp = SIZES[size]
    return dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp)


@pytest.mark.parametrize("name", ["siglip2-base-patch16-naflex", "siglip2-so400m-patch16-naflex"])
def test_naflex_preset_parameter_count_equals_transformers_siglip2_model(name):
    size = name.split("-")[1]
    config = transformers.Siglip2Config(
        vision_config=dict(patch_size=16, num_patches=256, **_tower(size)),
        text_config=dict(vocab_size=256000, max_position_embeddings=64, **_tower(size)),
    )
    with torch.device("meta"):
        hf = transformers.Siglip2Model(config)
        ours = SigLIP2Model(SIGLIP2_PRESETS[name])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


FIXED = sorted(n for n in SIGLIP_PRESETS if n.startswith("siglip2-"))


@pytest.mark.parametrize("name", FIXED)
def test_fixed_resolution_preset_parameter_count_equals_transformers_siglip_model(name):
    """google/siglip2-<size>-patch<p>-<px> are SiglipModel checkpoints with the Gemma vocabulary."""
    size, rest = name.removeprefix("siglip2-").split("-patch")
    patch, image = (int(v) for v in rest.split("-"))
    text = dict(
        vocab_size=256000, max_position_embeddings=64, **_tower("so400m" if size == "giant-opt" else size)
    )
    if size == "giant-opt":
        text["projection_size"] = 1536
    config = transformers.SiglipConfig(
        vision_config=dict(image_size=image, patch_size=patch, **_tower(size)), text_config=text
    )
    with torch.device("meta"):
        hf = transformers.SiglipModel(config)
        ours = SigLIPModel(SIGLIP_PRESETS[name])
    assert isinstance(ours.visual, SiglipVisionTransformer)
    assert ours.visual.config.grid == (image // patch,) * 2
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


# --- preprocessing ----------------------------------------------------------------------------
def _photo(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [(37, 53), (200, 30), (16, 16), (90, 91), (5, 300)]


@pytest.mark.parametrize(("height", "width"), IMAGES)
@pytest.mark.parametrize("budget", [16, 64])
def test_naflex_target_size_equals_transformers(height, width, budget):
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

    assert naflex_size(height, width, 8, budget) == get_image_size_for_max_num_patches(
        height, width, 8, budget
    )


def test_naflex_processor_equals_transformers_pil_processor_exactly():
    images = [_photo(h, w, i) for i, (h, w) in enumerate(IMAGES)]
    ref = transformers.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=64)(images, return_tensors="pt")
    ours = NaFlexImageProcessor(NaFlexConfig(patch_size=8, max_num_patches=64))(images)
    assert ours["spatial_shapes"].tolist() == ref["spatial_shapes"].tolist()
    assert ours["pixel_attention_mask"].tolist() == ref["pixel_attention_mask"].tolist()
    assert _diff(ours["pixel_values"], ref["pixel_values"].float()) <= 1e-6


def test_naflex_processor_is_close_to_transformers_default_torchvision_processor():
    """transformers' default backend resizes the uint8 tensor with torchvision: a few pixels land
    one uint8 level (2/255 after the 0.5 std) away from Pillow's."""
    images = [_photo(h, w, i) for i, (h, w) in enumerate(IMAGES)]
    ref = transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=64)(images, return_tensors="pt")
    ours = NaFlexImageProcessor(NaFlexConfig(patch_size=8, max_num_patches=64))(images)
    assert ours["spatial_shapes"].tolist() == ref["spatial_shapes"].tolist()
    diff = (ours["pixel_values"] - ref["pixel_values"].float()).abs()
    assert diff.mean() <= 0.01 and diff.max() <= 0.1


@torch.no_grad()
def test_intermediates_of_a_mixed_naflex_batch_are_its_hidden_states():
    encoder = create_encoder("siglip2-vit-tiny").eval()
    pixels = torch.randn(2, 16, 192)
    inputs = dict(pixel_attention_mask=torch.tensor([[1] * 16, [1] * 6 + [0] * 10]))
    inputs["spatial_shapes"] = torch.tensor([[4, 4], [2, 3]])
    hidden = encoder(pixels, output_hidden_states=True, **inputs).hidden_states
    inter = encoder.forward_intermediates(pixels, output_fmt="NLC", intermediates_only=True, **inputs)
    assert all(torch.equal(a, b) for a, b in zip(inter, hidden[1:], strict=True))
    with pytest.raises(InputError, match="output_fmt='NLC'"):
        encoder.forward_intermediates(pixels, **inputs)
