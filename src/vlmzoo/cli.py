"""The ``vlmzoo`` command: ``list``, ``info NAME``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
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

    from vlmzoo.registry import create_encoder, create_model, list_models

    torch.manual_seed(args.seed)
    print("vlmzoo model registry")
    for kind in ("encoder", "adapter", "decoder", "model"):
        names = list_models(kind=kind)
        print(f"  {kind}s ({len(names)}): {', '.join(names) if names else '-'}")
    print("\nTiny encoders, one forward pass each (random init, batch 2):")
    print(f"  {'encoder':<24}{'input':>12}{'tokens':>18}{'grid':>10}{'ms':>10}")
    for name in list_models("*tiny*", kind="encoder"):
        encoder = create_encoder(name).eval()
        size = encoder.config.image_size
        x = torch.randn(2, encoder.config.in_channels, size, size)
        with torch.inference_mode():
            start = time.perf_counter()
            out = encoder(x)
            ms = 1e3 * (time.perf_counter() - start)
        shape = "x".join(map(str, out.tokens.shape))
        print(f"  {name:<24}{f'{size}x{size}':>12}{shape:>18}{'x'.join(map(str, out.grid)):>10}{ms:>10.1f}")
    for name in list_models("*tiny*", kind="model"):
        model = create_model(name).eval()
        vision, text = model.config.vision, model.config.text
        images = torch.randn(4, 3, vision.image_size, vision.image_size)
        ids = torch.randint(0, text.vocab_size, (4, text.context_length))
        with torch.inference_mode():
            out = model(images, ids, return_loss=True)
        print(
            f"\n{name}: 4 images x 4 texts -> logits {tuple(out.logits_per_image.shape)}, "
            f"contrastive loss {out.loss.item():.3f} (random init: ~ln 4 = 1.386)"
        )
    print("\nNext: `vlmzoo info clip-vit-l14` for real-size parameter and FLOP counts.")
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

    p = sub.add_parser("demo", help="show the registry and run every tiny model once")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vlmzoo.errors import VlmzooError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VlmzooError as e:
        print(f"vlmzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
