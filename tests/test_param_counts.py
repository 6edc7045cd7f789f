"""Real-size presets have exactly the peers' parameter counts (everything built on the meta device)."""

from __future__ import annotations

import pytest
import torch

import vlmzoo

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

# name: (image, patch, vision width, layers, embed dim, text width)
SIZES = {
    "clip-vit-b32": (224, 32, 768, 12, 512, 512),
    "clip-vit-b16": (224, 16, 768, 12, 512, 512),
    "clip-vit-l14": (224, 14, 1024, 24, 768, 768),
    "clip-vit-l14-336": (336, 14, 1024, 24, 768, 768),
}
TIMM_NAMES = {
    "clip-vit-b32": "vit_base_patch32_clip_224",
    "clip-vit-b16": "vit_base_patch16_clip_224",
    "clip-vit-l14": "vit_large_patch14_clip_224",
    "clip-vit-l14-336": "vit_large_patch14_clip_336",
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hf_clip_config(name: str):
    image, patch, width, layers, embed, text_width = SIZES[name]
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        image_size=image,
        patch_size=patch,
        projection_dim=embed,
    )
    text = dict(
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=12,
        num_attention_heads=text_width // 64,
    )
    return transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=embed)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_clip_model_preset_matches_transformers_clipmodel(name):
    with torch.device("meta"):
        ours = vlmzoo.create_model(name)
        peer = transformers.CLIPModel(hf_clip_config(name))
    assert count(ours) == count(peer)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_clip_vision_preset_matches_transformers_vision_tower_with_projection(name):
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        peer = transformers.CLIPVisionModelWithProjection(hf_clip_config(name).vision_config)
    assert count(ours) == count(peer)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_clip_vision_preset_matches_timm_tower_less_head_bias(name):
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        peer = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=ours.config.embed_dim)
    # timm's OpenAI towers keep the projection as a Linear *with* a (zero) bias.
    assert count(ours) == count(peer) - ours.config.embed_dim
