"""FLatten-{PVT,Swin}-T/S against their softmax baselines, whole models, one process, interleaved.

Pairs: vlmzoo's FLatten-PVT vs vlmzoo's PVT v1; vlmzoo's FLatten-Swin vs timm's Swin (same
sizes). Per resolution (224, 448, 896 px) and mode (forward under no_grad, forward+backward of
``tokens.sum()``) the two models of a pair run in turn (round robin) and the minimum of
``--repeats`` is kept; images/s = batch / time. Parameters (encoder, no classifier head) and
GFLOPs (multiply-adds, i.e. ``torch.utils.flop_counter`` FLOPs / 2, at 224 px) are printed next
to the paper's table (Han et al. 2023, Table of ImageNet results; those figures include the
1000-class head). ``--quick`` runs the tiny presets at 64 px in seconds (CI smoke test).

    python3 benchmarks/flatten_models.py --threads 1 --json out.json --plot docs/images/flatten_models.png
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# (params M, GFLOPs) at 224 px with the classifier head, as the FLatten paper lists them.
PAPER = {
    "pvt-t": (13.2, 1.9), "flatten-pvt-t": (12.2, 2.0), "pvt-s": (24.5, 3.8), "flatten-pvt-s": (21.7, 4.0),
    "swin-t": (29.0, 4.5), "flatten-swin-t": (29.0, 4.5), "swin-s": (50.0, 8.7), "flatten-swin-s": (51.0, 8.7),
}  # fmt: skip
PAIRS = [
    ("flatten-pvt-t", "pvt-t"),
    ("flatten-pvt-s", "pvt-s"),
    ("flatten-swin-t", "swin-t"),
    ("flatten-swin-s", "swin-s"),
]
QUICK_PAIRS = [("flatten-pvt-tiny", "pvt-tiny"), ("flatten-swin-tiny", "swin-tiny")]
TIMM_SWIN = {"swin-t": "swin_tiny_patch4_window7_224", "swin-s": "swin_small_patch4_window7_224"}


def build(name: str, size: int, quick: bool) -> torch.nn.Module:
    """A model taking [B, 3, size, size]; returns a tensor of features."""
    if name in TIMM_SWIN and not quick:
        import timm

        model = timm.create_model(TIMM_SWIN[name], pretrained=False, num_classes=0, img_size=size)
        return _Features(model, lambda m, x: m.forward_features(x))
    from vlmzoo.registry import get_entry

    entry = get_entry(name, "encoder")
    model = entry.build(image_size=size) if "pvt" in name else entry.build()
    return _Features(model, lambda m, x: m(x).tokens)


class _Features(torch.nn.Module):
    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


def step(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    else:
        with torch.no_grad():
            model(x)


def count(model: torch.nn.Module, size: int) -> tuple[float, float]:
    """(encoder parameters in M, multiply-adds in G at ``size``)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny presets at 64 px, 1 repeat (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs, sizes = (QUICK_PAIRS, [64]) if args.quick else (PAIRS, args.sizes)
    repeats = 1 if args.quick else args.repeats
    results: dict = {
        "threads": args.threads,
        "batch": args.batch,
        "torch": torch.__version__,
        "rows": [],
        "counts": {},
    }
    for pair in pairs:
        for name in pair:
            params, gmacs = count(
                build(name, sizes[0] if args.quick else 224, args.quick), sizes[0] if args.quick else 224
            )
            results["counts"][name] = {"params_m": params, "gmacs": gmacs, "paper": PAPER.get(name)}
            print(
                f"{name:16s} params {params:6.2f} M  GMACs {gmacs:6.2f}  paper (with head) {PAPER.get(name)}"
            )
        for size in sizes:
            models = [build(n, size, args.quick) for n in pair]
            x = torch.randn(args.batch, 3, size, size)
            for backward in (False, True):
                best = [float("inf")] * 2
                for m in models:
                    step(m, x, backward)  # warm-up
                for _ in range(repeats):
                    for i, m in enumerate(models):
                        t0 = time.perf_counter()
                        step(m, x, backward)
                        best[i] = min(best[i], time.perf_counter() - t0)
                row = dict(model=pair[0], peer=pair[1], size=size, mode="fwd+bwd" if backward else "fwd",
                           ms=best[0] * 1e3, peer_ms=best[1] * 1e3, ratio=best[0] / best[1],
                           images_per_s=args.batch / best[0], peer_images_per_s=args.batch / best[1])  # fmt: skip
                results["rows"].append(row)
                print(f"{pair[0]:16s} vs {pair[1]:8s} {size:4d}px {row['mode']:7s} {row['ms']:9.1f} ms vs "
                      f"{row['peer_ms']:9.1f} ms  ratio {row['ratio']:.2f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("fwd", "fwd+bwd")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, modes, strict=True):
        rows = [r for r in results["rows"] if r["mode"] == mode]
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name]
            (line,) = ax.plot([r["size"] for r in mine], [r["ms"] for r in mine], "o-", label=name)
            ax.plot([r["size"] for r in mine], [r["peer_ms"] for r in mine], "s--", color=line.get_color(),
                    label=mine[0]["peer"])  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="image side (px)", ylabel="ms per batch", title=mode)
        ax.legend(fontsize=7)
    fig.suptitle(f"FLatten models vs softmax peers, {results['threads']} thread(s), batch {results['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
