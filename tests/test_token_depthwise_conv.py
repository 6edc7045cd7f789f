"""The token-major depthwise conv with a head-shared kernel computes FLatten's DWC and its gradients."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from vlmzoo.layers.token_depthwise_conv import depthwise_conv_tokens


def _flatten_dwc(v: torch.Tensor, grid: tuple[int, int], conv: nn.Conv2d, heads: int) -> torch.Tensor:
    """FLatten's own arrangement: (b h) d H W through one d-channel conv, then back to tokens."""
    v_map = rearrange(v, "b (y x) (h d) -> (b h) d y x", y=grid[0], h=heads)
    return rearrange(conv(v_map), "(b h) d y x -> b (y x) (h d)", h=heads)


def test_values_and_gradients_match_flattens_head_batched_conv():
    torch.manual_seed(0)
    heads, d, grid = 3, 4, (5, 7)
    conv = nn.Conv2d(d, d, 5, padding=2, groups=d).double()
    qkv = torch.randn(2, grid[0] * grid[1], 3 * heads * d, dtype=torch.float64, requires_grad=True)
    v = qkv[..., 2 * heads * d :]  # a strided view, as in the attention layers
    grad = torch.randn(2, grid[0] * grid[1], heads * d, dtype=torch.float64)

    expected = _flatten_dwc(v, grid, conv, heads)
    want = torch.autograd.grad(expected, (qkv, conv.weight, conv.bias), grad)
    out = depthwise_conv_tokens(v, grid, conv.weight, conv.bias, heads)
    got = torch.autograd.grad(out, (qkv, conv.weight, conv.bias), grad)

    torch.testing.assert_close(out, expected)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_no_grad_forward_matches_the_autograd_forward():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    v = torch.randn(1, 16, 16)
    with torch.no_grad():
        plain = depthwise_conv_tokens(v, (4, 4), conv.weight, conv.bias, 2)
    torch.testing.assert_close(depthwise_conv_tokens(v, (4, 4), conv.weight, conv.bias, 2), plain)
