"""LLaVA's two-stage recipe on the built-in shapes data.

Stage 1 (feature alignment): only the projector trains; the encoder and the LM are frozen.
Stage 2 (instruction tuning): the projector and the LM train; the encoder stays frozen.
Here nothing is pretrained (no downloads), so a stage 0 first trains the whole model briefly —
with real checkpoints you would load them instead and start at stage 1.

    python examples/llava_two_stage.py --steps 200
    python examples/llava_two_stage.py --smoke   # CI: 2 steps per stage
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from vlmzoo.recipes.shapes import build_model, build_task, train_and_evaluate
from vlmzoo.train.trainer import parameter_table


def main(
    steps: int = 200,
    out: str = "runs/llava_two_stage",
    train_size: int = 2000,
    val_scenes: int = 60,
    batch_size: int = 64,
) -> dict:
    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    task = build_task(seed=0, train_size=train_size, val_scenes=val_scenes)
    model = build_model(task.tokenizer)
    results = {}
    for stage, parts in (
        ("stage0-all", dict(encoder="full", adapter="full", decoder="full")),
        ("stage1-projector", dict(encoder="frozen", adapter="full", decoder="frozen")),
        ("stage2-projector+llm", dict(encoder="frozen", adapter="full", decoder="full")),
    ):
        model.set_trainable(**parts)
        print(f"\n== {stage}\n{parameter_table(model)}")
        result = train_and_evaluate(
            model, task, Path(out) / stage, steps=steps, seed=0, batch_size=batch_size, progress=False
        )
        results[stage] = result["val_exact_match"]
        print(f"{stage}: held-out exact match {100 * result['val_exact_match']:.1f}%")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--smoke", action="store_true", help="CI size: 2 steps of 8 per stage, 12 held-out scenes"
    )
    args = parser.parse_args()
    if args.smoke:
        main(2, train_size=200, val_scenes=12, batch_size=8)
    else:
        main(args.steps)
