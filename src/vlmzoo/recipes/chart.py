"""The chart demo: a tiny OneChart learns to read the built-in synthetic bar charts into OneChart's
dict, with the auxiliary number token and head, and its self-evaluation is checked against its errors.

Data: :class:`~vlmzoo.data.SyntheticDataset` ``"chart"`` scenes (3-5 bars of values 1-9 drawn at
48 px; the values are the scene, ``sample.scene[1]``); held-out charts are value tuples never seen
in training. The answer is OneChart's: ``<Number>{"title": "None", ..., "values": {"a": 3, ...}}``
(:func:`~vlmzoo.models.onechart.chart_answer`) after the prompt ``"<image> " + CHART_PROMPT``; the
number targets are the values. The model is a tiny OneChart (the demo's ViT, a Linear projector as
OneChart's ``mm_projector``, a tiny OPT, the number head), every part trained from scratch.

Reported (held-out): number accuracy at OneChart's relative tolerances (0, 0.05, 0.1), the share of
charts read exactly, SCRM AP@strict/slight/high (:func:`vlmzoo.eval.chart.scrm`), the number head's
own error (normalised values), and the Spearman correlation between the self-evaluation distance
and each chart's reading error (positive: a larger distance flags a worse reading), with the
accuracy of the charts the model calls reliable and of the others.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.data import SyntheticDataset
from vlmzoo.decoders.hf import DECODER_PRESETS
from vlmzoo.errors import ConfigError
from vlmzoo.eval.chart import chart_accuracy, mean_relative_error, number_accuracy, scrm, spearman
from vlmzoo.eval.model_kind import CHART_READER, require_kind
from vlmzoo.models.onechart import (
    CHART_PROMPT,
    NUMBER_TOKEN,
    ChartReading,
    OneChartConfig,
    OneChartModel,
    chart_answer,
)
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.prompts import collate
from vlmzoo.processing.tokenizer import SentencePieceTokenizer, train_sentencepiece
from vlmzoo.recipes.shapes import encoder_config
from vlmzoo.train.trainer import TrainConfig, Trainer

IMAGE_SIZE = 48  # the shapes demo's size: demo-vit's native input (patch 8, 36 tokens)
PROMPT = "<image> " + CHART_PROMPT
LABELS = ("a", "b", "c", "d", "e")  # bar names in the dict (at most 5 bars)
VOCAB_SIZE = 160
NUM_NUMBERS = 16  # the head's outputs (>= 5 bars)


class NumberTokenizer:
    """A trained sentencepiece tokenizer plus :data:`NUMBER_TOKEN` as one more id (``vocab_size`` of
    the base): the demo's tokenizer has ``<image>`` as its only user symbol, and the number token
    must be one token (OneChart adds it with ``tokenizer.add_tokens``)."""

    def __init__(self, base: SentencePieceTokenizer):
        self.base = base
        self.pad_id, self.bos_id, self.eos_id, self.image_id = (
            base.pad_id,
            base.bos_id,
            base.eos_id,
            base.image_id,
        )
        self.number_id = base.vocab_size
        self.vocab_size = base.vocab_size + 1

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; each ``<Number>`` is ``number_id``."""
        ids: list[int] = []
        for i, part in enumerate(text.split(NUMBER_TOKEN)):
            if i:
                ids.append(self.number_id)
            if part:
                ids += self.base.encode(part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, the number token written as ``<Number>``, the base's special tokens dropped."""
        out, run = [], []
        for i in ids:
            if int(i) == self.number_id:
                out += [self.base.decode(run), NUMBER_TOKEN]
                run = []
            else:
                run.append(int(i))
        return "".join([*out, self.base.decode(run)])


@dataclass
class ChartTask:
    """Pixels [n, 3, 48, 48], answers and values of both splits, and the tokenizer."""

    tokenizer: NumberTokenizer
    train_pixels: torch.Tensor
    train_answers: list[str]
    train_values: list[list[float]]
    val_pixels: torch.Tensor
    val_values: list[list[float]]


def chart_dict(values: Sequence[float]) -> dict[str, float]:
    """The bar chart's ``values``: label -> value."""
    return dict(zip(LABELS, values, strict=False))


def build_chart_task(
    seed: int = 0, train_size: int = 3000, val_size: int = 200, cache_dir: str | None = None
) -> ChartTask:
    """The synthetic bar charts (train and held-out), OneChart's answers and a tokenizer trained on them."""
    train = SyntheticDataset("chart", "train", train_size, seed=seed, image_size=IMAGE_SIZE)
    val = SyntheticDataset("chart", "validation", val_size, seed=seed, image_size=IMAGE_SIZE, unique=True)
    processor = ImageProcessor(ImageProcessorConfig.clip(IMAGE_SIZE))
    train_values = [list(map(float, train.scenes[i][1])) for i in range(len(train))]
    val_values = [list(map(float, val.scenes[i][1])) for i in range(len(val))]
    answers = [chart_answer(chart_dict(v)) for v in train_values]
    texts = [PROMPT] + [a.replace(NUMBER_TOKEN, "") for a in answers]
    base = train_sentencepiece(texts, vocab_size=VOCAB_SIZE, cache_dir=cache_dir)
    return ChartTask(
        tokenizer=NumberTokenizer(base),
        train_pixels=processor([train[i].image for i in range(len(train))]),
        train_answers=answers,
        train_values=train_values,
        val_pixels=processor([val[i].image for i in range(len(val))]),
        val_values=val_values,
    )


def chart_model_config(tokenizer: NumberTokenizer, encoder: str = "demo-vit") -> OneChartConfig:
    """The tiny OneChart sized to the task's tokenizer, every part trainable: the registered
    ``encoder`` at the task's image size (:func:`~vlmzoo.recipes.shapes.encoder_config`; OneChart's
    own tower at test size is ``vary-vocab-tiny``, which takes 64 px and trains about 7x slower on
    a CPU), a Linear projector (OneChart's ``mm_projector``), the tiny OPT and the number head."""
    dec = DECODER_PRESETS["tiny-opt"]
    special = dict(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    return OneChartConfig(
        encoder=encoder_config(encoder, IMAGE_SIZE),
        adapter=MLPProjectorConfig(depth=1),
        decoder=dec.replace(hf_config={**dec.hf_config, **special}),
        image_token_id=tokenizer.image_id,
        number_token_id=tokenizer.number_id,
        num_numbers=NUM_NUMBERS,
        train_adapter="full",
    )


def read_charts(
    model: OneChartModel, task: ChartTask, batch_size: int = 50, max_new_tokens: int = 64
) -> list[ChartReading]:
    """Greedy readings of every held-out chart (one prompt length: no padding)."""
    require_kind(model, CHART_READER, "read_charts")
    readings: list[ChartReading] = []
    tok = task.tokenizer
    for start in range(0, len(task.val_values), batch_size):
        pixels = task.val_pixels[start : start + batch_size]
        batch = collate(tok, [PROMPT] * len(pixels), pixel_values=list(pixels), padding_side="left")
        batch = batch.to(next(model.parameters()).device)
        readings += model.read_chart(
            batch.pixel_values, batch.input_ids, tok, batch.attention_mask, max_new_tokens=max_new_tokens
        )
    return readings


def chart_metrics(readings: Sequence[ChartReading], references: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Number accuracy, chart accuracy, SCRM and the self-evaluation's rank correlation with the errors."""
    values = [r.values for r in readings]
    metrics: dict[str, Any] = {
        f"number_accuracy@{tol}": number_accuracy(values, references, tol) for tol in (0.0, 0.05, 0.1)
    }
    metrics["chart_accuracy"] = chart_accuracy(values, references, 0.0)
    metrics["unreadable"] = sum(v is None for v in values)
    metrics.update(
        scrm(
            [r.chart.get("values") if r.chart else None for r in readings],
            [chart_dict(v) for v in references],
        )
    )
    errors = [mean_relative_error(v, ref) for v, ref in zip(values, references, strict=True)]
    head = []
    for r, ref in zip(readings, references, strict=True):
        if r.numbers is not None:
            low, high = min(ref), max(ref)
            norm = [(v - low) / (high - low + 1e-9) for v in ref]
            head.append(sum(abs(p - t) for p, t in zip(r.numbers, norm, strict=False)) / len(norm))
    metrics["head_mae_normalised"] = sum(head) / len(head) if head else float("nan")
    scored = [(r.distance, e) for r, e in zip(readings, errors, strict=True) if r.distance is not None]
    metrics["reliability_scored"] = len(scored)
    metrics["reliability_spearman"] = (
        spearman([d for d, _ in scored], [e for _, e in scored]) if len(scored) > 1 else float("nan")
    )
    for flag in (True, False):
        picked = [i for i, r in enumerate(readings) if r.reliable is flag]
        key = "reliable" if flag else "unreliable"
        metrics[f"{key}_charts"] = len(picked)
        metrics[f"{key}_chart_accuracy"] = (
            chart_accuracy([values[i] for i in picked], [references[i] for i in picked], 0.0)
            if picked
            else float("nan")
        )
    return metrics


def run_chart_demo(
    out: str = "runs/demo-chart",
    steps: int = 1200,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 3e-3,
    train_size: int = 3000,
    val_size: int = 200,
    progress: bool = True,
    threads: int | None = None,
    encoder: str = "demo-vit",
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the tiny OneChart on the synthetic bar charts and report what it reads on held-out ones.

    Returns a results dict: ``train_seconds``, ``steps``, ``parameters``, ``chance_number_accuracy``
    (1/9: values are uniform on 1..9) and :func:`chart_metrics` of the final model. The run folder
    ``out`` gets the trainer's checkpoint and ``metrics.json`` (a folder holding a run is refused).
    """
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size} must be positive")
    if threads is not None:
        torch.set_num_threads(threads)
    task = build_chart_task(seed, train_size=train_size, val_size=val_size)
    torch.manual_seed(seed)
    model = OneChartModel(chart_model_config(task.tokenizer, encoder)).to(device)
    tok = task.tokenizer
    config = TrainConfig(
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        eval_every=steps,
        checkpoint_every=steps,
        seed=seed,
    )

    def batch_fn(step: int, micro: int) -> dict[str, Any]:
        rng = random.Random(f"{seed}-{step}-{micro}")  # the batch of a step is fixed: exact resume
        picks = [rng.randrange(len(task.train_answers)) for _ in range(batch_size)]
        batch = collate(
            tok,
            [PROMPT] * batch_size,
            [task.train_answers[i] for i in picks],
            [task.train_pixels[i] for i in picks],
        )
        return {
            "pixel_values": batch.pixel_values,
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
            "numbers": [task.train_values[i] for i in picks],
        }

    def loss_fn(m: OneChartModel, batch: dict[str, Any]) -> torch.Tensor:
        return m(**batch).loss

    trainer = Trainer(model, config, batch_fn, loss_fn, Path(out), progress=progress)
    start = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    readings = read_charts(model, task)
    results: dict[str, Any] = {
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "steps": steps,
        "final_loss": history["loss"][-1] if history["loss"] else float("nan"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_charts": len(task.val_values),
        "chance_number_accuracy": 1 / 9,
        **chart_metrics(readings, task.val_values),
        "samples": [r.text for r in readings[:3]],
    }
    return results
