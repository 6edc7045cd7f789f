"""Configs: typed dataclasses, validated on construction, JSON round trip."""

from __future__ import annotations

import pytest

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
