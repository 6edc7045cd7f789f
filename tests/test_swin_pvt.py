"""Hierarchical encoders: Swin and PVT v1 against transformers (and timm's Swin), their FLatten
variants (FLatten-Transformer's cfgs), parameter counts, and the original FLatten-Swin / PVT key layouts.

Random small configs, float32, max abs diff <= 1e-4.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.encoders.pvt import PyramidVisionTransformer
from vlmzoo.encoders.swin import SwinConfig, SwinTransformer
from vlmzoo.errors import InputError
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.spatial_reduction_attention import SpatialReductionAttention
from vlmzoo.layers.swin_attention import ShiftedWindowAttention

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4
SWIN_SMALL = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=3)
PVT_SMALL = dict(
    hidden_sizes=[16, 32, 48, 64],
    depths=[2, 1, 2, 1],
    num_attention_heads=[1, 2, 2, 4],
    mlp_ratios=[2, 2, 2, 2],
    sequence_reduction_ratios=[4, 2, 2, 1],
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parity ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_swin():
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=96, drop_path_rate=0.0, **SWIN_SMALL)
    return randomize_(transformers.SwinModel(config)).eval()


@pytest.mark.parametrize("size", [(96, 96), (80, 112)], ids=["native", "padded-nonsquare"])
def test_swin_matches_transformers(hf_swin, size):
    """(80, 112): maps 20x28 -> 10x14 -> 5x7 -> 3x4, so windows of 3 pad every stage, the odd 5x7
    map pads before merging, and the last stage clamps (3 <= window: no shift)."""
    ours = vlmzoo.convert.from_transformers(hf_swin).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf_swin(
            pixel_values=x, output_hidden_states=True, output_hidden_states_before_downsampling=True
        )
        out = ours(x, output_hidden_states=True)
    assert (
        out.grid == tuple(ref.reshaped_hidden_states[-1].shape[-2:])
        and ours.num_tokens(size) == out.tokens.shape[1]
    )
    assert max_abs_diff(out.tokens, ref.last_hidden_state) <= TOL
    assert max_abs_diff(out.pooled, ref.pooler_output) <= TOL
    assert len(out.hidden_states) == len(ref.reshaped_hidden_states) == 5
    for got, want in zip(out.hidden_states, ref.reshaped_hidden_states, strict=True):
        assert max_abs_diff(got, want.flatten(2).transpose(1, 2)) <= TOL


def test_swin_matches_timm_at_native_size():
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=96, num_classes=0, **SWIN_SMALL
    )
    model = randomize_(model).eval()
    ours = vlmzoo.convert.from_timm(model).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, model.forward_features(x).flatten(1, 2)) <= TOL


@pytest.fixture(scope="module")
def hf_pvt():
    torch.manual_seed(0)
    return randomize_(transformers.PvtModel(transformers.PvtConfig(image_size=64, **PVT_SMALL))).eval()


def test_pvt_matches_transformers(hf_pvt):
    """Native size only: transformers' PvtModel cannot resize its position embeddings."""
    ours = vlmzoo.convert.from_transformers(hf_pvt).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf_pvt(pixel_values=x, output_hidden_states=True)
        out = ours(x, output_hidden_states=True)
    assert max_abs_diff(out.tokens, ref.last_hidden_state[:, 1:]) <= TOL
    assert max_abs_diff(out.pooled, ref.last_hidden_state[:, 0]) <= TOL
    stage_ends = list(itertools.accumulate(PVT_SMALL["depths"]))
    for stage, end in enumerate(stage_ends):
        assert max_abs_diff(out.hidden_states[stage + 1], ref.hidden_states[end - 1]) <= TOL


def test_pvt_resizes_position_embeddings_bilinearly_keeping_cls(hf_pvt):
    ours = vlmzoo.convert.from_transformers(hf_pvt).eval()
    pos = ours.pos_embeds[3]  # 2x2 grid + CLS at 64 px
    resized = ours.position_embedding(3, (3, 4))
    grid = F.interpolate(pos[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2), size=(3, 4), mode="bilinear")
    assert torch.equal(resized[:, :1], pos[:, :1])
    assert max_abs_diff(resized[:, 1:], grid.flatten(2).transpose(1, 2)) <= 1e-6
    out = ours(torch.randn(1, 3, 96, 128))
    assert out.grid == (3, 4) and out.tokens.shape == (1, 12, 64) == (1, ours.num_tokens((96, 128)), 64)
    with pytest.raises(InputError, match="multiple of PVT's total stride 32"):
        ours(torch.randn(1, 3, 80, 64))


# --- parameter counts -------------------------------------------------------------------------
SWIN_SIZES = {"swin-t": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "swin-b": (128, (2, 2, 18, 2), (4, 8, 16, 32))}
PVT_DEPTHS = {"pvt-t": (2, 2, 2, 2), "pvt-l": (3, 8, 27, 3)}


@pytest.mark.parametrize("name", sorted(SWIN_SIZES))
def test_swin_presets_have_the_parameter_count_of_transformers(name):
    dim, depths, heads = SWIN_SIZES[name]
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        peer = transformers.SwinModel(transformers.SwinConfig(embed_dim=dim, depths=depths, num_heads=heads))
    assert count(ours) == count(peer)


@pytest.mark.parametrize("name", sorted(PVT_DEPTHS))
def test_pvt_presets_have_the_parameter_count_of_transformers(name):
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        peer = transformers.PvtModel(transformers.PvtConfig(depths=PVT_DEPTHS[name]))
    assert count(ours) == count(peer)


def test_flatten_presets_match_the_paper_sizes():
    """FLatten paper: FLatten-Swin-T 29M, FLatten-PVT-T 12.2M (with the 1000-class head)."""
    with torch.device("meta"):
        swin, pvt = vlmzoo.create_encoder("flatten-swin-t"), vlmzoo.create_encoder("flatten-pvt-t")
    swin_total = count(swin) + swin.out_dim * 1000 + 1000
    pvt_total = count(pvt) + pvt.out_dim * 1000 + 1000
    assert abs(swin_total - 29.0e6) < 0.5e6  # 29,192,384 (Swin-T: 28,288,354)
    assert abs(pvt_total - 12.2e6) < 0.1e6  # 12,150,504 (PVT-T: 13,229,288)


# --- FLatten variants ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flatten-swin-tiny", "flatten-pvt-tiny"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)], ids=["square", "non-square"])
def test_flatten_encoders_forward_and_backward(name, size):
    encoder = vlmzoo.create_encoder(name).train()
    out = encoder(torch.randn(2, 3, *size), output_hidden_states=True)
    h, w = size[0] // 32, size[1] // 32
    assert out.grid == (h, w) and out.tokens.shape == (2, h * w, encoder.out_dim)
    assert len(out.hidden_states) == 5
    (out.tokens.square().mean() + out.pooled.sum()).backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_stage_attention_types_follow_the_config():
    """FLatten-Swin LLSS: stages 1-2 focused linear over the whole map (window clamped, no
    shift), stages 3-4 Swin windows shifted on odd blocks; FLatten-PVT LLLL without reduction."""
    swin = vlmzoo.create_encoder("flatten-swin-tiny")
    kinds = [type(stage.blocks[0].attn) for stage in swin.layers]
    assert kinds == [FocusedLinearWindowAttention] * 2 + [ShiftedWindowAttention] * 2
    assert [b.attn.window_size for b in swin.layers[0].blocks] == [16]  # 16x16 map: one window
    assert [b.attn.shift_size for b in swin.layers[2].blocks] == [0, 1]
    pvt = vlmzoo.create_encoder("pvt-tiny")
    assert [s[0].attn.sr_ratio for s in pvt.stages] == [4, 2, 2, 1]
    assert all(isinstance(s[0].attn, SpatialReductionAttention) for s in pvt.stages)
    flat = vlmzoo.create_encoder("flatten-pvt-tiny")
    assert all(isinstance(s[0].attn, FocusedLinearWindowAttention) for s in flat.stages)
    assert flat.cls_token is None and not any("attn.sr" in n for n, _ in flat.named_parameters())


def test_swin_without_final_norm_for_ocr_encoders():
    """Donut/Nougat drop the final norm (transformers' convert_donut_to_pytorch.py drops encoder.model.norm): tokens are then stage 4's raw output."""
    encoder = SwinTransformer(vlmzoo.create_encoder("swin-tiny").config.replace(final_norm=False)).eval()
    out = encoder(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert torch.equal(out.tokens, out.hidden_states[-1])


# --- original layouts ---------------------------------------------------------------------------
def test_from_original_flatten_swin_layout():
    """A state dict as FLatten-Swin saves it (models/flatten_swin.py names): our names plus relative_position_index
    and attn_mask buffers and a classifier head; config inferred from the tensors."""
    config = SwinConfig(
        image_size=64,
        width=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=2,
        stage_attention=("focused_linear", "focused_linear", "shifted_window", "shifted_window"),
        linear_window_size=56,
    )
    model = randomize_(SwinTransformer(config)).eval()
    sd = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, ShiftedWindowAttention):
            sd[f"{name}.relative_position_index"] = module.relative_position_index
            sd[f"{name.removesuffix('.attn')}.attn_mask"] = torch.zeros(4, 4, 4)  # 4x4 map, window 2
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 128), torch.randn(10)
    converted = vlmzoo.convert.from_original(sd, "flatten-swin").eval()
    assert converted.config == config.replace(linear_window_size=16)  # 56 clamped to stage 1's 16x16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(converted(x).tokens, model(x).tokens) <= 1e-6


@pytest.mark.parametrize("layout", ["pvt", "flatten-pvt"])
def test_from_original_pvt_layout(layout):
    """PVT v1's names (patch_embed1, pos_embed1, block1, ...); FLatten-PVT's linear blocks store
    q and kv separately (models/flatten_pvt.py), fused here into qkv. PVT checkpoints do not store the heads
    of softmax stages: the converter assumes PVT v1's head dim 64, so this model uses it."""
    config = vlmzoo.create_encoder(f"{layout}-tiny").config.replace(
        widths=(64, 128, 128, 192), num_heads=(1, 2, 2, 3)
    )
    model = randomize_(PyramidVisionTransformer(config)).eval()
    sd = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^patch_embeds\.(\d)\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
        key = re.sub(r"^pos_embeds\.(\d)$", lambda m: f"pos_embed{int(m.group(1)) + 1}", key)
        key = re.sub(r"^stages\.(\d)\.", lambda m: f"block{int(m.group(1)) + 1}.", key)
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            dim = value.shape[0] // 3
            sd[key.replace("qkv", "q")], sd[key.replace("qkv", "kv")] = value[:dim], value[dim:]
            continue
        sd[key] = value
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 192), torch.randn(10)
    converted = vlmzoo.convert.from_original(sd, layout).eval()
    # Linear stages store no reduction (FLatten's L blocks use sr 1): their sr_ratios read back as 1.
    linear = [kind == "focused_linear" for kind in config.stage_attention]
    srs = tuple(1 if lin else sr for lin, sr in zip(linear, config.sr_ratios, strict=True))
    assert converted.config == config.replace(sr_ratios=srs)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(converted(x).tokens, model(x).tokens) <= 1e-6
