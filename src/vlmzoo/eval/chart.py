"""Chart structural extraction metrics: number accuracy with a relative tolerance, the SCRM average
precision OneChart reports, and how well a reliability score ranks errors.

- :func:`number_accuracy`: the fraction of reference numbers read within a relative tolerance, by
  position (the i-th number read against the i-th number of the chart); a number not read counts
  as wrong. The chart-level counterpart, :func:`chart_accuracy`, needs every number right and no
  extra one.
- :func:`scrm`: the Structuring Chart-oriented Representation Metric of StructChart (Xia et al.
  2023, section 4) as OneChart evaluates its dicts (LingyvKong/OneChart's ``ChartSE_eval/SCRM.py``
  ``csv_eval`` with ``pred_type="json"``, ``easy=1`` as ``eval_ChartSE.py`` runs it): each chart's
  ``values`` become (entity, header, value) triples; a predicted triple matches a reference one when
  the edit distance of their labels is at most ``tol_word`` (or one label contains the other) and
  ``|pred - ref| / (|ref| + 1e-6) <= tol_num``; a chart's similarity is matches / union; AP@t is
  the fraction of charts with similarity >= t, mAP the mean over t = 0.5, 0.55, ..., 0.95. The
  three tolerances are strict (word 0, number 0), slight (2, 0.05) and high (5, 0.1); OneChart's
  tables report the mAP at each as AP@strict / AP@slight / AP@high, and "EM" is AP at similarity 1.
- :func:`spearman`: rank correlation (ties get the mean rank) between a score and the errors, the
  measure of a self-evaluation: a reliability *distance* should rise with the error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vlmzoo.errors import InputError
from vlmzoo.eval.anls import levenshtein

__all__ = [
    "SCRM_TOLERANCES",
    "chart_accuracy",
    "mean_relative_error",
    "number_accuracy",
    "scrm",
    "spearman",
]

# SCRM.py's get_ap with easy=1: name -> (tol_word, tol_num).
SCRM_TOLERANCES: dict[str, tuple[int, float]] = {"strict": (0, 0.0), "slight": (2, 0.05), "high": (5, 0.1)}
_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]  # np.arange(0.5, 1, 0.05)


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise InputError("no charts to score (empty references)")


def _close(predicted: float, reference: float, tolerance: float) -> bool:
    """``|p - r| <= tolerance * |r|`` (the relaxed accuracy of ChartQA, Masry et al. 2022, and of
    SCRM's numbers); at tolerance 0, exact equality."""
    return abs(predicted - reference) <= tolerance * abs(reference)


def number_accuracy(
    predictions: Sequence[Sequence[float] | None],
    references: Sequence[Sequence[float]],
    tolerance: float = 0.05,
) -> float:
    """Fraction of the reference numbers read within ``tolerance`` (relative), position by position;
    a prediction of None (unreadable) or a shorter one leaves numbers unread (wrong)."""
    _check_lengths(predictions, references)
    if tolerance < 0 or not math.isfinite(tolerance):
        raise InputError(f"tolerance={tolerance!r} must be a finite number >= 0")
    hits = total = 0
    for pred, ref in zip(predictions, references, strict=True):
        total += len(ref)
        if pred is not None:
            hits += sum(_close(p, r, tolerance) for p, r in zip(pred, ref, strict=False))
    return hits / total if total else 0.0


def chart_accuracy(
    predictions: Sequence[Sequence[float] | None],
    references: Sequence[Sequence[float]],
    tolerance: float = 0.05,
) -> float:
    """Fraction of charts whose numbers are all read within ``tolerance``, with none missing or extra."""
    _check_lengths(predictions, references)
    good = sum(
        pred is not None
        and len(pred) == len(ref)
        and all(_close(p, r, tolerance) for p, r in zip(pred, ref, strict=True))
        for pred, ref in zip(predictions, references, strict=True)
    )
    return good / len(references)


def mean_relative_error(predicted: Sequence[float] | None, reference: Sequence[float]) -> float:
    """One chart's error: mean over its reference numbers of ``min(1, |p - r| / |r|)`` (1 for a number
    not read, and for every number of an unreadable chart; extra numbers count 1 each). In [0, 1]."""
    if not reference:
        raise InputError("a chart without reference numbers has no error to measure")
    if predicted is None:
        return 1.0
    errors = [
        min(1.0, abs(p - r) / abs(r)) if r else float(p != r)
        for p, r in zip(predicted, reference, strict=False)
    ]
    errors += [1.0] * abs(len(reference) - len(predicted))
    return sum(errors) / max(len(reference), len(predicted))


# --- SCRM ------------------------------------------------------------------------------------------
_NOT_NUMBER = re.compile(r"[^\d.-]")
Triple = tuple[str, str, Any]


def _triples(values: Mapping[str, Any]) -> list[Triple]:
    """SCRM.py's ``convert_dict_to_list`` + ``process_triplets``: (entity, header, value) per entry,
    ``"value"`` as the header of a single series, labels lower-cased, values float when they read as one."""
    out: list[Triple] = []
    for key, value in values.items():
        items = value.items() if isinstance(value, Mapping) else [("value", value)]
        for sub, v in items:
            text = _NOT_NUMBER.sub("", str(v))
            try:
                number: Any = float(text)
            except ValueError:
                number = text.lower()
            out.append((str(key).lower(), str(sub).lower(), number))
    return out


def _align(pred: list[Triple], label: list[Triple]) -> tuple[list[Triple], list[Triple]]:
    """SCRM.py's head alignment: where the reference at the same index is a single series, the
    prediction's header becomes "value"; both heads are sorted, so (entity, header) order is free."""
    pred, label = list(pred), list(label)
    for i in range(min(len(pred), len(label))):
        if label[i][1] == "value" and "value" not in pred[i][:2]:
            pred[i] = (pred[i][0], "value", pred[i][2])
        ph, lh = sorted(pred[i][:2]), sorted(label[i][:2])
        pred[i] = (ph[0], ph[1], pred[i][2])
        label[i] = (lh[0], lh[1], label[i][2])
    return pred, label


def _matches(a: Triple, b: Triple, tol_word: int, tol_num: float) -> bool:
    if isinstance(a[2], float) and isinstance(b[2], float):
        head_a, head_b = "".join(a[:2]), "".join(b[:2])
        close = abs(a[2] - b[2]) / (abs(b[2]) + 1e-6) <= tol_num
        return close and (levenshtein(head_a, head_b) <= tol_word or head_a in head_b or head_b in head_a)
    return levenshtein("".join(map(str, a)), "".join(map(str, b))) <= tol_word


def _similarity(pred: list[Triple], label: list[Triple], tol_word: int, tol_num: float) -> float:
    """|matched predictions| / |union| with matched pairs counted once (SCRM.py's
    ``intersection_with_tolerance`` / ``union_with_tolerance``)."""
    a, b = set(pred), set(label)
    matched = {x for x in a if any(_matches(x, y, tol_word, tol_num) for y in b)}
    union = (a | b) - (matched - (a & b))
    return len(matched) / len(union) if union else 0.0


def scrm(
    predictions: Sequence[Mapping[str, Any] | None], references: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """SCRM scores of predicted chart ``values`` dicts against the references' (None: unreadable,
    similarity 0; SCRM.py skips those and scales by the share read, "structure_acc", instead).

    Returns ``ap_strict``, ``ap_slight``, ``ap_high`` (mAP over thresholds 0.5:0.05:0.95, what
    OneChart's tables give as AP@strict/slight/high), ``ap50_*``, ``ap75_*``, ``ap90_*`` and ``em``
    (similarity 1 at strict tolerance)."""
    _check_lengths(predictions, references)
    pairs = []
    for pred, ref in zip(predictions, references, strict=True):
        label = _triples(ref)
        pairs.append(None if pred is None else _align(_triples(pred), label))
    out: dict[str, float] = {}
    for name, (tol_word, tol_num) in SCRM_TOLERANCES.items():
        sims = [0.0 if p is None else _similarity(p[0], p[1], tol_word, tol_num) for p in pairs]

        def ap(threshold: float, sims: list[float] = sims) -> float:
            return sum(s >= threshold - 1e-12 for s in sims) / len(sims)

        out[f"ap_{name}"] = sum(ap(t) for t in _THRESHOLDS) / len(_THRESHOLDS)
        for t in (50, 75, 90):
            out[f"ap{t}_{name}"] = ap(t / 100)
        if name == "strict":
            out["em"] = ap(1.0)
    return out


# --- reliability ------------------------------------------------------------------------------------
def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(scores: Sequence[float], errors: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks, ties at their mean rank); NaN when either
    side is constant (no ranking to compare)."""
    if len(scores) != len(errors):
        raise InputError(f"{len(scores)} scores but {len(errors)} errors")
    if len(scores) < 2:
        raise InputError(f"a rank correlation needs at least 2 pairs, got {len(scores)}")
    if not all(math.isfinite(v) for v in (*scores, *errors)):
        raise InputError("scores and errors must be finite numbers")
    x, y = _ranks(scores), _ranks(errors)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return cov / var if var else math.nan
