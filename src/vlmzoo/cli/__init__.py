"""The ``vlmzoo`` command: ``list``, ``info NAME``, ``demo``, ``train`` (also under torchrun), ..."""

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
    from vlmzoo.models.summary import summarize

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

    from vlmzoo.recipes.demo import run_demo
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


def _cmd_train(args: argparse.Namespace) -> int:
    from vlmzoo.train.world import check_precision, init_world, teardown

    world = init_world(args.strategy, device=args.device, backend=args.backend)
    try:
        check_precision(args.precision, world.device)
        _train(args, world)
    finally:
        teardown(world)
    return 0


def _train(args: argparse.Namespace, world) -> None:
    """The demo recipe (shapes VQA) with a chosen model, strategy and precision; run folder gets
    ``checkpoint/``, ``metrics.json`` and the final ``config.json`` + ``model.safetensors``."""
    from pathlib import Path

    import torch

    from vlmzoo.models.vlm import VisionLanguageModel
    from vlmzoo.recipes.demo import build_model, build_task, train_and_evaluate
    from vlmzoo.train.run_checkpoint import convert_checkpoint
    from vlmzoo.train.trainer import check_run_dir, parameter_table
    from vlmzoo.weights.format import load_weights, save

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    check_run_dir(run_dir, args.resume, args.overwrite, is_main=world.is_main)
    world.barrier()
    # Rank 0 trains the tokenizer; the others then read the same model file from the cache.
    task = build_task(args.seed, train_size=args.train_size) if world.is_main else None
    world.barrier()
    task = task or build_task(args.seed, train_size=args.train_size)
    config = build_model(task.tokenizer, args.encoder, args.adapter, args.decoder).config.replace(
        train_encoder=args.train_encoder, train_decoder=args.train_decoder
    )
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = VisionLanguageModel(config)
    if args.init_from:
        load_weights(model, args.init_from)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world.is_main:
        print(
            f"train: {args.encoder} + {args.adapter} + {args.decoder}, --strategy {world.strategy} on "
            f"{world.world_size} process(es), {world.device.type}, {args.precision}, global batch "
            f"{args.batch_size}"
        )
        print(parameter_table(model))
    result = train_and_evaluate(
        model,
        task,
        run_dir,
        args.steps,
        args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        progress=not args.no_progress,
        resume=args.resume,
        world=world,
        bf16=args.precision == "bf16",
    )
    if not world.distributed:
        save(model, run_dir)
    elif world.is_main:  # the last step always writes a checkpoint: merge its shards
        convert_checkpoint(run_dir / "checkpoint", run_dir)
    world.barrier()
    if world.is_main:
        history = result["history"]
        print(
            f"final loss {history['loss'][-1]:.4f}, held-out exact match "
            f"{100 * result['val_exact_match']:.1f}% after {args.steps} steps; weights: {run_dir}"
        )


def _cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from vlmzoo.train.run_checkpoint import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} (config.json + safetensors; open with vlmzoo.load)")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from vlmzoo.recipes.demo import run_ablation

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

    from vlmzoo.models.summary import summarize
    from vlmzoo.registry import KINDS, get_entry, list_models

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
    p.add_argument("--steps", type=int, default=2500, help="optimizer steps (default 2500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train",
        help="train a VLM on the built-in data, on one process or under torchrun (DDP / FSDP2)",
        description="Launch distributed runs with torchrun, e.g. `torchrun --nproc_per_node 2 -m vlmzoo "
        "train --strategy fsdp`; vlmzoo never starts processes itself.",
    )
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--run-dir", default="runs/train", help="run folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    p.add_argument("--encoder", default="demo-vit", help="encoder name (default demo-vit)")
    p.add_argument("--adapter", default="mlp2x_gelu", help="adapter name (default mlp2x_gelu)")
    p.add_argument("--decoder", default="demo-llama", help="decoder name (default demo-llama)")
    p.add_argument("--train-encoder", choices=["full", "frozen"], default="full")
    p.add_argument("--train-decoder", choices=["full", "frozen"], default="full")
    p.add_argument("--init-from", default=None, help="start from the weights of a vlmzoo checkpoint folder")
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=2000, help="training scenes (default 2000)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: end)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when visible)")
    p.add_argument(
        "--backend", choices=["gloo", "nccl"], default=None, help="default: nccl on cuda, else gloo"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "convert-checkpoint", help="merge a sharded (DDP/FSDP) checkpoint into config.json + safetensors"
    )
    p.add_argument("checkpoint", help="RUN_DIR/checkpoint (or the run folder)")
    p.add_argument("out", help="output folder, opened with vlmzoo.load")
    p.set_defaults(func=_cmd_convert_checkpoint)

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
