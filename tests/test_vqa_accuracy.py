"""VQA accuracy: min(#humans / 3, 1) averaged over leave-one-out subsets, official normalisation.

Expected values were computed with the official ``vqaEval.py`` (GT-Vision-Lab/VQA) on the same inputs.
"""

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.vqa_accuracy import normalize_vqa_answer, vqa_accuracy, vqa_score


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs!", "2 dogs"),
        ("the dog", "dog"),
        ("dont know", "don't know"),
        ("1,000", "1000"),
        ("yes.", "yes"),
        ("2.5", "2.5"),
        ("red-white", "red white"),
        ("A man's hat", "man's hat"),
        ("none", "0"),
        ("it's (maybe) blue", "it's maybe blue"),
        ("Im here", "im here"),  # lower-cased before the table is read, so "Im" never matches
        ("x / y", "x y"),
    ],
)
def test_normalisation_matches_the_official_script(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize(
    ("humans", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_an_answer_given_by_k_of_ten_humans_scores_the_leave_one_out_mean(humans, expected):
    answers = ["2"] * humans + ["3"] * (10 - humans)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


def test_answers_that_disagree_are_normalised_before_matching():
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Red.", ["red"] * 2 + ["dark red"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("the dog", ["a dog"] + ["dog"] * 4 + ["puppy"] * 5) == pytest.approx(1.0)


def test_identical_answers_are_compared_raw_as_the_official_script_does():
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


def test_score_is_the_mean_over_questions():
    assert vqa_score(["2", "yes"], [["2"] * 3 + ["3"] * 7, ["yes"] * 10]) == pytest.approx(0.95)


def test_a_single_string_instead_of_the_answer_list_is_refused():
    with pytest.raises(InputError, match="list of human answers"):
        vqa_accuracy("yes", "yes")
