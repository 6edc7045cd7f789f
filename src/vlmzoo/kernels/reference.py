"""Focused linear attention — the core of LeapLabTHU/FLatten-Transformer's
``FocusedLinearAttention.forward`` (``models/flatten_swin.py``), from the ReLU kernel to
``q @ kv * z`` — written to be read next to the paper (Han et al. 2023, section 4).

This is the test oracle: every other backend is checked against it. It favours clarity over
speed and memory (it keeps every intermediate alive for autograd), and it only deviates from a
literal transcription in one place: float16/bfloat16 inputs are computed in float32, because
``q ** 3`` of a large half-precision activation overflows (float16 ends at 65504: an activation
of 41 already does) and an oracle that
returns ``inf`` is of no use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange


def focus(x: torch.Tensor, focusing_factor: float) -> torch.Tensor:
    """FLatten's focused function f_p: sharpen the direction of each token, keep its length. [..., C] -> [..., C].

    ``x ** p`` pulls every token towards its largest channels; dividing by the new norm and
    multiplying by the old one puts the length back, so only the direction is focused. Both
    norms run over all C channels of a token, across heads (per head changes outputs by ~40%).
    """
    norm = x.norm(dim=-1, keepdim=True)
    x = x**focusing_factor
    return x / x.norm(dim=-1, keepdim=True) * norm


def focused_linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: torch.Tensor | None = None,
    focusing_factor: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Non-causal focused linear attention: q, k, v [B, N, C] -> [B, N, C].

    ``k`` already carries the positional encoding (step 2); ``scale`` is the per-channel
    temperature after softplus, [C] (None: no temperature). ``eps`` is the constant of both
    the kernel (step 3) and the normaliser (step 7), 1e-6 in the FLatten repo. No validation:
    call :func:`vlmzoo.kernels.focused_linear_attention`, which checks the inputs.
    """
    out_dtype = q.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))

    # Step 3: a positive kernel, phi(x) = ReLU(x) + eps.
    q = F.relu(q) + eps
    k = F.relu(k) + eps
    # Step 4: learnable per-channel temperature.
    if scale is not None:
        q = q / scale.to(compute_dtype)
        k = k / scale.to(compute_dtype)
    # Step 5: focusing, norms over all C channels.
    q = focus(q, focusing_factor)
    k = focus(k, focusing_factor)
    # Step 6: split heads.
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=num_heads) for t in (q, k, v))
    n = k.shape[-2]
    # Step 7: normaliser z_i = 1 / (q_i · mean_j k_j + eps).
    z = 1 / (einsum(q, k.mean(dim=-2), "b h n d, b h d -> b h n") + eps)
    # Step 8: kv = (k N^-½)ᵀ (v N^-½) — the N^-½ keeps kv at the size of one token's kᵀv in fp16.
    kv = einsum(k * n**-0.5, v * n**-0.5, "b h n d, b h n e -> b h d e")
    out = einsum(q, kv, "b h n d, b h d e -> b h n e") * z.unsqueeze(-1)
    # Step 9: concatenate heads, head-major channel order.
    return rearrange(out, "b h n e -> b n (h e)").to(out_dtype)
