"""Metrics for a VisionLanguageModel: perplexity, exact match of generated answers, and
multiple-choice scoring by log-likelihood (the way lmms-eval and VLMEvalKit score choices)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import InputError
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.processing.prompts import collate
from vlmzoo.processing.tokenizer import Tokenizer


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (VQA-style matching)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(
        normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(predictions)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pixel_values: torch.Tensor,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers, one image ([n, 3, H, W]) per prompt; text is cut at the first EOS.

    Prompts are batched by their token length, so no row is padded: a decoder that takes no
    ``position_ids`` (mBART's learned positions start at the first column) generates each row
    as it would alone, and others simply waste nothing on padding.
    """
    require_kind(model, GENERATIVE, "generate_answers")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(tokenizer.encode(prompt)), []).append(index)
    for indices in by_length.values():
        for i in range(0, len(indices), batch_size):
            chunk = indices[i : i + batch_size]
            batch = collate(
                tokenizer,
                [prompts[j] for j in chunk],
                pixel_values=[pixel_values[j] for j in chunk],
                padding_side="left",
            ).to(device)
            out = model.generate(
                batch.pixel_values,
                batch.input_ids,
                batch.attention_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id,
            )
            for j, row in zip(chunk, out.tolist(), strict=True):
                if tokenizer.eos_id in row:
                    row = row[: row.index(tokenizer.eos_id)]
                answers[j] = tokenizer.decode(row).strip()
    model.train(was_training)
    return answers


def _sequence_logprobs(model: torch.nn.Module, batch) -> torch.Tensor:
    """Sum of log p(label token) per sequence over non-ignored labels: [B]."""
    out = model(batch.pixel_values, batch.input_ids, batch.attention_mask, labels=batch.labels)
    logits, labels = out.logits[:, :-1].float(), out.labels[:, 1:]
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels != IGNORE_INDEX)).sum(dim=1)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pixel_values: torch.Tensor,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 64,
) -> float:
    """exp(mean negative log-likelihood per answer token), prompts excluded."""
    require_kind(model, GENERATIVE, "perplexity")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        batch = collate(
            tokenizer,
            prompts[i : i + batch_size],
            answers[i : i + batch_size],
            list(pixel_values[i : i + batch_size]),
        ).to(device)
        total -= float(_sequence_logprobs(model, batch).sum())
        count += int((batch.labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return math.exp(total / max(count, 1))


@torch.no_grad()
def multiple_choice(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pixel_values: torch.Tensor | None,
    prompt: str,
    choices: Sequence[str],
    length_normalize: bool = False,
) -> int:
    """Index of the choice with the highest log-likelihood given the sample's images and prompt.

    ``pixel_values``: the sample's k images, [k, 3, H, W] ([3, H, W] for one; None for none); the
    prompt holds one placeholder per image, and every image conditions every choice. Every choice
    is scored as a continuation of the same prompt (sum of its tokens' log-probs, EOS included;
    divided by its token count with ``length_normalize``).
    """
    require_kind(model, GENERATIVE, "multiple_choice")
    if not choices:
        raise InputError("multiple_choice needs at least one choice")
    if pixel_values is not None and pixel_values.ndim not in (3, 4):
        raise InputError(
            f"pixel_values of shape {tuple(pixel_values.shape)}: expected the sample's images [k, 3, H, W]"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(choices)
    k = 0 if pixel_values is None else (1 if pixel_values.ndim == 3 else pixel_values.shape[0])
    images = None if pixel_values is None else [pixel_values] * n
    batch = collate(tokenizer, [prompt] * n, list(choices), images, [k] * n).to(device)
    scores = _sequence_logprobs(model, batch)
    if length_normalize:
        scores = scores / (batch.labels != IGNORE_INDEX).sum(dim=1)
    model.train(was_training)
    return int(scores.argmax())
