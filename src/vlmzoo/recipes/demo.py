"""``vlmzoo demo``: train the default tiny VLM on the shapes task and show what it learned.

The demo is the ``vlmzoo train`` job (:func:`vlmzoo.recipes.train.train`) with the defaults: a
tiny CLIP ViT + MLP projector + tiny Llama, a sentencepiece tokenizer trained on the data set's
text, the whole model trained on visual question answering about procedurally drawn shapes
(:mod:`vlmzoo.recipes.shapes`), and exact match of greedy answers on held-out scenes. On top of
the job's ``config.json``, ``model.safetensors`` and ``metrics.json``, the run folder receives
``loss.png``, ``samples.txt`` (answers to held-out questions) and ``summary.json``.
"""

from __future__ import annotations

import json

from vlmzoo.eval import generate_answers
from vlmzoo.recipes.plots import plot_losses
from vlmzoo.recipes.shapes import TaskData
from vlmzoo.recipes.train import TrainJob, train
from vlmzoo.registry import list_models


def sample_lines(model, task: TaskData, scenes: int = 8) -> list[str]:
    """Greedy answers to one held-out question on each of ``scenes`` scenes spread over the split,
    a different question type per scene: ``[caption] question -> answer (truth ...)``."""
    by_scene: dict[int, list[tuple[int, str, str]]] = {}
    for qa in task.val_qa:
        by_scene.setdefault(qa[0], []).append(qa)
    picked = list(by_scene.values())[:: max(1, len(by_scene) // scenes)][:scenes]
    shown = [qas[i % len(qas)] for i, qas in enumerate(picked)]
    answers = generate_answers(
        model, task.tokenizer, task.val_pixels[[i for i, _, _ in shown]], [q for _, q, _ in shown]
    )
    return [
        f"[{task.val_captions[i]}] {q.replace('<image> ', '')} -> {p!r} (truth {a!r})"
        for (i, q, a), p in zip(shown, answers, strict=True)
    ]


def run_demo(
    out: str = "runs/demo",
    steps: int = 2500,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Train and evaluate the default tiny VLM; print accuracy and sample answers; fill ``out``.

    Every value is checked before anything runs (:class:`~vlmzoo.train.TrainJob`), the run folder
    first of all (:class:`~vlmzoo.errors.RunFolderError`). Returns the summary written to
    ``summary.json``.
    """
    job = TrainJob(
        run_dir=out,
        steps=steps,
        seed=seed,
        device=device,
        eval_every=max(1, steps // 4),  # four evaluations along the run
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        threads=threads,
    )
    counts = {k: len(list_models(kind=k)) for k in ("encoder", "adapter", "decoder", "model")}
    print("vlmzoo: " + ", ".join(f"{n} {k}s" for k, n in counts.items()) + " registered (`vlmzoo list`)")
    print(
        "demo: a tiny CLIP ViT + MLP projector + tiny Llama learns visual question answering on "
        "procedurally drawn shapes\n"
    )
    outcome = train(job)
    lines = sample_lines(outcome.model, outcome.task)
    run = outcome.run
    run.write_text("samples.txt", "\n".join(lines) + "\n")
    curves = {"tiny-llava": (outcome.history["step"], outcome.history["loss"])}
    plot_losses(curves, run.path_for("loss.png"), "vlmzoo demo")
    summary = {
        "val_exact_match": outcome.val_exact_match,
        "train_seconds": outcome.train_seconds,
        "steps": steps,
        "seed": seed,
        "parameters": sum(p.numel() for p in outcome.model.parameters()),
    }
    run.write_text("summary.json", json.dumps(summary, indent=2))
    print("\nheld-out samples (scene caption, question -> answer):")
    print("\n".join("  " + line for line in lines))
    print(
        f"\nheld-out exact match: {100 * outcome.val_exact_match:.1f}% after {steps} steps "
        f"({outcome.train_seconds:.0f} s of training); run folder: {run.path}"
    )
    return summary
