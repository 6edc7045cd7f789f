"""``vlmzoo ablate``: the shapes task over a grid of encoders x adapters x decoders x seeds.

Every run gets the same data and budget; runs differ in their parts and their seed (the seed
sets the initial weights and the order of the batches; the data are built once, from ``--seed``).

**Checked before anything trains**: the lists, every name, the budget, the image size, the run
folder, and whether each combination's parts fit together (every VLM is built on the meta
device, which costs neither memory nor time).

**Written as each run ends**, so a crash or Ctrl-C loses at most the run in progress:

- ``grid.json``: the settings every run of the folder shares (steps, seeds, data seed, image
  size, batch size, learning rate);
- ``ENC__ADA__DEC/seed-S/``: the run itself (checkpoint, ``metrics.json``) and its
  ``result.json``: sizes, costs, outcomes and the loss curve, or the error of a failed run;
- ``results.md``, ``results.csv``, ``results.tex``: one row per combination, mean ± standard
  deviation over seeds (:mod:`vlmzoo.recipes.ablation_table`); ``runs.csv``: one row per run;
- ``ablation.png``: loss curves with a band of one standard deviation, held-out scores with
  error bars and the score of a model that ignores the image.

**Running the same command again continues the grid**: finished runs are read back, not
trained; a run that stopped part-way continues from its last checkpoint (exactly, as
``--resume`` does); a failed run is tried again. More seeds or more names extend the grid.
Changed settings are refused (the folder's runs would no longer be comparable): pass
``--overwrite`` to start over, or another ``--out``.

**One failed run does not stop the grid**: its error is written to its ``result.json``, the
others run, and the tables hold the finished ones; :class:`~vlmzoo.errors.RunsFailedError` is
raised at the end (exit code 1 on the command line).

The held-out score has a floor. Counting questions of single-object scenes always have the
answer "1", and "is there a ...?" is mostly "no", so a model that ignores the image scores 0.40
exact match on the default task; the four attribute questions (colour, shape, position, size)
bring that down to 0.18. The tables report both scores, and the notes under them say what the
fixed-answer model gets.
"""

from __future__ import annotations

import math
import statistics
import traceback
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import torch

from vlmzoo.errors import ConfigError, RunFolderError, RunsFailedError
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.recipes.ablation_table import (
    COSTS,
    OUTCOMES,
    PARTS,
    SIZES,
    cell_rows,
    csv_table,
    latex_table,
    markdown_table,
    runs_csv,
)
from vlmzoo.recipes.plots import plot_ablation
from vlmzoo.recipes.shapes import (
    IMAGE_SIZE,
    TaskData,
    build_config,
    build_task,
    check_parts,
    fixed_answer_baseline,
    task_loss,
    task_train_config,
    train_and_evaluate,
    training_batch,
)
from vlmzoo.recipes.train import prepare_run_folder
from vlmzoo.train.run_dir import CHECKPOINT_DIR, MANIFEST_NAME, RunDir, check_run_dir
from vlmzoo.train.step_cost import forward_gflops, peak_step_memory
from vlmzoo.train.trainer import make_optimizer
from vlmzoo.train.world import World
from vlmzoo.weights.files import read_json

GRID_NAME = "grid.json"
GRID_FORMAT = "vlmzoo-ablation-grid"
RESULT_NAME = "result.json"
MIN_IMAGE_SIZE = 16  # the smallest canvas the shapes data draw


@dataclass(frozen=True)
class GridSettings:
    """What every run of a grid folder shares. ``data_seed`` builds the data; the runs' seeds are
    ``data_seed, data_seed + 1, ...``."""

    steps: int
    data_seed: int
    image_size: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class Run:
    """One run of the grid: three parts and a seed, trained in ``folder`` (relative)."""

    encoder: str
    adapter: str
    decoder: str
    seed: int

    @property
    def cell(self) -> str:
        return f"{self.encoder}__{self.adapter}__{self.decoder}"

    @property
    def folder(self) -> str:
        return f"{self.cell}/seed-{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.encoder} + {self.adapter} + {self.decoder}"


def check_grid(
    encoders: list[str], adapters: list[str], decoders: list[str], image_size: int = IMAGE_SIZE
) -> None:
    """Refuse an empty list, a name listed twice, an unregistered name (the registry suggests) or
    parts that do not make a VLM for ``image_size`` px images (each VLM built on the meta device)."""
    for kind, names in (("encoders", encoders), ("adapters", adapters), ("decoders", decoders)):
        if not names:
            raise ConfigError(
                f"no {kind} to compare: give at least one name (`vlmzoo list --kind {kind[:-1]}`)"
            )
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{kind} {twice} listed more than once: each combination runs once")
    for enc, ada, dec in product(encoders, adapters, decoders):
        check_parts(enc, ada, dec, image_size)


def check_settings(steps: int, seed: int, seeds: int, image_size: int, batch_size: int, lr: float) -> None:
    """Refuse a budget, seed count, image size or batch size out of range, before anything runs."""
    task_train_config(steps, seed, lr=lr)  # steps >= 1, lr > 0, seed in range
    for name, value, low in (
        ("seeds", seeds, 1),
        ("image_size", image_size, MIN_IMAGE_SIZE),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} must be an int >= {low}")


def run_ablation(
    encoders: list[str],
    adapters: list[str],
    decoders: list[str],
    out: str = "runs/ablate",
    steps: int = 300,
    seed: int = 0,
    seeds: int = 1,
    image_size: int = IMAGE_SIZE,
    batch_size: int = 64,
    lr: float = 3e-3,
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Train every combination of parts with seeds ``seed .. seed + seeds - 1``; write the tables
    and the plot into ``out`` as each run ends (module docstring), continuing a grid already there.

    Returns one row per combination (:func:`vlmzoo.recipes.ablation_table.cell_rows`: parts,
    seeds, parameters, visual tokens, GFLOPs per sample, step time, peak memory, and the mean and
    standard deviation of the final loss and the held-out scores).

    Raises :class:`~vlmzoo.errors.ConfigError` / :class:`~vlmzoo.errors.UnknownModelError` for a
    grid or setting that cannot run, :class:`~vlmzoo.errors.RunFolderError` for a folder that
    cannot be used (one holding a grid of other settings among them) — all before anything trains;
    :class:`~vlmzoo.errors.RunsFailedError` at the end when runs failed.
    """
    check_grid(encoders, adapters, decoders, image_size)
    check_settings(steps, seed, seeds, image_size, batch_size, lr)
    settings = GridSettings(steps=steps, data_seed=seed, image_size=image_size, batch_size=batch_size, lr=lr)
    run_dir = Path(out)
    folder = _open_grid_folder(run_dir, settings, overwrite)
    runs = [
        Run(enc, ada, dec, s)
        for enc, ada, dec in product(encoders, adapters, decoders)
        for s in range(seed, seed + seeds)
    ]
    task = build_task(seed, image_size=image_size)
    baseline = fixed_answer_baseline(task)
    results: dict[Run, dict] = {}
    failed: list[Run] = []
    for index, run in enumerate(runs, 1):
        result = _finished_result(run_dir / run.folder)
        status = "finished before, read back"
        if result is None:
            result = _train(run, task, settings, run_dir, folder, progress)
            status = "finished" if result["status"] == "finished" else f"FAILED: {result['error']}"
        if result["status"] == "finished":
            results[run] = result
            status += f": exact match {result['val_exact_match']:.4f}, attributes {result['val_attribute_match']:.4f}"
        else:
            failed.append(run)
        print(f"[{index}/{len(runs)}] {run.label}, seed {run.seed}: {status}")
        _write_reports(folder, [results[r] for r in runs if r in results], baseline, settings)
    rows = cell_rows(results[r] for r in runs if r in results)
    if rows:
        print("\n" + (run_dir / "results.md").read_text())
    if failed:
        first = _read_result(run_dir / failed[0].folder)
        raise RunsFailedError(
            f"{len(failed)} of {len(runs)} runs failed (first: {failed[0].label}, seed {failed[0].seed}: "
            f"{first.get('error', 'unknown error')}); each failed run's error and traceback are in its "
            f"{RESULT_NAME} under {run_dir}; the {len(results)} finished runs are in the tables; run the "
            "same command again to retry the failed runs"
        )
    return rows


def _open_grid_folder(run_dir: Path, settings: GridSettings, overwrite: bool) -> RunDir:
    """The grid's folder: a new one, a cleared one (``overwrite``), or one holding a grid of the
    same settings to continue; writes ``grid.json``. Refusals are :class:`RunFolderError`."""
    grid = RunDir(run_dir)
    grid_file = run_dir / GRID_NAME
    if not overwrite and grid_file.is_file() and grid.has_manifest():
        stored = read_json(grid_file, "ablation grid settings")
        ours = asdict(settings)
        theirs = (
            stored.get("settings")
            if isinstance(stored, dict) and stored.get("format") == GRID_FORMAT
            else None
        )
        if not isinstance(theirs, dict):
            raise RunFolderError(
                f"{grid_file} is not a vlmzoo ablation grid file; pass --overwrite to replace the grid, "
                "or choose another --out"
            )
        changed = [
            f"{k}: {theirs.get(k)!r} in the folder, {v!r} now" for k, v in ours.items() if theirs.get(k) != v
        ]
        if changed:
            raise RunFolderError(
                f"{run_dir} holds a grid run with other settings ({'; '.join(changed)}): its runs would not "
                "compare with new ones; repeat the folder's settings to continue it, pass --overwrite to "
                "replace it, or choose another --out"
            )
        return grid
    if not overwrite and grid.has_manifest() and any(run_dir.iterdir()):
        # check_run_dir would suggest --resume, which continues a training run, not a grid.
        raise RunFolderError(
            f"{run_dir} holds a vlmzoo run that is not an ablation grid (no {GRID_NAME} beside its "
            f"{MANIFEST_NAME}); choose another --out, or pass --overwrite to replace it"
        )
    prepare_run_folder(run_dir, resume=False, overwrite=overwrite, world=World())
    grid.write_json(GRID_NAME, {"format": GRID_FORMAT, "version": 1, "settings": asdict(settings)})
    return grid


def _read_result(run_folder: Path) -> dict:
    path = run_folder / RESULT_NAME
    document = read_json(path, "ablation run result") if path.is_file() else {}
    return document if isinstance(document, dict) else {}


def _finished_result(run_folder: Path) -> dict | None:
    """The result of a run that finished, or ``None`` (never run, stopped part-way, or failed)."""
    result = _read_result(run_folder)
    return result if result.get("status") == "finished" else None


def _train(
    run: Run, task: TaskData, settings: GridSettings, run_dir: Path, grid: RunDir, progress: bool
) -> dict:
    """Train one run (continuing it from its checkpoint if it has one); its result, written to its
    ``result.json``: ``status`` "finished" with the measures, or "failed" with the error."""
    grid.record(run.cell + "/", run.folder + "/")
    folder = run_dir / run.folder
    runs_own = RunDir(folder)
    resume = (folder / CHECKPOINT_DIR).is_dir()  # stopped part-way: continue from its checkpoint
    identity = {"encoder": run.encoder, "adapter": run.adapter, "decoder": run.decoder, "seed": run.seed}
    try:
        if not resume:
            # A run that failed before its first checkpoint left only files it wrote: start it over.
            check_run_dir(folder, resume=False, overwrite=True)
        torch.manual_seed(run.seed)
        config = build_config(task.tokenizer, run.encoder, run.adapter, run.decoder, settings.image_size)
        model = VisionLanguageModel(config)
        measures = _measure(model, task, settings, run.seed)
        result = train_and_evaluate(
            model,
            task,
            folder,
            settings.steps,
            run.seed,
            batch_size=settings.batch_size,
            lr=settings.lr,
            progress=progress,
            resume=resume,
        )
    except Exception as error:  # one run's failure must not lose the grid
        document = {
            **identity,
            "status": "failed",
            "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
            "traceback": traceback.format_exc(),
        }
        runs_own.write_json(RESULT_NAME, document)
        return document
    history = result["history"]
    step_seconds = result["step_seconds"]
    document = {
        **identity,
        "status": "finished",
        **measures,
        "step_ms": 1000 * statistics.median(step_seconds) if step_seconds else None,
        "train_seconds": round(result["train_seconds"], 2),
        "final_loss": history["loss"][-1],
        "val_exact_match": result["val_exact_match"],
        "val_attribute_match": result["val_attribute_match"],
        "curve": {"step": history["step"], "loss": history["loss"]},
    }
    runs_own.write_json(RESULT_NAME, document)
    return document


def _measure(model: VisionLanguageModel, task: TaskData, settings: GridSettings, seed: int) -> dict:
    """Sizes and memory of the untrained model (the random generators are left as they were).

    Every run of the grid measures on the same sample and batch (drawn with the data seed), so
    the figures of a combination do not vary with its seeds."""
    sample = training_batch(task, settings.data_seed, 0, 0, batch_size=1)
    gflops = forward_gflops(lambda: task_loss(model, sample))
    config = task_train_config(settings.steps, seed, lr=settings.lr)
    peak = peak_step_memory(
        model,
        training_batch(task, settings.data_seed, 0, 0, settings.batch_size),
        task_loss,
        lambda m: make_optimizer(m, config),
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "visual_tokens": model.tokens_per_image,
        "gflops_per_sample": gflops,
        "peak_memory_mib": None if peak is None else peak / 2**20,
    }


def _write_reports(
    grid: RunDir, results: list[dict], baseline: dict[str, float], settings: GridSettings
) -> None:
    """The tables, the per-run CSV and the plot of the finished runs so far."""
    if not results:
        return
    rows = cell_rows(results)
    seeds = sorted({r["seed"] for r in results})
    what = f"{settings.steps} steps, batch {settings.batch_size}, {settings.image_size} px, seeds {seeds[0]}-{seeds[-1]}"
    notes = [
        f"{what}. Mean ± sample standard deviation over the finished seeds of each row.",
        "A model that ignores the image (each question answered with its most common training answer) "
        f"scores val_exact_match {baseline['val_exact_match']:.4f} and val_attribute_match "
        f"{baseline['val_attribute_match']:.4f} (colour, shape, position and size questions only).",
    ]
    grid.write_text("results.md", markdown_table(rows, notes))
    grid.write_text("results.csv", csv_table(rows))
    grid.write_text("results.tex", latex_table(rows, f"vlmzoo ablate on the shapes task: {what}."))
    fields = [*PARTS, "seed", *SIZES, *COSTS, *OUTCOMES, "train_seconds"]
    grid.write_text("runs.csv", runs_csv(results, fields))
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    by_cell: dict[str, dict[str, list[float]]] = {}
    for r in results:
        label = f"{r['encoder']} + {r['adapter']} + {r['decoder']}"
        curves.setdefault(label, []).append((r["curve"]["step"], r["curve"]["loss"]))
    for row in rows:
        label = f"{row['encoder']} + {row['adapter']} + {row['decoder']}"
        by_cell[label] = {
            name: (row[name], math.nan if row[f"{name}_std"] is None else row[f"{name}_std"])
            for name in ("val_exact_match", "val_attribute_match")
        }
    plot_ablation(curves, by_cell, baseline, grid.path_for("ablation.png"), f"vlmzoo ablate ({what})")
