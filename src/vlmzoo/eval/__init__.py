"""Evaluation on the in-memory model: usable inside a training loop as well as after it."""

from vlmzoo.eval.clip import retrieval_recall, zero_shot_accuracy
from vlmzoo.eval.vlm import exact_match, generate_answers, multiple_choice, normalize_answer, perplexity

__all__ = [
    "exact_match",
    "generate_answers",
    "multiple_choice",
    "normalize_answer",
    "perplexity",
    "retrieval_recall",
    "zero_shot_accuracy",
]
