"""Focused linear attention kernels: the reference against the paper's formula, the lean torch
backend against the reference (values and gradients), half precision, gradcheck, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff

import vlmzoo.kernels.torch_backend as torch_backend
from vlmzoo.errors import InputError
from vlmzoo.kernels import (
    BackendUnavailableError,
    available_backends,
    default_backend,
    focused_linear_attention,
    triton_available,
)
from vlmzoo.kernels.reference import focused_linear_attention_reference
from vlmzoo.kernels.torch_backend import FocusedLinearAttentionFunction


def inputs(b=2, n=37, c=24, dtype=torch.float64, magnitude=1.0, requires_grad=False):
    q, k, v = (
        (magnitude * torch.randn(b, n, c, dtype=dtype)).requires_grad_(requires_grad) for _ in range(3)
    )
    scale = F.softplus(torch.randn(c, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    return q, k, v, scale


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_abs_diff(a, b) / b.abs().max().item()


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny chunks, so a few dozen tokens already take the multi-chunk and batch-grouping paths."""
    monkeypatch.setattr(torch_backend, "CHUNK_BYTES", 4 * 24 * 7)


# --- the reference is the paper --------------------------------------------------------------


def test_reference_is_the_direct_formula():
    """out_i = Σ_j (φq_i·φk_j) v_j / Σ_j (φq_i·φk_j) per head, φ written plainly (FLatten's FocusedLinearAttention)."""
    q, k, v, scale = inputs(b=2, n=9, c=12)
    q, k = q.abs() + 0.1, k.abs() + 0.1  # no head with eps-sized features only (those give ~0 / eps)
    heads, p, eps = 3, 3.0, 1e-12  # the formula has no eps in its normaliser: take it ~0 in both

    def phi(x):
        x = (torch.relu(x) + eps) / scale
        return (
            x**p / torch.linalg.norm(x**p, dim=-1, keepdim=True) * torch.linalg.norm(x, dim=-1, keepdim=True)
        )

    fq, fk = phi(q), phi(k)
    expected = torch.empty_like(v)
    for h in range(heads):
        ch = slice(4 * h, 4 * h + 4)
        for b in range(2):
            for i in range(9):
                w = torch.stack([fq[b, i, ch] @ fk[b, j, ch] for j in range(9)])
                expected[b, i, ch] = (w[:, None] * v[b, :, ch]).sum(0) / w.sum()
    out = focused_linear_attention_reference(q, k, v, heads, scale, p, eps)
    assert rel(out, expected) <= 1e-9


def test_focusing_norms_span_all_heads():
    """Per-head norms change the output by tens of percent (FLatten takes the norms over all C channels): the reference must not do it."""
    q, k, v, scale = inputs(b=1, n=16, c=8)
    full = focused_linear_attention_reference(q, k, v, 2, scale)
    per_head = torch.cat(
        [
            focused_linear_attention_reference(q[..., s], k[..., s], v[..., s], 1, scale[s])
            for s in (slice(0, 4), slice(4, 8))
        ],
        dim=-1,
    )
    assert rel(full, per_head) > 1e-2


# --- the torch backend against the reference -------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "heads", "p", "use_scale"),
    [
        ((2, 37, 24), 2, 3.0, True),
        ((3, 5, 24), 4, 3.0, True),
        ((1, 50, 48), 2, 2.5, False),
        ((2, 20, 24), 3, 6.0, True),
    ],
)
def test_torch_backend_matches_reference_float64(small_chunks, shape, heads, p, use_scale):
    q, k, v, scale = inputs(*shape, requires_grad=True)
    scale = scale if use_scale else None
    leaves = [t for t in (q, k, v, scale) if t is not None]
    ref = focused_linear_attention_reference(q, k, v, heads, scale, p)
    out = focused_linear_attention(q, k, v, heads, scale=scale, focusing_factor=p, backend="torch")
    assert rel(out, ref) <= 1e-12
    grad = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad), strict=True
    ):
        assert rel(a, b) <= 1e-10


def test_torch_backend_matches_reference_float32():
    q, k, v, scale = inputs(2, 300, 64, dtype=torch.float32, requires_grad=True)
    ref = focused_linear_attention_reference(q, k, v, 4, scale)
    out = focused_linear_attention(q, k, v, 4, scale=scale, backend="torch")
    assert rel(out, ref) <= 1e-5
    grad = torch.randn_like(ref)
    leaves = (q, k, v, scale)
    for a, b in zip(
        torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad), strict=True
    ):
        assert rel(a, b) <= 1e-4


def test_max_normalised_focusing_is_the_plain_power_on_large_inputs():
    """The backend's (x/r)ᵖ form equals xᵖ ‖x‖/‖xᵖ‖ exactly in float64, also for |x| ~ 1e4."""
    q, k, v, scale = inputs(2, 16, 24, magnitude=1e4, requires_grad=True)
    ref = focused_linear_attention_reference(q, k, v, 3, scale)
    out = focused_linear_attention(q, k, v, 3, scale=scale, backend="torch")
    assert rel(out, ref) <= 1e-12
    grads = torch.autograd.grad(out.sum(), (q, k, v, scale))
    for a, b in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v, scale)), strict=True):
        assert rel(a, b) <= 1e-9


@pytest.mark.parametrize("which", [(0,), (2,), (3,), (0, 3), (1, 2)])
def test_gradients_for_any_subset_of_inputs(small_chunks, which):
    leaves = inputs(2, 11, 24)
    for i in which:
        leaves[i].requires_grad_(True)
    wanted = [leaves[i] for i in which]
    out = focused_linear_attention(*leaves[:3], 2, scale=leaves[3], backend="torch")
    ref = focused_linear_attention_reference(*leaves[:3], 2, leaves[3])
    for a, b in zip(
        torch.autograd.grad(out.sum(), wanted), torch.autograd.grad(ref.sum(), wanted), strict=True
    ):
        assert rel(a, b) <= 1e-10


def test_strided_inputs_and_expanded_grad(small_chunks):
    """q, k, v as views of one qkv projection, and the stride-0 gradient that ``.sum()`` sends back."""
    qkv = torch.randn(2, 13, 72, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.chunk(3, dim=-1)
    scale = F.softplus(torch.randn(24, dtype=torch.float64))
    out = focused_linear_attention(q, k, v, 2, scale=scale, backend="torch")
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    (expected,) = torch.autograd.grad(focused_linear_attention_reference(q, k, v, 2, scale).sum(), qkv)
    assert rel(grad, expected) <= 1e-10


def test_gradcheck_torch_backend_function(small_chunks):
    q, k, v, scale = inputs(2, 6, 8, requires_grad=True)
    fn = lambda q, k, v, s: FocusedLinearAttentionFunction.apply(q, k, v, s, 2, 3.0, 1e-6)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, scale))


def test_empty_batch():
    q, k, v, scale = inputs(0, 5, 8)
    assert focused_linear_attention(q, k, v, 2, scale=scale).shape == (0, 5, 8)


# --- half precision --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_half_precision_large_inputs_stay_finite(dtype, backend):
    """|x| up to 1e4: q ** 3 alone overflows float16; features run in float32 (float16 ends at 65504)."""
    q, k, v, scale = inputs(2, 64, 32, dtype=torch.float32, magnitude=1e4 / 4)
    q16, k16, v16 = (t.clamp(-1e4, 1e4).to(dtype).requires_grad_(True) for t in (q, k, v))
    scale = scale.detach().requires_grad_(True)  # a float32 parameter, as under autocast
    out = focused_linear_attention(q16, k16, v16, 2, scale=scale, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().mean().backward()
    for t in (q16, k16, v16, scale):
        assert t.grad.dtype == t.dtype and torch.isfinite(t.grad).all()
    full = focused_linear_attention_reference(
        *(t.detach().double() for t in (q16, k16, v16)), 2, scale.detach()
    )
    assert rel(out, full) <= 2e-2  # the rounding of a half-precision output


# --- dispatch --------------------------------------------------------------------------------


def test_auto_picks_torch_on_cpu_and_never_needs_triton():
    assert default_backend("cpu") == "torch"
    assert default_backend("cuda", torch.float64) == "torch"
    assert default_backend("cuda") == ("triton" if triton_available() else "torch")
    assert {"reference", "torch"} <= set(available_backends("cpu"))
    q, k, v, scale = inputs(1, 8, 8, dtype=torch.float32)
    auto = focused_linear_attention(q, k, v, 2, scale=scale)
    assert torch.equal(auto, focused_linear_attention(q, k, v, 2, scale=scale, backend="torch"))


def test_auto_falls_back_to_torch_when_the_triton_kernels_fail(monkeypatch):
    """Triton that imports but cannot compile or launch (no driver, old GPU) must not break "auto"."""
    import vlmzoo.kernels as kernels

    def broken(*args):
        raise RuntimeError("no CUDA driver")

    real = kernels._backend_fn
    monkeypatch.setattr(kernels, "_TRITON_BROKEN", [])
    monkeypatch.setattr(kernels, "default_backend", lambda device, dtype: "triton")
    monkeypatch.setattr(kernels, "_backend_fn", lambda name: broken if name == "triton" else real(name))
    q, k, v, scale = inputs(1, 8, 8)
    with pytest.warns(RuntimeWarning, match="no CUDA driver"):
        out = focused_linear_attention(q, k, v, 2, scale=scale)
    assert rel(out, focused_linear_attention_reference(q, k, v, 2, scale)) <= 1e-12
    assert kernels._TRITON_BROKEN  # and "auto" stops trying


def test_scale_accepts_the_modules_broadcast_shape():
    q, k, v, scale = inputs(1, 8, 8)
    a = focused_linear_attention(q, k, v, 2, scale=scale.view(1, 1, 8))
    assert torch.equal(a, focused_linear_attention(q, k, v, 2, scale=scale))


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, _ = inputs(1, 8, 8, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="triton"):
        focused_linear_attention(q, k, v, 2, backend="triton")


# --- bad input -------------------------------------------------------------------------------


def bad_cases():
    q = torch.randn(2, 8, 12)
    s = torch.ones(12)
    return [
        ("q, k, v must have the same shape", (q, q[:, :7], q, 3), {}),
        ("same dtype", (q, q.double(), q, 3), {}),
        ("must be \\[B, N, C\\]", (q[0], q[0], q[0], 3), {}),
        ("dtype torch.int64", (q.long(), q.long(), q.long(), 3), {}),
        ("not divisible by num_heads=5", (q, q, q, 5), {}),
        ("num_heads=0", (q, q, q, 0), {}),
        ("must be > 0", (q, q, q, 3), {"scale": torch.cat([s[:11], torch.zeros(1)])}),
        ("must be > 0", (q, q, q, 3), {"scale": -s}),
        ("must be > 0", (q, q, q, 3), {"scale": torch.full((12,), float("nan"))}),
        ("C=12 temperatures", (q, q, q, 3), {"scale": torch.ones(6)}),
        ("no tokens", (q[:, :0], q[:, :0], q[:, :0], 3), {}),
        ("focusing_factor", (q, q, q, 3), {"focusing_factor": 0.0}),
        ("eps", (q, q, q, 3), {"eps": -1e-6}),
        ("backend='cuda'", (q, q, q, 3), {"backend": "cuda"}),
        ("float16/bfloat16/float32", (q.double(), q.double(), q.double(), 3), {"backend": "triton"}),
    ]


@pytest.mark.parametrize(("match", "args", "kwargs"), bad_cases(), ids=[c[0][:24] for c in bad_cases()])
def test_bad_input_is_a_clear_error(match, args, kwargs):
    with pytest.raises(InputError, match=match):
        focused_linear_attention(*args, **kwargs)
