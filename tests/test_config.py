"""Configs: typed dataclasses, validated on construction, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from vlmzoo.config import Config, config_class, parse_json
from vlmzoo.encoders import TextTransformerConfig, ViTConfig
from vlmzoo.errors import ConfigError
from vlmzoo.models import CLIPConfig


def test_nested_config_round_trips_through_json():
    config = CLIPConfig(
        ViTConfig(width=64, num_heads=4, depth=2, embed_dim=32, pos_embed_resize="none"),
        TextTransformerConfig(width=64, num_heads=4, embed_dim=32),
    )
    again = CLIPConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.vision, ViTConfig)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 100, "num_heads": 12}, "width.*divisible by num_heads"),
        ({"image_size": 225}, "image_size.*divisible by patch_size"),
        ({"depth": 0}, "depth.*positive"),
        ({"patch_size": -16}, "patch_size.*positive"),
        ({"drop_path_rate": 1.5}, "drop_path_rate.*< 1"),
        ({"norm_eps": 0.0}, "norm_eps.*> 0"),
        ({"feature_layer": 13}, "feature_layer.*-13 .. 12"),
        ({"act": "swish"}, "act.*must be one of"),
        ({"depth": 2.5}, "depth.*integer"),
        ({"class_token": False}, "pool.*class_token"),
    ],
)
def test_invalid_vit_config_names_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        ViTConfig(**fields)


def test_unknown_field_in_dict_is_an_error():
    with pytest.raises(ConfigError, match="no field.*'depht'"):
        ViTConfig.from_dict({"depht": 3})


def test_clip_config_requires_matching_embedding_dims():
    with pytest.raises(ConfigError, match="embed_dim=512 != text.embed_dim=256"):
        CLIPConfig(ViTConfig(embed_dim=512), TextTransformerConfig(embed_dim=256))


def test_text_config_rejects_eos_outside_vocabulary():
    with pytest.raises(ConfigError, match="eos_token_id"):
        TextTransformerConfig(vocab_size=100, eos_token_id=100)


# --- the table of config classes and the checked JSON parser ----------------------------------


@pytest.fixture
def local_configs() -> tuple[type[Config], type[Config]]:
    """A part and a holder with a polymorphic field, defined when the test runs (not at import,
    so the config sweep of test_errors.py, which walks every subclass it finds, never sees them)."""

    @dataclasses.dataclass
    class _LocalPartConfig(Config):
        size: int = 1

        def validate(self) -> None:
            self._check_positive("size")

    @dataclasses.dataclass
    class _LocalHolderConfig(Config):
        part: Config = dataclasses.field(default_factory=_LocalPartConfig)

    return _LocalPartConfig, _LocalHolderConfig


def test_config_classes_join_the_table_when_defined(local_configs):
    part, _ = local_configs
    assert config_class("_LocalPartConfig") is part


def test_type_tag_is_read_back_through_the_table(local_configs):
    part, holder_class = local_configs
    holder = holder_class(part(size=3))
    assert holder.to_dict() == {"part": {"_type": "_LocalPartConfig", "size": 3}}
    assert holder_class.from_dict(holder.to_dict()) == holder


def test_unknown_type_tag_calls_the_registered_loaders_then_refuses(monkeypatch):
    calls = []
    monkeypatch.setattr("vlmzoo.config._CLASS_LOADERS", [lambda: calls.append(1)])
    with pytest.raises(ConfigError, match="unknown config class 'NoSuchConfig'"):
        config_class("NoSuchConfig")
    assert calls == [1]


def test_known_type_tag_does_not_call_the_loaders(monkeypatch):
    monkeypatch.setattr("vlmzoo.config._CLASS_LOADERS", [lambda: pytest.fail("loader called")])
    assert config_class("ViTConfig") is ViTConfig


def test_integer_field_beyond_64_bits_is_refused():
    with pytest.raises(ConfigError, match=r"ViTConfig.width: a 101-bit integer; expected at most 64 bits"):
        ViTConfig(width=2**100)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"width": ' + "1" * 5000 + "}", "an integer of 5000 digits"),
        ('{"width": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 100 levels deep"),
        ('{"width": 64, "width": 128}', "the key 'width' appears twice"),
    ],
    ids=["5000-digits", "deep", "duplicate-key"],
)
def test_from_json_refuses_json_that_would_mean_something_else(text, message):
    with pytest.raises(ConfigError, match=rf"ViTConfig.from_json: not valid JSON \({message}"):
        ViTConfig.from_json(text)


def test_parse_json_reads_what_json_dumps_writes_including_nan():
    document = {"loss": [1.5, float("inf")], "seed": 2**64 - 1, "nested": {"a": [[1]]}}
    again = parse_json(json.dumps(document))
    assert again["seed"] == 2**64 - 1 and again["nested"] == {"a": [[1]]}
    assert math.isnan(parse_json("NaN"))
