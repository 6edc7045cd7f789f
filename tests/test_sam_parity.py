"""SAM image encoder: parity with transformers (SamVisionModel, SamModel), timm (samvit) and the
segment-anything checkpoint layout; windowing and decomposed relative positions against plain
references written here; real-size parameter counts; input errors.

Tiny random configs, float32, max abs diff <= 1e-4. ``randomize_`` matters: SAM zero-inits
``pos_embed`` and the relative-position tables, which would hide mapping bugs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.encoders.sam import SamConfig, SamEncoder
from vlmzoo.errors import ConfigError, ConversionError, InputError
from vlmzoo.layers import (
    RelPosAttention,
    decomposed_rel_pos_bias,
    get_rel_pos,
    window_partition,
    window_unpartition,
)

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4
# 64 px, patch 8 -> 8x8 grid; window 3 pads it to 9x9 (border windows see zero padding).
TINY = dict(image_size=64, patch_size=8, window_size=3, global_attn_indexes=(1, 3))
ONE_BLOCK = dict(TINY, global_attn_indexes=(), width=32, depth=1, num_heads=2, neck_dim=None)


def hf_vision_config(**kw):
    base = dict(
        hidden_size=64,
        output_channels=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_dim=128,
        **{**TINY, "global_attn_indexes": list(TINY["global_attn_indexes"])},
    )
    return transformers.SamVisionConfig(**{**base, **kw})


def timm_sam(**kw) -> torch.nn.Module:
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    args = dict(
        img_size=64,
        patch_size=8,
        embed_dim=64,
        depth=4,
        num_heads=4,
        window_size=3,
        global_attn_indexes=(1, 3),
        use_rel_pos=True,
        neck_chans=32,
        num_classes=0,
    )
    return randomize_(VisionTransformerSAM(**{**args, **kw})).eval()


def flat(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H·W, C] (how VisionOutput.tokens lays out a map)."""
    return x.flatten(2).transpose(1, 2)


# --- transformers ---------------------------------------------------------------------------
def test_hf_sam_vision_model_matches_neck_output_and_hidden_states():
    hf = randomize_(transformers.SamVisionModel(hf_vision_config())).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, SamEncoder) and ours.config.norm_eps == 1e-6
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        out = ours(x, output_hidden_states=True)
    assert out.grid == (8, 8) and out.tokens.shape == (2, 64, 32)
    assert max_abs_diff(out.tokens, flat(ref.last_hidden_state)) <= TOL
    # transformers: embeddings + every layer, channels-last [B, H', W', D]
    assert len(out.hidden_states) == len(ref.hidden_states) == 5
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert max_abs_diff(got, want.flatten(1, 2)) <= TOL


def test_hf_eager_attention_matches_sdpa_with_rel_pos_mask():
    """transformers' explicit-softmax path: checks the rel-pos term given to SDPA as a float mask."""
    hf = randomize_(
        transformers.SamVisionModel._from_config(hf_vision_config(), attn_implementation="eager")
    ).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, flat(hf(pixel_values=x).last_hidden_state)) <= TOL


def test_hf_sam_model_image_encoder_converts():
    vision = hf_vision_config().to_dict()
    config = transformers.SamConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8),
        mask_decoder_config=dict(
            hidden_size=32, num_hidden_layers=1, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    hf = randomize_(transformers.SamModel(config)).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, flat(hf.get_image_embeddings(x))) <= TOL


# --- timm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["native", "resized-nonsquare"])
def test_timm_samvit_matches_forward_features(size):
    """Non-native: timm resizes pos_embed (bicubic+antialias) and the global blocks' rel-pos tables."""
    tm = timm_sam()
    ours = vlmzoo.convert.from_timm(tm).eval()
    # timm's samvit blocks use nn.LayerNorm's default eps, not SAM's 1e-6.
    assert ours.config.norm_eps == 1e-5 and ours.config.pos_embed_resize == "bicubic_antialias"
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = tm.forward_features(x)
        out = ours(x)
    assert out.grid == (size[0] // 8, size[1] // 8)
    assert max_abs_diff(out.tokens, flat(ref)) <= TOL


def test_timm_variants_vlmzoo_does_not_express_are_refused():
    with pytest.raises(ConversionError, match="classifier head"):
        vlmzoo.convert.from_timm(timm_sam(num_classes=5))
    with pytest.raises(ConversionError, match="qk-norm"):
        vlmzoo.convert.from_timm(timm_sam(qk_norm=True))


# --- the segment-anything release layout ----------------------------------------------------
def segment_anything_layout(ours: SamEncoder) -> dict[str, torch.Tensor]:
    """vlmzoo SamEncoder weights written as a ``sam_vit_*.pth`` (segment-anything's names), decoder keys included."""
    sd = {
        f"image_encoder.{k.replace('.mlp.fc1.', '.mlp.lin1.').replace('.mlp.fc2.', '.mlp.lin2.')}": v.clone()
        for k, v in ours.state_dict().items()
    }
    sd["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 32)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    return sd


def test_segment_anything_checkpoint_layout_converts_to_the_same_model(tmp_path):
    hf = randomize_(transformers.SamVisionModel(hf_vision_config())).eval()
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(segment_anything_layout(vlmzoo.convert.from_transformers(hf)), path)
    ours = vlmzoo.convert.from_original(path, "segment-anything").eval()
    c = ours.config
    assert (c.width, c.depth, c.num_heads, c.window_size, c.global_attn_indexes) == (64, 4, 4, 3, (1, 3))
    assert (c.image_size, c.patch_size, c.mlp_hidden_dim, c.neck_dim) == (64, 8, 128, 32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours(x).tokens, flat(hf(pixel_values=x).last_hidden_state)) <= TOL


def test_segment_anything_layout_without_encoder_keys_is_refused():
    with pytest.raises(ConversionError, match="not a SAM image-encoder state dict"):
        vlmzoo.convert.from_original({"mask_decoder.iou_token.weight": torch.zeros(1, 8)}, "segment-anything")


# --- relative positions and windows vs plain references -------------------------------------
def reference_get_rel_pos(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Loops: linear interpolation of each channel at the half-pixel sample points, then gather."""
    length = 2 * max(q_size, k_size) - 1
    old = table.shape[0]
    if old != length:
        rows = []
        for i in range(length):
            src = min(max((i + 0.5) * old / length - 0.5, 0.0), old - 1)
            lo = int(src)
            hi = min(lo + 1, old - 1)
            rows.append(table[lo] * (1 - (src - lo)) + table[hi] * (src - lo))
        table = torch.stack(rows)
    out = torch.empty(q_size, k_size, table.shape[1])
    for i in range(q_size):
        for j in range(k_size):
            r = i * max(k_size / q_size, 1.0) - j * max(q_size / k_size, 1.0)
            out[i, j] = table[int(r + (k_size - 1) * max(q_size / k_size, 1.0))]
    return out


@pytest.mark.parametrize(("q", "k", "rows"), [(5, 5, 9), (7, 7, 9), (3, 3, 9), (4, 6, 11), (6, 3, 5)])
def test_get_rel_pos_matches_loop_reference(q, k, rows):
    table = torch.randn(rows, 4)
    assert max_abs_diff(get_rel_pos(q, k, table), reference_get_rel_pos(q, k, table)) <= 1e-5


def reference_attention(x, qkv, proj, heads, rel_h=None, rel_w=None):
    """Explicit softmax attention over a [B, H, W, C] grid with the rel-pos term from loops."""
    b, h, w, c = x.shape
    d = c // heads
    q, k, v = qkv(x.reshape(b, h * w, c)).reshape(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4)
    logits = (q * d**-0.5) @ k.transpose(-1, -2)
    if rel_h is not None:
        rh, rw = reference_get_rel_pos(h, h, rel_h), reference_get_rel_pos(w, w, rel_w)
        bias = torch.zeros_like(logits)
        for y in range(h):
            for xx in range(w):
                for ky in range(h):
                    for kx in range(w):
                        qv = q[:, :, y * w + xx]  # the unscaled query (SAM's add_decomposed_rel_pos)
                        bias[:, :, y * w + xx, ky * w + kx] = (qv * rh[y, ky]).sum(-1) + (
                            qv * rw[xx, kx]
                        ).sum(-1)
        logits = logits + bias
    out = logits.softmax(-1) @ v
    return proj(out.transpose(1, 2).reshape(b, h, w, c))


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)], ids=["native", "resized-nonsquare"])
def test_rel_pos_attention_matches_explicit_softmax_and_trains_tables(grid):
    attn = randomize_(RelPosAttention(16, 2, input_size=(4, 4)))
    x = torch.randn(2, *grid, 16)
    assert (
        max_abs_diff(attn(x), reference_attention(x, attn.qkv, attn.proj, 2, attn.rel_pos_h, attn.rel_pos_w))
        <= 1e-5
    )
    attn(x).square().sum().backward()
    assert attn.rel_pos_h.grad.abs().sum() > 0 and attn.rel_pos_w.grad.abs().sum() > 0


def test_decomposed_bias_broadcasts_over_leading_dims():
    q = torch.randn(2, 3, 12, 4)
    rh, rw = torch.randn(5, 4), torch.randn(7, 4)
    bias = decomposed_rel_pos_bias(q, rh, rw, (3, 4), (3, 4))
    assert bias.shape == (2, 3, 12, 12)
    assert max_abs_diff(bias[1, 2], decomposed_rel_pos_bias(q[1, 2], rh, rw, (3, 4), (3, 4))) == 0


def test_window_partition_pads_bottom_right_with_zeros_and_round_trips():
    x = torch.randn(2, 5, 7, 3)
    windows, pad_hw = window_partition(x, 3)
    assert pad_hw == (6, 9) and windows.shape == (2 * 2 * 3, 3, 3, 3)
    assert torch.equal(windows[0], x[0, :3, :3])  # image-major, then row-major over windows
    assert torch.equal(windows[1], x[0, :3, 3:6])
    assert torch.equal(windows[5, :2, :1], x[0, 3:5, 6:7]) and windows[5, 2].abs().sum() == 0
    assert torch.equal(window_unpartition(windows, 3, (5, 7), pad_hw), x)


def test_window_equal_to_grid_is_global_attention_and_larger_window_attends_to_zero_padding():
    encoder = randomize_(SamEncoder(SamConfig(**ONE_BLOCK)))
    block = encoder.blocks[0]  # windowed (window 3), tables 5 rows
    x = torch.randn(2, 3, 3, 32)  # grid == window: one window, no padding
    block.window_size = 0
    global_out = block(x)
    block.window_size = 3
    assert max_abs_diff(block(x), global_out) <= 1e-6
    # A 2x2 grid in a 3x3 window: the 5 padded zero tokens are attended to (not masked, as in SAM):
    # equal to global attention on the explicitly zero-padded grid, then cropped — not to the 2x2 one.
    x = torch.randn(2, 2, 2, 32)
    normed = F.pad(block.norm1(x), (0, 0, 0, 1, 0, 1))
    attn = block.attn(normed)[:, :2, :2]
    y = x + attn
    want = y + block.mlp(block.norm2(y))
    assert max_abs_diff(block(x), want) <= 1e-6
    block.window_size = 0
    assert max_abs_diff(block(x), want) > 1e-3


def test_windowed_encoder_matches_per_window_reference():
    """Whole windowed block vs partition/unpartition written as loops over windows."""
    encoder = randomize_(SamEncoder(SamConfig(**ONE_BLOCK)))
    block = encoder.blocks[0]
    x = torch.randn(1, 5, 4, 32)
    normed = F.pad(block.norm1(x), (0, 0, 0, 2, 0, 1))  # 5x4 -> 6x6
    attn = torch.zeros_like(normed)
    a = block.attn
    for i in range(0, 6, 3):
        for j in range(0, 6, 3):
            win = normed[:, i : i + 3, j : j + 3]
            attn[:, i : i + 3, j : j + 3] = reference_attention(
                win, a.qkv, a.proj, 2, a.rel_pos_h, a.rel_pos_w
            )
    y = x + attn[:, :5, :4]
    assert max_abs_diff(block(x), y + block.mlp(block.norm2(y))) <= 1e-5


# --- real sizes -----------------------------------------------------------------------------
REAL = {
    "sam-vit-b": ("samvit_base_patch16", 768, 12, 12, [2, 5, 8, 11]),
    "sam-vit-l": ("samvit_large_patch16", 1024, 24, 16, [5, 11, 17, 23]),
    "sam-vit-h": ("samvit_huge_patch16", 1280, 32, 16, [7, 15, 23, 31]),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_size_presets_match_transformers_and_timm_parameter_counts(name):
    timm_name, width, depth, heads, global_idx = REAL[name]
    with torch.device("meta"):
        ours = vlmzoo.create_encoder(name)
        hf = transformers.SamVisionModel(
            transformers.SamVisionConfig(
                hidden_size=width,
                num_hidden_layers=depth,
                num_attention_heads=heads,
                global_attn_indexes=global_idx,
            )
        )
        tm = timm.create_model(timm_name, pretrained=False, num_classes=0)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in tm.parameters())
    assert ours.num_tokens() == 4096 and ours.out_dim == 256


# --- errors ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> SamEncoder:
    return vlmzoo.create_encoder("sam-vit-tiny").eval()


def test_tiny_preset_runs_native_and_nonsquare(tiny):
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, 40, 72), output_hidden_states=True)
    assert out.grid == (5, 9) and out.tokens.shape == (1, 45, 32) == (
        1,
        tiny.num_tokens((40, 72)),
        tiny.out_dim,
    )
    assert len(out.hidden_states) == 5 and out.hidden_states[0].shape == (1, 45, 64)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(InputError, match="not a multiple of the patch size 8"):
        tiny(torch.randn(1, 3, 60, 64))
    with pytest.raises(InputError, match="has 1 channels but the encoder expects 3"):
        tiny(torch.randn(1, 1, 64, 64))
    # 4x the native 8x8 grid is the limit (max_grid_scale): 33x8 tokens is refused before running.
    with pytest.raises(
        InputError, match=r"more than max_grid_scale=4 x the native 8x8 \(64px\).*at most 32x32"
    ):
        tiny(torch.randn(1, 3, 264, 64))
    strict = SamEncoder(tiny.config.replace(pos_embed_resize="none"))
    with pytest.raises(InputError, match="pos_embed_resize='none'"):
        strict(torch.randn(1, 3, 48, 64))


def test_config_validation():
    with pytest.raises(ConfigError, match="global_attn_indexes"):
        SamConfig(depth=4, global_attn_indexes=(1, 4))
    with pytest.raises(ConfigError, match="max_grid_scale"):
        SamConfig(max_grid_scale=0.5)
    with pytest.raises(ConfigError, match="image_size"):
        SamConfig(image_size=1000)
