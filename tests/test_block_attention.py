"""Attention as a per-block choice: each type against a plain reference written here, the ViT layout
config, prefix (CLS/register) tokens, and bad input.

References are deliberately naive: a dense [N, N] softmax with an explicit mask built from token
coordinates, so they share no partitioning code with the modules under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import Block
from vlmzoo.layers.attention import Attention
from vlmzoo.layers.block_attention import shift_sizes
from vlmzoo.layers.cswin_attention import CrossShapedWindowAttention
from vlmzoo.layers.focused_linear_window_attention import FocusedLinearWindowAttention
from vlmzoo.layers.spatial_reduction_attention import SpatialReductionAttention
from vlmzoo.layers.swin_attention import ShiftedWindowAttention
from vlmzoo.layers.window_attention import WindowAttention

TOL = 1e-5
DIM, HEADS = 16, 4


# --- plain references -----------------------------------------------------------------------
def dense_attention(attn: torch.nn.Module, x: torch.Tensor, allowed: torch.Tensor, bias=None) -> torch.Tensor:
    """softmax(q kᵀ / √d + bias) v over all tokens, pairs outside ``allowed`` [N, N] (or [h, N, N])
    removed; the fused ``qkv``/``proj`` of ``attn``."""
    q, k, v = attn.project_qkv(x).unflatten(-1, (3, HEADS, -1)).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = logits.softmax(dim=-1) @ v
    return attn.proj(out.transpose(1, 2).flatten(2))


def coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ys.flatten(), xs.flatten()


def with_prefix(allowed: torch.Tensor, p: int) -> torch.Tensor:
    """Prefix tokens see and are seen by everything (the documented design)."""
    n = allowed.shape[-1] + p
    full = torch.ones(*allowed.shape[:-2], n, n, dtype=torch.bool)
    full[..., p:, p:] = allowed
    return full


def same_weights(module: torch.nn.Module, reference: Attention) -> torch.nn.Module:
    module.load_state_dict(reference.state_dict(), strict=False)
    return module


# --- window (ViTDet) --------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)], ids=["square", "non-square"])
@pytest.mark.parametrize("prefix", [0, 2])
def test_window_covering_the_grid_is_global_attention(grid, prefix):
    ref = randomize_(Attention(DIM, HEADS))
    win = same_weights(WindowAttention(DIM, HEADS, window_size=5, num_prefix_tokens=prefix), ref)
    x = torch.randn(2, prefix + grid[0] * grid[1], DIM)
    assert max_abs_diff(win(x, grid), ref(x)) <= TOL


@pytest.mark.parametrize("prefix", [0, 1])
def test_window_not_dividing_the_grid_pads_with_unmasked_zero_tokens(prefix):
    """5x6 grid, window 4 (the grid is also wider than the window): pad to 8x8 with zeros that
    take part in attention (ViTDet/SAM: segment-anything's window_partition pads, nothing masks): reference = dense attention on the padded grid."""
    ref = randomize_(Attention(DIM, HEADS))
    win = same_weights(WindowAttention(DIM, HEADS, window_size=4, num_prefix_tokens=prefix), ref)
    h, w = 5, 6
    x = torch.randn(2, prefix + h * w, DIM)
    grid = x[:, prefix:].unflatten(1, (h, w))
    padded = torch.cat([x[:, :prefix], F.pad(grid, (0, 0, 0, 2, 0, 3)).flatten(1, 2)], dim=1)
    ys, xs = coords(8, 8)
    inside = torch.cat([torch.ones(prefix, dtype=torch.bool), (ys < h) & (xs < w)])
    same_window = (ys[:, None] // 4 == ys[None] // 4) & (xs[:, None] // 4 == xs[None] // 4)
    allowed = with_prefix(same_window, prefix)
    allowed[:prefix] = inside  # prefix queries: every real token, no padding
    want = dense_attention(win, padded, allowed)
    assert max_abs_diff(win(x, (h, w)), want[:, inside]) <= TOL
    # The padding is not masked: masking it for the patch queries too changes the border windows.
    assert max_abs_diff(win(x, (h, w)), dense_attention(win, padded, allowed & inside)[:, inside]) > 1e-3


def test_prefix_tokens_attend_globally_in_every_spatial_type():
    """CLS/register rows equal global attention's: they see every token whatever the type."""
    ref = randomize_(Attention(DIM, HEADS))
    x = torch.randn(2, 2 + 6 * 6, DIM)
    modules = [
        WindowAttention(DIM, HEADS, 2, num_prefix_tokens=2),
        ShiftedWindowAttention(DIM, HEADS, 2, shift_size=1, num_prefix_tokens=2),
        CrossShapedWindowAttention(DIM, HEADS, 2, num_prefix_tokens=2),
    ]
    for module in modules:
        out = same_weights(module, ref)(x, (6, 6))
        assert max_abs_diff(out[:, :2], ref(x)[:, :2]) <= TOL, type(module).__name__


# --- shifted window (Swin) --------------------------------------------------------------------
def swin_reference(attn: ShiftedWindowAttention, x: torch.Tensor, grid, window: int, shift: int, p: int):
    """Dense attention with Swin's semantics from first principles: token j is a key of token i iff
    after rolling the grid by -shift both sit in the same window *and* the roll did not wrap
    between them (their offset is unchanged); bias = table[(dy + w - 1)(2w - 1) + (dx + w - 1)]."""
    h, w = grid
    ys, xs = coords(h, w)
    ry, rx = (ys - shift) % h, (xs - shift) % w
    same = (ry[:, None] // window == ry[None] // window) & (rx[:, None] // window == rx[None] // window)
    unwrapped = (ry[:, None] - ry[None] == ys[:, None] - ys[None]) & (
        rx[:, None] - rx[None] == xs[:, None] - xs[None]
    )
    dy, dx = ys[:, None] - ys[None], xs[:, None] - xs[None]
    index = ((dy + window - 1) * (2 * window - 1) + (dx + window - 1)).clamp(0, (2 * window - 1) ** 2 - 1)
    bias = attn.relative_position_bias_table[index].permute(2, 0, 1)  # [h, N, N]
    bias = F.pad(bias, (p, 0, p, 0))  # prefix rows/columns: no bias
    return dense_attention(attn, x, with_prefix(same & unwrapped, p), bias)


@pytest.mark.parametrize("shift", [0, 2], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize("prefix", [0, 1])
def test_shifted_window_matches_brute_force_masked_softmax(shift, prefix):
    attn = randomize_(
        ShiftedWindowAttention(DIM, HEADS, window_size=4, shift_size=shift, num_prefix_tokens=prefix)
    )
    x = torch.randn(2, prefix + 8 * 8, DIM)
    want = swin_reference(attn, x, (8, 8), 4, shift, prefix)
    assert max_abs_diff(attn(x, (8, 8)), want) <= TOL


def test_swin_window_clamps_to_a_small_grid_and_reads_the_same_table():
    """A 3x3 grid with window 4: one 3x3 window, no shift, biases of the 3x3 offsets of the 4-table."""
    attn = randomize_(ShiftedWindowAttention(DIM, HEADS, window_size=4, shift_size=2))
    x = torch.randn(1, 9, DIM)
    ys, xs = coords(3, 3)
    dy, dx = ys[:, None] - ys[None], xs[:, None] - xs[None]
    bias = attn.relative_position_bias_table[(dy + 3) * 7 + (dx + 3)].permute(2, 0, 1)
    want = dense_attention(attn, x, torch.ones(9, 9, dtype=torch.bool), bias)
    assert max_abs_diff(attn(x, (3, 3)), want) <= TOL


def test_shifted_window_blocks_alternate_within_each_run():
    kinds = ("global", "shifted_window", "shifted_window", "shifted_window", "window", "shifted_window")
    assert shift_sizes(kinds, 7) == (0, 0, 3, 0, 0, 0)


# --- spatial reduction (PVT) ------------------------------------------------------------------
def test_spatial_reduction_with_ratio_one_is_global_attention():
    ref = randomize_(Attention(DIM, HEADS))
    sra = SpatialReductionAttention(DIM, HEADS, sr_ratio=1, num_prefix_tokens=1)
    with torch.no_grad():
        sra.q.weight.copy_(ref.qkv.weight[:DIM])
        sra.q.bias.copy_(ref.qkv.bias[:DIM])
        sra.kv.weight.copy_(ref.qkv.weight[DIM:])
        sra.kv.bias.copy_(ref.qkv.bias[DIM:])
        sra.proj.load_state_dict(ref.proj.state_dict())
    x = torch.randn(2, 1 + 4 * 6, DIM)
    assert max_abs_diff(sra(x, (4, 6)), ref(x)) <= TOL
    assert sra.sr is None and sum(p.numel() for p in sra.parameters()) == sum(
        p.numel() for p in ref.parameters()
    )


def test_spatial_reduction_keys_are_the_normed_strided_conv_of_the_grid():
    sra = randomize_(SpatialReductionAttention(DIM, HEADS, sr_ratio=2, num_prefix_tokens=1))
    x = torch.randn(2, 1 + 4 * 6, DIM)
    grid = x[:, 1:].reshape(2, 4, 6, DIM).permute(0, 3, 1, 2)
    reduced = sra.norm(F.conv2d(grid, sra.sr.weight, sra.sr.bias, stride=2).flatten(2).transpose(1, 2))
    kv_in = torch.cat([x[:, :1], reduced], dim=1)  # CLS is a key as it is, not reduced
    q = sra.q(x).unflatten(-1, (HEADS, -1)).transpose(1, 2)
    k, v = sra.kv(kv_in).unflatten(-1, (2, HEADS, -1)).permute(2, 0, 3, 1, 4)
    out = ((q @ k.transpose(-1, -2)) / math.sqrt(DIM // HEADS)).softmax(-1) @ v
    assert max_abs_diff(sra(x, (4, 6)), sra.proj(out.transpose(1, 2).flatten(2))) <= TOL


# --- cross-shaped (CSWin) ---------------------------------------------------------------------
def test_cross_shaped_stripes_match_masked_softmax_plus_lepe():
    """Heads 0-1 attend in vertical stripes (width 2), heads 2-3 in horizontal ones; LePE is a 3x3
    depthwise conv of v inside each stripe. A 4x6 grid: no padding."""
    attn = randomize_(CrossShapedWindowAttention(DIM, HEADS, stripe_width=2))
    x = torch.randn(2, 24, DIM)
    ys, xs = coords(4, 6)
    vertical = xs[:, None] // 2 == xs[None] // 2
    horizontal = ys[:, None] // 2 == ys[None] // 2
    allowed = torch.stack([vertical, vertical, horizontal, horizontal])  # per head
    with torch.no_grad():
        lepe_weights = [(c.weight.clone(), c.bias.clone()) for c in attn.get_v]
        for c in attn.get_v:
            c.weight.zero_()
            c.bias.zero_()
        plain = attn(x, (4, 6))
    assert max_abs_diff(plain, dense_attention(attn, x, allowed)) <= TOL
    with torch.no_grad():
        for c, (weight, bias) in zip(attn.get_v, lepe_weights, strict=True):
            c.weight.copy_(weight)
            c.bias.copy_(bias)
    # LePE alone: run the module on v-only differences by linearity of proj's input.
    v = attn.project_qkv(x)[..., 2 * DIM :].reshape(2, 4, 6, DIM)
    lepe = torch.zeros(2, 4, 6, DIM)
    for i in range(3):  # vertical stripes: columns 2i, 2i+1
        stripe = v[:, :, 2 * i : 2 * i + 2, : DIM // 2].permute(0, 3, 1, 2)
        lepe[:, :, 2 * i : 2 * i + 2, : DIM // 2] = attn.get_v[0](stripe).permute(0, 2, 3, 1)
    for i in range(2):  # horizontal stripes: rows 2i, 2i+1
        stripe = v[:, 2 * i : 2 * i + 2, :, DIM // 2 :].permute(0, 3, 1, 2)
        lepe[:, 2 * i : 2 * i + 2, :, DIM // 2 :] = attn.get_v[1](stripe).permute(0, 2, 3, 1)
    delta = attn(x, (4, 6)) - plain  # = proj(out + lepe) - proj(out) = lepe @ Wᵀ
    assert max_abs_diff(delta, lepe.flatten(1, 2) @ attn.proj.weight.T) <= TOL


def test_cross_shaped_wide_stripes_without_lepe_are_global_attention():
    ref = randomize_(Attention(DIM, HEADS))
    cs = CrossShapedWindowAttention(DIM, HEADS, stripe_width=8, num_prefix_tokens=1)
    cs.load_state_dict(
        {**ref.state_dict(), **{k: torch.zeros_like(v) for k, v in cs.state_dict().items() if "get_v" in k}}
    )
    x = torch.randn(2, 1 + 3 * 5, DIM)
    assert max_abs_diff(cs(x, (3, 5)), ref(x)) <= TOL


# --- the ViT layout ---------------------------------------------------------------------------
TYPES = ["window", "shifted_window", "spatial_reduction", "cross_shaped", "focused_linear"]


@pytest.mark.parametrize("kind", TYPES)
def test_every_type_runs_in_clip_with_cls_on_square_and_non_square_images(kind):
    config = vlmzoo.create_encoder("clip-vit-tiny").config.with_attention(
        kind, window_size=2, sr_ratio=2, stripe_width=2
    )
    encoder = vlmzoo.registry.build(config).train()
    assert all(type(b.attn).__name__ != "Attention" for b in encoder.blocks)
    for size in [(32, 32), (48, 24)]:
        out = encoder(torch.randn(2, 3, *size))
        assert out.tokens.shape == (2, size[0] * size[1] // 64, 64)
        (out.embeds.sum() + out.tokens.sum()).backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_default_layout_is_all_global_and_unchanged():
    encoder = vlmzoo.create_encoder("dinov2-vit-tiny-reg4")
    assert encoder.config.block_attention == () and encoder.config.attention_types == ("global",) * 2
    assert all(type(b.attn) is Attention for b in encoder.blocks)


def test_with_attention_edits_chosen_blocks_and_round_trips_through_json():
    config = vlmzoo.create_encoder("clip-vit-tiny", depth=4).config
    mixed = config.with_attention("window", blocks=[0, -1], window_size=2)
    assert mixed.block_attention == ("window", "global", "global", "window") and mixed.window_size == 2
    assert type(mixed).from_json(mixed.to_json()) == mixed


def test_block_attention_of_the_wrong_length_is_a_config_error():
    with pytest.raises(ConfigError, match=r"block_attention.*one entry per block \(depth=2\), got 3"):
        vlmzoo.create_encoder("clip-vit-tiny", block_attention=("global",) * 3)


def test_unknown_attention_type_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"block_attention='swin'.*must be one of"):
        vlmzoo.create_encoder("clip-vit-tiny", block_attention=("global", "swin"))
    with pytest.raises(ConfigError, match="block index 5"):
        vlmzoo.create_encoder("clip-vit-tiny").config.with_attention("window", blocks=[5])


def test_cross_shaped_with_odd_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="num_heads=1 is odd"):
        vlmzoo.create_encoder("clip-vit-tiny", num_heads=1, block_attention=("cross_shaped", "global"))


def test_spatial_block_without_grid_is_refused():
    block = Block(DIM, HEADS, 32, attn=WindowAttention(DIM, HEADS, 2))
    with pytest.raises(ValueError, match="needs the token grid"):
        block(torch.randn(1, 4, DIM))
    with pytest.raises(InputError, match=r"expected \[B, 9, C\]"):
        block(torch.randn(1, 4, DIM), grid=(3, 3))


# --- focused linear (FLatten) -------------------------------------------------------------------
def flatten_reference(attn, x: torch.Tensor, grid, p: int) -> torch.Tensor:
    """FLatten's FocusedLinearAttention.forward written out: PE on the grid keys, ReLU + 1e-6 kernel, softplus temperature,
    focusing (p = 3, norms over all C), linear attention with its normaliser, DWC of the grid's v."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    k = torch.cat([k[:, :p], k[:, p:] + attn.positional_encoding], dim=1)
    s = F.softplus(attn.scale)

    def phi(t):
        t = (F.relu(t) + 1e-6) / s
        return t**3 / (t**3).norm(dim=-1, keepdim=True) * t.norm(dim=-1, keepdim=True)

    q, k, v = (t.unflatten(-1, (HEADS, -1)).transpose(1, 2) for t in (phi(q), phi(k), v))
    weights = q @ k.transpose(-1, -2)  # [B, h, N, N], all positive
    out = (weights / (weights.sum(-1, keepdim=True) + 1e-6 * k.shape[-2])) @ v
    out = out.transpose(1, 2).flatten(2)
    v_grid = v[:, :, p:].unflatten(2, grid).flatten(0, 1).permute(0, 3, 1, 2)  # [(B h), d, H, W]
    local = attn.dwc(v_grid).unflatten(0, (x.shape[0], HEADS)).permute(0, 3, 4, 1, 2).flatten(1, 2).flatten(2)
    out = torch.cat([out[:, :p], out[:, p:] + local], dim=1)
    return attn.proj(out)


@pytest.mark.parametrize("prefix", [0, 2])
def test_focused_linear_matches_the_spec_formula_with_prefix_tokens(prefix):
    attn = FocusedLinearWindowAttention(DIM, HEADS, None, num_prefix_tokens=prefix, native_grid=(3, 4))
    randomize_(attn)
    x = torch.randn(2, prefix + 12, DIM)
    assert max_abs_diff(attn(x, (3, 4)), flatten_reference(attn, x, (3, 4), prefix)) <= TOL


def test_windowed_focused_linear_is_global_linear_attention_per_window():
    """Swin's L blocks: a 4x4 grid in 2x2 windows = four independent 2x2 global modules, no mask."""
    windowed = randomize_(FocusedLinearWindowAttention(DIM, HEADS, window_size=2))
    single = FocusedLinearWindowAttention(DIM, HEADS, None, native_grid=(2, 2))
    single.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 16, DIM)
    out = windowed(x, (4, 4)).unflatten(1, (4, 4))
    window = x.unflatten(1, (4, 4))[:, 2:, :2].flatten(1, 2)  # bottom-left window
    assert max_abs_diff(out[:, 2:, :2].flatten(1, 2), single(window, (2, 2))) <= TOL


def test_clip_with_first_blocks_focused_linear_adds_exactly_flattens_parameters():
    """One config line; each switched block adds FLatten's DWC (d·5·5 + d), temperature (C) and
    key positional encoding (grid tokens x C), as FLatten's module."""
    base = vlmzoo.create_encoder("clip-vit-tiny", depth=3)
    config = base.config.with_attention("focused_linear", blocks=range(2))
    encoder = vlmzoo.registry.build(config).train()
    assert config.attention_types == ("focused_linear", "focused_linear", "global")
    d, c, n = 64 // 4, 64, 4 * 4
    extra = d * 25 + d + c + n * c
    assert (
        sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in base.parameters()) + 2 * extra
    )
    for size in [(32, 32), (24, 40)]:
        out = encoder(torch.randn(2, 3, *size))
        (out.embeds.sum() + out.tokens.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_focused_linear_at_its_native_grid_is_the_flatten_module():
    """Without prefix tokens, on the grid it was built for, the grid-aware module computes exactly
    FocusedLinearAttention.forward (its base class: same parameters, kernel and backend)."""
    from vlmzoo.layers.focused_linear_attention import FocusedLinearAttention

    attn = randomize_(FocusedLinearWindowAttention(DIM, HEADS, None, native_grid=(3, 4)))
    assert isinstance(attn, FocusedLinearAttention)
    x = torch.randn(2, 12, DIM)
    assert max_abs_diff(attn(x, (3, 4)), FocusedLinearAttention.forward(attn, x)) <= 1e-6
