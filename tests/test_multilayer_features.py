"""Multi-layer features: ``feature_layer`` as a tuple concatenates those hidden states along
channels, as transformers' ``LlavaModel.get_image_features`` with a list-valued
``vision_feature_layer`` (and VipLLaVA); every adapter reads the wider ``out_dim`` unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.adapters.mlp import MLPProjector, MLPProjectorConfig
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.errors import ConfigError
from vlmzoo.models.vlm import VisionLanguageModel

transformers = pytest.importorskip("transformers")

LAYERS = [-1, 0, -3]


def hf_llava(strategy: str) -> torch.nn.Module:
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=299, vision_feature_layer=LAYERS,
        vision_feature_select_strategy=strategy,
    )  # fmt: skip
    return randomize_(transformers.LlavaForConditionalGeneration(config), std=0.1).eval()


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_listed_layers_give_llavas_image_features(strategy):
    hf = hf_llava(strategy)
    tower = vlmzoo.convert.from_transformers(hf.model.vision_tower)
    config = tower.config.replace(
        feature_layer=tuple(LAYERS), feature_tokens="patch" if strategy == "default" else "all",
        feature_norm=False, pool="none", embed_dim=None,
    )  # fmt: skip
    encoder = VisionTransformer(config).eval()
    encoder.load_state_dict({k: v for k, v in tower.state_dict().items() if not k.startswith("head.")})
    projector = hf.model.multi_modal_projector
    ours = MLPProjector(MLPProjectorConfig(in_dim=encoder.out_dim, out_dim=64, act="gelu")).eval()
    ours.load_state_dict(
        {
            f"proj.{i}.{k}": v
            for i, layer in ((0, projector.linear_1), (2, projector.linear_2))
            for k, v in layer.state_dict().items()
        }
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = torch.stack(hf.model.get_image_features(
            pixel_values=x, vision_feature_layer=LAYERS, vision_feature_select_strategy=strategy
        ).pooler_output)  # fmt: skip
        got = ours(encoder(x).tokens)
    assert encoder.out_dim == projector.linear_1.in_features == 3 * 64
    assert max_abs_diff(got, want) <= 1e-4


def test_layers_are_concatenated_in_the_order_given_each_normed_and_cropped():
    encoder = vlmzoo.create_encoder(
        "dinov2-vit-tiny-reg4", depth=3, feature_layer=(2, -1, 2), feature_norm=True, feature_tokens="patch"
    ).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out = encoder(x, output_hidden_states=True)
    h, p = out.hidden_states, encoder.config.num_prefix_tokens
    want = torch.cat([encoder.norm(h[i])[:, p:] for i in (2, 3, 2)], dim=-1)
    assert encoder.out_dim == 3 * 64 and encoder.num_tokens() == out.tokens.shape[1] == 16
    assert torch.equal(out.tokens, want)


def test_blocks_after_the_deepest_listed_layer_do_not_run_without_pooling():
    encoder = vlmzoo.create_encoder(
        "clip-vit-tiny", depth=3, feature_layer=(1, 0), pool="none", embed_dim=None
    )
    calls = []
    for block in encoder.blocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    encoder(torch.randn(1, 3, 32, 32))
    assert len(calls) == 1


def test_a_vlm_sizes_its_projector_from_the_concatenated_width():
    config = vlmzoo.registry.get_entry("tiny-llava", "model").config
    config = config.replace(encoder=config.encoder.replace(feature_layer=(-2, -1)))
    model = VisionLanguageModel(config).eval()
    assert model.adapter.config.in_dim == 2 * config.encoder.width
    with torch.no_grad():
        features = model.image_features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 16, model.adapter.config.out_dim)


def test_layer_tuples_survive_the_json_round_trip():
    config = vlmzoo.create_encoder("clip-vit-tiny", feature_layer=(-2, 0)).config
    back = ViTConfig.from_json(config.to_json())
    assert back == config and back.feature_layer == (-2, 0)
    assert ViTConfig.from_json(config.replace(feature_layer=-2).to_json()).feature_layer == -2


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ((), r"ViTConfig.feature_layer=\(\): needs at least one layer"),
        (
            (0, 3),
            r"ViTConfig.feature_layer=\(0, 3\): every entry must index hidden_states \(-3 \.\. 2\); \[3\] do not",
        ),
        ((-4, 1), r"\[-4\] do not"),
        ((True, 1), r"ViTConfig.feature_layer"),
        (("1",), r"ViTConfig.feature_layer"),
    ],
)
def test_bad_layer_tuples_are_refused_by_name(layers, match):
    with pytest.raises(ConfigError, match=match):
        vlmzoo.create_encoder("clip-vit-tiny", feature_layer=layers)
