"""MMBench's CircularEval: a multiple-choice question counts only if it is answered right under
every circular shift of its options (Liu et al. 2023, "MMBench: Is Your Multi-modal Model an
All-around Player?", section 3.1). A question with N options is asked N times; pass k shows the
options rotated by k (A B C D, then B C D A, ...), so a model that always says "A" or that
prefers one position gets no credit.

Reading the chosen letter follows VLMEvalKit's exact-matching step (``can_infer`` in
``vlmeval/utils/matching_util.py``): first an option letter standing alone among the last words
of the answer (after ``.()[],:;!*#{}`` become spaces) or "answer is X"; else the one option
whose text occurs in the answer. What neither rule reads is unanswered and wrong. VLMEvalKit then
asks an LLM to read the rest; vlmzoo does not (no model is called to grade a model).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Hashable, Sequence

from vlmzoo.errors import InputError

__all__ = ["circular_accuracy", "circular_variants", "extract_choice"]

_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([A-Z])\**")


def circular_variants(options: Sequence[str], answer: int) -> list[tuple[list[str], int]]:
    """The N passes of one question: ``(options rotated by k, index of the answer)`` for k < N."""
    n = len(options)
    if n < 2 or n > 26:
        raise InputError(f"a multiple-choice question needs 2 to 26 options, got {n}")
    if not 0 <= answer < n:
        raise InputError(f"answer index {answer} is not one of the {n} options")
    return [([options[(i + k) % n] for i in range(n)], (answer - k) % n) for k in range(n)]


def _letters(n: int) -> str:
    return string.ascii_uppercase[:n]


def extract_choice(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option a free-form ``prediction`` chooses, or None when it cannot be read."""
    letters = _letters(len(options))
    words = _SEPARATORS.sub(" ", prediction).split()
    named = [c for c in letters if c in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return letters.index(named[0])
    match = _VERBOSE.search(prediction)
    if match and match.group(1).upper() in letters:
        return letters.index(match.group(1).upper())
    text = prediction.lower()
    # VLMEvalKit reads option texts only from answers at most twice as long as all of them.
    if len(text) > 2 * sum(len(str(o)) for o in options):
        return None
    found = [i for i, option in enumerate(options) if str(option).lower() in text]
    return found[0] if len(found) == 1 else None


def circular_accuracy(
    predictions: Sequence[int | None], answers: Sequence[int], questions: Sequence[Hashable]
) -> float:
    """Fraction of questions right in every pass: ``predictions`` (chosen index or None) and
    ``answers`` per pass, ``questions`` names the question each pass belongs to."""
    if not (len(predictions) == len(answers) == len(questions)):
        raise InputError(
            f"predictions, answers and questions must have one entry per pass, got "
            f"{len(predictions)}, {len(answers)}, {len(questions)}"
        )
    if not predictions:
        raise InputError("circular_accuracy needs at least one pass")
    passed: dict[Hashable, bool] = defaultdict(lambda: True)
    for prediction, answer, question in zip(predictions, answers, questions, strict=True):
        passed[question] = passed[question] and prediction == answer
    return sum(passed.values()) / len(passed)
