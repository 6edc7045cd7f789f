"""MME: per subtask 100 * (accuracy over questions + accuracy+ over images), answers read by prefix."""

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.mme import mme_answer, mme_scores


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes, it is.", "yes"),
        ("No.", "no"),
        ("I cannot tell", "other"),
        ("nope", "no"),
    ],
)
def test_answers_are_read_by_their_first_four_characters(text, read):
    assert mme_answer(text) == read


def test_scores_add_accuracy_and_accuracy_plus_per_subtask():
    answers = ["Yes, it is.", "No", "no", "No", "yes", "yes", "Yes", "I cannot tell"]
    labels = ["Yes", "No", "Yes", "No", "Yes", "No", "Yes", "No"]
    subtasks = ["existence"] * 4 + ["count"] * 4
    images = ["a", "a", "b", "b", "c", "c", "d", "d"]
    result = mme_scores(answers, labels, subtasks, images)
    assert result.accuracy == {"existence": 0.75, "count": 0.5}
    assert result.accuracy_plus == {"existence": 0.5, "count": 0.0}
    assert result.score == pytest.approx({"existence": 125.0, "count": 50.0})
    assert result.perception == pytest.approx(175.0)
    assert result.cognition == 0.0


def test_an_image_without_its_question_pair_is_refused():
    with pytest.raises(InputError, match="two questions with every image"):
        mme_scores(["yes"], ["yes"], ["existence"], ["a"])
