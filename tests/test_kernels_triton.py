"""The Triton backend against the reference, on the CPU through the Triton interpreter; plus a
check that every kernel compiles for CUDA (sm_90) without a GPU, and a GPU test where one exists.

``TRITON_INTERPRET=1`` only takes effect if it is set before Triton is imported, and by the time
this module runs the test process may well have imported Triton (torch does so lazily, other
tests may too). So the interpreter checks run in a child process started with the variable set:
the ``interpreted`` fixture runs :func:`interpreter_checks` there once and hands back its
numbers; each test asserts on its part. Sizes are tiny — the interpreter is ~600x slower than
PyTorch — but ragged: N is never a multiple of the 64-token block, head dims include 24 and 48,
and one case spans several token ranges (partial sums across programs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")

TOLERANCE = 1e-3  # relative RMS, float32

# name -> (B, N, C, heads, focusing_factor, with temperature, q/k/v as strided views of one qkv)
CASES = {
    "head_dim_24": (2, 50, 48, 2, 3.0, True, False),
    "head_dim_48_strided": (1, 77, 96, 2, 3.0, True, True),
    "several_token_ranges": (1, 300, 32, 2, 3.0, True, False),
    "p_2.5_no_temperature": (2, 20, 32, 1, 2.5, False, False),
}


def rel_rms(a, b) -> float:
    return ((a.double() - b.double()).square().mean().sqrt() / b.double().square().mean().sqrt()).item()


def interpreter_checks() -> dict:
    """Runs in the child process (TRITON_INTERPRET=1): every number the tests look at."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run me in a process started with TRITON_INTERPRET=1"
    import torch
    import torch.nn.functional as F

    from vlmzoo.kernels import available_backends, focused_linear_attention
    from vlmzoo.kernels.reference import focused_linear_attention_reference

    torch.manual_seed(0)
    results: dict = {"auto_on_cpu": None, "available_on_cpu": list(available_backends("cpu"))}
    for name, (b, n, c, heads, p, with_scale, strided) in CASES.items():
        if strided:
            qkv = torch.randn(b, n, 3 * c, requires_grad=True)
            leaves, (q, k, v) = [qkv], qkv.chunk(3, dim=-1)
        else:
            q, k, v = (torch.randn(b, n, c, requires_grad=True) for _ in range(3))
            leaves = [q, k, v]
        scale = F.softplus(torch.randn(c)).requires_grad_(True) if with_scale else None
        leaves += [scale] if with_scale else []
        out = focused_linear_attention(q, k, v, heads, scale=scale, focusing_factor=p, backend="triton")
        ref = focused_linear_attention_reference(q, k, v, heads, scale, p)
        grad = torch.randn_like(ref)
        ours = torch.autograd.grad(out, leaves, grad)
        theirs = torch.autograd.grad(ref, leaves, grad)
        labels = ["qkv"] if strided else ["q", "k", "v"]
        labels += ["scale"] if with_scale else []
        results[name] = {"out": rel_rms(out, ref)} | {
            f"grad_{label}": rel_rms(a, b) for label, a, b in zip(labels, ours, theirs, strict=True)
        }

    # Only v needs a gradient: the kernels skip the other outputs.
    q, k = torch.randn(2, 1, 40, 32).unbind(0)
    v = torch.randn(1, 40, 32, requires_grad=True)
    (grad_v,) = torch.autograd.grad(focused_linear_attention(q, k, v, 2, backend="triton").sum(), v)
    (ref_v,) = torch.autograd.grad(focused_linear_attention_reference(q, k, v, 2).sum(), v)
    results["only_v"] = {"grad_v": rel_rms(grad_v, ref_v)}

    for dtype in (torch.float16, torch.bfloat16):  # |x| up to 1e4: q ** 3 alone overflows float16
        q, k, v = ((torch.rand(2, 40, 32) * 2e4 - 1e4).to(dtype).requires_grad_(True) for _ in range(3))
        scale = F.softplus(torch.randn(32)).requires_grad_(True)
        out = focused_linear_attention(q, k, v, 2, scale=scale, backend="triton")
        out.float().square().mean().backward()
        ref = focused_linear_attention_reference(*(t.detach().double() for t in (q, k, v)), 2, scale.detach())
        results[str(dtype)] = {
            "dtype_kept": out.dtype == dtype,
            "finite": bool(torch.isfinite(out).all())
            and all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v, scale)),
            "out": rel_rms(out, ref),
        }

    x = torch.randn(1, 8, 16)
    auto = focused_linear_attention(x, x, x, 2)
    results["auto_on_cpu"] = (
        "torch" if torch.equal(auto, focused_linear_attention(x, x, x, 2, backend="torch")) else "?"
    )
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = "import json, test_kernels_triton as t; print('RESULTS ' + json.dumps(t.interpreter_checks()))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.parametrize("case", [*CASES, "only_v"])
def test_values_and_gradients_match_the_reference(interpreted, case):
    errors = interpreted[case]
    assert errors and all(e <= TOLERANCE for e in errors.values()), errors


@pytest.mark.parametrize("dtype", ["torch.float16", "torch.bfloat16"])
def test_half_precision_large_inputs_stay_finite(interpreted, dtype):
    result = interpreted[dtype]
    assert result["dtype_kept"] and result["finite"], result
    assert result["out"] <= 2e-2, result  # the rounding of a half-precision output


def test_auto_never_picks_the_interpreter(interpreted):
    assert "triton" in interpreted["available_on_cpu"]  # usable when asked for by name
    assert interpreted["auto_on_cpu"] == "torch"


COMPILE_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import vlmzoo.kernels.triton_backend as tb

def compile(fn, pointers, **constexprs):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = pointers.get(name, "fp32" if name in ("p", "eps") else "i32")
    triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))

f32, common = "*fp32", dict(HAS_SCALE=True, P_IS_3=True)
for x in ("*fp32", "*bf16"):
    prec = "ieee" if x == "*fp32" else "tf32"
    compile(tb._stats_kernel, dict(X=x, INV_S=f32, STATS=f32), **common, BLOCK_N=16, BLOCK_C=128)
    compile(tb._kv_kernel, dict(K=x, V=x, INV_S=f32, K_STATS=f32, KV_PART=f32, KS_PART=f32),
            **common, DOT_PRECISION=prec, BLOCK_N=64, BLOCK_D=64)
    compile(tb._out_kernel, dict(Q=x, INV_S=f32, Q_STATS=f32, KV=f32, KS=f32, OUT=x),
            **common, DOT_PRECISION=prec, BLOCK_N=64, BLOCK_D=64)
    compile(tb._bwd_q_kernel, dict(Q=x, G=x, INV_S=f32, Q_STATS=f32, KV=f32, KS=f32, GRAD_Y=f32,
            DKV_PART=f32, DKS_PART=f32), **common, DOT_PRECISION=prec, BLOCK_N=64, BLOCK_D=64)
    compile(tb._bwd_kv_kernel, dict(K=x, V=x, INV_S=f32, K_STATS=f32, DKV=f32, DKS=f32, GRAD_PHI=f32,
            GRAD_V=x), **common, DOT_PRECISION=prec, WRITE_DV=True, WRITE_GRAD_PHI=True, BLOCK_N=64, BLOCK_D=64)
    compile(tb._focus_bwd_kernel, dict(X=x, INV_S=f32, STATS=f32, GRAD_F=f32, GRAD_X=x, DS_PART=f32),
            HAS_SCALE=True, P_IS_3=False, IS_QUERY=True, WRITE_DX=True, WRITE_DS=True, BLOCK_N=16, BLOCK_C=128)
print("COMPILED")
"""


def test_kernels_compile_for_cuda():
    """No interpreter-only constructs: Triton lowers every kernel to PTX and cubin for sm_90
    (head dim 64, float32 and bfloat16 inputs), no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "No module named 'triton.backends" in proc.stderr):
        pytest.skip("this Triton install cannot target CUDA: " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and "COMPILED" in proc.stdout, proc.stderr[-4000:]


@pytest.mark.skipif(not find_spec("torch") or not __import__("torch").cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_cuda_matches_the_reference(dtype_name):
    import torch
    import torch.nn.functional as F

    from vlmzoo.kernels import focused_linear_attention
    from vlmzoo.kernels.reference import focused_linear_attention_reference

    dtype = getattr(torch, dtype_name)
    q, k, v = (torch.randn(2, 1000, 96, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    scale = F.softplus(torch.randn(96, device="cuda")).requires_grad_(True)
    out = focused_linear_attention(q, k, v, 2, scale=scale)  # auto: triton on CUDA
    ref = focused_linear_attention_reference(*(t.float() for t in (q, k, v)), 2, scale)
    grad = torch.randn_like(ref)
    tolerance = TOLERANCE if dtype == torch.float32 else 2e-2
    assert rel_rms(out, ref) <= tolerance
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v, scale), grad.to(dtype)),
        torch.autograd.grad(ref, (q, k, v, scale), grad),
        strict=True,
    ):
        assert rel_rms(a, b) <= tolerance
