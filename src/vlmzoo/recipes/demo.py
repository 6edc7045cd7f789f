"""``vlmzoo demo``: train the default tiny VLM on the shapes task and show what it learned.

The demo is the ``vlmzoo train`` job (:func:`vlmzoo.recipes.train.train`) with the defaults: a
tiny CLIP ViT + MLP projector + tiny Llama, a sentencepiece tokenizer trained on the data set's
text, the whole model trained on visual question answering about procedurally drawn shapes
(:mod:`vlmzoo.recipes.shapes`), and exact match of greedy answers on held-out scenes. The final
answers come through :func:`vlmzoo.processing.chat.chat_batch` with the demo's :class:`Processor`
(the path ``vlmzoo chat`` takes), from the held-out scenes' images. On top of the job's
``config.json``, ``model.safetensors`` and ``metrics.json``, the run folder receives the processor
(``vlmzoo_processor.json``, ``sentencepiece.model``: ``vlmzoo chat <out> --image x.png "..."``
works on the demo's model), ``loss.png``, ``samples.txt`` (answers to held-out questions) and
``summary.json``.
"""

from __future__ import annotations

import json
from typing import Any

from vlmzoo.data import SyntheticDataset
from vlmzoo.eval import exact_match
from vlmzoo.processing.chat import Conversation, chat_batch
from vlmzoo.processing.image import ImageProcessorConfig
from vlmzoo.processing.processor import PROCESSOR_FILE, ImageStreamConfig, Processor, ProcessorConfig
from vlmzoo.processing.templates import TemplateConfig
from vlmzoo.processing.tokenizer import IMAGE_TOKEN, SENTENCEPIECE_FILE, SentencePieceTokenizer
from vlmzoo.recipes.plots import plot_losses
from vlmzoo.recipes.shapes import IMAGE_SIZE, QUESTION_TEMPLATE, TaskData
from vlmzoo.recipes.train import TrainJob, train
from vlmzoo.registry import list_models

MAX_NEW_TOKENS = 12  # the longest answer ("a small blue triangle") is a few tokens
BATCH_SIZE = 64  # questions generated together (left-padded)


def demo_processor(tokenizer: SentencePieceTokenizer) -> Processor:
    """The shapes task's input pipeline as a :class:`Processor`: the CLIP recipe at the task's
    image size (``build_task``'s) and the training prompt ``QUESTION_TEMPLATE`` = ``"<image> {q}"``
    after BOS, the answer ending at EOS."""
    image_text = QUESTION_TEMPLATE.replace("{}", "")  # "<image> ": the placeholder and its space
    config = ProcessorConfig(
        family="vlmzoo-demo",
        image=ImageStreamConfig(ImageProcessorConfig.clip(IMAGE_SIZE)),
        template=TemplateConfig(name="shapes", image=image_text, images_at="first_user"),
        image_token=IMAGE_TOKEN,
        add_bos=True,
    )
    return Processor(config, tokenizer)


def held_out_images(task: TaskData, seed: int) -> list[Any]:
    """The held-out scenes' images (PIL), drawn again as ``build_task`` drew them (its pixels are
    already normalised; chat reads images)."""
    val = SyntheticDataset(
        "shapes", "validation", len(task.val_captions), seed=seed, image_size=IMAGE_SIZE, unique=True
    )
    return [val[i].image for i in range(len(val))]


def chat_answers(model, processor: Processor, images: list[Any], task: TaskData) -> list[str]:
    """Greedy answers to every held-out question through ``chat_batch``, ``BATCH_SIZE`` at a time."""
    model.eval()
    conversations = [
        Conversation(q.replace(IMAGE_TOKEN, "", 1).strip(), images[i]) for i, q, _ in task.val_qa
    ]
    answers: list[str] = []
    for start in range(0, len(conversations), BATCH_SIZE):
        chunk = conversations[start : start + BATCH_SIZE]
        answers += chat_batch(model, processor, chunk, max_new_tokens=MAX_NEW_TOKENS)
    return answers


def sample_lines(task: TaskData, answers: list[str], scenes: int = 8) -> list[str]:
    """One held-out question on each of ``scenes`` scenes spread over the split, a different
    question type per scene, with the model's answer: ``[caption] question -> answer (truth ...)``."""
    by_scene: dict[int, list[int]] = {}
    for k, (scene, _, _) in enumerate(task.val_qa):
        by_scene.setdefault(scene, []).append(k)
    picked = list(by_scene.values())[:: max(1, len(by_scene) // scenes)][:scenes]
    shown = [ks[i % len(ks)] for i, ks in enumerate(picked)]
    lines = []
    for k in shown:
        scene, q, a = task.val_qa[k]
        lines.append(
            f"[{task.val_captions[scene]}] {q.replace('<image> ', '')} -> {answers[k]!r} (truth {a!r})"
        )
    return lines


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
    task, run = outcome.task, outcome.run
    processor = demo_processor(task.tokenizer)
    run.record(PROCESSOR_FILE, SENTENCEPIECE_FILE)
    processor.save_pretrained(run.path)
    answers = chat_answers(outcome.model, processor, held_out_images(task, seed), task)
    val_exact_match = exact_match(answers, [a for _, _, a in task.val_qa])
    lines = sample_lines(task, answers)
    run.write_text("samples.txt", "\n".join(lines) + "\n")
    curves = {"tiny-llava": (outcome.history["step"], outcome.history["loss"])}
    plot_losses(curves, run.path_for("loss.png"), "vlmzoo demo")
    summary = {
        "val_exact_match": val_exact_match,
        "train_seconds": outcome.train_seconds,
        "steps": steps,
        "seed": seed,
        "parameters": sum(p.numel() for p in outcome.model.parameters()),
    }
    run.write_text("summary.json", json.dumps(summary, indent=2))
    print("\nheld-out samples (scene caption, question -> answer):")
    print("\n".join("  " + line for line in lines))
    print(
        f"\nheld-out exact match (answers through vlmzoo.chat): {100 * val_exact_match:.1f}% after "
        f"{steps} steps ({outcome.train_seconds:.0f} s of training); run folder: {run.path}"
    )
    return summary
