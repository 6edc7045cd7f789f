"""vlmzoo.save / vlmzoo.load: safetensors + config.json, bit-exact, atomic, with clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import vlmzoo
from vlmzoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict
from vlmzoo.errors import CheckpointError, UnknownModelError


@pytest.fixture
def clip():
    return vlmzoo.create_model("clip-tiny").eval()


def inputs():
    return torch.randn(2, 3, 32, 32), torch.randint(0, 999, (2, 16))


def test_save_then_load_reproduces_outputs_bit_for_bit(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "ckpt")
    loaded = vlmzoo.load(tmp_path / "ckpt").eval()
    assert type(loaded) is type(clip) and loaded.config == clip.config
    x, ids = inputs()
    with torch.no_grad():
        a, b = clip(x, ids), loaded(x, ids)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    for k, v in clip.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_checkpoint_is_config_json_plus_safetensors(tmp_path, clip):
    vlmzoo.save(clip, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert document["architecture"] == "CLIPModel" and document["format"] == "vlmzoo"


def test_save_keeps_a_reduced_precision_dtype(tmp_path):
    encoder = vlmzoo.create_encoder("clip-vit-tiny").to(torch.bfloat16)
    vlmzoo.save(encoder, tmp_path)
    assert vlmzoo.load(tmp_path).pos_embed.dtype == torch.bfloat16


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, clip, monkeypatch):
    vlmzoo.save(clip, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = vlmzoo.create_model("clip-tiny")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        vlmzoo.save(other, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either
    vlmzoo.load(tmp_path)


def test_truncated_weights_file_is_reported(tmp_path, clip):
    vlmzoo.save(clip, tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        vlmzoo.load(tmp_path)


def test_weights_from_another_save_are_detected(tmp_path, clip):
    vlmzoo.save(clip, tmp_path / "a")
    vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="different saves"):
        vlmzoo.load(tmp_path / "a")


def test_weights_of_another_shape_are_listed(tmp_path):
    vlmzoo.save(vlmzoo.create_encoder("clip-vit-tiny"), tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    document["config"]["depth"] = 3
    document.pop("config_sha256")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        vlmzoo.load(tmp_path)


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a vlmzoo checkpoint directory"):
        vlmzoo.load(tmp_path)


def test_foreign_config_json_is_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="not a vlmzoo config"):
        vlmzoo.load(tmp_path)


def test_unknown_architecture_in_config_is_refused(tmp_path, clip):
    vlmzoo.save(clip, tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    document["architecture"] = "os.system"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(UnknownModelError, match="unknown architecture 'os.system'"):
        vlmzoo.load(tmp_path)


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys():
    encoder = vlmzoo.create_encoder("clip-vit-tiny")
    state = encoder.state_dict()
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["pos_embed"] = torch.zeros(1, 5, 64)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(encoder, state)
    message = str(err.value)
    assert "1 missing keys: norm.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "pos_embed: checkpoint (1, 5, 64) vs model (1, 17, 64)" in message
