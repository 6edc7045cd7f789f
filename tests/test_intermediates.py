"""forward_intermediates: every encoder returns block/stage outputs as timm 1.0.31 does.

Parity: timm's own ``forward_intermediates`` on the same random weights (CLIP-style ViT, DINOv2
with registers, SAM, Swin), transformers' ``hidden_states`` where timm has no such model (EVA
through BLIP-2's vision model, PVT v1); and, for every tiny encoder, agreement with the
encoder's own ``hidden_states``.
"""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from conftest import TINY_ENCODERS, max_abs_diff, randomize_
from packaging.version import Version

import vlmzoo
from vlmzoo.encoders.base import take_indices
from vlmzoo.encoders.vit import VisionTransformer
from vlmzoo.errors import ConfigError

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
# (indices, norm, stop_early): the cases timm distinguishes.
CASES = [
    (None, False, False),
    (2, True, False),
    ([0, -1], False, True),
    ([2, 0, 2], True, True),
    ([-3], False, True),
]


def assert_close(got, want) -> None:
    """Nested lists/tuples of tensors equal within TOL."""
    if isinstance(want, torch.Tensor):
        assert max_abs_diff(got, want) <= TOL
        return
    assert type(got) is type(want) and len(got) == len(want), (type(got), len(got), len(want))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)


def timm_clip_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    model = TimmViT(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=4,
        pre_norm=True,
        num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
        dynamic_img_size=True,
    )
    model.patch_embed.proj.bias = None
    return randomize_(model).eval()


def timm_dinov2_reg4() -> torch.nn.Module:
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2",
        pretrained=False,
        embed_dim=64,
        depth=3,
        num_heads=4,
        img_size=56,
        dynamic_img_size=True,
    )
    return randomize_(model).eval()


def both(tm, ours, x, **kw):
    with torch.no_grad():
        mine = ours.forward_intermediates(x, **kw)
        try:
            theirs = tm.forward_intermediates(x, **kw)
        except RuntimeError as error:
            # timm 1.0.21's Swin applies the last stage's norm to the stage it stopped early at
            # (a [.., C/2] map through a LayerNorm of C): the oracle itself fails, fixed by 1.0.31.
            if "normalized_shape" in str(error) and Version(timm.__version__) < Version("1.0.31"):
                pytest.skip(f"timm {timm.__version__}'s Swin forward_intermediates fails on this case")
            raise
        return mine, theirs


# --- ViT family -----------------------------------------------------------------------------
@pytest.mark.parametrize(("indices", "norm", "stop_early"), CASES)
@pytest.mark.parametrize("build", [timm_clip_vit, timm_dinov2_reg4], ids=["clip", "dinov2-reg4"])
def test_vit_intermediates_and_final_features_match_timm(build, indices, norm, stop_early):
    tm = build()
    ours = vlmzoo.convert.from_timm(tm).eval()
    x = torch.randn(2, 3, tm.patch_embed.img_size[0], tm.patch_embed.img_size[1])
    for output_fmt, prefix in itertools.product(["NCHW", "NLC"], [False, True]):
        got, want = both(
            tm, ours, x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            return_prefix_tokens=prefix,
        )  # fmt: skip
        assert_close(got, want)


def test_vit_intermediates_only_and_dict_output_match_timm():
    tm = timm_dinov2_reg4()
    ours = vlmzoo.convert.from_timm(tm).eval()
    x = torch.randn(1, 3, 70, 42)  # another size: the position embeddings resize as timm's
    got, want = both(tm, ours, x, indices=[1], intermediates_only=True)
    assert_close(got, want)
    got, want = both(tm, ours, x, indices=2, return_prefix_tokens=True, output_dict=True)
    assert (
        got.keys() == want.keys() == {"image_intermediates", "image_intermediates_prefix", "image_features"}
    )
    for key in want:
        assert_close(got[key], want[key])


def test_vit_intermediate_k_is_hidden_state_k_plus_one():
    encoder = vlmzoo.create_encoder("clip-vit-tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = encoder(x, output_hidden_states=True).hidden_states
        final, inter = encoder.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
    for k, (patches, cls) in enumerate(inter):
        assert torch.equal(torch.cat([cls, patches], dim=1), hidden[k + 1])
    assert torch.equal(final, encoder.norm(hidden[-1]))


def test_eva_intermediates_match_blip2_vision_hidden_states():
    """timm's EVA is not converted; BLIP-2's EVA tower (transformers) is: its hidden_states[k + 1]
    is block k, its post_layernorm the final norm."""
    config = transformers.Blip2VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    hf = randomize_(transformers.Blip2VisionModel(config), std=0.1).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        final, inter = ours.forward_intermediates(x, norm=True, output_fmt="NLC", return_prefix_tokens=True)
    assert max_abs_diff(final, ref.last_hidden_state) <= TOL
    for k, (patches, cls) in enumerate(inter):
        want = hf.post_layernorm(ref.hidden_states[k + 1])
        assert max_abs_diff(torch.cat([cls, patches], dim=1), want) <= TOL


# --- SAM, Vary ------------------------------------------------------------------------------
def timm_sam() -> torch.nn.Module:
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    model = VisionTransformerSAM(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, window_size=3,
        global_attn_indexes=(1, 3), use_rel_pos=True, neck_chans=32, num_classes=0,
    )  # fmt: skip
    return randomize_(model).eval()


@pytest.mark.parametrize(("indices", "norm", "stop_early"), CASES)
def test_sam_intermediates_and_neck_output_match_timm(indices, norm, stop_early):
    tm = timm_sam()
    ours = vlmzoo.convert.from_timm(tm).eval()
    x = torch.randn(2, 3, 64, 64)
    got, want = both(tm, ours, x, indices=indices, norm=norm, stop_early=stop_early)
    assert_close(got, want)
    with torch.no_grad():
        nlc = ours.forward_intermediates(
            x, indices=indices, norm=norm, intermediates_only=True, output_fmt="NLC"
        )
    assert_close(nlc, [y.flatten(2).transpose(1, 2) for y in want[1]])


def test_vary_final_features_are_its_output_map_and_intermediates_the_sam_trunk():
    encoder = vlmzoo.create_encoder("vary-vocab-tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = encoder(x, output_hidden_states=True)
        final, inter = encoder.forward_intermediates(x, output_fmt="NLC")
    assert torch.equal(final.flatten(2).transpose(1, 2), out.tokens)
    assert_close(inter, list(out.hidden_states[1:]))


# --- Swin, PVT ------------------------------------------------------------------------------
SWIN_SMALL = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=3)


def timm_swin() -> torch.nn.Module:
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=96, num_classes=0, **SWIN_SMALL
    )
    return randomize_(model).eval()


@pytest.mark.parametrize(("indices", "norm", "stop_early"), CASES)
def test_swin_stage_outputs_and_final_features_match_timm(indices, norm, stop_early):
    tm = timm_swin()
    ours = vlmzoo.convert.from_timm(tm).eval()
    x = torch.randn(2, 3, 96, 96)
    got, want = both(tm, ours, x, indices=indices, norm=norm, stop_early=stop_early)
    assert_close(got, want)


def test_pvt_stage_outputs_match_transformers_hidden_states():
    depths = [2, 1, 2, 1]
    config = transformers.PvtConfig(
        image_size=64, hidden_sizes=[16, 32, 48, 64], depths=depths, num_attention_heads=[1, 2, 2, 4],
        mlp_ratios=[2, 2, 2, 2], sequence_reduction_ratios=[4, 2, 2, 1],
    )  # fmt: skip
    hf = randomize_(transformers.PvtModel(config)).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        final, inter = ours.forward_intermediates(x, norm=True, output_fmt="NLC")
        maps = ours.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    ends = list(itertools.accumulate(depths))
    for s, end in enumerate(ends[:-1]):
        assert max_abs_diff(inter[s], ref.hidden_states[end - 1]) <= TOL
    assert max_abs_diff(inter[-1], ref.last_hidden_state[:, 1:]) <= TOL  # the final norm, CLS dropped
    assert max_abs_diff(final.flatten(2).transpose(1, 2), ref.last_hidden_state[:, 1:]) <= TOL
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 64, 2, 2)]


# --- every encoder --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in TINY_ENCODERS if "vary-toy" not in n])
def test_intermediates_are_the_encoders_hidden_states(name):
    encoder = vlmzoo.create_encoder(name).eval()
    size = encoder.config.image_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        hidden = encoder(x, output_hidden_states=True).hidden_states
        inter = encoder.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        maps = encoder.forward_intermediates(x, indices=1, intermediates_only=True, stop_early=True)
    assert len(inter) == len(hidden) - 1
    for got, want in zip(inter, hidden[1:], strict=True):
        assert torch.equal(got, want[:, want.shape[1] - got.shape[1] :])  # prefix tokens split off
    assert maps[0].ndim == 4 and maps[0].flatten(2).transpose(1, 2).shape == inter[-1].shape


@pytest.mark.parametrize("bad", [0, 4, [3], [-4], [], True, [1.0]])
def test_indices_outside_the_blocks_are_a_config_error(bad):
    encoder = vlmzoo.create_encoder("clip-vit-tiny").eval()  # 2 blocks
    with pytest.raises(ConfigError, match="indices"):
        encoder.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[bad] if bad == 4 else bad)


def test_take_indices_follows_timms_feature_take_indices():
    from timm.models._features import feature_take_indices

    for indices in [None, 1, 3, [0], [-1, 0], [2, -3, 1]]:
        assert take_indices(3, indices) == feature_take_indices(3, indices)


def test_unknown_output_format_is_a_config_error():
    encoder = vlmzoo.create_encoder("swin-tiny").eval()
    with pytest.raises(ConfigError, match="output_fmt='NHWC'"):
        encoder.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt="NHWC")


# --- pruning --------------------------------------------------------------------------------
def test_pruned_vit_matches_timms_pruned_model_and_reloads_from_its_config():
    tm = timm_clip_vit()
    ours = vlmzoo.convert.from_timm(tm).eval()
    x = torch.randn(2, 3, 32, 32)
    assert ours.prune_intermediate_layers([0, 1], prune_norm=True) == tm.prune_intermediate_layers(
        [0, 1], prune_norm=True
    )
    assert (ours.config.depth, ours.config.final_norm, ours.config.pool, len(ours.blocks)) == (
        2,
        False,
        "none",
        2,
    )
    assert_close(*both(tm, ours, x))
    rebuilt = VisionTransformer(ours.config).eval()
    rebuilt.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x).tokens, ours(x).tokens)


def test_pruning_away_the_feature_layer_is_a_config_error_and_changes_nothing():
    encoder = vlmzoo.create_encoder("clip-vit-tiny", depth=3, feature_layer=3)
    with pytest.raises(ConfigError, match="feature_layer"):
        encoder.prune_intermediate_layers([1])  # keep blocks 0 and 1: hidden_states 0 .. 2
    assert len(encoder.blocks) == 3 and encoder.config.depth == 3


def test_pruned_swin_and_sam_match_timms_pruned_models():
    for tm, x in [(timm_swin(), torch.randn(1, 3, 96, 96)), (timm_sam(), torch.randn(1, 3, 64, 64))]:
        ours = vlmzoo.convert.from_timm(tm).eval()
        assert ours.prune_intermediate_layers([1]) == tm.prune_intermediate_layers([1])
        assert_close(*both(tm, ours, x))
        rebuilt = type(ours)(ours.config).eval()
        rebuilt.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt(x).tokens, ours(x).tokens)


# --- torch.compile --------------------------------------------------------------------------
def test_vit_forward_intermediates_compiles_into_one_graph():
    torch._dynamo.reset()
    encoder = vlmzoo.create_encoder("dinov2-vit-tiny-reg4").eval()
    x = torch.randn(2, 3, 56, 56)

    def run(pixels: torch.Tensor):
        return encoder.forward_intermediates(pixels, indices=[0, -1], norm=True, return_prefix_tokens=True)

    # fullgraph=True: any graph break is an error; the eager backend keeps the test fast (the
    # encoders' inductor runs are tests/test_compile.py's).
    compiled = torch.compile(run, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(x), run(x))
    torch._dynamo.reset()


def test_a_fused_encoder_gives_each_towers_intermediates_by_name():
    from conftest import pixels_for

    import vlmzoo

    encoder = vlmzoo.create_encoder("vary-toy-encoder-tiny").eval()
    pixels = pixels_for(encoder, batch=1)
    out = encoder.forward_intermediates(pixels, indices=1, intermediates_only=True)
    assert set(out) == set(encoder.towers)
    for name, maps in out.items():
        tower_pixels = encoder.split_inputs(pixels)[name]
        expected = encoder.towers[name].forward_intermediates(
            tower_pixels, indices=1, intermediates_only=True
        )
        assert len(maps) == 1 and torch.equal(maps[0], expected[0])
