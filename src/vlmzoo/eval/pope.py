"""POPE, object hallucination as yes/no questions (Li et al. 2023, "Evaluating Object
Hallucination in Large Vision-Language Models", section 3.2; RUCAIBox/POPE's ``evaluate.py``).

"Is there a <object> in the image?" is asked of objects present (answer yes) and absent (no);
"yes" is the positive class. An answer reads as "no" when the first sentence, with commas
removed, holds the word "no", "No" or "not"; anything else reads as "yes" (the original rule: a
model that rambles is counted as saying yes, which is what inflates the yes-ratio).

The yes-ratio is the fraction of *answers* that read as yes, as in the original. (lmms-eval's
``pope_aggregate_yes_ratio`` counts the ground-truth labels instead, which is always 0.5 on
POPE's balanced splits.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vlmzoo.errors import InputError

__all__ = ["POPEResult", "pope_answer", "pope_metrics"]


def pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"``, read from a model's answer the way POPE's evaluate.py reads it."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


@dataclass(frozen=True)
class POPEResult:
    """POPE's five numbers (fractions in [0, 1]) and the confusion counts behind them."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> POPEResult:
    """Accuracy, precision, recall, F1 (positive class "yes") and yes-ratio of raw ``answers``
    against ``labels`` ("yes"/"no", any case). Precision/recall/F1 are 0 where undefined (the
    original divides by zero there)."""
    if len(answers) != len(labels):
        raise InputError(f"{len(answers)} answers but {len(labels)} labels")
    if not answers:
        raise InputError("pope_metrics needs at least one answer")
    truth = [str(label).strip().lower() for label in labels]
    bad = sorted({t for t in truth if t not in ("yes", "no")})
    if bad:
        raise InputError(f"POPE labels must be 'yes' or 'no', got {bad[:3]}")
    said_yes = [pope_answer(a) == "yes" for a in answers]
    is_yes = [t == "yes" for t in truth]
    tp = sum(p and t for p, t in zip(said_yes, is_yes, strict=True))
    fp = sum(p and not t for p, t in zip(said_yes, is_yes, strict=True))
    tn = sum(not p and not t for p, t in zip(said_yes, is_yes, strict=True))
    fn = sum(not p and t for p, t in zip(said_yes, is_yes, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(answers)
    return POPEResult((tp + tn) / n, precision, recall, f1, sum(said_yes) / n, tp, fp, tn, fn)
