"""The ``vlmzoo`` command: ``list``, ``info NAME``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    from vlmzoo.registry import KINDS, list_models

    for kind in [args.kind] if args.kind else KINDS:
        names = list_models(args.pattern, kind=kind)
        if names:
            print(f"{kind}s ({len(names)}):")
            for name in names:
                print(f"  {name}")
    return 0


def _format_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _cmd_info(args: argparse.Namespace) -> int:
    from vlmzoo.summary import summarize

    s = summarize(args.name, kind=args.kind, image_size=args.image_size)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
        return 0
    print(f"{s.name}  ({s.kind}, {s.architecture})  {s.description}")
    print(f"  parameters        {s.parameters:,} ({_format_count(s.parameters)})")
    if s.tokens_per_image is not None:
        print(f"  image size        {s.image_size} px")
        print(f"  tokens per image  {s.tokens_per_image}")
        print(f"  GFLOPs per image  {s.gflops_per_image:.2f}  (2 FLOPs per multiply-add)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from vlmzoo.demo import run_demo
    from vlmzoo.registry import list_models

    if args.threads:
        torch.set_num_threads(args.threads)
    counts = {k: len(list_models(kind=k)) for k in ("encoder", "adapter", "decoder", "model")}
    print("vlmzoo: " + ", ".join(f"{n} {k}s" for k, n in counts.items()) + " registered (`vlmzoo list`)")
    print(
        "demo: a tiny CLIP ViT + MLP projector + tiny Llama learns visual question answering on "
        "procedurally drawn shapes\n"
    )
    run_demo(
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from vlmzoo.demo import run_ablation

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    run_ablation(
        split(args.encoders),
        split(args.adapters),
        split(args.decoders),
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmzoo.registry import KINDS, get_entry, list_models
    from vlmzoo.summary import summarize

    lines = [
        "# Model zoo",
        "",
        "Generated from the registry by `vlmzoo zoo` (sizes computed on the meta device; "
        "GFLOPs count 2 per multiply-add, for one image at the native size).",
        "",
    ]
    for kind in KINDS:
        names = list_models(kind=kind)
        if not names:
            continue
        lines += [
            f"## {kind.capitalize()}s",
            "",
            "| name | architecture | parameters | tokens / image | GFLOPs / image |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            try:
                s = summarize(name, kind=kind)
            except Exception as e:  # an adapter without fixed widths has no size of its own
                entry = get_entry(name, kind)
                lines.append(f"| `{name}` | {entry.builder.__name__} | - | - | - |")
                if args.verbose:
                    print(f"{name}: {e}", file=sys.stderr)
                continue
            tokens = "-" if s.tokens_per_image is None else str(s.tokens_per_image)
            flops = "-" if s.gflops_per_image is None else f"{s.gflops_per_image:.3g}"
            lines.append(
                f"| `{name}` | {s.architecture} | {_format_count(s.parameters)} | {tokens} | {flops} |"
            )
        lines.append("")
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmzoo", description="A reference model zoo of VLM architectures.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'clip-*'")
    p.add_argument("--kind", choices=["encoder", "adapter", "decoder", "model"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="parameters, tokens per image and GFLOPs of a registered model")
    p.add_argument("name")
    p.add_argument("--kind", choices=["encoder", "adapter", "decoder", "model"])
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: native)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "demo", help="train a tiny VLM on built-in synthetic data and report held-out accuracy"
    )
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "ablate", help="compare encoders x adapters x decoders on the same data, budget and seed"
    )
    p.add_argument("--encoders", default="demo-vit", help="comma-separated encoder names")
    p.add_argument("--adapters", default="mlp2x_gelu,linear", help="comma-separated adapter names")
    p.add_argument("--decoders", default="demo-llama", help="comma-separated decoder names")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_ablate)
    p = sub.add_parser("zoo", help="the model-zoo table (markdown) of every registered name")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vlmzoo.errors import VlmzooError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vlmzoo: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    except VlmzooError as e:
        print(f"vlmzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
