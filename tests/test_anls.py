"""ANLS (ST-VQA, eq. 1): best 1 - normalised edit distance over the answers, 0 at or past tau.

Expected values agree with lmms-eval's ``anls`` on these inputs, except at NL == tau exactly.
"""

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.anls import anls, anls_score, levenshtein


def test_levenshtein_counts_edits():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Hello World", ["hello world"], 1.0),
        ("helo world", ["hello world"], 1 - 1 / 11),
        ("$1,200.00", ["$1200.00", "1200"], 1 - 1 / 9),
        ("invoice no 42", ["Invoice No. 42"], 1 - 1 / 14),
        ("kitten", ["sitting"], 1 - 3 / 7),
        ("abc", ["xyz"], 0.0),
    ],
)
def test_anls_takes_the_best_answer_and_zeroes_far_ones(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


def test_a_distance_of_exactly_tau_scores_zero_as_in_the_paper():
    assert anls("ab", ["abcd"]) == 0.0


def test_score_is_the_mean_over_questions():
    assert anls_score(["hello world", "abc"], [["Hello World"], ["xyz"]]) == pytest.approx(0.5)


def test_a_string_instead_of_the_answer_list_is_refused():
    with pytest.raises(InputError, match="list of ground-truth answers"):
        anls("a", "a")
