"""MME's yes/no scoring (Fu et al. 2023, "MME: A Comprehensive Evaluation Benchmark for
Multimodal Large Language Models", section 2.3; its ``eval_tool/calculation.py``).

Every image carries two questions, one whose answer is "yes" and one "no". Per subtask:
``accuracy`` is over questions, ``accuracy+`` over images (both of its questions right), and the
subtask's score is ``100·accuracy + 100·accuracy+`` (at most 200). The perception total sums the
ten perception subtasks (at most 2000), the cognition total the four cognition ones (800).

An answer is read as the original tool reads it: lower-cased; "yes" or "no" exactly, else
whichever of "yes" / "no" occurs in its first four characters ("yes" first), else "other",
which is always wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from vlmzoo.errors import InputError

__all__ = ["MME_COGNITION", "MME_PERCEPTION", "MMEResult", "mme_answer", "mme_scores"]

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
    "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_answer(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``, read from a model's answer as MME's tool reads it."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


@dataclass(frozen=True)
class MMEResult:
    """Per-subtask ``accuracy``, ``accuracy_plus`` (fractions) and ``score`` (0-200), and the
    perception and cognition totals over the subtasks present."""

    accuracy: dict[str, float]
    accuracy_plus: dict[str, float]
    score: dict[str, float]
    perception: float
    cognition: float


def mme_scores(
    answers: Sequence[str],
    labels: Sequence[str],
    subtasks: Sequence[str],
    image_ids: Sequence[Hashable],
) -> MMEResult:
    """Score raw ``answers`` against ``labels`` ("yes"/"no"); ``subtasks`` names each question's
    subtask and ``image_ids`` its image (two questions per image, as MME is built)."""
    n = len(answers)
    if not (len(labels) == len(subtasks) == len(image_ids) == n):
        raise InputError(
            f"answers, labels, subtasks and image_ids must have one entry per question, got "
            f"{n}, {len(labels)}, {len(subtasks)}, {len(image_ids)}"
        )
    if not n:
        raise InputError("mme_scores needs at least one answer")
    per_image: dict[tuple[str, Hashable], list[bool]] = defaultdict(list)
    for answer, label, subtask, image in zip(answers, labels, subtasks, image_ids, strict=True):
        truth = str(label).lower()
        if truth not in ("yes", "no"):
            raise InputError(f"MME labels must be 'yes' or 'no', got {label!r}")
        per_image[(subtask, image)].append(mme_answer(answer) == truth)
    odd = [key for key, hits in per_image.items() if len(hits) != 2]
    if odd:
        raise InputError(
            f"MME pairs two questions with every image; {len(odd)} images have another count "
            f"(e.g. subtask {odd[0][0]!r}, image {odd[0][1]!r}: {len(per_image[odd[0]])})"
        )
    hits: dict[str, list[bool]] = defaultdict(list)
    both: dict[str, list[bool]] = defaultdict(list)
    for (subtask, _), image_hits in per_image.items():
        hits[subtask] += image_hits
        both[subtask].append(all(image_hits))
    accuracy = {s: sum(h) / len(h) for s, h in hits.items()}
    accuracy_plus = {s: sum(b) / len(b) for s, b in both.items()}
    score = {s: 100 * (accuracy[s] + accuracy_plus[s]) for s in accuracy}
    perception = sum(v for s, v in score.items() if s in MME_PERCEPTION)
    cognition = sum(v for s, v in score.items() if s in MME_COGNITION)
    return MMEResult(accuracy, accuracy_plus, score, perception, cognition)
