"""FLatten's focused linear attention module (Han et al. 2023, "FLatten Transformer", ICCV,
section 4; the Swin/CSWin form of LeapLabTHU/FLatten-Transformer's ``FocusedLinearAttention`` in
``models/flatten_swin.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.errors import ConfigError, InputError
from vlmzoo.kernels import focused_linear_attention
from vlmzoo.layers.token_depthwise_conv import depthwise_conv_tokens


class FocusedLinearAttention(nn.Module):
    """Focused linear attention over a fixed token grid: [B, N, C] -> [B, N, C], N = H·W.

    Parameters (names as in the FLatten checkpoints): ``qkv`` Linear(C, 3C),
    ``proj`` Linear(C, C), ``dwc`` a depthwise k×k conv over head_dim channels **shared by all
    heads** (rank restoration), ``scale`` (1, 1, C) the temperature before softplus,
    ``positional_encoding`` (1, N, C) added to the keys. Both are zero-initialised, as in FLatten.

    ``grid`` is the (H, W) token layout the depthwise conv sees (tokens are row-major: token
    i·W + j sits at row i, column j); an int means a square grid. It fixes N, the length of
    ``positional_encoding`` (a Swin window, or a PVT stage's patch grid).
    ``backend`` is passed to :func:`vlmzoo.kernels.focused_linear_attention` ("auto": Triton on
    CUDA when installed, else the lean PyTorch Function).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: int | tuple[int, int],
        qkv_bias: bool = True,
        proj_bias: bool = True,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        proj_drop: float = 0.0,
        eps: float = 1e-6,
        backend: str = "auto",
    ):
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads != 0:
            raise ConfigError(f"dim={dim} must be a positive multiple of num_heads={num_heads}")
        height, width = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if height <= 0 or width <= 0:
            raise ConfigError(f"grid={grid!r} must hold positive sizes")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={kernel_size} must be a positive odd number ('same' padding)")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid = (height, width)
        self.focusing_factor = focusing_factor
        self.eps = eps
        self.backend = backend

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(
            self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim
        )
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, height * width, dim))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C].

        ``mask`` (a shifted-window attention mask) is accepted for drop-in use in Swin blocks and
        ignored, as in FLatten's ``forward`` (which never reads it): linear attention has no
        attention matrix to mask.
        """
        del mask
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise InputError(f"expected x of shape [B, N, {self.dim}], got {tuple(x.shape)}")
        if x.shape[1] != self.num_tokens:
            height, width = self.grid
            raise InputError(
                f"x has {x.shape[1]} tokens but the declared grid is {height}x{width} = {self.num_tokens} "
                "tokens (the depthwise conv and the positional encoding need exactly that grid)"
            )
        # Step 1: q, k, v; step 2: positional encoding on the keys only.
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = k + self.positional_encoding
        # Steps 3–9: the kernel (temperature after softplus, per channel).
        out = focused_linear_attention(
            q,
            k,
            v,
            self.num_heads,
            scale=F.softplus(self.scale).reshape(-1),
            focusing_factor=self.focusing_factor,
            eps=self.eps,
            backend=self.backend,
        )
        # Step 10: rank restoration — the depthwise conv on v, one set of weights for every head.
        out = out + depthwise_conv_tokens(v, self.grid, self.dwc.weight, self.dwc.bias, self.num_heads)
        # Step 11: output projection.
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, grid={self.grid}, "
            f"focusing_factor={self.focusing_factor}, backend={self.backend!r}"
        )
