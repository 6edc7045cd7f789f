"""Grounding metrics: referring-expression comprehension (REC) accuracy and pointing accuracy.

REC accuracy is the fraction of predicted boxes whose IoU with the ground truth is at least 0.5
(the RefCOCO protocol, Mao et al. 2016; Shikra reports it as "Acc@0.5"). A prediction given as
text is read with a :class:`~vlmzoo.processing.referring.PlainFormat`; as in Shikra's
``RECComputeMetrics`` (shikras/shikra's mllm/dataset/single_image_dataset/rec.py) a text that
does not hold exactly one box counts as a miss, not an error. Shikra's code compares with
``iou > 0.5``; the protocol (and ``threshold`` here) is ``>=``, which differs only at exactly 0.5.

Pointing accuracy is the fraction of predicted points that fall inside the ground-truth box
(edges included), the test of a click on the referred region.

Predictions and references must be in the same coordinates (both fractions of the frame, as the
text holds them, or both pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmzoo.errors import InputError
from vlmzoo.processing.referring import SHIKRA, Box, PlainFormat, Point

Prediction = str | Sequence[float] | None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes; 0 when the union is empty."""
    ax1, ay1, ax2, ay2 = _box(a)
    bx1, by1, bx2, by2 = _box(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def point_in_box(point: Sequence[float], box: Sequence[float]) -> bool:
    """Whether ``(x, y)`` lies inside ``(x1, y1, x2, y2)``, edges included."""
    x, y = (float(v) for v in point)
    x1, y1, x2, y2 = _box(box)
    return x1 <= x <= x2 and y1 <= y <= y2


@dataclass(frozen=True)
class RECResult:
    """``accuracy``: hits / all; ``mean_iou`` over all (a miss read as IoU 0); ``failed``:
    predictions holding no single box (counted as misses)."""

    accuracy: float
    mean_iou: float
    failed: int
    count: int


def rec_scores(
    predictions: Sequence[Prediction],
    references: Sequence[Sequence[float]],
    threshold: float = 0.5,
    format: PlainFormat = SHIKRA,
) -> RECResult:
    """REC accuracy, mean IoU and parse failures of ``predictions`` (texts, boxes or None) against
    ``references`` (boxes)."""
    _check_pairs(predictions, references)
    if not 0 < threshold <= 1:
        raise InputError(f"threshold={threshold!r}: an IoU threshold is in (0, 1]")
    ious, failed = [], 0
    for prediction, reference in zip(predictions, references, strict=True):
        box = _one(prediction, 4, format)
        failed += box is None
        ious.append(0.0 if box is None else box_iou(box, reference))
    n = len(ious)
    hits = sum(iou >= threshold for iou in ious)
    return RECResult(hits / n if n else 0.0, sum(ious) / n if n else 0.0, failed, n)


def rec_accuracy(
    predictions: Sequence[Prediction],
    references: Sequence[Sequence[float]],
    threshold: float = 0.5,
    format: PlainFormat = SHIKRA,
) -> float:
    """Fraction of predictions (texts, boxes or None) with IoU >= ``threshold`` to their reference box."""
    return rec_scores(predictions, references, threshold, format).accuracy


def pointing_accuracy(
    predictions: Sequence[Prediction], references: Sequence[Sequence[float]], format: PlainFormat = SHIKRA
) -> float:
    """Fraction of predicted points (texts, ``(x, y)`` or None) inside their reference box; a text
    holding no single point is a miss."""
    _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    hits = 0
    for prediction, reference in zip(predictions, references, strict=True):
        point = _one(prediction, 2, format)
        hits += point is not None and point_in_box(point, reference)
    return hits / len(predictions)


def _one(prediction: Prediction, n: int, format: PlainFormat) -> Box | Point | None:
    """The single box (n=4) or point (n=2) of a prediction, or None when it holds no single one."""
    if prediction is None:
        return None
    if isinstance(prediction, str):
        try:
            groups = format.parse(prediction)
        except InputError:
            return None
        regions = [g for g in groups if len(g[0]) == n]
        if len(regions) != 1 or len(regions[0]) != 1:
            return None
        return regions[0][0]
    values = tuple(float(v) for v in prediction)
    if len(values) != n:
        raise InputError(f"a predicted {'box' if n == 4 else 'point'} has {n} values, got {prediction!r:.60}")
    return values  # type: ignore[return-value]


def _box(box: Sequence[float]) -> Box:
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise InputError(f"a box is (x1, y1, x2, y2), got {box!r:.60}")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise InputError(f"box {box!r:.60} is not ordered (x1 <= x2, y1 <= y2)")
    return x1, y1, x2, y2


def _check_pairs(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references")
