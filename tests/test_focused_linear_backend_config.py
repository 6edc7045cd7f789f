"""The kernel behind focused linear attention is a config field: a config file chooses it."""

import json
from typing import get_args

import pytest
import torch

import vlmzoo
import vlmzoo.layers.focused_linear_window_attention as flwa
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConfigError
from vlmzoo.kernels import BACKENDS
from vlmzoo.layers.block_attention import FocusedLinearBackend

FLATTEN_ENCODERS = ["flatten-swin-tiny", "flatten-pvt-tiny"]


def _tiny_vit_la() -> ViTConfig:
    return ViTConfig(
        image_size=32, patch_size=8, width=32, depth=2, num_heads=2, block_attention=("focused_linear",) * 2
    )


def _configs():
    yield from (vlmzoo.registry.get_entry(name, "encoder").config for name in FLATTEN_ENCODERS)
    yield _tiny_vit_la()


def test_the_config_choices_are_the_kernel_backends_and_auto():
    assert get_args(FocusedLinearBackend) == ("auto", *BACKENDS)


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: type(c).__name__)
def test_a_config_file_naming_a_backend_builds_layers_that_call_it(config, tmp_path, monkeypatch):
    data = config.to_dict()
    data["focused_linear_backend"] = "reference"
    (tmp_path / "config.json").write_text(json.dumps(data))
    reloaded = type(config).from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert reloaded.focused_linear_backend == "reference"

    calls = []
    real = flwa.focused_linear_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["backend"])
        return real(*args, **kwargs)

    monkeypatch.setattr(flwa, "focused_linear_attention", spy)
    model = vlmzoo.registry.build(reloaded).eval()
    size = reloaded.image_size if isinstance(reloaded.image_size, int) else reloaded.image_size[0]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert calls and set(calls) == {"reference"}


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: type(c).__name__)
def test_the_backend_field_round_trips_through_json(config):
    chosen = type(config).from_dict(config.to_dict() | {"focused_linear_backend": "torch"})
    assert type(config).from_dict(json.loads(json.dumps(chosen.to_dict()))).focused_linear_backend == "torch"


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: type(c).__name__)
def test_an_unknown_backend_is_refused_with_the_choices(config):
    data = config.to_dict() | {"focused_linear_backend": "cuda"}
    with pytest.raises(ConfigError, match="focused_linear_backend.*'auto', 'reference', 'torch'"):
        type(config).from_dict(data)
