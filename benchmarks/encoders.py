"""Encoder forward time: vlmzoo vs the peer implementations, all carrying the same weights.

What it measures
    For each *case* (CLIP ViT-B/16 at 224 px, SAM ViT-B at 1024 px, DINOv2 ViT-B/14 at 224 px), the
    wall-clock time of one
    ``forward`` of every implementation on the same random batch: fp32, eval mode,
    ``torch.inference_mode()``, ``torch.set_num_threads(--threads)``, on CPU. The peers are built
    without any download (random init); the weights are copied across so that all of them
    compute the same function, and the script checks that they do (max abs diff of the pooled /
    projected embedding <= 1e-3) before it times anything.

    CLIP ViT-B/16 (224 px, projection 512, QuickGELU):
      - ``transformers``: ``CLIPVisionModelWithProjection`` from a ``CLIPVisionConfig`` with the
        real B/16 sizes, random init;
      - ``vlmzoo``: ``vlmzoo.convert.from_transformers`` of that model;
      - ``timm``: ``vit_base_patch16_clip_224`` (``act_layer='quick_gelu'``, 512-way head) with
        the vlmzoo state dict loaded (same parameter names) and the head bias set to zero.

How it runs
    After ``--warmup`` untimed calls each, the implementations are called round-robin for
    ``--repeats`` rounds (the starting implementation rotates every round), so slow phases of a
    noisy machine hit all of them alike; each call is timed with ``time.perf_counter``.

How to read it
    ``median`` is the figure to compare; ``p25``/``p75`` show the spread, so a ratio whose
    difference is inside the spread is noise. ``vlmzoo / X`` < 1 means vlmzoo is faster than X;
    the target is ``vlmzoo / faster peer`` <= 1.0. The ratio is given twice: ``of medians``
    (median vlmzoo time / median peer time) and ``paired`` (the median over rounds of the
    per-round ratio), which cancels slow phases that last a whole round; when the two disagree,
    the machine was busy and the run should be repeated.

Run ``python benchmarks/encoders.py`` (full) or ``--quick`` (batch 2, few repeats: a smoke test).
New encoder pairs (SAM-B at 1024 px, DINOv2-B/14, ...) are added as a ``build_*`` function
returning a :class:`Case` and an entry in ``CASES``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from machine import cpu_name

TOLERANCE = 1e-3
OURS = "vlmzoo"


@dataclass
class Impl:
    """One implementation of a case: its module and how to get the compared embedding out of it."""

    name: str
    module: nn.Module
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.module, x)


@dataclass
class Case:
    """A benchmark case: the implementations (vlmzoo among them) and the input batch."""

    title: str
    impls: list[Impl]
    inputs: torch.Tensor
    notes: list[str] = field(default_factory=list)


# --- cases ----------------------------------------------------------------------------------


def build_clip_b16(batch: int, image_size: int | None) -> Case:
    """CLIP ViT-B/16 vision tower: transformers (random init) -> vlmzoo -> timm, same weights."""
    import timm
    import transformers

    import vlmzoo

    size = image_size or 224
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        patch_size=16,
        image_size=size,
        projection_dim=512,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    hf = transformers.CLIPVisionModelWithProjection(hf_config).eval()
    with torch.no_grad():  # HF inits norms to (1, 0) and biases to 0: perturb them so the check sees a mix-up
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))
    ours = vlmzoo.convert.from_transformers(hf).eval()

    tm = timm.create_model(
        "vit_base_patch16_clip_224",
        pretrained=False,
        num_classes=512,
        img_size=size,
        act_layer="quick_gelu",
    ).eval()
    result = tm.load_state_dict(ours.state_dict(), strict=False)
    if result.unexpected_keys or set(result.missing_keys) != {"head.bias"}:
        raise RuntimeError(
            f"timm model does not take the vlmzoo weights: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    with torch.no_grad():
        tm.head.bias.zero_()

    attn = getattr(hf.config, "_attn_implementation", "?")
    fused = getattr(tm.blocks[0].attn, "fused_attn", "?")
    return Case(
        title=f"CLIP ViT-B/16 vision tower, {size} px, batch {batch}, projection 512, QuickGELU",
        impls=[
            Impl("transformers", hf, lambda m, x: m(pixel_values=x).image_embeds),
            Impl(OURS, ours, lambda m, x: m(x).embeds),
            Impl("timm", tm, lambda m, x: m(x)),
        ],
        inputs=torch.randn(batch, 3, size, size),
        notes=[f"transformers attn_implementation={attn}", f"timm fused_attn={fused}"],
    )


def perturb_1d_(model: nn.Module) -> nn.Module:
    """Peers init norms to (1, 0) and biases/LayerScale to constants: perturb them so a mix-up shows."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))
    return model


def load_into_timm(tm: nn.Module, state: dict[str, torch.Tensor], ignore: set[str] = frozenset()) -> None:
    result = tm.load_state_dict({k: v for k, v in state.items() if k not in ignore}, strict=False)
    if result.unexpected_keys or result.missing_keys:
        raise RuntimeError(
            f"timm model does not take the vlmzoo weights: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )


def build_sam_b(batch: int, image_size: int | None) -> Case:
    """SAM ViT-B image encoder at 1024 px: transformers SamVisionModel -> vlmzoo -> timm samvit_base."""
    import timm
    import transformers

    import vlmzoo

    size = image_size or 1024
    hf = transformers.SamVisionModel(
        transformers.SamVisionConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_dim=3072,
            image_size=size,
            global_attn_indexes=[2, 5, 8, 11],
            output_channels=256,
            window_size=14,
        )
    )
    hf = perturb_1d_(hf).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    tm = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=size).eval()
    load_into_timm(tm, ours.state_dict())
    grid = size // 16
    return Case(
        title=f"SAM ViT-B image encoder, {size} px, batch {batch} (neck output 256 x {grid} x {grid})",
        impls=[
            Impl("transformers", hf, lambda m, x: m(pixel_values=x).last_hidden_state),
            Impl(OURS, ours, lambda m, x: m(x).tokens.transpose(1, 2).reshape(x.shape[0], 256, grid, grid)),
            Impl("timm", tm, lambda m, x: m.forward_features(x)),
        ],
        inputs=torch.randn(batch, 3, size, size),
        notes=[
            "timm's samvit LayerNorms use eps 1e-5 (SAM: 1e-6); negligible against these feature variances"
        ],
    )


def build_dinov2_b14(batch: int, image_size: int | None) -> Case:
    """DINOv2 ViT-B/14 (position embeddings built for the input size, so nobody interpolates)."""
    import timm
    import transformers

    import vlmzoo

    size = image_size or 224
    hf = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_ratio=4,
            patch_size=14,
            image_size=size,
            layerscale_value=1.0,
        )
    )
    hf = perturb_1d_(hf).eval()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    ours.config = ours.config.replace(feature_norm=True, feature_tokens="all", pool="none")
    tm = timm.create_model("vit_base_patch14_dinov2", pretrained=False, img_size=size, num_classes=0).eval()
    load_into_timm(tm, ours.state_dict(), ignore={"mask_token"})
    return Case(
        title=f"DINOv2 ViT-B/14, {size} px, batch {batch} (final-normed tokens)",
        impls=[
            Impl("transformers", hf, lambda m, x: m(pixel_values=x).last_hidden_state),
            Impl(OURS, ours, lambda m, x: m(x).tokens),
            Impl("timm", tm, lambda m, x: m.forward_features(x)),
        ],
        inputs=torch.randn(batch, 3, size, size),
    )


# name -> (builder(batch, image_size or None for the case's native size), default batch)
CASES: dict[str, tuple[Callable[[int, int | None], Case], int]] = {
    "clip-vit-b16": (build_clip_b16, 8),
    "sam-vit-b": (build_sam_b, 1),
    "dinov2-vit-b14": (build_dinov2_b14, 8),
}


# --- harness --------------------------------------------------------------------------------


def check_same_function(case: Case) -> bool:
    """Print the max abs diff of every implementation's embedding against vlmzoo's; True if all pass."""
    with torch.inference_mode():
        outs = {impl.name: impl(case.inputs).float() for impl in case.impls}
    ref = outs[OURS]
    ok = True
    scale = ref.abs().max().item()
    for name, out in outs.items():
        if name == OURS:
            continue
        if out.shape != ref.shape:
            print(f"  check {OURS} vs {name}: shape {tuple(ref.shape)} != {tuple(out.shape)}  FAIL")
            ok = False
            continue
        diff = (out - ref).abs().max().item()
        passed = diff <= TOLERANCE
        ok &= passed
        print(
            f"  check {OURS} vs {name:<13} max abs diff {diff:.2e} (|embed| max {scale:.2e}, "
            f"tol {TOLERANCE:.0e})  {'ok' if passed else 'FAIL'}"
        )
    return ok


def time_round_robin(case: Case, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per forward for each implementation, interleaved across rounds."""
    impls, x = case.impls, case.inputs
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    with torch.inference_mode():
        for _ in range(warmup):
            for impl in impls:
                impl(x)
        gc.collect()
        for r in range(repeats):
            for i in range(len(impls)):
                impl = impls[(r + i) % len(impls)]
                t0 = time.perf_counter()
                impl(x)
                times[impl.name].append(time.perf_counter() - t0)
    return times


def quantile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=4, method="inclusive")[int(q * 4) - 1]
        if len(values) > 1
        else values[0]
    )


def report(case: Case, times: dict[str, list[float]]) -> None:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"  {'implementation':<14} {'median ms':>10} {'p25 ms':>9} {'p75 ms':>9} {'min ms':>9}  n")
    for name, ts in times.items():
        print(
            f"  {name:<14} {1e3 * med[name]:>10.1f} {1e3 * quantile(ts, 0.25):>9.1f} "
            f"{1e3 * quantile(ts, 0.75):>9.1f} {1e3 * min(ts):>9.1f}  {len(ts)}"
        )
    peers = {name: m for name, m in med.items() if name != OURS}
    fastest = min(peers, key=peers.__getitem__)
    width = len(f"{OURS} / faster peer ({fastest})")
    print(f"  {'ratio':<{width}} {'of medians':>10} {'paired':>8}")
    for label, name in [
        *((f"{OURS} / {n}", n) for n in peers),
        (f"{OURS} / faster peer ({fastest})", fastest),
    ]:
        paired = statistics.median(a / b for a, b in zip(times[OURS], times[name], strict=True))
        print(f"  {label:<{width}} {med[OURS] / peers[name]:>9.3f}x {paired:>7.3f}x")


def environment(threads: int) -> str:
    import timm
    import transformers

    cpu = cpu_name()
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
        f"transformers {transformers.__version__}\n"
        f"cpu: {cpu}; threads {threads} (torch.get_num_threads()={torch.get_num_threads()}); "
        f"fp32, eval, inference_mode"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--batch", type=int, default=None, help="batch size (default: the case's; 1-2 with --quick)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input/native image size (default: the case's, 224 for CLIP)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20; 3 with --quick)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls each after the check (default 2; 0 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: batch 2, few repeats")
    p.add_argument(
        "--case", action="append", choices=sorted(CASES), help="case to run (repeatable; default: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(environment(args.threads))
    print(f"repeats {args.repeats}, warmup {args.warmup} (round-robin, perf_counter)")
    failed = False
    for name in args.case or list(CASES):
        t0 = time.perf_counter()
        builder, default_batch = CASES[name]
        batch = args.batch or (min(2, default_batch) if args.quick else default_batch)
        case = builder(batch, args.image_size)
        print(f"\n== {name}: {case.title}")
        for note in case.notes:
            print(f"  {note}")
        print(f"  built in {time.perf_counter() - t0:.1f} s")
        if not check_same_function(case):
            print("  implementations disagree: not timing this case")
            failed = True
            continue
        report(case, time_round_robin(case, args.repeats, args.warmup))
        del case
        gc.collect()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
