"""Evaluation on the in-memory model: usable inside a training loop as well as after it."""

from vlmzoo.eval.blip import evaluate_retrieval, itm_scores, recall_at_k
from vlmzoo.eval.clip import retrieval_recall, zero_shot_accuracy
from vlmzoo.eval.vlm import exact_match, generate_answers, multiple_choice, normalize_answer, perplexity

__all__ = [
    "evaluate_retrieval",
    "exact_match",
    "generate_answers",
    "itm_scores",
    "multiple_choice",
    "normalize_answer",
    "perplexity",
    "recall_at_k",
    "retrieval_recall",
    "zero_shot_accuracy",
]
