"""FLatten's rank-restoring depthwise conv (Han et al. 2023, section 4: DWC(V)) run on token-major
activations, with its kernel shared by all heads.

FLatten (``FocusedLinearAttention.forward`` in LeapLabTHU/FLatten-Transformer's
``models/flatten_swin.py``) reshapes v to ``(b h) d H W`` and runs one ``d``-channel depthwise
conv on it. Here the same function runs on the token-major ``[B, N, C]`` tensor directly:

* **No layout copies in forward.** ``[B, H·W, C]`` *is* NHWC, so the map is a permuted view and
  the conv runs channels-last with the ``d``-channel kernel repeated over the ``h`` heads
  (groups = C). The weight gradient of the repeat sums over heads: the kernel stays shared.
  (The ``(b h) d H W`` rearrangement copies v in and out; measured 10x slower forward at
  56x56x64 on one thread, docs/benchmarks.md "FLatten models".)
* **Direct weight gradient on CPU.** oneDNN's depthwise weight gradient is the module's hotspot
  (2.4 ms at 56x56x64, 15 ms at 112x112x64 on one thread). It is a correlation of the padded
  input with the output gradient, i.e. one grouped conv whose *kernel* is the gradient map
  (groups = C, output k x k): 0.6 ms and 4.1 ms there. Every FLatten-PVT/-Swin stage shape
  measured (7x7x512 to 112x112x64) wins, so CPU always takes it; other devices keep
  ``torch.nn.functional.conv2d``'s own backward (cuDNN has fast depthwise kernels; a k x k
  output conv with an H x W kernel is not what they are tuned for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def depthwise_conv_tokens(
    x: torch.Tensor,
    grid: tuple[int, int],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_heads: int,
) -> torch.Tensor:
    """Depthwise k x k conv ('same' padding) of each head's d channels on the token grid, one
    kernel for all heads: x [B, H·W, C] (any strides), weight [d, 1, k, k], bias [d] -> [B, H·W, C].

    The same values as FLatten's ``dwc(rearrange(v, "b (H W) (h d) -> (b h) d H W"))`` reshaped
    back to tokens.
    """
    full_weight = weight.repeat(num_heads, 1, 1, 1)  # [C, 1, k, k]; grads sum over heads
    full_bias = bias.repeat(num_heads) if bias is not None else None
    if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or full_weight.requires_grad):
        return _DepthwiseConvTokens.apply(x, grid, full_weight, full_bias)
    out = F.conv2d(
        _to_map(x, grid), full_weight, full_bias, padding=weight.shape[-1] // 2, groups=x.shape[-1]
    )
    return _to_tokens(out)


def _to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, H·W, C] -> [B, C, H, W], a view with NHWC strides (channels-last when x is dense)."""
    return x.unflatten(1, grid).permute(0, 3, 1, 2)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H·W, C] (a view when x is channels-last)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class _DepthwiseConvTokens(torch.autograd.Function):
    """Forward: channels-last depthwise conv. Backward: input gradient by the conv with the
    flipped kernel; weight gradient by one grouped conv of the padded input with the output
    gradient as kernel (module docstring)."""

    @staticmethod
    def forward(ctx, x, grid, weight, bias):  # type: ignore[override]
        pad = weight.shape[-1] // 2
        x_map = _to_map(x, grid).contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x_map, weight)
        ctx.grid, ctx.has_bias = grid, bias is not None
        return _to_tokens(F.conv2d(x_map, weight, bias, padding=pad, groups=x.shape[-1]))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x_map, weight = ctx.saved_tensors
        batch, channels, height, width = x_map.shape
        k = weight.shape[-1]
        pad = k // 2
        g_map = _to_map(grad_out, ctx.grid).contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # stride 1, symmetric padding: the transposed conv is the conv with the flipped kernel
            grad_x = _to_tokens(F.conv2d(g_map, weight.flip(-1, -2), padding=pad, groups=channels))
        if ctx.needs_input_grad[2]:
            # dW[c, i, j] = Σ_{b,y,x} x_pad[b, c, y+i, x+j] · g[b, c, y, x]: group c of a conv whose
            # input is sample-major channel c's padded maps and whose kernel is c's gradient maps.
            x_pad = F.pad(x_map, (pad, pad, pad, pad)).transpose(0, 1)  # [C, B, H+2p, W+2p]
            inputs = x_pad.reshape(1, channels * batch, height + 2 * pad, width + 2 * pad)
            kernels = g_map.transpose(0, 1).contiguous()  # [C, B, H, W]
            grad_w = F.conv2d(inputs, kernels, groups=channels).reshape(channels, 1, k, k)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_out.sum(dim=(0, 1))
        return grad_x, None, grad_w, grad_b
