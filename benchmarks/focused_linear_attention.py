"""Focused linear attention core: vlmzoo's backends vs the FLatten formulation vs SDPA.

What it measures
    The attention core of FLatten's ``FocusedLinearAttention.forward`` (models/flatten_swin.py),
    from the ReLU kernel to ``q @ kv * z`` — q, k, v [B, N, C] in, [B, N, C] out, before the
    output projection — for N in {1024, 4096, 16384} and (C, heads) in {(768, 12), (256, 8)},
    fp32, ``torch.set_num_threads(--threads)``, on CPU. Implementations, all on the same q, k, v
    (randn) and the same temperature (softplus of a random [C] vector):

      - ``torch``: ``vlmzoo.kernels.focused_linear_attention(..., backend="torch")``, the
        memory-lean autograd Function (the default on CPU);
      - ``cpp``: the same call with ``backend="cpp"`` (the torch backend's math as a C++
        extension, built on first use — the warm-up call — and skipped if it cannot be built);
      - ``reference``: the same call with ``backend="reference"`` (the test oracle);
      - ``flatten``: :func:`flatten_formulation` below, a straightforward transcription of the
        FLatten repo's current formulation (``x ** p`` with norms, heads folded into
        the batch, ``z = 1 / (q · mean(k) + eps)``, ``kv = (k N^-½)ᵀ (v N^-½)``), as a user
        would write it in eager PyTorch;
      - ``sdpa``: ``F.scaled_dot_product_attention`` on the same q, k, v split into heads
        (softmax attention, a different function: it shows what linear attention buys).

    Two modes: ``fwd`` (under ``torch.no_grad()``) and ``fwd+bwd`` (q, k, v are leaves that
    require grad; ``out.backward(grad_out)`` with a grad_out made beforehand; the gradients are
    dropped, outside the timed region, before the next call — as ``zero_grad(set_to_none=True)``).
    Before timing, the outputs of torch, cpp, reference and flatten are checked to agree
    (max abs diff <= 1e-4 x max |out|).

FLOPs and the share of peak
    The core's FLOPs, one definition for all implementations: forward 4·N·C·d + 2·N·C (the two
    attention matmuls kᵀv and q·kv, 2·N·C·d each, and the normaliser q·mean(k)); forward+backward
    3x that (each matmul has two gradient matmuls). The elementwise work and anything recomputed
    in backward are not counted; the 5x5 depthwise conv of FLatten's module is outside this core.
    The CPU's fp32 peak is measured in the same run, before and after the cells, as the best
    of 5 calls of a 2048x2048x2048 fp32 matmul at the same thread count; the "share of peak" is
    FLOPs / median time / the higher of the two peaks.

How it runs
    Per cell (config, N, mode): one untimed warm-up call each, then the implementations are
    called round-robin for ``--repeats`` rounds, each call timed with ``time.perf_counter``; an
    implementation whose warm-up call took long gets fewer rounds (at most ``--budget`` seconds
    per cell, at least one), so quadratic SDPA at N = 16384 does not take the whole run. The
    figure is the median.

Peak memory
    ``torch.cuda`` memory statistics do not exist on a CPU. This script runs one more call per
    implementation under ``torch.profiler.profile(profile_memory=True)``: PyTorch's CPU
    allocator then reports every allocation and every free (including temporaries made inside
    ops and the tensors autograd saves) with a timestamp. The running sum of those records in
    time order is the memory held by tensors created during the call; its maximum is the *peak
    extra memory* (the inputs and grad_out existed before and are not counted; the output and
    the input gradients are). Allocations that bypass PyTorch's allocator (a BLAS library's own
    scratch space) are not seen; they are small next to [B, N, C] tensors. Process RSS would be
    too coarse: the allocator and the C library keep freed pages mapped. Memory is given in
    S = one [B, N, C] float32 tensor, so the floor is 1·S forward (the output) and 4·S
    forward+backward (the output and three input gradients).

How to read it
    ``x / torch`` ratios > 1 mean vlmzoo's torch backend is faster; ``mem torch / x`` < 1 means
    it needs less memory. Targets (N = 4096, C = 768, 12 heads, fp32, fwd+bwd): >= 3x faster
    than ``flatten``, >= 20x faster than ``sdpa``, peak memory <= 0.5x ``flatten``, and the
    torch backend's time(16384) / time(4096) <= 4.5 (linear in N would be 4). On a machine shared
    with other jobs the spread (p25–p75, printed) can be wide: repeat the run. The "machine check"
    line before and after the run times one mid-sized op; if it reads several ms (instead of
    ~0.1), OpenMP workers are being descheduled and every parallel op waits for them, which
    penalises code made of many ops (the chunked torch backend) far more than code made of a
    few huge ones (flatten, SDPA): such a run measures the scheduler. ``--threads 1`` has no
    parallel regions and gives contention-proof ratios.

Run ``python benchmarks/focused_linear_attention.py`` (full, a few minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from machine import cpu_name
from torch.profiler import ProfilerActivity, profile

from vlmzoo.kernels import available_backends, focused_linear_attention

IMPLS = ("torch", "cpp", "reference", "flatten", "sdpa")
MODES = ("fwd", "fwd+bwd")
TOLERANCE = 1e-4


def flatten_formulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: torch.Tensor, p: float = 3.0
) -> torch.Tensor:
    """The FLatten repo's focused linear attention core (ReLU kernel to ``q @ kv * z``), transcribed plainly."""
    q = F.relu(q) + 1e-6
    k = F.relu(k) + 1e-6
    q = q / scale
    k = k / scale
    q_norm = q.norm(dim=-1, keepdim=True)
    k_norm = k.norm(dim=-1, keepdim=True)
    q = q**p
    k = k**p
    q = (q / q.norm(dim=-1, keepdim=True)) * q_norm
    k = (k / k.norm(dim=-1, keepdim=True)) * k_norm
    q, k, v = (rearrange(x, "b n (h c) -> (b h) n c", h=num_heads) for x in (q, k, v))
    n = k.shape[-2]
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)
    x = q @ kv * z
    return rearrange(x, "(b h) n c -> b n (h c)", h=num_heads)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    q, k, v = (rearrange(x, "b n (h d) -> b h n d", h=num_heads) for x in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


def make_impls(num_heads: int, scale: torch.Tensor) -> dict[str, Callable[..., torch.Tensor]]:
    return {
        "torch": lambda q, k, v: focused_linear_attention(q, k, v, num_heads, scale=scale, backend="torch"),
        "cpp": lambda q, k, v: focused_linear_attention(q, k, v, num_heads, scale=scale, backend="cpp"),
        "reference": lambda q, k, v: focused_linear_attention(
            q, k, v, num_heads, scale=scale, backend="reference"
        ),
        "flatten": lambda q, k, v: flatten_formulation(q, k, v, num_heads, scale),
        "sdpa": lambda q, k, v: sdpa(q, k, v, num_heads),
    }


@dataclass
class Cell:
    """One (config, N, mode) measurement: times (s) and peak extra memory (bytes) per impl."""

    channels: int
    heads: int
    tokens: int
    mode: str
    times: dict[str, list[float]]
    peak: dict[str, int]
    batch: int = 1


class Runner:
    """Calls one implementation in one mode on fixed inputs."""

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grad_out, mode: str):
        self.fn, self.inputs, self.grad_out, self.mode = fn, inputs, grad_out, mode

    def prepare(self) -> None:
        for t in self.inputs:
            t.grad = None

    def __call__(self) -> None:
        if self.mode == "fwd":
            with torch.no_grad():
                self.fn(*self.inputs)
        else:
            self.fn(*self.inputs).backward(self.grad_out)


def peak_extra_bytes(run: Runner) -> int:
    """Max of the running sum of CPU allocator records during one call (see the docstring)."""
    run.prepare()
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    run.prepare()
    return peak


def measure(
    channels: int, heads: int, tokens: int, mode: str, args: argparse.Namespace
) -> tuple[Cell, float]:
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, tokens, channels)
    inputs = [torch.randn(shape, generator=gen, requires_grad=mode != "fwd") for _ in range(3)]
    scale = F.softplus(0.5 * torch.randn(channels, generator=gen))
    grad_out = torch.randn(shape, generator=gen)
    impls = {name: fn for name, fn in make_impls(heads, scale).items() if name in args.impls}

    with torch.no_grad():
        checked = ("torch", "cpp", "reference", "flatten")
        outs = {name: impls[name](*inputs) for name in checked if name in impls}
    base = outs.get("reference", next(iter(outs.values()), None))
    worst = max(((o - base).abs().max() / base.abs().max()).item() for o in outs.values()) if outs else 0.0
    del outs, base

    runs = {name: Runner(fn, inputs, grad_out, mode) for name, fn in impls.items()}
    rounds: dict[str, int] = {}
    for name, run in runs.items():  # warm-up, and how many rounds fit in the budget
        run.prepare()
        t0 = time.perf_counter()
        run()
        rounds[name] = max(1, min(args.repeats, int(args.budget / max(time.perf_counter() - t0, 1e-9))))
        run.prepare()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(max(rounds.values())):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            if len(times[name]) >= rounds[name]:
                continue
            runs[name].prepare()
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
            runs[name].prepare()
    peak = {name: peak_extra_bytes(run) for name, run in runs.items()} if args.memory else {}
    return Cell(channels, heads, tokens, mode, times, peak, args.batch), worst


def quartiles(ts: list[float]) -> tuple[float, float]:
    if len(ts) < 2:
        return ts[0], ts[0]
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[0], q[2]


def print_cell(cell: Cell, unit: int) -> None:
    med = {n: statistics.median(ts) for n, ts in cell.times.items()}
    print(f"  N={cell.tokens:<6} {cell.mode:<8}", end="")
    for name, ts in cell.times.items():
        lo, hi = quartiles(ts)
        mem = f" {cell.peak[name] / unit:5.2f}S" if cell.peak else ""
        print(f" | {name} {1e3 * med[name]:8.1f} ms [{1e3 * lo:.0f}-{1e3 * hi:.0f}] n={len(ts)}{mem}", end="")
    print()
    if "torch" not in med:
        return
    for mine in ("torch", "cpp"):
        if mine not in med:
            continue
        ratios = [f"{n} / {mine} {med[n] / med[mine]:6.2f}x" for n in med if n not in ("torch", "cpp", mine)]
        if mine == "cpp" and "torch" in med:
            ratios.insert(0, f"torch / cpp {med['torch'] / med['cpp']:6.2f}x")
        if cell.peak:
            ratios += [
                f"mem {mine} / {n} {cell.peak[mine] / cell.peak[n]:.2f}" for n in cell.peak if n != mine
            ]
        ratios.append(f"{mine} {core_flops(cell) / med[mine] / 1e9:.1f} GFLOP/s")
        print("    " + ",  ".join(ratios))


def core_flops(cell: Cell) -> float:
    """The core's FLOPs (module docstring): 4·N·C·d + 2·N·C forward, 3x that forward+backward."""
    d = cell.channels // cell.heads
    fwd = cell.batch * (4 * cell.tokens * cell.channels * d + 2 * cell.tokens * cell.channels)
    return fwd if cell.mode == "fwd" else 3 * fwd


def matmul_peak() -> float:
    """GFLOP/s of the best of 5 fp32 2048x2048x2048 matmuls at the current thread count."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def check_targets(cells: list[Cell]) -> list[str]:
    """The issue's targets at C = 768 / 12 heads, fwd+bwd: PASS/FAIL lines (empty if not measured)."""
    by = {(c.channels, c.heads, c.tokens, c.mode): c for c in cells}
    key = (768, 12, 4096, "fwd+bwd")
    if key not in by or "torch" not in by[key].times:
        return []
    cell = by[key]
    med = {n: statistics.median(ts) for n, ts in cell.times.items()}
    lines = []

    def line(label: str, value: float, op: str, target: float) -> None:
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"  {label:<44} {value:7.2f}  (target {op} {target})  {'PASS' if ok else 'FAIL'}")

    if "flatten" in med:
        line("time flatten / torch", med["flatten"] / med["torch"], ">=", 3.0)
    if "sdpa" in med:
        line("time sdpa / torch", med["sdpa"] / med["torch"], ">=", 20.0)
    if cell.peak and "flatten" in cell.peak:
        line("peak memory torch / flatten", cell.peak["torch"] / cell.peak["flatten"], "<=", 0.5)
    big = by.get((768, 12, 16384, "fwd+bwd"))
    if big is not None and "torch" in big.times:
        line(
            "torch time(N=16384) / time(N=4096)",
            statistics.median(big.times["torch"]) / med["torch"],
            "<=",
            4.5,
        )
    return lines


def check_goals(cells: list[Cell], peak_gflops: float, impl: str = "cpp") -> list[str]:
    """The performance issue's goals for ``impl`` at C = 768 / 12 heads, fwd+bwd, N = 4096."""
    by = {(c.channels, c.heads, c.tokens, c.mode): c for c in cells}
    cell = by.get((768, 12, 4096, "fwd+bwd"))
    if cell is None or impl not in cell.times:
        return []
    med = {n: statistics.median(ts) for n, ts in cell.times.items()}
    lines = []

    def line(label: str, value: float, op: str, target: float) -> None:
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"  {label:<44} {value:7.2f}  (goal {op} {target})  {'PASS' if ok else 'FAIL'}")

    if "flatten" in med:
        line(f"time flatten / {impl}", med["flatten"] / med[impl], ">=", 6.0)
    if "sdpa" in med:
        line(f"time sdpa / {impl}", med["sdpa"] / med[impl], ">=", 25.0)
    share = core_flops(cell) / med[impl] / 1e9 / peak_gflops
    line(f"{impl} share of fp32 matmul peak ({peak_gflops:.0f} GFLOP/s)", share, ">=", 0.5)
    if cell.peak and "sdpa" in cell.peak:
        line(f"peak memory {impl} / sdpa", cell.peak[impl] / cell.peak["sdpa"], "<=", 1.0)
    big = by.get((768, 12, 16384, "fwd+bwd"))
    if big is not None and impl in big.times:
        line(
            f"{impl} time(N=16384) / time(N=4096)", statistics.median(big.times[impl]) / med[impl], "<=", 4.0
        )
    return lines


def machine_check() -> float:
    """Median ms of an in-place multiply of 1M floats (~0.1–0.3 ms on an idle 2-core machine).

    On a machine shared with other jobs, an OpenMP parallel region can wait a whole scheduler
    time slice (~8 ms measured here) for a worker thread that was descheduled; code made of many
    mid-sized ops (the chunked torch backend) then slows down far more than code made of a few
    huge ones. A high figure here means the timings below measure the scheduler: rerun when the
    machine is quiet, or compare with ``--threads 1``.
    """
    x = torch.ones(2**20)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        x.mul_(1.0)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def environment(threads: int) -> str:
    cpu = cpu_name()
    return (
        f"python {platform.python_version()}, torch {torch.__version__}; cpu: {cpu}; "
        f"threads {threads} (torch.get_num_threads()={torch.get_num_threads()}); fp32"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="N values (default 1024 4096 16384)")
    p.add_argument(
        "--configs", nargs="+", default=["768x12", "256x8"], help="CxHEADS configs (default 768x12 256x8)"
    )
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed rounds at most (default 9; 2 with --quick)"
    )
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per impl and cell")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory call")
    p.add_argument("--quick", action="store_true", help="smoke test: N 256 1024, few repeats")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.tokens = args.tokens or ([256, 1024] if args.quick else [1024, 4096, 16384])
    args.repeats = args.repeats or (2 if args.quick else 9)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(environment(args.threads))
    print(f"batch {args.batch}, repeats <= {args.repeats}, budget {args.budget:.0f} s per impl and cell")
    stall = machine_check()
    busy = stall > 1.0
    print(
        f"machine check: 1M-float multiply {stall:.2f} ms{'  -- BUSY: OpenMP stalls, see machine_check()' if busy else ''}"
    )
    if "cpp" in args.impls and "cpp" not in available_backends("cpu"):
        print("cpp backend: no C++ toolchain here, left out")
        args.impls = [n for n in args.impls if n != "cpp"]
    peak_before = matmul_peak()
    print(f"fp32 matmul peak (2048^3, best of 5): {peak_before:.1f} GFLOP/s")
    cells: list[Cell] = []
    failed = False
    for config in args.configs:
        channels, heads = (int(x) for x in config.lower().split("x"))
        print(f"\n== C={channels}, {heads} heads (head dim {channels // heads}); time median ms [p25-p75]")
        for tokens in args.tokens:
            for mode in args.modes:
                cell, worst = measure(channels, heads, tokens, mode, args)
                if worst > TOLERANCE:
                    print(f"  N={tokens}: outputs disagree (max rel diff {worst:.1e})")
                    failed = True
                print_cell(cell, unit=args.batch * tokens * channels * 4)
                cells.append(cell)
                gc.collect()
    lines = check_targets(cells)
    stall_after = machine_check()
    print(f"\nmachine check after the run: {stall_after:.2f} ms")
    peak = max(peak_before, matmul_peak())
    print(f"fp32 matmul peak after the run: best {peak:.1f} GFLOP/s")
    if lines:
        print("\n== targets (C=768, 12 heads, fp32, fwd+bwd, N=4096)")
        print("\n".join(lines))
    for impl in ("cpp", "torch"):
        goals = check_goals(cells, peak, impl)
        if goals:
            print(f"\n== the performance issue's goals for {impl} (same cell)")
            print("\n".join(goals))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
