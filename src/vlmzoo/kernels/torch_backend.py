"""Focused linear attention in plain PyTorch, lean in memory: a custom autograd Function.

Same function as :mod:`vlmzoo.kernels.reference` (FLatten's attention core), arranged for speed and
memory on any device, without a compiler:

* **Saves only its inputs** (q, k, v, the temperature) and small state: per head
  ``A = φ(k)ᵀ [v | 1] / N`` = [kᵀv | Σk] / N, [B, h, d, d+1], and per token of q and k the
  three numbers of the focusing (below); backward recomputes the features from them.
* **Works in token chunks.** Everything but the matmuls with ``A`` is per token, so the tokens
  are processed a chunk at a time: temporaries are chunk-sized (they stay in cache and the
  allocator recycles them instead of page-faulting fresh memory on every call: with glibc's
  default allocator large temporaries are first-touch page faults on every call, measured in
  docs/benchmarks.md); the only full-size tensors are the output in forward and the input
  gradients in backward — the 4·S floor, plus a chunk.
* **One matmul gives numerator and normaliser**: the column ``Σk/N`` of ``A`` makes ``q A``
  hold ``q kᵀv/N`` and ``q·Σk/N`` side by side (steps 7–8).
* **Max-normalised focusing.** φ(x) = xᵖ ‖x‖ / ‖xᵖ‖ is homogeneous of degree 1, so
  φ(x) = r · φ(x / r) for any r > 0. With u = x / r, r set from the token's max, the power can
  neither overflow nor (for the usual spread of values) underflow into denormals, whatever the
  input magnitude (FLatten's own fp16 NaNs were fixed upstream by scaling k and v by N^-½ before
  kᵀv, its commit e205a01 "fix numerical instability"), and gradients are written in u as well.
* **Per-token factors are folded away.** φ = f · y with y = uᵖ and f = r ‖u‖ / ‖y‖ per
  token; for queries f cancels between numerator and normaliser except in the eps term,
  ``out = y kᵀv / (y · Σk + eps N / f)`` — exactly the same value, one pass fewer.
* **float32 accumulation** for float16/bfloat16 inputs (chunks are cast on the fly); outputs
  and gradients come back in the input dtype.

Gradients, per head and query token (G = ∂L/∂out, [ñ | d̃] = y A, D = d̃ + eps/f)::

    R = [G / D,  −(G·ñ) / D²]     ∂L/∂A = Σ yᵀ R     ∂L/∂y (f fixed) = R Aᵀ
    keys:  ∂L/∂φ(k) = [v | 1] (∂L/∂A)ᵀ / N,   ∂L/∂v = φ(k) (∂L/∂A)[:, :d] / N

Through the focusing (sums over all C channels of the token; g = ∂L/∂φ, s = g·y)::

    ∂L/∂x' = (‖u‖/‖y‖) [p uᵖ⁻¹ ⊙ (g − s y / ‖y‖²) + s u / ‖u‖²]
    x' = (ReLU(a) + eps) / s_c:  ∂L/∂a = ∂L/∂x' / s_c · [a > 0],  ∂L/∂s_c = −Σ ∂L/∂x' · x' / s_c

For queries the same formula is fed g·f = ∂L/∂y, which turns the prefactor into 1/r.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# Rows per chunk: one [rows, C] float32 temporary of at most CHUNK_BYTES — small enough for the
# allocator to recycle it and for the elementwise passes to run from cache, large enough that
# per-op overhead stays small next to the arithmetic — and at most a quarter of all B·N rows
# (but not below MIN_CHUNK_ROWS), so that the temporaries stay a fraction of one [B, N, C].
CHUNK_BYTES = 4 * 2**20
MIN_CHUNK_ROWS = 512


def _chunks(batch: int, tokens: int, channels: int) -> list[tuple[slice, slice]]:
    """(batch slice, token slice) tiles: a token range of one sample when N is long, whole
    samples (several at once) when it is short — e.g. Swin windows."""
    rows = min(CHUNK_BYTES // (4 * channels), max(MIN_CHUNK_ROWS, -(-batch * tokens // 4)))
    rows = max(1, rows)
    if tokens >= rows:
        pieces = -(-tokens // rows)
        step = -(-tokens // pieces)  # equal pieces: no tiny last chunk
        return [
            (slice(b, b + 1), slice(n0, min(n0 + step, tokens)))
            for b in range(batch)
            for n0 in range(0, tokens, step)
        ]
    per = max(1, rows // tokens)
    return [(slice(b0, min(b0 + per, batch)), slice(0, tokens)) for b0 in range(0, batch, per)]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[b, n, C] -> [b, h, n, d] as a view (step 6)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _per_token(x: torch.Tensor) -> torch.Tensor:
    """A per-token factor [b, n, 1] -> [b, 1, n, 1], to broadcast over the heads of [b, h, n, d]."""
    return x.unsqueeze(1)


def _unit(p: float) -> float:
    """The largest entry of u: uᵖ <= 2^18. Keeps the squares in ‖uᵖ‖ and the products in the
    backward inside float32's normal range (no overflow, and no ~100x slower denormals) for
    entries down to ~1e-8 of the token's max — eps-sized kernels next to activations ~100."""
    return 2.0 ** (18.0 / p)


class _Features:
    """Steps 3–5 for one chunk: x' = (ReLU(a) + eps) / s, u = x' / r, y = uᵖ, φ = f · y.

    Holds u and y ([b, n, C], fresh buffers; ``keep_u=False`` lets y take u's memory) and the
    per-token r, ‖u‖, ‖y‖ and f = r ‖u‖ / ‖y‖ ([b, n, 1]). ``stats`` ([b, n, 3]: r, ‖u‖, ‖y‖) is
    written by the forward pass and read back by the backward one, which then skips the three
    per-token reductions (B·N·3 floats: part of the small saved state, like A).
    """

    def __init__(
        self,
        a: torch.Tensor,
        inv_scale: torch.Tensor | None,
        p: float,
        eps: float,
        dtype: torch.dtype,
        keep_u: bool,
        stats: torch.Tensor,
        stats_known: bool,
    ):
        u = torch.clamp_min(a, 0) if a.dtype == dtype else a.to(dtype).clamp_min_(0)  # step 3
        if inv_scale is None:
            u.add_(eps)
        else:  # (ReLU(a) + eps) / s = ReLU(a) / s + eps / s in one pass (step 4)
            torch.addcmul(inv_scale * eps, u, inv_scale, out=u)
        self.r, self.norm_u, self.norm_y = stats.split(1, dim=-1)
        if not stats_known:
            torch.div(u.amax(dim=-1, keepdim=True), _unit(p), out=self.r)
        u.div_(self.r)
        if not stats_known:
            torch.linalg.vector_norm(u, dim=-1, keepdim=True, out=self.norm_u)
        self.u = u if keep_u else None
        self.y = torch.pow(u, p) if keep_u else u.pow_(p)  # step 5, on u <= 2^E: no overflow
        if not stats_known:
            torch.linalg.vector_norm(self.y, dim=-1, keepdim=True, out=self.norm_y)
        self.f = self.r * self.norm_u / self.norm_y


def _focus_backward(
    g: torch.Tensor,
    feats: _Features,
    prefactor: torch.Tensor,
    a: torch.Tensor,
    inv_scale: torch.Tensor | None,
    p: float,
    grad_a: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
) -> None:
    """Push g ([b, n, C], overwritten) back through steps 5, 4, 3 (module docstring).

    ``prefactor`` [b, n, 1] is ‖u‖/‖y‖ when g = ∂L/∂φ and 1/r when g = ∂L/∂y. Writes ``grad_a``
    ([b, n, C] view) and accumulates into ``grad_scale`` [C]. Everything here is token-major
    with per-token [b, n, 1] factors: the layout PyTorch's elementwise kernels run fastest on.
    """
    u, y = feats.u, feats.y
    s = (g * y).sum(dim=-1, keepdim=True)  # g · y over all C
    g.addcmul_(y, s / feats.norm_y.square(), value=-1)  # t = g − s y / ‖y‖²
    gamma = s.div_(feats.norm_u.square() * p)
    if p == 3.0:  # uᵖ⁻¹ ⊙ t + γ u = u ⊙ (u ⊙ t + γ): no power needed
        torch.addcmul(gamma, u, g, out=g).mul_(u)
    else:
        g.mul_(torch.pow(u, p - 1, out=y)).addcmul_(u, gamma)
    # g = ∂L/∂x' / (p · prefactor)
    weight = prefactor * p
    if grad_scale is not None:  # −Σ ∂L/∂x' · x' / s, with x' = r u
        token_w = (weight * feats.r).transpose(-1, -2)  # [b, 1, n]
        grad_scale.sub_((token_w @ (g * u)).sum(dim=(0, 1)).mul_(inv_scale))
    if grad_a is not None:
        g.mul_(weight)
        if inv_scale is not None:
            g.mul_(inv_scale)
        # ReLU's gradient (step 3): zero where a <= 0, as torch's own ReLU backward.
        torch.ops.aten.threshold_backward.grad_input(g, a.to(g.dtype), 0, grad_input=grad_a)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv_scale: torch.Tensor | None,
    num_heads: int,
    p: float,
    eps: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns out [B, N, C] (input dtype), A = [kᵀv | Σk] / N [B, h, d, d+1] and the per-token
    stats of q and k [2, B, N, 3] (both ``dtype``)."""
    batch, tokens, channels = q.shape
    d = channels // num_heads
    chunks = _chunks(batch, tokens, channels)

    # Keys (steps 3–5 for k, then 7–8): A accumulates chunk by chunk.
    state = q.new_zeros(batch, num_heads, d, d + 1, dtype=dtype)
    stats = q.new_empty(2, batch, tokens, 3, dtype=dtype)  # per token of q and k: r, ‖u‖, ‖y‖
    for bs, ns in chunks:
        kf = _Features(k[bs, ns], inv_scale, p, eps, dtype, False, stats[1, bs, ns], stats_known=False)
        phi = _heads(kf.y.mul_(kf.f), num_heads)
        state[bs, :, :, :d] += phi.transpose(-1, -2) @ _heads(v[bs, ns], num_heads).to(dtype)
        state[bs, :, :, d] += phi.sum(dim=-2)
        del kf, phi
    state.div_(tokens)  # the N^-½ · N^-½ of step 8, applied to the small state, not to k and v

    # Queries (steps 3–5 for q, 7–9), written straight into the head-major output.
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for bs, ns in chunks:
        qf = _Features(q[bs, ns], inv_scale, p, eps, dtype, False, stats[0, bs, ns], stats_known=False)
        num = _heads(qf.y, num_heads) @ state[bs]  # [b, h, n, d+1] = (ñ, d̃) = y A
        den = num[..., d:].add_(_per_token(eps / qf.f))  # d̃ + eps/f: f cancels elsewhere
        torch.div(num[..., :d], den, out=_heads(out[bs, ns], num_heads))
        del qf, num
    return out, state, stats


def _backward(
    ctx_tensors: tuple[torch.Tensor, ...],
    grad_out: torch.Tensor,
    needs: tuple[bool, ...],
    num_heads: int,
    p: float,
    eps: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, ...]:
    q, k, v, scale, state, stats = ctx_tensors
    need_q, need_k, need_v, need_s = needs
    batch, tokens, channels = q.shape
    d = channels // num_heads
    inv_scale = None if scale is None else scale.to(dtype).reciprocal()
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
    grad_s = torch.zeros(channels, dtype=dtype, device=q.device) if need_s else None
    chunks = _chunks(batch, tokens, channels)

    # Queries: ∂L/∂A over all chunks, and ∂L/∂q chunk by chunk.
    grad_state = torch.zeros_like(state)
    for bs, ns in chunks:
        qf = _Features(q[bs, ns], inv_scale, p, eps, dtype, True, stats[0, bs, ns], stats_known=True)
        g = _heads(grad_out[bs, ns], num_heads)
        a = state[bs]
        y = _heads(qf.y, num_heads)
        r = y @ a  # [b, h, n, d+1] = (ñ, d̃), overwritten with R below
        den = r[..., d:] + _per_token(eps / qf.f)
        g_dot_num = r[..., :d].mul_(g).sum(dim=-1, keepdim=True)
        torch.div(g, den, out=r[..., :d])
        torch.div(g_dot_num, den.square_(), out=r[..., d:]).neg_()
        grad_state[bs] += y.transpose(-1, -2) @ r
        del den, g_dot_num
        if need_q or need_s:
            grad_y = torch.empty_like(qf.y)  # token-major, filled head by head by the matmul
            torch.matmul(r, a.transpose(-1, -2), out=_heads(grad_y, num_heads))
            del r
            _focus_backward(
                grad_y,
                qf,
                1 / qf.r,
                q[bs, ns],
                inv_scale,
                p,
                None if grad_q is None else grad_q[bs, ns],
                grad_s,
            )
        del qf

    # Keys and values: A = φ(k)ᵀ [v | 1] / N.
    if need_k or need_v or need_s:
        grad_state.div_(tokens)
        g_kv = grad_state[..., :d]
        g_ksum = grad_state[..., d].unsqueeze(1).contiguous()  # [B, 1, h, d]; strided, it is 7x slower
        for bs, ns in chunks:
            kf = _Features(k[bs, ns], inv_scale, p, eps, dtype, need_k or need_s, stats[1, bs, ns], True)
            if grad_v is not None:  # ∂L/∂v = f · y (∂L/∂A)[:, :d]
                dv = _heads(kf.y, num_heads) @ g_kv[bs]
                torch.mul(dv, _per_token(kf.f), out=_heads(grad_v[bs, ns], num_heads))
                del dv
            if need_k or need_s:
                vh = _heads(v[bs, ns], num_heads).to(dtype)
                grad_phi = torch.empty_like(kf.y)  # token-major: [v | 1] (∂L/∂A)ᵀ
                torch.matmul(vh, g_kv[bs].transpose(-1, -2), out=_heads(grad_phi, num_heads))
                grad_phi.unflatten(-1, (num_heads, d)).add_(g_ksum[bs])
                _focus_backward(
                    grad_phi,
                    kf,
                    kf.norm_u / kf.norm_y,
                    k[bs, ns],
                    inv_scale,
                    p,
                    None if grad_k is None else grad_k[bs, ns],
                    grad_s,
                )
                del grad_phi
            del kf

    if grad_s is not None:
        grad_s = grad_s.to(scale.dtype)
    return grad_q, grad_k, grad_v, grad_s


class FocusedLinearAttentionFunction(torch.autograd.Function):
    """(q, k, v, scale, num_heads, p, eps) -> out; saves the inputs, the [B, h, d, d+1] state and
    three numbers per token of q and k."""

    @staticmethod
    def forward(ctx, q, k, v, scale, num_heads, focusing_factor, eps):  # type: ignore[override]
        dtype = torch.promote_types(q.dtype, torch.float32)
        inv_scale = None if scale is None else scale.to(dtype).reciprocal()
        out, state, stats = _forward(q, k, v, inv_scale, num_heads, focusing_factor, eps, dtype)
        ctx.save_for_backward(q, k, v, scale, state, stats)
        ctx.hyper = (num_heads, focusing_factor, eps, dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        grads = _backward(ctx.saved_tensors, grad_out, tuple(ctx.needs_input_grad[:4]), *ctx.hyper)
        return (*grads, None, None, None)


def focused_linear_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: torch.Tensor | None = None,
    focusing_factor: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """q, k, v [B, N, C], scale [C] or None -> [B, N, C]. Unvalidated: use the dispatch."""
    return FocusedLinearAttentionFunction.apply(q, k, v, scale, num_heads, float(focusing_factor), float(eps))
