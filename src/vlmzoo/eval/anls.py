"""ANLS, the Average Normalized Levenshtein Similarity of scene-text and document VQA.

Biten et al. 2019, "Scene Text Visual Question Answering" (ST-VQA), section 4, eq. 1: a
question scores ``max_g s(g, o)`` over its ground-truth answers ``g``, where
``s = 1 - NL(g, o)`` if ``NL < tau`` else 0, ``NL`` is the Levenshtein distance divided by the
longer string's length, and ``tau = 0.5``; ANLS is the mean over questions. Both strings are
lower-cased and their whitespace collapsed first, as the DocVQA / InfographicVQA evaluation does.

Differences from lmms-eval's ``anls`` (copied from Qwen-VL's ``infographicsvqa_eval.py``), both
deliberate: it divides by the length of the *unnormalised* strings (so surrounding spaces lower
the distance), and it keeps a score of exactly ``1 - tau`` where the paper's ``NL < tau`` gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmzoo.errors import InputError

__all__ = ["anls", "anls_score", "levenshtein"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions; each costs 1), O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """One question's score in [0, 1]: the best ``1 - NL`` over ``answers``, 0 where ``NL >= threshold``."""
    if isinstance(answers, str) or not answers:
        raise InputError(f"anls needs the list of ground-truth answers of the question, got {answers!r}")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"anls threshold={threshold} must be in (0, 1] (the paper's tau is 0.5)")
    pred = _normalise(prediction)
    best = 0.0
    for answer in answers:
        gt = _normalise(answer)
        length = max(len(gt), len(pred))
        distance = 0.0 if length == 0 else levenshtein(gt, pred) / length
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def anls_score(predictions: Sequence[str], answers: Sequence[Sequence[str]], threshold: float = 0.5) -> float:
    """Mean :func:`anls` over questions, in [0, 1]."""
    if len(predictions) != len(answers):
        raise InputError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        return 0.0
    scores = (anls(p, a, threshold) for p, a in zip(predictions, answers, strict=True))
    return sum(scores) / len(predictions)
