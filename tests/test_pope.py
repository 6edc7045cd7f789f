"""POPE: answers read as yes/no by the original rule; yes is positive; yes-ratio of the answers."""

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.pope import pope_answer, pope_metrics


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No.", "no"),
        ("There is no cat.", "no"),
        ("Not sure, maybe", "yes"),  # "Not" is not one of the original's words
        ("No, there is not. But yes", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("There is a bird, not a cat", "no"),
        ("I think so", "yes"),  # anything without a no-word reads as yes
    ],
)
def test_answers_are_read_as_the_original_evaluate_script_reads_them(text, read):
    assert pope_answer(text) == read


def test_metrics_count_yes_as_the_positive_class():
    answers = ["yes", "yes", "yes", "no", "no", "yes"]
    labels = ["yes", "yes", "no", "yes", "no", "no"]
    result = pope_metrics(answers, labels)
    assert (result.tp, result.fp, result.tn, result.fn) == (2, 2, 1, 1)
    assert result.accuracy == pytest.approx(3 / 6)
    assert result.precision == pytest.approx(2 / 4)
    assert result.recall == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result.yes_ratio == pytest.approx(4 / 6)  # of the answers, not of the labels


def test_labels_other_than_yes_or_no_are_refused():
    with pytest.raises(InputError, match="'yes' or 'no'"):
        pope_metrics(["yes"], ["maybe"])
