"""Evaluation on the in-memory model: usable inside a training loop as well as after it."""

from vlmzoo.eval.anls import anls, anls_score
from vlmzoo.eval.blip import evaluate_retrieval, itm_scores, recall_at_k
from vlmzoo.eval.captioning import caption_metrics
from vlmzoo.eval.circular import circular_accuracy, circular_variants, extract_choice
from vlmzoo.eval.clip import retrieval_recall, zero_shot_accuracy
from vlmzoo.eval.grounding import box_iou, pointing_accuracy, rec_accuracy, rec_scores
from vlmzoo.eval.mme import mme_scores
from vlmzoo.eval.pope import pope_metrics
from vlmzoo.eval.vlm import exact_match, generate_answers, multiple_choice, normalize_answer, perplexity
from vlmzoo.eval.vqa_accuracy import vqa_accuracy, vqa_score

__all__ = [
    "anls",
    "anls_score",
    "box_iou",
    "caption_metrics",
    "circular_accuracy",
    "circular_variants",
    "evaluate_retrieval",
    "exact_match",
    "extract_choice",
    "generate_answers",
    "itm_scores",
    "mme_scores",
    "multiple_choice",
    "normalize_answer",
    "perplexity",
    "pointing_accuracy",
    "pope_metrics",
    "rec_accuracy",
    "rec_scores",
    "recall_at_k",
    "retrieval_recall",
    "vqa_accuracy",
    "vqa_score",
    "zero_shot_accuracy",
]
