"""FLatten's focused linear attention on the token grid: global, or inside (shifted) windows.

How FLatten uses it (LeapLabTHU/FLatten-Transformer's ``models/flatten_swin.py``, ``flatten_pvt.py``
and the ``cfgs/*.yaml``): FLatten-Swin's "L" stages run it inside Swin windows whose size
(56) is clamped to the feature map, i.e. over the whole map; FLatten-PVT runs it over the whole
map with no spatial reduction; a ViT block of type ``focused_linear`` runs it over all tokens.
This module covers the three: ``window_size=None`` is global attention over the grid at any
resolution, an integer is Swin-style windows (clamped with the original's shorter-side rule,
padded with unmasked zeros, cyclically shifted by ``shift_size`` — and, as in FLatten, *without*
the shift mask, which FLatten's ``FocusedLinearAttention.forward`` accepts and never reads).

It is :class:`vlmzoo.layers.focused_linear_attention.FocusedLinearAttention` (parameters, init,
kernel and backend) called with the token grid. Per window (or the whole grid) of h x w tokens,
as in that ``forward``: q, k, v = qkv(x); k += positional encoding; focused linear attention
(:func:`vlmzoo.kernels.focused_linear_attention`: kernel, temperature, focusing, normalised
linear attention); plus the rank-restoring depthwise conv of v, shared across heads, on the
h x w map (Han et al. 2023, section 4); then ``proj``. The positional encoding is a (1, n, C) table for the n tokens of the window the
module was built for (the native grid when global); on another window/grid it is resized
bilinearly as a map (FLatten itself only runs its native size).

Prefix tokens (global only): they take part in the linear attention like every token — as
queries and as keys/values, so they see and are seen by the whole grid — but get no positional
encoding on their keys and no DWC term (both are defined on the grid).
:mod:`vlmzoo.layers.spatial_attention` explains the choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vlmzoo.kernels import focused_linear_attention
from vlmzoo.kernels.reference import focused_linear_attention_reference
from vlmzoo.layers.focused_linear_attention import FocusedLinearAttention
from vlmzoo.layers.spatial_attention import SpatialAttention
from vlmzoo.layers.token_depthwise_conv import depthwise_conv_tokens


class FocusedLinearWindowAttention(FocusedLinearAttention, SpatialAttention):
    """Focused linear attention, global or windowed: [B, P + H·W, C] -> [B, P + H·W, C].

    A :class:`FocusedLinearAttention` (same parameters, names and init as FLatten's: ``qkv``,
    ``proj``, ``dwc`` shared across heads, ``scale``, ``positional_encoding``) called with the
    token grid. Its positional encoding is built for the module's window, or for ``native_grid``
    when global (``window_size=None``); it runs any grid (resizing the encoding) and prefix tokens,
    which the fixed-grid base module does not.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | None = None,
        shift_size: int = 0,
        num_prefix_tokens: int = 0,
        qkv_bias: bool = True,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        native_grid: tuple[int, int] | None = None,
        backend: str = "auto",
    ):
        if window_size is None and native_grid is None:
            raise ValueError(
                "global focused linear attention needs native_grid (sizes the positional encoding)"
            )
        if window_size is not None and num_prefix_tokens:
            raise ValueError("prefix tokens are supported by global focused linear attention only")
        if window_size is not None and not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        grid = (window_size, window_size) if window_size is not None else tuple(native_grid)  # type: ignore[arg-type]
        super().__init__(
            dim,
            num_heads,
            grid,
            qkv_bias=qkv_bias,
            focusing_factor=focusing_factor,
            kernel_size=kernel_size,
            backend=backend,
        )
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_prefix_tokens = num_prefix_tokens

    def key_position(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, h·w, C] positional encoding for an h x w window/grid (bilinear resize if not native)."""
        if tuple(grid) == self.grid:
            return self.positional_encoding
        pe = rearrange(self.positional_encoding, "1 (h w) c -> 1 c h w", h=self.grid[0])
        pe = F.interpolate(pe.float(), size=grid, mode="bilinear", align_corners=False)
        return rearrange(pe, "1 c h w -> 1 (h w) c").to(self.positional_encoding.dtype)

    def attend(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
        """FLatten's ``FocusedLinearAttention.forward`` up to ``proj``, on [G, P + h·w, C] windows
        (or whole grids) of one h x w shape, before
        ``proj`` — :meth:`FocusedLinearAttention.forward` with a run-time grid and prefix tokens."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        pe = self.key_position(grid)
        k = torch.cat([k[:, :num_prefix], k[:, num_prefix:] + pe], dim=1) if num_prefix else k + pe
        # Meta tensors (parameter/FLOP counting, vlmzoo.models.summary) take the plain reference: the kernel
        # entry point checks the temperature's values, which meta tensors do not have.
        scale = F.softplus(self.scale).reshape(-1)
        if q.device.type == "meta":
            out = focused_linear_attention_reference(
                q, k, v, self.num_heads, scale, self.focusing_factor, self.eps
            )
        else:
            out = focused_linear_attention(
                q,
                k,
                v,
                self.num_heads,
                scale=scale,
                focusing_factor=self.focusing_factor,
                eps=self.eps,
                backend=self.backend,
            )
        # Step 10: depthwise conv of v on the map, one d-channel conv shared by all heads.
        local = depthwise_conv_tokens(v[:, num_prefix:], grid, self.dwc.weight, self.dwc.bias, self.num_heads)
        if num_prefix:
            return torch.cat([out[:, :num_prefix], out[:, num_prefix:] + local], dim=1)
        return out + local

    def window_and_shift(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The original Swin's clamp: a window reaching the shorter side becomes it, unshifted."""
        side = min(grid)
        if side <= self.window_size:
            return side, 0
        return self.window_size, self.shift_size

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        """x: [B, P + H·W, C], grid (H, W) -> [B, P + H·W, C]."""
        self.split_prefix(x, grid)  # shape check
        if self.window_size is None:
            return self.proj_drop(self.proj(self.attend(x, grid, self.num_prefix_tokens)))
        (h, w), batch = grid, x.shape[0]
        window, shift = self.window_and_shift(grid)
        pad_h, pad_w = -h % window, -w % window
        tokens = F.pad(x.unflatten(1, grid), (0, 0, 0, pad_w, 0, pad_h))  # unmasked zeros, as in Swin
        if shift:  # no mask: FLatten's linear attention ignores Swin's shift mask
            tokens = torch.roll(tokens, shifts=(-shift, -shift), dims=(1, 2))
        windows = rearrange(tokens, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window, ww=window)
        out = self.attend(windows, (window, window))
        out = rearrange(
            out, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", b=batch, nh=(h + pad_h) // window, wh=window
        )
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return self.proj_drop(self.proj(out[:, :h, :w].flatten(1, 2)))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"num_prefix_tokens={self.num_prefix_tokens}"
        )
