"""The commands and flags of ``vlmzoo`` (names and defaults are the public interface: keep them)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from vlmzoo.cli import arguments as value
from vlmzoo.cli import commands
from vlmzoo.cli.report import CommandLineError

KIND_CHOICES = ["encoder", "adapter", "decoder", "model"]


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block) for :func:`vlmzoo.cli.main` to print."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(f"{message} (`{self.prog} --help` lists the flags)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vlmzoo", description="A reference model zoo of VLM architectures.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'clip-*'")
    p.add_argument("--kind", choices=KIND_CHOICES)
    p.add_argument(
        "--pretrained", action="store_true", help="only presets with published weights, with their repos"
    )
    p.set_defaults(func=commands.list_names)

    p = sub.add_parser(
        "download",
        help="download a preset's published weights, convert them and cache the vlmzoo checkpoint",
        description="Prints the folder of the cached checkpoint (vlmzoo.load opens it); later "
        "create_model(NAME, pretrained=True) calls load it without downloading. `vlmzoo list --pretrained` "
        "lists the presets with published weights.",
    )
    p.add_argument("name")
    p.add_argument("--kind", choices=KIND_CHOICES, help="default: model when the name is one, else its kind")
    p.add_argument("--source", default=None, help="repo id of an alternative release of the preset")
    p.add_argument(
        "--revision", type=value.revision, default=None, help="branch, tag or commit (default: the release's)"
    )
    p.add_argument(
        "--dtype", type=value.float_dtype, default="float32", help="float32 (default), bf16 or fp16"
    )
    p.add_argument(
        "--cache-dir",
        type=value.folder,
        default=None,
        help="folder of converted checkpoints (default: $VLMZOO_CACHE or ~/.cache/vlmzoo/pretrained)",
    )
    p.add_argument("--force-download", action="store_true", help="download and convert again")
    p.add_argument("--local-files-only", action="store_true", help="no network: use what is cached")
    p.set_defaults(func=commands.download)

    p = sub.add_parser("info", help="parameters, tokens per image and GFLOPs of a registered model")
    p.add_argument("name")
    p.add_argument("--kind", choices=KIND_CHOICES)
    p.add_argument(
        "--image-size", type=value.positive_int, default=None, help="input side in pixels (default: native)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=commands.info)

    p = sub.add_parser(
        "demo", help="train a tiny VLM on built-in synthetic data and report held-out accuracy"
    )
    p.add_argument(
        "--task",
        choices=["vqa", "grounding", "chart"],
        default="vqa",
        help="vqa: questions about a shape, exact match (default); grounding: 'where is the red "
        "square?' answered with its box as Shikra writes it, REC accuracy; chart: OneChart's "
        "auxiliary number token on bar charts, number accuracy and the reliability score",
    )
    p.add_argument(
        "--steps",
        type=value.positive_int,
        default=None,
        help="optimizer steps (default 2500 for vqa and grounding, 1200 for chart)",
    )
    p.add_argument("--seed", type=value.seed, default=0)
    p.add_argument("--out", type=value.folder, default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--device", type=value.device, default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--threads", type=value.positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.demo)

    p = sub.add_parser(
        "train",
        help="train a VLM on the built-in data, on one process or under torchrun (DDP / FSDP2)",
        description="Launch distributed runs with torchrun, e.g. `torchrun --nproc_per_node 2 -m vlmzoo "
        "train --strategy fsdp`; vlmzoo never starts processes itself.",
    )
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=value.positive_int, default=300, help="optimizer steps (default 300)")
    p.add_argument(
        "--run-dir", type=value.folder, default="runs/train", help="run folder (default runs/train)"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    p.add_argument("--encoder", default="demo-vit", help="encoder name (default demo-vit)")
    p.add_argument("--adapter", default="mlp2x_gelu", help="adapter name (default mlp2x_gelu)")
    p.add_argument("--decoder", default="demo-llama", help="decoder name (default demo-llama)")
    p.add_argument("--train-encoder", choices=["full", "frozen"], default="full")
    p.add_argument("--train-decoder", choices=["full", "frozen"], default="full")
    p.add_argument(
        "--init-from",
        type=value.existing_folder,
        default=None,
        help="start from the weights of a vlmzoo checkpoint folder",
    )
    p.add_argument(
        "--batch-size", type=value.positive_int, default=64, help="global batch, split over the processes"
    )
    p.add_argument("--lr", type=value.positive_float, default=3e-3)
    p.add_argument("--seed", type=value.seed, default=0)
    p.add_argument(
        "--train-size", type=value.positive_int, default=2000, help="training scenes (default 2000)"
    )
    p.add_argument(
        "--eval-every",
        type=value.positive_int,
        default=None,
        help="steps between evaluations (default: end)",
    )
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument(
        "--device", type=value.device, default="auto", help="cpu, cuda, or auto (cuda when visible)"
    )
    p.add_argument(
        "--backend", choices=["gloo", "nccl"], default=None, help="default: nccl on cuda, else gloo"
    )
    p.add_argument("--threads", type=value.positive_int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.train_command)

    p = sub.add_parser(
        "convert-checkpoint", help="merge a sharded (DDP/FSDP) checkpoint into config.json + safetensors"
    )
    p.add_argument("checkpoint", type=value.existing_folder, help="RUN_DIR/checkpoint (or the run folder)")
    p.add_argument("out", type=value.folder, help="output folder, opened with vlmzoo.load")
    p.set_defaults(func=commands.convert)

    p = sub.add_parser(
        "ablate", help="compare encoders x adapters x decoders on the same data, budget and seed"
    )
    p.add_argument("--encoders", type=value.names, default="demo-vit", help="comma-separated encoder names")
    p.add_argument(
        "--adapters", type=value.names, default="mlp2x_gelu,linear", help="comma-separated adapter names"
    )
    p.add_argument("--decoders", type=value.names, default="demo-llama", help="comma-separated decoder names")
    p.add_argument("--steps", type=value.positive_int, default=300)
    p.add_argument("--seed", type=value.seed, default=0, help="the data's seed and the first run seed")
    p.add_argument(
        "--seeds",
        type=value.positive_int,
        default=1,
        help="runs per combination, seeds --seed, --seed + 1, ...",
    )
    p.add_argument("--image-size", type=value.positive_int, default=48, help="scene side in pixels (>= 16)")
    p.add_argument("--batch-size", type=value.positive_int, default=64)
    p.add_argument("--lr", type=value.positive_float, default=3e-3)
    p.add_argument(
        "--out",
        type=value.folder,
        default="runs/ablate",
        help="the grid's folder; the same command continues it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the grid in --out (its own files only)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.ablate)

    p = sub.add_parser(
        "chat",
        help="ask a model about images: one question, or an interactive prompt when none is given",
    )
    p.add_argument("model", help="a registered model name or a checkpoint folder")
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--question", default=None, help="the question (default: an interactive prompt)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the preset's)")
    p.add_argument(
        "--max-new-tokens",
        type=value.positive_int,
        default=None,
        help="default: what the prompt leaves of the model's context, at most 256",
    )
    p.add_argument("--temperature", type=value.non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--device", type=value.device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.set_defaults(func=commands.chat)

    p = sub.add_parser(
        "eval",
        help="score a model's answers on the built-in data or a JSONL file (image, question, answer)",
    )
    p.add_argument("model", help="a checkpoint folder (with its processor files) or a registered model name")
    p.add_argument(
        "--task",
        required=True,
        help="shapes, text or chart (the built-in held-out scenes), or a .jsonl file of "
        '{"image": path, "question": ..., "answer": str or [str, ...]} lines',
    )
    p.add_argument("--metric", choices=["exact_match", "vqa_accuracy", "anls"], default="exact_match")
    p.add_argument("--count", type=value.positive_int, default=200, help="built-in scenes (default 200)")
    p.add_argument("--seed", type=value.seed, default=0)
    p.add_argument("--batch-size", type=value.positive_int, default=32)
    p.add_argument("--max-new-tokens", type=value.positive_int, default=32)
    p.add_argument("--device", type=value.device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument(
        "--out", type=value.output_file, default=None, help="write the result and predictions as JSON"
    )
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("zoo", help="the model-zoo table (markdown) of every registered name")
    p.add_argument("--out", type=value.output_file, default=None, help="write to this file instead of stdout")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=commands.zoo)
    return parser
