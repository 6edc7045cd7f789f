"""The FocusedLinearAttention module: parameters, square and non-square grids, the grid check,
gradients, and equality with a plain transcription of FLatten's FocusedLinearAttention.forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff, randomize_

from vlmzoo.errors import ConfigError, InputError
from vlmzoo.layers import FocusedLinearAttention


def module(dim=24, heads=3, grid=(4, 4), **kw) -> FocusedLinearAttention:
    return randomize_(FocusedLinearAttention(dim, heads, grid, **kw))


def spec_transcription(m: FocusedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """FLatten's FocusedLinearAttention.forward (models/flatten_swin.py), one line per step, loops over heads and no helpers from vlmzoo."""
    b, n, c = x.shape
    h, d = m.num_heads, c // m.num_heads
    height, width = m.grid
    q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).split(c, dim=-1)  # 1
    k = k + m.positional_encoding  # 2
    q, k = F.relu(q) + 1e-6, F.relu(k) + 1e-6  # 3
    s = F.softplus(m.scale)
    q, k = q / s, k / s  # 4
    p = m.focusing_factor
    q = q**p / (q**p).norm(dim=-1, keepdim=True) * q.norm(dim=-1, keepdim=True)  # 5, norms over all C
    k = k**p / (k**p).norm(dim=-1, keepdim=True) * k.norm(dim=-1, keepdim=True)
    heads = []
    for i in range(h):  # 6
        qh, kh, vh = (t[..., i * d : (i + 1) * d] for t in (q, k, v))
        z = 1 / (qh @ kh.mean(dim=1).unsqueeze(-1) + 1e-6)  # 7
        kv = (kh.transpose(1, 2) * n**-0.5) @ (vh * n**-0.5)  # 8
        out = (qh @ kv) * z
        local = F.conv2d(  # 10: the same d-channel depthwise conv for every head
            vh.transpose(1, 2).reshape(b, d, height, width), m.dwc.weight, m.dwc.bias, padding=2, groups=d
        )
        heads.append(out + local.reshape(b, d, n).transpose(1, 2))
    return F.linear(torch.cat(heads, dim=-1), m.proj.weight, m.proj.bias)  # 9, 11


def test_parameters_have_the_flatten_names_and_shapes():
    m = FocusedLinearAttention(96, 4, 7)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {
        "scale": (1, 1, 96),
        "positional_encoding": (1, 49, 96),
        "qkv.weight": (288, 96),
        "qkv.bias": (288,),
        "proj.weight": (96, 96),
        "proj.bias": (96,),
        "dwc.weight": (24, 1, 5, 5),  # head_dim channels, shared across heads (FLatten's dwc)
        "dwc.bias": (24,),
    }
    assert not m.scale.any() and not m.positional_encoding.any()  # zero-init


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 2)])
def test_matches_the_spec_transcription(grid):
    m = module(grid=grid).double()
    x = torch.randn(2, grid[0] * grid[1], 24, dtype=torch.float64)
    assert max_abs_diff(m(x), spec_transcription(m, x)) <= 1e-10


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_backends_agree_inside_the_module(backend):
    m = module(grid=(5, 3), backend=backend)
    x = torch.randn(2, 15, 24)
    ref = spec_transcription(m, x)
    assert m(x).shape == (2, 15, 24)
    assert max_abs_diff(m(x), ref) <= 1e-5 * ref.abs().max().item()


def test_non_square_grid_uses_row_major_tokens():
    """Moving one token of v moves the DWC term with it on the H x W map, not on a square one."""
    m = FocusedLinearAttention(8, 2, (2, 6), qkv_bias=False)
    x = torch.zeros(1, 12, 8)
    x[0, 7] = 1.0  # row 1, column 1
    with torch.no_grad():
        m.qkv.weight.zero_()
        m.qkv.weight[16:].copy_(torch.eye(8))  # v = x
        m.proj.weight.copy_(torch.eye(8))
        m.proj.bias.zero_()
        m.dwc.weight.zero_()
        m.dwc.bias.zero_()
        attention_only = m(x)
        m.dwc.weight[:, 0, 3, 2] = 1.0  # out(i, j) += v(i + 1, j): the pixel below
        local = m(x) - attention_only
    assert torch.nonzero(local.abs().sum(-1)[0] > 1e-6).flatten().tolist() == [1]  # row 0, column 1


def test_gradients_reach_every_parameter():
    m = module()
    m(torch.randn(2, 16, 24)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mask_is_accepted_and_ignored():
    m = module()
    x = torch.randn(2, 16, 24)
    assert torch.equal(m(x), m(x, mask=torch.zeros(4, 16, 16)))


def test_wrong_token_count_for_the_grid_is_a_clear_error():
    m = module(grid=(4, 4))
    with pytest.raises(InputError, match=r"15 tokens but the declared grid is 4x4"):
        m(torch.randn(1, 15, 24))
    with pytest.raises(InputError, match=r"\[B, N, 24\]"):
        m(torch.randn(1, 16, 12))


@pytest.mark.parametrize(
    ("args", "match"),
    [((24, 5, 4), "multiple of num_heads"), ((24, 3, (0, 4)), "positive sizes"), ((24, 3, 4), "odd")],
)
def test_bad_construction_is_a_config_error(args, match):
    kwargs = {"kernel_size": 4} if match == "odd" else {}
    with pytest.raises(ConfigError, match=match):
        FocusedLinearAttention(*args, **kwargs)
