"""``vlmzoo ablate``: the shapes task over a grid of encoders x adapters x decoders.

Every combination gets the same data, budget and seed; the run folder receives ``results.md``
(a markdown table), ``results.csv``, ``ablation.png`` (the loss curves) and one sub-folder per
combination. Everything that can be checked is checked before the first combination trains: the
lists, every name, the budget, the run folder, and whether each combination's parts fit together.
"""

from __future__ import annotations

import csv
import io
from itertools import product
from pathlib import Path

import torch

from vlmzoo.errors import ConfigError
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.recipes.plots import plot_losses
from vlmzoo.recipes.shapes import build_config, build_task, check_parts, task_train_config, train_and_evaluate
from vlmzoo.recipes.train import prepare_run_folder
from vlmzoo.train.run_dir import RunDir
from vlmzoo.train.world import World


def check_grid(encoders: list[str], adapters: list[str], decoders: list[str]) -> None:
    """Refuse an empty list, a name listed twice, or an unregistered name (the registry suggests)."""
    for kind, names in (("encoders", encoders), ("adapters", adapters), ("decoders", decoders)):
        if not names:
            raise ConfigError(
                f"no {kind} to compare: give at least one name (`vlmzoo list --kind {kind[:-1]}`)"
            )
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{kind} {twice} listed more than once: each combination runs once")
    for enc, ada, dec in product(encoders, adapters, decoders):
        check_parts(enc, ada, dec)


def run_ablation(
    encoders: list[str],
    adapters: list[str],
    decoders: list[str],
    out: str = "runs/ablate",
    steps: int = 300,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Same data, budget and seed for every combination; writes results.md, results.csv, ablation.png.

    Returns one row per combination (parameters, visual tokens, training seconds, final loss,
    held-out exact match).
    """
    check_grid(encoders, adapters, decoders)
    task_train_config(steps, seed)  # the budget, checked before the folder is touched
    run_dir = Path(out)
    prepare_run_folder(run_dir, resume=False, overwrite=overwrite, world=World())
    task = build_task(seed)
    grid = [(enc, ada, dec) for enc, ada, dec in product(encoders, adapters, decoders)]
    configs = [build_config(task.tokenizer, *parts) for parts in grid]  # refuse misfits before training
    run = RunDir(run_dir)
    rows, curves = [], {}
    for (enc, ada, dec), config in zip(grid, configs, strict=True):
        name, folder = f"{enc} + {ada} + {dec}", f"{enc}__{ada}__{dec}"
        run.record(folder + "/")  # a run of its own inside the grid's folder
        torch.manual_seed(seed)
        model = VisionLanguageModel(config)
        result = train_and_evaluate(model, task, run_dir / folder, steps, seed, progress=progress)
        history = result["history"]
        rows.append(
            {
                "encoder": enc,
                "adapter": ada,
                "decoder": dec,
                "params": sum(p.numel() for p in model.parameters()),
                "visual_tokens": model.tokens_per_image,
                "train_s": round(result["train_seconds"], 1),
                "final_loss": round(history["loss"][-1], 4),
                "val_exact_match": round(result["val_exact_match"], 4),
            }
        )
        curves[name] = (history["step"], history["loss"])
        print(f"{name}: exact match {100 * result['val_exact_match']:.1f}%")
    header = list(rows[0])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    run.write_text("results.md", "\n".join(table) + "\n")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    run.write_text("results.csv", text.getvalue())
    plot_losses(curves, run.path_for("ablation.png"), f"vlmzoo ablate ({steps} steps, seed {seed})")
    print("\n" + "\n".join(table))
    return rows
