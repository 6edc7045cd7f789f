"""Donut's and Nougat's Swin encoder: transformers' DonutSwinModel and donut-python's timm layout.

Random small configs, float32, max abs diff <= 1e-4. The tiny preset ``donut-swin-tiny`` has a
non-square (H, W) = (192, 128) canvas: stage maps 48x32, 24x16, 12x8, 6x4, each holding several
windows of 2 and shifted blocks, so every stage exercises the shift mask on a non-square map.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.convert.swin import (
    swin_config_from_donut_hf,
    swin_state_dict_from_donut_hf,
    swin_state_dict_from_donut_original,
)
from vlmzoo.encoders.swin import SwinConfig, SwinTransformer
from vlmzoo.errors import ConfigError, ConversionError, InputError
from vlmzoo.registry import get_entry

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4
TINY = "donut-swin-tiny"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def donut_swin_config(config: SwinConfig, **overrides) -> transformers.DonutSwinConfig:
    """transformers' DonutSwinConfig with the sizes of a vlmzoo preset."""
    return transformers.DonutSwinConfig(
        image_size=list(config.native_size),
        patch_size=config.patch_size,
        embed_dim=config.width,
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_size=config.window_size,
        **overrides,
    )


# --- presets --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "canvas", "window", "grid"),
    [("donut-base-encoder", (2560, 1920), 10, (80, 60)), ("nougat-encoder", (896, 672), 7, (28, 21))],
)
def test_presets_have_the_published_canvas_window_and_token_grid(name, canvas, window, grid):
    """naver-clova-ix/donut-base: input_size [2560, 1920], window 10 -> 80x60 = 4,800 tokens;
    Nougat (config/train_nougat.yaml): [896, 672], window 7 -> 28x21 = 588 tokens; width 1024."""
    config = get_entry(name, "encoder").config
    assert (config.native_size, config.window_size, config.final_norm) == (canvas, window, False)
    assert (config.width, config.depths, config.num_heads) == (128, (2, 2, 14, 2), (4, 8, 16, 32))
    assert config.stage_grids()[-1] == grid
    with torch.device("meta"):
        encoder = vlmzoo.create_encoder(name)
    assert encoder.num_tokens() == grid[0] * grid[1] and encoder.out_dim == 1024


@pytest.mark.parametrize("name", ["donut-base-encoder", "nougat-encoder", TINY])
def test_presets_have_the_parameter_count_of_donut_swin_model(name):
    config = get_entry(name, "encoder").config
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        peer = transformers.DonutSwinModel(donut_swin_config(config))
    assert count(ours) == count(peer)


@pytest.mark.parametrize("name", ["donut-base-encoder", "nougat-encoder"])
def test_hub_encoder_configs_convert_to_the_presets(name):
    """The ``encoder`` of naver-clova-ix/donut-base's and facebook/nougat-*'s config.json: DonutSwinConfig's
    defaults (drop_path_rate 0.1, layer_norm_eps 1e-5, mlp_ratio 4, qkv_bias) with the canvas and window."""
    preset = get_entry(name, "encoder").config
    assert swin_config_from_donut_hf(donut_swin_config(preset)) == preset


def test_image_size_takes_an_int_or_an_h_w_pair_and_round_trips_through_json():
    config = get_entry(TINY, "encoder").config
    assert SwinConfig.from_json(config.to_json()) == config and config.image_size == (192, 128)
    assert SwinConfig(image_size=64).native_size == (64, 64)
    with pytest.raises(
        ConfigError, match=r"image_size=\(190, 128\): every side must be divisible by patch_size=4"
    ):
        config.replace(image_size=(190, 128))
    with pytest.raises(ConfigError, match="image_size"):
        config.replace(image_size=(192, 0))


def test_windows_clamp_to_the_shorter_native_side_as_the_original_does():
    """(64, 32) with window 3: maps 16x8, 8x4, 4x2, 2x1. The shorter side decides (timm 0.5.4's and
    microsoft/Swin-Transformer's ``min(input_resolution) <= window_size``): stage 2 (4x2) gets 2x2
    windows and stage 3 (2x1) 1x1, neither shifted, each with the bias table of its clamped window
    (what the original saves), not timm >= 0.9's per-axis (3, 2) / (2, 1)."""
    encoder = SwinTransformer(
        SwinConfig(image_size=(64, 32), width=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), window_size=3)
    )
    attn = [[block.attn for block in stage.blocks] for stage in encoder.layers]
    assert [[a.window_size for a in stage] for stage in attn] == [[3, 3], [3, 3], [2, 2], [1, 1]]
    assert [[a.shift_size for a in stage] for stage in attn] == [[0, 1], [0, 1], [0, 0], [0, 0]]
    assert [stage[0].relative_position_bias_table.shape[0] for stage in attn] == [25, 25, 9, 1]


# --- parity with transformers' DonutSwinModel ---------------------------------------------------
@pytest.fixture(scope="module")
def hf_donut():
    torch.manual_seed(0)
    config = donut_swin_config(get_entry(TINY, "encoder").config, drop_path_rate=0.0)
    return randomize_(transformers.DonutSwinModel(config)).eval()


@pytest.mark.parametrize(
    "size", [(192, 128), (200, 136), (128, 192)], ids=["native", "padded-every-stage", "landscape"]
)
def test_donut_swin_matches_transformers(hf_donut, size):
    """(200, 136): maps 50x34 -> 25x17 -> 13x9 -> 7x5, so windows of 2 pad (zeros, unmasked) and
    shift on every stage and the odd maps pad before merging. Per stage, the outputs before patch
    merging (DonutSwinEncoder's ``output_hidden_states_before_downsampling``)."""
    ours = vlmzoo.convert.from_transformers(hf_donut).eval()
    assert ours.config == get_entry(TINY, "encoder").config.replace(pool="mean")  # the peer pools
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf_donut(pixel_values=x)
        embeddings, grid = hf_donut.embeddings(x)
        stages = hf_donut.encoder(
            embeddings, grid, output_hidden_states=True, output_hidden_states_before_downsampling=True
        ).hidden_states
        out = ours(x, output_hidden_states=True)
    assert out.grid == ((size[0] // 4 + 7) // 8, (size[1] // 4 + 7) // 8)
    assert out.tokens.shape[1] == ours.num_tokens(size)
    assert max_abs_diff(out.tokens, ref.last_hidden_state) <= TOL
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
    assert len(out.hidden_states) == len(stages) == 5
    for got, want in zip(out.hidden_states, stages, strict=True):
        assert max_abs_diff(got, want) <= TOL


def test_donut_swin_keys_are_query_key_value_and_no_final_layernorm(hf_donut):
    keys = set(hf_donut.state_dict())
    block = "encoder.layers.0.blocks.1.attention.self."
    assert {f"{block}{p}.weight" for p in ("query", "key", "value")} <= keys
    assert not any(k.startswith("layernorm.") for k in keys)
    ours = swin_state_dict_from_donut_hf(hf_donut.state_dict())
    expected = get_entry(TINY, "encoder").config
    assert ours.keys() == SwinTransformer(expected).state_dict().keys()
    q, k, v = (hf_donut.state_dict()[f"{block}{p}.weight"] for p in ("query", "key", "value"))
    assert torch.equal(ours["layers.0.blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))


def test_pixels_not_a_multiple_of_the_patch_size_are_an_input_error():
    """transformers pads such pixels bottom/right, the originals assert the exact canvas; vlmzoo
    refuses them with the size to resize or pad to."""
    encoder = vlmzoo.create_encoder(TINY)
    with pytest.raises(InputError, match=r"image size 190x128 is not a multiple of the patch size 4"):
        encoder(torch.randn(1, 3, 190, 128))


def test_donut_swin_converter_refuses_a_canvas_the_two_clamps_disagree_on():
    """(64, 48) with window 2: the last stage's 2x2 map equals the window. transformers keeps
    shifting it until a small input has been seen; the original never does."""
    config = donut_swin_config(get_entry(TINY, "encoder").config.replace(image_size=(64, 48)))
    with pytest.raises(ConversionError, match=r"stage 3's native 2x2 map is not larger than window_size 2"):
        swin_config_from_donut_hf(config)
    with pytest.raises(ConversionError, match="dropout"):
        swin_config_from_donut_hf(
            donut_swin_config(get_entry(TINY, "encoder").config, hidden_dropout_prob=0.1)
        )


# --- donut-python's layout (timm 0.5.4 SwinTransformer, merging at the end of each stage) --------
@pytest.fixture(scope="module")
def timm_donut():
    """timm >= 0.9's SwinTransformer with the tiny preset's sizes: at a native canvas where no window
    is clamped or padded it computes what timm 0.5.4 does, with the merging moved to the next stage."""
    torch.manual_seed(0)
    config = get_entry(TINY, "encoder").config
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=config.native_size,
        window_size=config.window_size,
        embed_dim=config.width,
        depths=config.depths,
        num_heads=config.num_heads,
        num_classes=0,
    )
    return randomize_(model).eval()


def donut_python_checkpoint(model) -> dict[str, torch.Tensor]:
    """The state dict donut-python saves, built from a timm >= 0.9 model: ``encoder.model.`` keys,
    ``layers.{s}.downsample`` at the end of stage s, the persistent ``relative_position_index`` /
    ``attn_mask`` buffers of timm 0.5.4, the unused final ``norm``, and a decoder key."""
    sd = {}
    for key, value in model.state_dict().items():
        key = re.sub(
            r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key
        )
        sd[f"encoder.model.{key}"] = value
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage.blocks):
            sd[f"encoder.model.layers.{s}.blocks.{b}.attn.relative_position_index"] = (
                block.attn.relative_position_index
            )
            if block.attn_mask is not None:
                sd[f"encoder.model.layers.{s}.blocks.{b}.attn_mask"] = block.attn_mask
    sd["decoder.model.lm_head.weight"] = torch.zeros(4, 8)
    return sd


def test_donut_python_layout_matches_its_swin_encoder(timm_donut):
    """donut-python's SwinEncoder.forward is patch_embed -> pos_drop -> layers (no final norm)."""
    sd = donut_python_checkpoint(timm_donut)
    assert "encoder.model.layers.0.downsample.reduction.weight" in sd and "encoder.model.norm.weight" in sd
    ours = vlmzoo.convert.from_original(sd, "donut-swin", image_size=(192, 128)).eval()
    assert ours.config == get_entry(TINY, "encoder").config.replace(drop_path_rate=0.1)
    x = torch.randn(2, 3, 192, 128)
    with torch.no_grad():
        want = timm_donut.layers(timm_donut.patch_embed(x)).flatten(1, 2)
        assert max_abs_diff(ours(x).tokens, want) <= TOL
    assert swin_state_dict_from_donut_original(sd).keys() == ours.state_dict().keys()


def test_donut_python_layout_needs_the_canvas_and_checks_it_against_attn_mask(timm_donut):
    sd = donut_python_checkpoint(timm_donut)
    with pytest.raises(ConversionError, match=r"pass image_size=\(H, W\)"):
        vlmzoo.convert.from_original(sd, "donut-swin")
    with pytest.raises(ConversionError, match=r"attn_mask has shape \[384, 4, 4\].*\[64, 4, 4\]"):
        vlmzoo.convert.from_original(sd, "donut-swin", image_size=(64, 64))


def test_donut_python_layout_refuses_timm_09_keys_and_absolute_position_embeddings(timm_donut):
    with pytest.raises(ConversionError, match="timm >= 0.9's layout"):
        swin_state_dict_from_donut_original(timm_donut.state_dict())
    sd = donut_python_checkpoint(timm_donut) | {"encoder.model.absolute_pos_embed": torch.zeros(1, 1536, 16)}
    with pytest.raises(ConversionError, match="absolute position embeddings"):
        swin_state_dict_from_donut_original(sd)


def test_timm_swin_converts_at_a_non_square_native_size(timm_donut):
    """No stage map has a side <= the window, so timm's per-axis clamp never differs from ours."""
    ours = vlmzoo.convert.from_timm(timm_donut).eval()
    assert ours.config.image_size == (192, 128) and ours.config.final_norm
    x = torch.randn(1, 3, 192, 128)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, timm_donut.forward_features(x).flatten(1, 2)) <= TOL
