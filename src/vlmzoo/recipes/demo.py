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

``vlmzoo demo --task grounding`` (:func:`run_grounding_demo`) trains the same tiny VLM on
referring questions about scenes of up to three shapes ("where is the red square?") answered with
the shape's box in Shikra's text format (``[x1,y1,x2,y2]``, fractions of the image with 3
decimals: :mod:`vlmzoo.processing.referring`), and reports held-out REC accuracy (IoU >= 0.5,
:mod:`vlmzoo.eval.grounding`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmzoo.data import SyntheticDataset
from vlmzoo.data.shapes import SIZES, Obj, shape_box
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.eval import generate_answers, rec_scores
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.models.vlm import VisionLanguageModel
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.processor import PROCESSOR_FILE, ImageStreamConfig, Processor, ProcessorConfig
from vlmzoo.processing.prompts import collate
from vlmzoo.processing.referring import SHIKRA
from vlmzoo.processing.templates import TemplateConfig
from vlmzoo.processing.tokenizer import (
    IMAGE_TOKEN,
    SENTENCEPIECE_FILE,
    SentencePieceTokenizer,
    train_sentencepiece,
)
from vlmzoo.recipes.evaluate import EvalItem, EvalResult, evaluate_items
from vlmzoo.recipes.plots import plot_losses
from vlmzoo.recipes.shapes import IMAGE_SIZE, QUESTION_TEMPLATE, TaskData, build_config, task_train_config
from vlmzoo.recipes.train import TrainJob, prepare_run_folder, train
from vlmzoo.registry import list_models
from vlmzoo.train.run_checkpoint import read_run_state
from vlmzoo.train.run_dir import CHECKPOINT_DIR, RunDir
from vlmzoo.train.trainer import Trainer
from vlmzoo.train.world import init_world, teardown

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


def held_out_images(task: TaskData, seed: int, max_objects: int = 1) -> list[Any]:
    """The held-out scenes' images (PIL), drawn again as ``build_task`` (``max_objects=1``) or
    ``build_grounding_task`` drew them (its pixels are already normalised; chat reads images)."""
    val = SyntheticDataset(
        "shapes",
        "validation",
        len(task.val_captions),
        seed=seed,
        image_size=IMAGE_SIZE,
        max_objects=max_objects,
        unique=True,
    )
    return [val[i].image for i in range(len(val))]


def held_out_evaluation(
    model, processor: Processor, images: list[Any], task: TaskData, max_new_tokens: int = MAX_NEW_TOKENS
) -> EvalResult:
    """Greedy answers to every held-out question, scored by exact match, through ``vlmzoo eval``'s
    loop (:func:`vlmzoo.recipes.evaluate.evaluate_items`: ``chat_batch``, ``BATCH_SIZE`` at a time)."""
    require_kind(model, GENERATIVE, "held_out_evaluation")
    items = [EvalItem((images[i],), q.replace(IMAGE_TOKEN, "", 1).strip(), (a,)) for i, q, a in task.val_qa]
    return evaluate_items(
        model, processor, items, "exact_match", "held-out", BATCH_SIZE, max_new_tokens, progress=False
    )


def chat_answers(
    model, processor: Processor, images: list[Any], task: TaskData, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[str]:
    """The answers of :func:`held_out_evaluation`."""
    require_kind(model, GENERATIVE, "chat_answers")
    return list(held_out_evaluation(model, processor, images, task, max_new_tokens).predictions)


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
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    task: str = "vqa",
) -> dict:
    """Train and evaluate the default tiny VLM; print accuracy and sample answers; fill ``out``.

    ``task``: ``"vqa"`` (questions about one shape, exact match; 2500 steps by default) or
    ``"grounding"`` (:func:`run_grounding_demo`: where is the named shape, REC accuracy) or
    ``"chart"`` (:func:`vlmzoo.recipes.chart.run_chart_demo`: OneChart's number head on bar charts).
    Every value is checked before anything runs (:class:`~vlmzoo.train.TrainJob`), the run folder
    first of all (:class:`~vlmzoo.errors.RunFolderError`). Returns the summary written to
    ``summary.json``.
    """
    if task not in DEMO_TASKS:
        raise ConfigError(f"task={task!r}: the demo's tasks are {list(DEMO_TASKS)}")
    if task == "chart":  # OneChart on the synthetic bar charts (vlmzoo.recipes.chart)
        from vlmzoo.recipes.chart import run_chart_demo

        if resume or overwrite:
            raise ConfigError(
                "the chart demo starts a fresh run: --resume and --overwrite are for vqa and grounding"
            )
        result = run_chart_demo(
            out, 1200 if steps is None else steps, seed, progress=progress, threads=threads, device=device
        )
        print(
            f"held-out charts: number accuracy {100 * result['number_accuracy@0.05']:.1f}% (within 5%; "
            f"chance {100 * result['chance_number_accuracy']:.1f}%), charts read exactly "
            f"{100 * result['chart_accuracy']:.1f}%, AP@strict {result['ap_strict']:.3f}; reliability "
            f"vs error Spearman {result['reliability_spearman']:.2f}"
        )
        return result
    if task == "grounding":
        return run_grounding_demo(
            out,
            GROUNDING_STEPS if steps is None else steps,
            seed,
            device,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            threads=threads,
        )
    steps = 2500 if steps is None else steps
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
    evaluation = held_out_evaluation(outcome.model, processor, held_out_images(task, seed), task)
    answers, val_exact_match = list(evaluation.predictions), evaluation.score
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


# --- the grounding demo: referring expressions answered with Shikra's box text ----------------
DEMO_TASKS = ("vqa", "grounding", "chart")
GROUNDING_STEPS = 2500
# A third of the VQA demo's rate: at 3e-3 the model stalls near 50% REC accuracy, answering a
# well-formed box of another shape or an empty cell; at 1e-3 it learns which cell holds the named
# colour and shape (measured on 200 held-out scenes, 10000 training scenes: 45% after 1500 steps at
# 3e-3; 82% after 1250 and 93% after 2500 steps at 1e-3; 48% after 2500 steps at 1e-3 with the
# plain sentencepiece tokenizer instead of train_grounding_tokenizer's: both are needed).
GROUNDING_LR = 1e-3
GROUNDING_TRAIN_SCENES = 10_000  # ~19k questions: 2500 steps of 64 see each ~8 times
GROUNDING_VAL_SCENES = 200  # ~400 held-out questions: a 95% interval of about +-3 points at 90%
GROUNDING_MAX_OBJECTS = 3  # shapes per scene: the question must pick one out of several
GROUNDING_NEW_TOKENS = 16  # "[0.027,0.360,0.307,0.640]" is 10 tokens (train_grounding_tokenizer)
GROUNDING_VOCAB = 256
GROUNDING_FORMAT = SHIKRA


@dataclass
class GroundingTask(TaskData):
    """:class:`TaskData` whose answers are box texts, with ``val_boxes``: the held-out ground
    truth, one normalised box (fractions of the image, Shikra's frame) per ``val_qa`` item."""

    val_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def build_grounding_task(
    seed: int = 0,
    train_size: int = GROUNDING_TRAIN_SCENES,
    val_scenes: int = GROUNDING_VAL_SCENES,
    cache_dir: str | None = None,
    max_objects: int = GROUNDING_MAX_OBJECTS,
) -> GroundingTask:
    """Referring-expression comprehension on the shapes scenes: ``"<image> where is the red
    square?"`` -> the shape's box in Shikra's text format (``[x1,y1,x2,y2]``, 3 decimals; the
    scenes are square, so no padding). Held-out scenes are never seen in training; a
    sentencepiece tokenizer is trained on the training questions and answers."""
    size = IMAGE_SIZE
    train = SyntheticDataset(
        "shapes", "train", train_size, seed=seed, image_size=size, max_objects=max_objects
    )
    val = SyntheticDataset(
        "shapes", "validation", val_scenes, seed=seed, image_size=size, max_objects=max_objects, unique=True
    )
    processor = ImageProcessor(ImageProcessorConfig.clip(size))
    train_samples = [train[i] for i in range(len(train))]
    val_samples = [val[i] for i in range(len(val))]

    def pairs(samples):
        return [
            (i, QUESTION_TEMPLATE.format(q), GROUNDING_FORMAT.box_to_text(box, width=size, height=size))
            for i, s in enumerate(samples)
            for q, box in s.grounding
        ]

    train_qa = pairs(train_samples)
    texts = [q + " " + a for _, q, a in train_qa]
    return GroundingTask(
        tokenizer=train_grounding_tokenizer(texts, coordinate_texts(size), cache_dir=cache_dir),
        train_pixels=processor([s.image for s in train_samples]),
        train_qa=train_qa,
        val_pixels=processor([s.image for s in val_samples]),
        val_qa=pairs(val_samples),
        val_captions=[s.caption for s in val_samples],
        val_boxes=[
            GROUNDING_FORMAT.normalize_box(box, width=size, height=size)
            for s in val_samples
            for _, box in s.grounding
        ],
    )


def coordinate_texts(size: int = IMAGE_SIZE) -> list[str]:
    """Every coordinate Shikra's text can hold on the shapes scenes of side ``size``: the sides of
    the boxes of both sizes in the 3x3 grid's cells, as ``box_to_text`` writes them ("0.027", ...;
    12 values at 48 px)."""
    values: set[str] = set()
    for cell in range(9):
        for shape_size in SIZES:
            box = shape_box(Obj("square", "red", shape_size, cell // 3, cell % 3), size)
            values.update(GROUNDING_FORMAT.box_to_text(box, width=size, height=size)[1:-1].split(","))
    return sorted(values)


def train_grounding_tokenizer(
    texts: list[str], coordinates: list[str], cache_dir: str | None = None
) -> SentencePieceTokenizer:
    """A BPE sentencepiece model on ``texts`` in which each of ``coordinates`` and the box's
    punctuation is one piece (sentencepiece's ``user_defined_symbols``), so that a box is 9 pieces:
    a bracket, each coordinate and a comma or the closing bracket. Trained on the text alone, BPE cuts "[0.693,0.027,0.973,0.307]" into pieces
    that straddle coordinates ('[0.693,0.' and '027,0.973,0.307]'): the decoder would have to emit
    a whole box, or half of two numbers, in one prediction. Cached as ``train_sentencepiece`` caches."""
    return train_sentencepiece(
        texts, GROUNDING_VOCAB, cache_dir=cache_dir, user_defined_symbols=["[", "]", ",", *coordinates]
    )


def grounding_trainer(
    model, task: GroundingTask, out: Path, steps: int, seed: int, resume: bool, progress: bool, world
) -> Trainer:
    """The shapes task's optimisation (:func:`~vlmzoo.recipes.shapes.task_train_config`) on the
    referring questions, evaluated by held-out REC accuracy of greedy answers."""
    require_kind(model, GENERATIVE, "grounding_trainer")
    config = task_train_config(steps, seed, lr=GROUNDING_LR, eval_every=max(1, steps // 4))
    if resume:  # the warmup of the run being continued (as the train recipe keeps it)
        saved = read_run_state(out / CHECKPOINT_DIR)["train_config"]
        config = config.replace(warmup_steps=saved.get("warmup_steps", config.warmup_steps))
    tok = task.tokenizer

    def batch_fn(step: int, micro: int):
        rng = random.Random(f"{seed}-{step}-{micro}")  # the batch of a step is fixed: exact resume
        picks = [task.train_qa[rng.randrange(len(task.train_qa))] for _ in range(BATCH_SIZE)]
        return collate(
            tok,
            [q for _, q, _ in picks],
            [a for _, _, a in picks],
            [task.train_pixels[i] for i, _, _ in picks],
        )

    def loss_fn(m, batch):
        return m(batch.pixel_values, batch.input_ids, batch.attention_mask, labels=batch.labels).loss

    def evaluate(m) -> dict[str, float]:
        answers = generate_answers(
            m,
            tok,
            task.val_pixels[[i for i, _, _ in task.val_qa]],
            [q for _, q, _ in task.val_qa],
            max_new_tokens=GROUNDING_NEW_TOKENS,
        )
        scores = rec_scores(answers, task.val_boxes, format=GROUNDING_FORMAT)
        return {"val_rec_accuracy": scores.accuracy, "val_mean_iou": scores.mean_iou}

    return Trainer(model, config, batch_fn, loss_fn, out, evaluate=evaluate, progress=progress, world=world)


def run_grounding_demo(
    out: str = "runs/demo-grounding",
    steps: int = GROUNDING_STEPS,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    train_size: int = GROUNDING_TRAIN_SCENES,
    val_scenes: int = GROUNDING_VAL_SCENES,
) -> dict:
    """Train the demo's tiny VLM to answer "where is the red square?" with the square's box in
    Shikra's text format, on scenes of up to three shapes; report held-out REC accuracy (IoU >= 0.5).

    The run folder gets what the VQA demo's gets (model, processor, metrics, ``loss.png``,
    ``samples.txt``, ``summary.json`` with ``val_rec_accuracy``). The final answers come through
    :func:`~vlmzoo.processing.chat.chat_batch` and are read back with :class:`~vlmzoo.processing.
    processor.Processor`'s :meth:`boxes_from_text`.
    """
    task_train_config(steps, seed, lr=GROUNDING_LR)  # refuse bad values before the folder is touched
    TrainJob(run_dir=out, steps=steps, seed=seed, device=device, resume=resume, overwrite=overwrite)
    print(
        "demo (grounding): a tiny CLIP ViT + MLP projector + tiny Llama learns to answer 'where is "
        "the <colour> <shape>?' with the shape's box as Shikra writes it, [x1,y1,x2,y2]\n"
    )
    world = init_world("single", device=device)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        run_dir = Path(out)
        prepare_run_folder(run_dir, resume, overwrite, world)
        task = build_grounding_task(seed, train_size=train_size, val_scenes=val_scenes)
        torch.manual_seed(seed)
        model = VisionLanguageModel(build_config(task.tokenizer)).to(world.device)
        print(
            f"data: {len(task.train_qa)} training questions, {len(task.val_qa)} held-out questions on "
            f"{len(task.val_captions)} unseen scenes; tokenizer vocabulary {task.tokenizer.vocab_size}"
        )
        trainer = grounding_trainer(model, task, run_dir, steps, seed, resume, progress, world)
        if resume:
            trainer.resume()
        start = time.perf_counter()
        history = trainer.fit()
        train_seconds = time.perf_counter() - start
        run = RunDir(run_dir)
        run.save_model(model)
    finally:
        teardown(world)
    processor = demo_processor(task.tokenizer)
    run.record(PROCESSOR_FILE, SENTENCEPIECE_FILE)
    processor.save_pretrained(run.path)
    images = held_out_images(task, seed, max_objects=GROUNDING_MAX_OBJECTS)
    answers = chat_answers(model, processor, images, task, max_new_tokens=GROUNDING_NEW_TOKENS)
    scores = rec_scores(answers, task.val_boxes, format=GROUNDING_FORMAT)
    lines = grounding_lines(task, answers, images, processor)
    run.write_text("samples.txt", "\n".join(lines) + "\n")
    plot_losses({"tiny-llava": (history["step"], history["loss"])}, run.path_for("loss.png"), "vlmzoo demo")
    summary = {
        "task": "grounding",
        "val_rec_accuracy": scores.accuracy,
        "val_mean_iou": scores.mean_iou,
        "val_unreadable": scores.failed,
        "val_questions": scores.count,
        "train_seconds": train_seconds,
        "steps": steps,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    run.write_text("summary.json", json.dumps(summary, indent=2))
    print("\nheld-out samples (scene caption, question -> box text, in pixels):")
    print("\n".join("  " + line for line in lines))
    print(
        f"\nheld-out REC accuracy (IoU >= 0.5, answers through vlmzoo.chat): {100 * scores.accuracy:.1f}% "
        f"(mean IoU {scores.mean_iou:.2f}, {scores.failed} unreadable) after {steps} steps "
        f"({train_seconds:.0f} s of training); run folder: {run.path}"
    )
    return summary


def grounding_lines(
    task: GroundingTask, answers: list[str], images: list[Any], processor: Processor, count: int = 8
) -> list[str]:
    """``[caption] question -> answer = pixel box (truth ...)`` for ``count`` held-out questions
    spread over the split; the pixel box is the answer read back by the processor."""
    picked = list(range(len(answers)))[:: max(1, len(answers) // count)][:count]
    lines = []
    for k in picked:
        scene, question, truth = task.val_qa[k]
        try:
            groups = processor.boxes_from_text(answers[k], images[scene].size)
            read = (
                ", ".join("(" + ", ".join(f"{v:.1f}" for v in b) + ")" for g in groups for b in g) or "no box"
            )
        except InputError as e:
            read = f"unreadable: {e}"
        lines.append(
            f"[{task.val_captions[scene]}] {question.replace('<image> ', '')} -> {answers[k]!r} = {read} "
            f"(truth {truth!r})"
        )
    return lines
