"""The "cpp" focused-linear-attention backend (a C++ extension built on first use) against the
reference: values and every gradient, odd head widths, several chunks and threads, B > 1, no
temperature, half precision against float64, gradcheck, and what happens when it cannot be built.

The whole file skips (with the reason) where no C++ toolchain is found or the build fails; the
build happens once per machine (~30 s on 2 cores), then the cached library loads in a second.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlmzoo.kernels.cpp_backend as cpp_backend
from vlmzoo.kernels import (
    BackendUnavailableError,
    _resolve,
    available_backends,
    default_backend,
    focused_linear_attention,
)
from vlmzoo.kernels.reference import focused_linear_attention_reference


@pytest.fixture(scope="module", autouse=True)
def _extension():
    if not cpp_backend.toolchain_available():
        pytest.skip("no C++ compiler or no ninja on PATH: the cpp backend cannot be built here")
    try:
        cpp_backend.load_extension()
    except BackendUnavailableError as error:
        pytest.skip(f"the cpp backend's extension did not build: {error}")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 5 tokens: a few dozen tokens take the multi-chunk, multi-task, shared-sample paths."""
    monkeypatch.setattr(cpp_backend, "CHUNK_BYTES", 1)
    monkeypatch.setattr(cpp_backend, "MIN_CHUNK_ROWS", 5)


def inputs(b=2, n=37, c=24, dtype=torch.float64, with_scale=True, magnitude=1.0):
    q, k, v = ((magnitude * torch.randn(b, n, c, dtype=torch.float64)).to(dtype) for _ in range(3))
    scale = F.softplus(torch.randn(c, dtype=torch.float64)).to(dtype) if with_scale else None
    return q, k, v, scale


def values_and_grads(backend, q, k, v, heads, scale, grad_out, compute_dtype=None, **kw):
    """out and ∂L/∂(q, k, v[, scale]) for L = <out, grad_out>; inputs cast to compute_dtype first."""
    leaves = [t.detach().to(compute_dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    s = None if scale is None else scale.detach().to(compute_dtype or scale.dtype).requires_grad_()
    out = focused_linear_attention(*leaves, heads, scale=s, backend=backend, **kw)
    wrt = [*leaves, *([s] if s is not None else [])]
    grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype))
    return [out.detach(), *grads]


def assert_close_rel(got, want, tol):
    for g, w in zip(got, want, strict=True):
        err = (g.double() - w.double()).abs().max().item() / w.double().abs().max().item()
        assert err <= tol, f"max error {err:.2e} of max |value| (tolerance {tol:.0e})"


@pytest.mark.parametrize(
    ("b", "n", "c", "heads", "with_scale", "p"),
    [
        (2, 37, 24, 3, True, 3.0),  # head width 8
        (1, 41, 15, 3, True, 3.0),  # odd head width 5
        (3, 23, 21, 7, False, 3.0),  # odd width 3, no temperature
        (2, 29, 12, 2, True, 2.5),  # a non-integer focusing factor (the generic power path)
    ],
)
def test_values_and_all_gradients_match_the_reference_in_float64(b, n, c, heads, with_scale, p, small_chunks):
    q, k, v, scale = inputs(b, n, c, with_scale=with_scale)
    grad_out = torch.randn(b, n, c, dtype=torch.float64)
    kw = {"focusing_factor": p}
    got = values_and_grads("cpp", q, k, v, heads, scale, grad_out, **kw)
    want = values_and_grads("reference", q, k, v, heads, scale, grad_out, **kw)
    assert_close_rel(got, want, 1e-10)


def test_float32_matches_the_float64_reference_with_default_chunks():
    """One chunk per sample at this size, C = 96 / 4 heads, tokens not a multiple of anything."""
    q, k, v, scale = inputs(2, 300, 96, dtype=torch.float32)
    grad_out = torch.randn(2, 300, 96, dtype=torch.float64)
    got = values_and_grads("cpp", q, k, v, 4, scale, grad_out)
    want = values_and_grads("reference", q, k, v, 4, scale, grad_out, compute_dtype=torch.float64)
    assert_close_rel(got, want, 1e-4)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_inputs_match_the_float64_reference(dtype, tol, small_chunks):
    """float32 inside; the tolerance is a few units of the output dtype's rounding (2^-11, 2^-8)."""
    q, k, v, scale = inputs(2, 37, 24, dtype=dtype, magnitude=3.0)
    grad_out = torch.randn(2, 37, 24, dtype=torch.float64)
    got = values_and_grads("cpp", q, k, v, 3, scale, grad_out)
    assert all(g.dtype == dtype for g in got)
    want = values_and_grads("reference", q, k, v, 3, scale, grad_out, compute_dtype=torch.float64)
    assert_close_rel(got, want, tol)


def test_gradcheck_in_float64(small_chunks):
    q, k, v, scale = inputs(1, 11, 6)
    leaves = [t.requires_grad_() for t in (q, k, v, scale)]

    def fn(q, k, v, scale):
        return focused_linear_attention(q, k, v, 2, scale=scale, backend="cpp")

    assert torch.autograd.gradcheck(fn, leaves)


def test_only_the_requested_gradients_are_computed():
    q, k, v, scale = inputs(2, 19, 12)
    grad_out = torch.randn(2, 19, 12, dtype=torch.float64)
    v.requires_grad_()
    (grad_v,) = torch.autograd.grad(
        focused_linear_attention(q, k, v, 3, scale=scale, backend="cpp"), v, grad_out
    )
    (want,) = torch.autograd.grad(focused_linear_attention_reference(q, k, v, 3, scale), v, grad_out)
    assert_close_rel([grad_v], [want], 1e-10)


def test_results_do_not_depend_on_thread_timing(small_chunks):
    """Per-thread partial sums are added in thread order: two calls agree bit for bit."""
    q, k, v, scale = inputs(2, 64, 24, dtype=torch.float32)
    first = focused_linear_attention(q, k, v, 3, scale=scale, backend="cpp")
    second = focused_linear_attention(q, k, v, 3, scale=scale, backend="cpp")
    assert torch.equal(first, second)


def test_non_contiguous_inputs_are_accepted():
    q, k, v, scale = inputs(2, 17, 24)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    got = focused_linear_attention(qt, k, v, 3, scale=scale, backend="cpp")
    assert_close_rel([got], [focused_linear_attention_reference(q, k, v, 3, scale)], 1e-10)


def test_cpp_is_available_on_cpu_and_auto_does_not_pick_it():
    assert "cpp" in available_backends("cpu")
    assert "cpp" not in available_backends("meta")
    assert default_backend("cpu") == "torch"  # opt-in: the first call compiles


def test_a_failed_build_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpp_backend, "_STATE", {"error": "RuntimeError: no compiler"})
    q, k, v, _ = inputs(1, 4, 6)
    with pytest.raises(BackendUnavailableError, match="could not be built.*no compiler.*backend='auto'"):
        focused_linear_attention(q, k, v, 2, backend="cpp")
    assert "cpp" not in available_backends("cpu")
    focused_linear_attention(q, k, v, 2)  # "auto" is unaffected


def test_non_cpu_tensors_are_refused():
    with pytest.raises(BackendUnavailableError, match="CPU tensors"):
        _resolve("cpp", torch.device("cuda"), torch.float32)
