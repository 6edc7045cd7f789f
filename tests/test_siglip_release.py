"""SigLIP / SigLIP 2 releases through a fake Hub (tests/fake_hub.py): the shipped declarations
download only config + safetensors and convert the repo's transformers model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import max_abs_diff, randomize_
from fake_hub import FakeHub, fake_hub_fixture  # noqa: F401 (the fake_hub fixture)

from vlmzoo import releases
from vlmzoo.encoders.siglip import SiglipVisionTransformer
from vlmzoo.encoders.siglip2 import Siglip2VisionTransformer
from vlmzoo.models.siglip import SigLIP2Model, SigLIPModel
from vlmzoo.releases.create import create_encoder, create_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4
TOWER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(TOWER, vocab_size=64, max_position_embeddings=10)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()


def push(hub: FakeHub, tmp_path: Path, repo: str, model: torch.nn.Module) -> torch.nn.Module:
    """A google/siglip*-like repo: save_pretrained's files plus files a release must not fetch."""
    folder = tmp_path / "repos" / repo
    model.save_pretrained(folder)
    for name in ("spiece.model", "tokenizer_config.json", "preprocessor_config.json", "README.md"):
        (folder / name).write_bytes(b"not needed " * 20)
    hub.push_folder(repo, folder)
    return model


def tiny_siglip() -> torch.nn.Module:
    config = transformers.SiglipConfig(
        vision_config=dict(TOWER, image_size=32, patch_size=8), text_config=TEXT
    )
    return randomize_(transformers.SiglipModel(config), std=0.1).eval()


def tiny_siglip2() -> torch.nn.Module:
    config = transformers.Siglip2Config(
        vision_config=dict(TOWER, patch_size=4, num_patches=16), text_config=TEXT
    )
    return randomize_(transformers.Siglip2Model(config), std=0.1).eval()


def test_every_shipped_siglip_preset_is_a_google_repo_of_the_right_transformers_class():
    for kind, name, entries in releases.published("siglip*"):
        (release,) = entries
        assert release.repo_id == f"google/{name}"
        assert release.name == ("Siglip2Model" if name.endswith("-naflex") else "SiglipModel")
        assert release.submodule == ("visual" if kind == "encoder" else None)


@torch.no_grad()
def test_pretrained_siglip_model_downloads_only_config_and_weights_and_equals_the_repo(fake_hub, tmp_path):
    repo = "google/siglip-base-patch16-224"
    peer = push(fake_hub, tmp_path, repo, tiny_siglip())
    ours = create_model("siglip-base-patch16-224", pretrained=True).eval()
    assert isinstance(ours, SigLIPModel)
    assert sorted(fake_hub.downloads(repo)) == ["config.json", "model.safetensors"]
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 64, (2, 10))
    ref = peer(input_ids=ids, pixel_values=pixels)
    assert max_abs_diff(ours(pixels, ids).logits_per_image, ref.logits_per_image) <= TOL


@torch.no_grad()
def test_pretrained_siglip_encoder_is_the_vision_tower_of_the_same_repo(fake_hub, tmp_path):
    peer = push(fake_hub, tmp_path, "google/siglip2-so400m-patch14-384", tiny_siglip())
    tower = create_encoder("siglip2-so400m-patch14-384", pretrained=True).eval()
    assert isinstance(tower, SiglipVisionTransformer)
    pixels = torch.randn(2, 3, 32, 32)
    ref = peer.vision_model(pixel_values=pixels).pooler_output
    assert max_abs_diff(tower(pixels).pooled, ref) <= TOL


@torch.no_grad()
def test_pretrained_naflex_model_converts_siglip2_model(fake_hub, tmp_path):
    peer = push(fake_hub, tmp_path, "google/siglip2-base-patch16-naflex", tiny_siglip2())
    ours = create_model("siglip2-base-patch16-naflex", pretrained=True).eval()
    assert isinstance(ours, SigLIP2Model) and isinstance(ours.visual, Siglip2VisionTransformer)
    pixels = torch.randn(2, 20, 48)
    mask = torch.tensor([[1] * 20, [1] * 6 + [0] * 14])
    shapes = torch.tensor([[4, 5], [2, 3]])
    ref = peer.vision_model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
    out = ours.visual(pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
