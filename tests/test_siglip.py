"""SigLIP: towers, logits and sigmoid loss equal transformers' SiglipModel; presets have its sizes."""

from __future__ import annotations

import math

import pytest
import torch

from vlmzoo.convert import from_transformers
from vlmzoo.encoders.siglip import SiglipVisionConfig, SiglipVisionTransformer
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.siglip import SIGLIP_PRESETS, SigLIPConfig, SigLIPModel, sigmoid_loss
from vlmzoo.registry import create_encoder, create_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=64,
    max_position_embeddings=10,
    bos_token_id=None,
    eos_token_id=2,
    pad_token_id=1,
)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random (not zero / one) values everywhere, so no parameter can be silently skipped."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def _hf_vision():
    return _randomised(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)))


def _hf_text():
    return _randomised(transformers.SiglipTextModel(transformers.SiglipTextConfig(**TEXT)))


def _hf_model():
    config = transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    return _randomised(transformers.SiglipModel(config))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@torch.no_grad()
def test_vision_pooled_output_and_tokens_match_transformers_at_the_native_size():
    hf = _hf_vision()
    ours = from_transformers(hf).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ref = hf(pixel_values=pixels, output_hidden_states=True)
    out = ours(pixels)
    assert _diff(out.pooled, ref.pooler_output) <= TOL
    assert out.embeds is None  # no projection head
    assert _diff(out.tokens, ref.hidden_states[-1]) <= TOL  # the last block, all patch tokens
    assert _diff(ours.norm(out.tokens), ref.last_hidden_state) <= TOL  # post_layernorm


@torch.no_grad()
def test_vision_at_another_size_matches_transformers_interpolate_pos_encoding():
    hf = _hf_vision()
    ours = from_transformers(hf).eval()
    pixels = torch.randn(2, 3, 48, 64)
    ref = hf(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
    out = ours(pixels)
    assert out.grid == (6, 8)
    assert _diff(out.pooled, ref.pooler_output) <= TOL
    assert _diff(out.tokens, ref.hidden_states[-1]) <= TOL


def test_vlm_features_are_every_patch_token_without_cls():
    encoder = create_encoder("siglip-vit-tiny")
    for size in [(32, 32), (48, 64)]:
        h, w = size
        expected = (h // 8) * (w // 8)
        assert encoder.num_tokens(size) == expected
        assert encoder(torch.randn(1, 3, h, w)).tokens.shape == (1, expected, 32)


@torch.no_grad()
def test_text_pooled_output_matches_transformers_with_and_without_a_mask():
    hf = _hf_text()
    ours = from_transformers(hf).eval()
    ids = torch.randint(0, 64, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    for attention_mask in (None, mask):
        ref = hf(input_ids=ids, attention_mask=attention_mask)
        out = ours(ids, attention_mask)
        assert _diff(out.embeds, ref.pooler_output) <= TOL
        assert _diff(out.tokens, ref.last_hidden_state) <= TOL


@torch.no_grad()
def test_siglip_model_logits_and_loss_match_transformers():
    hf = _hf_model()
    ours = from_transformers(hf).eval()
    assert isinstance(ours, SigLIPModel)
    pixels, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 64, (4, 10))
    ref = hf(input_ids=ids, pixel_values=pixels, return_loss=True)
    out = ours(pixels, ids, return_loss=True)
    assert _diff(out.logits_per_image, ref.logits_per_image) <= TOL
    assert _diff(out.logits_per_text, ref.logits_per_text) <= TOL
    assert _diff(out.image_embeds, ref.image_embeds) <= TOL
    assert _diff(out.text_embeds, ref.text_embeds) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


def test_sigmoid_loss_is_equation_1_of_the_paper():
    """-(1/|B|) sum_i sum_j log(1 / (1 + exp(z_ij (-t x_i.y_j - b)))), z = +1 iff i == j."""
    torch.manual_seed(0)
    logits = 5 * torch.randn(5, 5, dtype=torch.float64)
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1.0 / (1.0 + math.exp(-z * logits[i, j].item())))
    assert abs(sigmoid_loss(logits).item() - (-total / n)) <= 1e-9


def test_sigmoid_loss_refuses_non_square_logits():
    with pytest.raises(InputError, match="square"):
        sigmoid_loss(torch.zeros(2, 3))


def test_logit_scale_and_bias_start_at_the_papers_log_10_and_minus_10():
    model = create_model("siglip-tiny")
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    assert model.logit_bias.item() == -10.0


def test_a_tiny_model_trains_one_step_with_finite_gradients():
    model = create_model("siglip-tiny")
    out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2, 16)), return_loss=True)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_refuses_a_cls_token_and_mismatched_embedding_widths():
    with pytest.raises(ConfigError, match=r"SiglipVisionConfig\.class_token"):
        SiglipVisionConfig(class_token=True)
    tiny = SIGLIP_PRESETS["siglip-tiny"]
    with pytest.raises(ConfigError, match=r"SigLIPConfig\.vision"):
        tiny.replace(text=tiny.text.replace(embed_dim=16))


def test_config_round_trips_through_json():
    config = SIGLIP_PRESETS["siglip-tiny"]
    assert SigLIPConfig.from_json(config.to_json()) == config
    assert isinstance(SigLIPConfig.from_json(config.to_json()).vision, SiglipVisionConfig)


def test_so400m_at_384_keeps_transformers_27x27_grid():
    hf = transformers.SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=32, num_attention_heads=4)
    from vlmzoo.convert.siglip import vision_config_from_hf

    assert vision_config_from_hf(hf).grid == (27, 27)
    assert SIGLIP_PRESETS["siglip-so400m-patch14-384"].vision.grid == (27, 27)


# Sizes of the google/siglip-* releases (transformers' siglip/convert_siglip_to_hf.py).
HF_SIZES = {
    "siglip-base-patch16-224": (224, 16, 768, 12, 12, 3072),
    "siglip-base-patch16-384": (384, 16, 768, 12, 12, 3072),
    "siglip-large-patch16-256": (256, 16, 1024, 24, 16, 4096),
    "siglip-large-patch16-384": (384, 16, 1024, 24, 16, 4096),
    "siglip-so400m-patch14-384": (384, 14, 1152, 27, 16, 4304),
}


@pytest.mark.parametrize("name", sorted(HF_SIZES))
def test_preset_parameter_count_equals_transformers_siglip_model(name):
    image, patch, width, depth, heads, mlp = HF_SIZES[name]
    tower = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp)
    config = transformers.SiglipConfig(
        vision_config=dict(image_size=image, patch_size=patch, **tower),
        text_config=dict(vocab_size=32000, max_position_embeddings=64, **tower),
    )
    with torch.device("meta"):
        hf = transformers.SiglipModel(config)
        ours = SigLIPModel(SIGLIP_PRESETS[name])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_vision_encoder_without_head_has_no_pooled_output():
    encoder = SiglipVisionTransformer(create_encoder("siglip-vit-tiny").config.replace(map_head=False))
    out = encoder(torch.randn(1, 3, 32, 32))
    assert out.pooled is None and out.tokens.shape == (1, 16, 32)
