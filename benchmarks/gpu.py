"""Focused linear attention on one GPU: Triton parity, then time and peak memory against the peers.

Run it through ``benchmarks/gpu.sh`` (one command, one JSON file, under 5 minutes on one GPU):

    bash benchmarks/gpu.sh --out gpu.json          # on a machine with a CUDA GPU
    bash benchmarks/gpu.sh --dry-run --out x.json  # anywhere: tiny sizes, Triton's CPU interpreter

What it writes (``--out``, JSON):

- ``parity``: the Triton backend against the torch backend and against a float64 evaluation of the
  same formula (``backend="reference"`` on float64 inputs), outputs and the gradients of q, k, v and
  the temperature, for fp32 and bf16, head widths 64, 40 and 24 (odd multiples of 8, where tile
  shapes are easy to get wrong) and N not a multiple of any block size (1000, 4097). Each entry
  holds the max abs difference relative to the float64 values' max magnitude and whether it is
  within tolerance (2e-4 fp32, 2e-2 bf16: a bf16 output's rounding).
- ``timing``: forward and forward+backward milliseconds (median of CUDA-event-timed repeats) and
  peak extra memory (``torch.cuda.max_memory_allocated`` above what the inputs held) at N = 4096,
  16384, 65536, C = 768 / 12 heads, B = 1, bf16, for: vlmzoo's ``triton`` and ``torch`` backends;
  ``sdpa``, softmax attention through ``F.scaled_dot_product_attention`` (flash where PyTorch picks
  it: bf16, head width 64), a different function shown for what linear attention buys; and the
  ``flash-linear-attention`` package (``fla``) when installed — its linear-attention kernels are
  causal and have no focusing function, so they do not compute FLatten's non-causal focused
  attention: they are timed as a speed reference only and marked ``"same_function": false``.
- ``machine``: GPU name, torch / triton / CUDA versions, and whether this was a dry run.

``--dry-run`` runs the same code paths with N in (64, 100) and C = 96 on the CPU under
``TRITON_INTERPRET=1`` (gpu.sh sets it before Python starts: Triton reads it at import), timing
with ``time.perf_counter`` and memory left out; CI runs it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlmzoo.kernels import available_backends, focused_linear_attention

TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 2e-2}


def _inputs(n: int, c: int, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(1, n, c, generator=g) for _ in range(3))
    scale = F.softplus(torch.randn(c, generator=g))
    return [t.to(device=device, dtype=dtype if t.ndim == 3 else torch.float32) for t in (q, k, v, scale)]


def _run(backend: str, heads: int, tensors: list[torch.Tensor], grad: torch.Tensor | None):
    """Output and (with ``grad``) the gradients of q, k, v and the temperature."""
    leaves = [t.detach().clone().requires_grad_(grad is not None) for t in tensors]
    q, k, v, scale = leaves
    out = focused_linear_attention(q, k, v, heads, scale=scale, backend=backend)
    if grad is None:
        return [out.detach()]
    out.backward(grad.to(out.dtype))
    return [out.detach(), *(t.grad for t in leaves)]


def parity(device: str, dry_run: bool) -> list[dict]:
    """Triton vs torch backend vs float64, per dtype, head width and N."""
    if "triton" not in available_backends(device):
        return [{"skipped": f"the triton backend cannot run on {device} here"}]
    rows = []
    sizes = (40, 37) if dry_run else (1000, 4097)
    for dtype in (torch.float32, torch.bfloat16):
        for head_width in (64, 40, 24):
            heads = 2 if dry_run else 4
            c = heads * head_width
            for n in sizes:
                tensors = _inputs(n, c, dtype, device)
                grad = torch.randn(1, n, c, generator=torch.Generator().manual_seed(1)).to(device)
                exact = _run("reference", heads, [t.double() for t in tensors], grad.double())
                triton = _run("triton", heads, tensors, grad)
                torch_ = _run("torch", heads, tensors, grad)
                names = ("out", "dq", "dk", "dv", "dscale")
                for name, e, a, b in zip(names, exact, triton, torch_, strict=True):
                    size = e.abs().max().item() or 1.0
                    err_triton = (a.double() - e).abs().max().item() / size
                    err_torch = (b.double() - e).abs().max().item() / size
                    rows.append(
                        {
                            "dtype": str(dtype).removeprefix("torch."),
                            "head_width": head_width,
                            "n": n,
                            "tensor": name,
                            "triton_vs_float64": err_triton,
                            "torch_vs_float64": err_torch,
                            "ok": err_triton <= TOLERANCE[dtype],
                        }
                    )
    return rows


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def cuda(fn: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    def cpu(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)

    return cuda if device == "cuda" else cpu


def _implementations(heads: int) -> dict[str, Callable]:
    """name -> fn(q, k, v, scale) -> out, for every implementation that can run here."""

    def ours(backend: str):
        return lambda q, k, v, s: focused_linear_attention(q, k, v, heads, scale=s, backend=backend)

    def sdpa(q, k, v, s):
        split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)

    impls = {"triton": ours("triton"), "torch": ours("torch"), "sdpa": sdpa}
    try:  # flash-linear-attention: causal linear attention, a speed reference (see the docstring)
        from fla.ops.linear_attn import chunk_linear_attn

        def fla(q, k, v, s):
            split = [t.unflatten(-1, (heads, -1)) for t in (q, k, v)]
            out = chunk_linear_attn(*split, normalize=True)
            return (out[0] if isinstance(out, tuple) else out).flatten(2)

        impls["fla"] = fla
    except Exception:
        pass
    return impls


def timing(device: str, dry_run: bool, repeats: int) -> list[dict]:
    """fwd and fwd+bwd time and peak extra memory per implementation and N."""
    sizes, c, heads = ((64, 100), 96, 2) if dry_run else ((4096, 16384, 65536), 768, 12)
    dtype = torch.float32 if dry_run else torch.bfloat16
    timer = _timer(device)
    impls = _implementations(heads)
    if "triton" not in available_backends(device):
        impls.pop("triton")
    rows = []
    for n in sizes:
        q, k, v, scale = _inputs(n, c, dtype, device)
        grad = torch.randn_like(q)
        for name, fn in impls.items():
            for mode in ("fwd", "fwd+bwd"):
                leaves = [t.detach().requires_grad_(mode == "fwd+bwd") for t in (q, k, v)]

                def call(fn=fn, leaves=leaves, mode=mode, scale=scale, grad=grad) -> None:
                    if mode == "fwd":
                        with torch.no_grad():
                            fn(*leaves, scale)
                    else:
                        fn(*leaves, scale).backward(grad)
                        for t in leaves:
                            t.grad = None

                row = {"impl": name, "n": n, "c": c, "heads": heads, "mode": mode, "dtype": str(dtype)[6:]}
                row["same_function"] = name in ("triton", "torch")
                try:
                    call()  # warm-up (and Triton's compilation)
                    if device == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        before = torch.cuda.memory_allocated()
                    times = [timer(call) for _ in range(repeats)]
                    row["ms"] = statistics.median(times)
                    if device == "cuda":
                        row["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
                except Exception as error:  # out of memory, or an unsupported shape in a peer
                    row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                    if device == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
    return rows


def machine(device: str, dry_run: bool) -> dict:
    info = {
        "device": device,
        "dry_run": dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    info["triton_interpreter"] = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (Triton interpreter)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 10; 1 dry)")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.dry_run else 10)
    started = time.perf_counter()
    result = {"machine": machine(device, args.dry_run), "parity": parity(device, args.dry_run)}
    result["timing"] = timing(device, args.dry_run, repeats)
    result["seconds"] = time.perf_counter() - started
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    bad = [r for r in result["parity"] if r.get("ok") is False]
    print(f"wrote {args.out}: {len(result['parity'])} parity checks ({len(bad)} out of tolerance), "
          f"{len(result['timing'])} timings, {result['seconds']:.0f} s")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
