"""One handler per command: turn the parsed flags into one call of a recipe or library function.

Handlers hold no steps of their own (the jobs live in :mod:`vlmzoo.recipes`); they print what the
call returns and give the exit code 0. Failures propagate to :func:`vlmzoo.cli.main`, which
reports them in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from vlmzoo.models.summary import summarize
from vlmzoo.recipes.ablation import run_ablation
from vlmzoo.recipes.chat import run_chat
from vlmzoo.recipes.demo import run_demo
from vlmzoo.recipes.download import download as download_release
from vlmzoo.recipes.download import pretrained_text
from vlmzoo.recipes.evaluate import run_eval
from vlmzoo.recipes.train import TrainJob, train
from vlmzoo.recipes.zoo import summary_text, zoo_markdown
from vlmzoo.registry import KINDS, list_models
from vlmzoo.train.run_checkpoint import convert_checkpoint
from vlmzoo.weights.files import atomic_write_text


def list_names(args: argparse.Namespace) -> int:
    if args.pretrained:
        print(pretrained_text(args.pattern, kind=args.kind))
        return 0
    for kind in [args.kind] if args.kind else KINDS:
        names = list_models(args.pattern, kind=kind)
        if names:
            print(f"{kind}s ({len(names)}):")
            for name in names:
                print(f"  {name}")
    return 0


def download(args: argparse.Namespace) -> int:
    path = download_release(
        args.name,
        kind=args.kind,
        source=args.source,
        revision=args.revision,
        dtype=args.dtype,
        cache_dir=args.cache_dir,
        force_download=args.force_download,
        local_files_only=args.local_files_only,
    )
    print(path)
    return 0


def info(args: argparse.Namespace) -> int:
    s = summarize(args.name, kind=args.kind, image_size=args.image_size)
    print(json.dumps(s.to_dict(), indent=2) if args.json else summary_text(s))
    return 0


def demo(args: argparse.Namespace) -> int:
    run_demo(
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        threads=args.threads,
        task=args.task,
    )
    return 0


def train_job(args: argparse.Namespace) -> TrainJob:
    """The flags of ``vlmzoo train`` as a :class:`TrainJob` (each field has the flag's name)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainJob) if hasattr(args, f.name)}
    return TrainJob(**values, progress=not args.no_progress)


def train_command(args: argparse.Namespace) -> int:
    train(train_job(args))
    return 0


def convert(args: argparse.Namespace) -> int:
    out = convert_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} (config.json + safetensors; open with vlmzoo.load)")
    return 0


def ablate(args: argparse.Namespace) -> int:
    run_ablation(
        args.encoders,
        args.adapters,
        args.decoders,
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        seeds=args.seeds,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def zoo(args: argparse.Namespace) -> int:
    text, unsized = zoo_markdown()
    if args.verbose:
        for name, reason in unsized.items():
            print(f"{name}: {reason}", file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    run_eval(
        args.model,
        args.task,
        args.metric,
        count=args.count,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        out=args.out,
    )
    return 0


def chat(args: argparse.Namespace) -> int:
    run_chat(
        args.model,
        args.image,
        args.question,
        tokenizer=args.tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        device=args.device,
        dtype=args.dtype,
    )
    return 0
