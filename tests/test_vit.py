"""The ViT encoder: the VisionOutput contract, feature selection, resizing, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff

import vlmzoo
from vlmzoo.errors import InputError
from vlmzoo.layers import resize_pos_embed


def tiny(**overrides):
    return vlmzoo.create_encoder("clip-vit-tiny", **overrides).eval()


def test_output_holds_tokens_grid_and_every_hidden_state():
    out = tiny()(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert out.tokens.shape == (2, 16, 64)  # 4x4 patches, CLS dropped by default
    assert out.grid == (4, 4)
    assert len(out.hidden_states) == 3  # embeddings + 2 blocks
    assert all(h.shape == (2, 17, 64) for h in out.hidden_states)
    assert out.pooled.shape == (2, 64) and out.embeds.shape == (2, 32)


def test_feature_layer_and_cls_selection_are_config_options():
    encoder = tiny(feature_layer=-2, feature_tokens="all")
    out = encoder(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert torch.equal(out.tokens, out.hidden_states[-2])
    assert encoder.num_tokens() == out.tokens.shape[1] == 17


def test_feature_norm_applies_the_final_norm_to_the_selected_layer():
    encoder = tiny(feature_norm=True)
    out = encoder(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert max_abs_diff(out.tokens, encoder.norm(out.hidden_states[-1])[:, 1:]) == 0


def test_blocks_after_the_feature_layer_do_not_run_without_pooling():
    encoder = tiny(feature_layer=-2, pool="none", embed_dim=None)
    calls = []
    encoder.blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    encoder(torch.randn(1, 3, 32, 32))
    assert calls == []


def test_gradients_reach_the_encoder_weights():
    """No no_grad inside the encoder: a trainable tower gets gradients (LLaVA users could not unfreeze a no_grad tower)."""
    encoder = tiny().train()
    encoder(torch.randn(2, 3, 32, 32)).tokens.sum().backward()
    assert encoder.patch_embed.proj.weight.grad is not None
    assert encoder.blocks[-1].mlp.fc2.weight.grad is not None


@pytest.mark.parametrize("size", [(48, 32), (16, 64)])
def test_non_square_inputs_resize_position_embeddings(size):
    out = tiny()(torch.randn(1, 3, *size))
    assert out.grid == (size[0] // 8, size[1] // 8)
    assert out.tokens.shape[1] == (size[0] // 8) * (size[1] // 8)


def test_resize_modes_match_the_peers_formulas():
    """bicubic = transformers (no antialias), bicubic_antialias = timm's resample_abs_pos_embed."""
    timm_pos = pytest.importorskip("timm.layers.pos_embed")
    pos = torch.randn(1, 1 + 6 * 6, 8)
    ours = resize_pos_embed(pos, (6, 6), (3, 5), 1, "bicubic_antialias")
    ref = timm_pos.resample_abs_pos_embed(pos, [3, 5], [6, 6], num_prefix_tokens=1)
    assert max_abs_diff(ours, ref) <= 1e-6
    plain = resize_pos_embed(pos, (6, 6), (3, 5), 1, "bicubic")
    grid = torch.nn.functional.interpolate(
        pos[:, 1:].reshape(1, 6, 6, 8).permute(0, 3, 1, 2), size=(3, 5), mode="bicubic", align_corners=False
    )
    assert max_abs_diff(plain[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 15, 8)) <= 1e-6
    assert torch.equal(plain[:, :1], pos[:, :1])


def test_offset_mode_reproduces_dinov2_scale_factor_quirk():
    pos = torch.randn(1, 1 + 37 * 37, 4)
    ours = resize_pos_embed(pos, (37, 37), (16, 16), 1, "bicubic_offset")
    grid = torch.nn.functional.interpolate(
        pos[:, 1:].reshape(1, 37, 37, 4).permute(0, 3, 1, 2),
        scale_factor=(16.1 / 37, 16.1 / 37),
        mode="bicubic",
    )
    assert max_abs_diff(ours[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 256, 4)) <= 1e-6


def test_wrong_channel_count_is_named():
    with pytest.raises(InputError, match="4 channels but the encoder expects 3"):
        tiny()(torch.randn(1, 4, 32, 32))


def test_channels_last_input_gets_a_hint():
    with pytest.raises(InputError, match="channels-last"):
        tiny()(torch.randn(1, 32, 32, 3))


def test_size_not_multiple_of_patch_is_named():
    with pytest.raises(InputError, match="30x32 is not a multiple of the patch size 8"):
        tiny()(torch.randn(1, 3, 30, 32))


def test_other_size_with_resizing_off_is_an_error():
    with pytest.raises(InputError, match="pos_embed_resize='none'"):
        tiny(pos_embed_resize="none")(torch.randn(1, 3, 48, 48))


def test_three_dimensional_input_is_rejected():
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        tiny()(torch.randn(3, 32, 32))


def test_integer_pixels_are_rejected():
    with pytest.raises(InputError, match="floating-point"):
        tiny()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_empty_batch_is_rejected():
    with pytest.raises(InputError, match="empty batch"):
        tiny()(torch.randn(0, 3, 32, 32))


# --- the helpers every encoder shares (layers/patch_embed.py image_hw, layers/drop_path.py) -----
ENCODERS_WITH_SIZES = ["clip-vit-tiny", "sam-vit-tiny", "swin-tiny", "pvt-tiny"]


@pytest.mark.parametrize("name", ENCODERS_WITH_SIZES)
def test_num_tokens_reads_an_int_a_pair_or_none_alike(name):
    encoder = vlmzoo.create_encoder(name)
    size = encoder.config.image_size
    assert encoder.num_tokens() == encoder.num_tokens(size) == encoder.num_tokens((size, size))
    assert encoder.num_tokens([size, 2 * size]) == encoder.num_tokens((size, 2 * size))


@pytest.mark.parametrize("name", ENCODERS_WITH_SIZES)
@pytest.mark.parametrize("bad", [0, -32, True, 32.0, (32,), (32, 32, 3), (32, 0), "32"])
def test_num_tokens_refuses_a_size_that_is_not_positive_ints(name, bad):
    with pytest.raises(InputError, match="image_size"):
        vlmzoo.create_encoder(name).num_tokens(bad)


def test_drop_path_rates_rise_linearly_from_zero_to_the_rate():
    from vlmzoo.layers import drop_path_rates

    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, 1) == [0.0]


@pytest.mark.parametrize("name", ENCODERS_WITH_SIZES)
def test_every_encoder_drops_paths_by_the_same_rule(name):
    from vlmzoo.layers import DropPath, drop_path_rates

    encoder = vlmzoo.create_encoder(name, drop_path_rate=0.2)
    rates = [
        m.p if isinstance(m, DropPath) else 0.0
        for m in (b.drop_path for b in encoder.modules() if hasattr(b, "drop_path"))
    ]
    assert rates == pytest.approx(drop_path_rates(0.2, len(rates))) and rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("name", ENCODERS_WITH_SIZES)
@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_a_drop_path_rate_outside_0_1_is_refused_by_name(name, rate):
    config = vlmzoo.create_encoder(name).config
    with pytest.raises(vlmzoo.ConfigError, match=rf"{type(config).__name__}\.drop_path_rate=.*< 1"):
        config.replace(drop_path_rate=rate)
