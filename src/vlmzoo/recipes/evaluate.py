"""``vlmzoo eval NAME|PATH --task ...``: a model's answers to a question set, scored, as a table.

The questions come from the built-in synthetic data (``shapes``, ``text``, ``chart``: the held-out
split, :mod:`vlmzoo.data.shapes`) or from a user's JSONL file, one question per line::

    {"image": "images/0001.png", "question": "What colour is the car?", "answer": "red"}

``image`` is a path (relative paths are read from the JSONL file's folder) or a list of paths for
a question about several images; ``answer`` is a string or, for VQA-style data, the list of
human answers. Answers are generated through :func:`vlmzoo.processing.chat.chat_batch`, so the
model's own processor and template shape every prompt (the path ``vlmzoo chat`` takes), greedily,
a batch at a time with a progress bar, and scored by one of the metrics below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlmzoo.config import parse_json
from vlmzoo.data import SyntheticDataset
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.eval.anls import anls
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.eval.vlm import normalize_answer
from vlmzoo.eval.vqa_accuracy import vqa_accuracy
from vlmzoo.processing.chat import Conversation, chat_batch
from vlmzoo.weights.files import atomic_write_json

SYNTHETIC_TASKS = ("shapes", "text", "chart")


def _exact(prediction: str, answers: Sequence[str]) -> float:
    """1 if the prediction equals one of the answers after :func:`normalize_answer`."""
    return float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})


# Each metric scores one prediction against the question's answers, in [0, 1].
METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": _exact,
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
}


@dataclass(frozen=True)
class EvalItem:
    """One question: its images (paths, PIL images or arrays), text and reference answers."""

    images: tuple[Any, ...]
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class EvalResult:
    """The mean score over the items, and every item's prediction and score."""

    task: str
    metric: str
    score: float
    predictions: tuple[str, ...]
    scores: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.scores)

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "score": self.score, "count": self.count}

    def table(self) -> str:
        """A Markdown table of the result (what ``vlmzoo eval`` prints)."""
        return "\n".join(
            [
                "| task | metric | questions | score |",
                "|---|---|---|---|",
                f"| {self.task} | {self.metric} | {self.count} | {100 * self.score:.2f} |",
            ]
        )


def synthetic_items(variant: str, count: int = 200, seed: int = 0) -> list[EvalItem]:
    """Every question of ``count`` held-out scenes of a built-in variant (distinct scenes)."""
    if variant not in SYNTHETIC_TASKS:
        raise ConfigError(
            f"task {variant!r}: the built-in tasks are {list(SYNTHETIC_TASKS)}, or a .jsonl file"
        )
    if count <= 0:
        raise ConfigError(f"count={count} scenes must be positive")
    data = SyntheticDataset(variant, "validation", count, seed=seed, unique=True)
    items = []
    for i in range(len(data)):
        sample = data[i]
        items += [EvalItem((sample.image,), q, (a,)) for q, a in sample.qa]
    return items


def jsonl_items(path: str | os.PathLike) -> list[EvalItem]:
    """The questions of a JSONL file (see the module docstring); every line is checked before
    anything runs, so a typo on line 900 is reported before the model generates anything."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"task file {str(path)!r} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = parse_json(line)  # bounded: digits, depth, duplicate keys
        except ValueError as error:
            raise InputError(f"{where} is not valid JSON: {error}") from error
        if not isinstance(record, dict) or not {"image", "question", "answer"} <= record.keys():
            raise InputError(f'{where} needs the keys "image", "question" and "answer"')
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        answers = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
        if not all(isinstance(a, str) for a in answers) or not answers:
            raise InputError(f'{where}: "answer" must be a string or a non-empty list of strings')
        if not isinstance(record["question"], str):
            raise InputError(f'{where}: "question" must be a string')
        files = []
        for image in images:
            file = Path(image) if Path(image).is_absolute() else path.parent / image
            if not file.is_file():
                raise InputError(f"{where}: image {str(file)!r} does not exist")
            files.append(str(file))
        items.append(EvalItem(tuple(files), record["question"], tuple(answers)))
    if not items:
        raise InputError(f"task file {str(path)!r} holds no questions")
    return items


def evaluate_items(
    model: Any,
    processor: Any,
    items: Sequence[EvalItem],
    metric: str = "exact_match",
    task: str = "custom",
    batch_size: int = 32,
    max_new_tokens: int | None = 32,
    progress: bool = True,
) -> EvalResult:
    """Generate an answer to every item (greedy, ``batch_size`` at a time) and score it."""
    require_kind(model, GENERATIVE, "evaluate_items")
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: expected one of {sorted(METRICS)}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size} must be positive")
    if not items:
        raise InputError("evaluate_items got no questions")
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    batches = range(0, len(items), batch_size)
    for start in tqdm(batches, desc=f"eval {task}", unit="batch", disable=not progress):
        chunk = items[start : start + batch_size]
        conversations = [Conversation(item.question, list(item.images)) for item in chunk]
        predictions += chat_batch(model, processor, conversations, max_new_tokens=max_new_tokens)
    model.train(was_training)
    score_of = METRICS[metric]
    scores = tuple(score_of(p, item.answers) for p, item in zip(predictions, items, strict=True))
    return EvalResult(task, metric, sum(scores) / len(scores), tuple(predictions), scores)


def run_eval(
    model: str | os.PathLike,
    task: str,
    metric: str = "exact_match",
    *,
    count: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int | None = 32,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | os.PathLike | None = None,
) -> EvalResult:
    """The ``vlmzoo eval`` job: load a checkpoint folder (or a preset name, random weights) with
    its processor, read the task, score the answers, print the table; ``out`` receives the
    result and every prediction as JSON."""
    from vlmzoo.recipes.chat import load_chat_model

    items = synthetic_items(task, count, seed) if task in SYNTHETIC_TASKS else jsonl_items(task)
    module, processor, random = load_chat_model(model, device=device, dtype=dtype)
    if random:
        print(f"note: {model} is a preset name, so its weights are random; pass a checkpoint folder")
    result = evaluate_items(module, processor, items, metric, Path(task).name, batch_size, max_new_tokens)
    print(result.table())
    if out is not None:
        record = {**result.as_dict(), "model": str(model), "predictions": list(result.predictions)}
        atomic_write_json(Path(out), record)
    return result
