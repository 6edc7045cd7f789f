"""MMBench CircularEval: right under every rotation of the options; letters read as VLMEvalKit does.

The readings below are those of VLMEvalKit's ``can_infer`` on the same strings.
"""

import pytest

from vlmzoo.errors import InputError
from vlmzoo.eval.circular import circular_accuracy, circular_variants, extract_choice

OPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]


def test_variants_rotate_the_options_and_follow_the_answer():
    variants = circular_variants(["w", "x", "y", "z"], answer=2)
    assert variants == [
        (["w", "x", "y", "z"], 2),
        (["x", "y", "z", "w"], 1),
        (["y", "z", "w", "x"], 0),
        (["z", "w", "x", "y"], 3),
    ]


@pytest.mark.parametrize(
    ("prediction", "choice"),
    [
        ("B", 1),
        ("(C)", 2),
        ("The answer is D.", 3),
        ("A. a red square", 0),
        ("Answer: C", 2),
        ("**B**", 1),
        ("The correct answer is **C**. Because ...", 2),
        ("a blue circle", 1),
        ("I choose b", None),
        ("A and B", None),
        ("It is a green triangle, not a red square", None),
    ],
)
def test_choices_are_read_as_vlmevalkit_reads_them(prediction, choice):
    assert extract_choice(prediction, OPTIONS) == choice


def test_a_question_counts_only_if_every_pass_is_right():
    questions = ["q1"] * 4 + ["q2"] * 4
    answers = [2, 1, 0, 3, 0, 3, 2, 1]
    always_first = [0] * 8
    assert circular_accuracy(always_first, answers, questions) == 0.0
    one_slip = [2, 1, 0, 3, 0, 3, 2, None]
    assert circular_accuracy(one_slip, answers, questions) == 0.5
    assert circular_accuracy(answers, answers, questions) == 1.0


def test_a_question_with_one_option_is_refused():
    with pytest.raises(InputError, match="2 to 26 options"):
        circular_variants(["only"], 0)
