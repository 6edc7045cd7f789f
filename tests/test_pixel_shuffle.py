"""Pixel-shuffle connectors (Idefics3 / SmolVLM, InternVL): element order, parity, refusals, compile."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.adapters.pixel_shuffle import PixelShuffleConfig, PixelShuffleProjector, pixel_shuffle
from vlmzoo.errors import ConfigError, ConversionError, InputError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")

TOL = 1e-4
IMAGE_ID = 3


# --- the element order -----------------------------------------------------------------------------
def labelled_grid(g: int, c: int) -> torch.Tensor:
    """[1, g·g, c]: token (r, q) of the row-major grid, channel k holds 1000·r + 10·q + k."""
    r, q, k = torch.meshgrid(torch.arange(g), torch.arange(g), torch.arange(c), indexing="ij")
    return (1000 * r + 10 * q + k).reshape(1, g * g, c).float()


@pytest.mark.parametrize("s", [2, 3])
def test_each_output_token_holds_an_s_by_s_block_row_by_row(s):
    g, c = 2 * s, 3
    out = pixel_shuffle(labelled_grid(g, c), s)
    assert out.shape == (1, (g // s) ** 2, c * s * s)
    for i in range(g // s):
        for j in range(g // s):
            for a in range(s):
                for b in range(s):
                    cells = out[0, i * (g // s) + j, (a * s + b) * c : (a * s + b + 1) * c]
                    expected = 1000 * (s * i + a) + 10 * (s * j + b) + torch.arange(c)
                    assert torch.equal(cells, expected.float())


def test_transposed_order_is_the_output_grid_transposed():
    """InternVL's ps_version="v1": output token (i, j) holds block (j, i)."""
    x, m = labelled_grid(6, 2), 3
    v2, v1 = pixel_shuffle(x, 2), pixel_shuffle(x, 2, transposed=True)
    assert torch.equal(v1.reshape(1, m, m, -1), v2.reshape(1, m, m, -1).transpose(1, 2))


# --- parity with transformers -------------------------------------------------------------------------
def hf_connector(family: str, scale: int) -> torch.nn.Module:
    config_class, module = {
        "idefics3": (transformers.Idefics3Config, transformers.models.idefics3.modeling_idefics3),
        "smolvlm": (transformers.SmolVLMConfig, transformers.models.smolvlm.modeling_smolvlm),
    }[family]
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(
        model_type="llama",
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
    )
    config = config_class(vision_config=vision, text_config=text, scale_factor=scale)
    connector = getattr(module, f"{'Idefics3' if family == 'idefics3' else 'SmolVLM'}Connector")(config)
    return randomize_(connector).eval()


@pytest.mark.parametrize(("family", "scale"), [("idefics3", 2), ("smolvlm", 4), ("smolvlm", 3)])
def test_converted_idefics3_and_smolvlm_connectors_give_the_same_features(family, scale):
    hf = hf_connector(family, scale)
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, PixelShuffleProjector)
    assert ours.config.scale_factor == scale and not ours.config.bias
    x = torch.randn(2, (4 * scale) ** 2, 16)
    with torch.no_grad():
        assert max_abs_diff(ours(x), hf(x)) <= TOL


def hf_internvl() -> torch.nn.Module:
    config = transformers.InternVLConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=100,
        ),
    )
    return randomize_(transformers.InternVLModel(config), std=0.1).eval()


def test_converted_internvl_projector_gives_transformers_image_features():
    """InternVLModel.get_image_features: CLS dropped, pixel_shuffle, then the projector."""
    hf = hf_internvl()
    ours = vlmzoo.convert.from_transformers(hf.multi_modal_projector).eval()
    assert ours.config.in_dim == 32 and ours.config.norm and ours.config.depth == 2
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.get_image_features(
            pixels, vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output
        patches = hf.vision_tower(pixel_values=pixels).last_hidden_state[:, 1:]
        got = ours(patches)
    assert got.shape == (2, 4, 48)
    assert max_abs_diff(got, want) <= TOL


def test_an_internvl_activation_other_than_the_one_named_is_refused():
    hf = hf_internvl()
    with pytest.raises(ConversionError, match=r"projector_hidden_act='silu'.*GELUActivation"):
        vlmzoo.convert.connectors.from_hf_internvl_projector(hf.multi_modal_projector, hidden_act="silu")


# --- the original InternVL layout ------------------------------------------------------------------
def original_mlp1(hf_projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """InternVLChatModel's keys (mlp1 = Sequential(LayerNorm, Linear, GELU, Linear)) beside a ViT key."""
    names = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}
    sd = {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in hf_projector.state_dict().items()}
    return sd | {"vision_model.embeddings.class_embedding": torch.zeros(1, 1, 32)}


@pytest.mark.parametrize("ps_version", ["v1", "v2"])
def test_original_internvl_mlp1_converts_with_its_ps_version(ps_version):
    hf = hf_internvl().multi_modal_projector
    ours = vlmzoo.convert.from_original(original_mlp1(hf), "internvl-mlp1", ps_version=ps_version).eval()
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        want = hf(pixel_shuffle(x, 2, transposed=ps_version == "v1"))
        assert max_abs_diff(ours(x), want) <= TOL


def test_original_internvl_mlp1_without_ps_version_is_refused():
    sd = original_mlp1(hf_internvl().multi_modal_projector)
    with pytest.raises(ConversionError, match=r"ps_version=None.*'v1' or 'v2'"):
        vlmzoo.convert.from_original(sd, "internvl-mlp1")


# --- composing with encoders --------------------------------------------------------------------------
def vlm(encoder: str, adapter: str = "pixel-shuffle-linear", **encoder_overrides) -> VisionLanguageModel:
    enc = get_entry(encoder, "encoder").config
    enc = enc.replace(**{k: v for k, v in dict(pool="none", embed_dim=None).items() if hasattr(enc, k)})
    config = VLMConfig(
        encoder=enc.replace(**encoder_overrides),
        adapter=get_entry(adapter, "adapter").config,
        decoder=get_entry("tiny-llama", "decoder").config,
        image_token_id=IMAGE_ID,
    )
    return VisionLanguageModel(config)


@pytest.mark.parametrize("adapter", ["pixel-shuffle-linear", "pixel-shuffle-mlp"])
def test_an_image_costs_a_quarter_of_the_encoder_tokens(adapter):
    model = vlm("siglip-vit-tiny", adapter)  # 4x4 grid
    assert model.tokens_per_image == 4
    assert model.image_features(torch.randn(2, 3, 32, 32)).shape == (2, 4, model.decoder.hidden_size)


def test_an_encoder_keeping_its_cls_token_is_refused_with_the_fix():
    model = vlm("eva-vit-tiny")  # CLS + 4x4
    with pytest.raises(ConfigError, match=r"N=17.*feature_tokens='patch'"):
        model.tokens_per_image  # noqa: B018
    assert vlm("eva-vit-tiny", feature_tokens="patch").tokens_per_image == 4


def test_a_grid_the_scale_factor_does_not_divide_is_refused_with_the_sizes():
    config = get_entry("pixel-shuffle-linear", "adapter").config.replace(
        in_dim=32, out_dim=64, scale_factor=3
    )
    with pytest.raises(ConfigError, match=r"4x4 token grid is not divisible by scale_factor=3.*6 patches"):
        PixelShuffleProjector(config).num_tokens(16)


def test_tokens_of_the_wrong_width_or_count_are_refused():
    adapter = PixelShuffleProjector(PixelShuffleConfig(in_dim=8, out_dim=16))
    with pytest.raises(InputError, match=r"\[n, N, 8\]"):
        adapter(torch.randn(1, 16, 9))
    with pytest.raises(InputError, match=r"N=15"):
        adapter(torch.randn(1, 15, 8))


def test_real_size_presets_have_the_released_shapes():
    smol = vlmzoo.registry.build(get_entry("smolvlm-256m-connector", "adapter").config)
    assert smol.proj[0].weight.shape == (576, 768 * 16) and smol.proj[0].bias is None
    assert smol.num_tokens((512 // 16) ** 2) == 64  # 64 tokens per 512 px tile
    idefics = get_entry("idefics3-8b-connector", "adapter").config
    assert (idefics.shuffled_dim, idefics.out_dim) == (4608, 4096)


def test_the_vlm_forward_with_a_pixel_shuffle_traces_into_one_graph():
    torch._dynamo.reset()
    model = vlm("clip-vit-tiny", "pixel-shuffle-mlp").eval()
    ids = torch.tensor([[1, IMAGE_ID, 10, 11], [1, 10, IMAGE_ID, 12]])
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        want, got = model(x, ids, labels=ids), compiled(x, ids, labels=ids)
    torch._dynamo.reset()
    assert max_abs_diff(got.logits, want.logits) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL
