"""REC accuracy (IoU >= 0.5) and pointing accuracy against hand-computed cases."""

from __future__ import annotations

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval import box_iou, pointing_accuracy, rec_accuracy, rec_scores


def test_iou_of_two_half_overlapping_unit_squares_is_one_third():
    # intersection 1 x 2 = 2, union 4 + 4 - 2 = 6
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)


def test_iou_of_a_box_inside_another_is_the_area_ratio():
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)


def test_iou_of_disjoint_or_empty_boxes_is_zero():
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_rec_accuracy_counts_iou_at_least_one_half():
    reference = (0, 0, 40, 40)  # whole numbers: IoU 0.5 is exact in floating point
    predictions = [
        (0, 0, 40, 40),  # IoU 1
        (0, 0, 40, 20),  # IoU 800 / 1600 = 0.5 exactly: a hit (>=; Shikra's code uses >)
        (0, 0, 40, 19),  # IoU 760 / 1600 = 0.475: a miss
        (50, 50, 90, 90),  # IoU 0
    ]
    assert rec_accuracy(predictions, [reference] * 4) == pytest.approx(0.5)


def test_predictions_given_as_text_are_read_in_shikras_format():
    texts = ["Answer: [0.000,0.000,0.400,0.400] .", "[0.5,0.5,0.9,0.9]"]
    scores = rec_scores(texts, [(0.0, 0.0, 0.4, 0.4)] * 2)
    assert (scores.accuracy, scores.failed, scores.count) == (0.5, 0, 2)
    assert scores.mean_iou == pytest.approx(0.5)


def test_text_without_exactly_one_box_is_a_miss_not_an_error():
    texts = ["no idea", "[0.1,0.1,0.2,0.2;0.3,0.3,0.4,0.4]", "[0.1,0.2,0.3]", None]
    scores = rec_scores(texts, [(0.1, 0.1, 0.2, 0.2)] * 4)
    assert (scores.accuracy, scores.failed) == (0.0, 4)


def test_pointing_accuracy_counts_points_inside_the_box_edges_included():
    box = (0.2, 0.2, 0.6, 0.6)
    points = [(0.4, 0.4), (0.6, 0.2), (0.61, 0.4), "[0.300,0.500]", "nothing"]
    assert pointing_accuracy(points, [box] * 5) == pytest.approx(3 / 5)


def test_mismatched_lengths_and_unordered_references_are_refused():
    with pytest.raises(InputError, match="2 predictions but 1 references"):
        rec_accuracy([(0, 0, 1, 1), (0, 0, 1, 1)], [(0, 0, 1, 1)])
    with pytest.raises(InputError, match="not ordered"):
        rec_accuracy([(0, 0, 1, 1)], [(1, 1, 0, 0)])
