"""VQA accuracy: the VQA challenge's consensus metric over ten human answers.

An answer is right to the degree that annotators gave it: ``min(#humans who said it / 3, 1)``,
averaged over the ten ways of leaving one annotator out (Antol et al. 2015, "VQA: Visual Question
Answering", section 2; the official ``vqaEval.py`` of GT-Vision-Lab/VQA's
PythonEvaluationTools). Before comparing, answers go through the official normalisation:
punctuation removed or turned into spaces, number words to digits, articles dropped,
apostrophe-less contractions restored. As in the official script, the normalisation is applied
only when the ten answers are not all identical (when they are, the raw strings are compared).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vlmzoo.errors import InputError

__all__ = ["normalize_vqa_answer", "vqa_accuracy", "vqa_score"]

# The official script's tables (vqaEval.py): number words, articles, punctuation, and
# contractions written without their apostrophe mapped to the spelling annotators' answers use.
_NUMBERS = dict(
    none="0", zero="0", one="1", two="2", three="3", four="4", five="5", six="6", seven="7",
    eight="8", nine="9", ten="10",
)  # fmt: skip
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
_CONTRACTIONS = dict(
    pair.split("=")
    for pair in [
        "aint=ain't",
        "arent=aren't",
        "cant=can't",
        "couldve=could've",
        "couldnt=couldn't",
        "couldn'tve=couldn't've",
        "couldnt've=couldn't've",
        "didnt=didn't",
        "doesnt=doesn't",
        "dont=don't",
        "hadnt=hadn't",
        "hadnt've=hadn't've",
        "hadn'tve=hadn't've",
        "hasnt=hasn't",
        "havent=haven't",
        "hed=he'd",
        "hed've=he'd've",
        "he'dve=he'd've",
        "hes=he's",
        "howd=how'd",
        "howll=how'll",
        "hows=how's",
        "Id've=I'd've",
        "I'dve=I'd've",
        "Im=I'm",
        "Ive=I've",
        "isnt=isn't",
        "itd=it'd",
        "itd've=it'd've",
        "it'dve=it'd've",
        "itll=it'll",
        "let's=let's",
        "maam=ma'am",
        "mightnt=mightn't",
        "mightnt've=mightn't've",
        "mightn'tve=mightn't've",
        "mightve=might've",
        "mustnt=mustn't",
        "mustve=must've",
        "neednt=needn't",
        "notve=not've",
        "oclock=o'clock",
        "oughtnt=oughtn't",
        "ow's'at='ow's'at",
        "'ows'at='ow's'at",
        "'ow'sat='ow's'at",
        "shant=shan't",
        "shed've=she'd've",
        "she'dve=she'd've",
        "she's=she's",
        "shouldve=should've",
        "shouldnt=shouldn't",
        "shouldnt've=shouldn't've",
        "shouldn'tve=shouldn't've",
        "somebody'd=somebodyd",
        "somebodyd've=somebody'd've",
        "somebody'dve=somebody'd've",
        "somebodyll=somebody'll",
        "somebodys=somebody's",
        "someoned=someone'd",
        "someoned've=someone'd've",
        "someone'dve=someone'd've",
        "someonell=someone'll",
        "someones=someone's",
        "somethingd=something'd",
        "somethingd've=something'd've",
        "something'dve=something'd've",
        "somethingll=something'll",
        "thats=that's",
        "thered=there'd",
        "thered've=there'd've",
        "there'dve=there'd've",
        "therere=there're",
        "theres=there's",
        "theyd=they'd",
        "theyd've=they'd've",
        "they'dve=they'd've",
        "theyll=they'll",
        "theyre=they're",
        "theyve=they've",
        "twas='twas",
        "wasnt=wasn't",
        "wed've=we'd've",
        "we'dve=we'd've",
        "weve=we've",
        "werent=weren't",
        "whatll=what'll",
        "whatre=what're",
        "whats=what's",
        "whatve=what've",
        "whens=when's",
        "whered=where'd",
        "wheres=where's",
        "whereve=where've",
        "whod=who'd",
        "whod've=who'd've",
        "who'dve=who'd've",
        "wholl=who'll",
        "whos=who's",
        "whove=who've",
        "whyll=why'll",
        "whyre=why're",
        "whys=why's",
        "wont=won't",
        "wouldve=would've",
        "wouldnt=wouldn't",
        "wouldnt've=wouldn't've",
        "wouldn'tve=wouldn't've",
        "yall=y'all",
        "yall'll=y'all'll",
        "y'allll=y'all'll",
        "yall'd've=y'all'd've",
        "y'alld've=y'all'd've",
        "y'all'dve=y'all'd've",
        "youd=you'd",
        "youd've=you'd've",
        "you'dve=you'd've",
        "youll=you'll",
        "youre=you're",
        "youve=you've",
    ]
)
# A period not inside a number is dropped ("yes." -> "yes", "2.5" kept). The official pattern's
# look-behind is written `(?!<=\d)`, a negative look-AHEAD for the text "<=" + digit, so in
# effect only "a period not followed by a digit" is removed ("2." -> "2"); kept as it is.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    """The official punctuation step: a mark next to a space (or any mark, in a text with a
    digit-comma-digit such as "1,000") is deleted, any other mark becomes a space; then
    periods outside numbers are dropped. The tests are made on the input text, not the
    progressively edited one, as the official script does."""
    out = text
    has_digit_comma = _DIGIT_COMMA.search(text) is not None
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The official call passes re.UNICODE (32) where `count` goes, so at most 32 periods go.
    return _PERIOD.sub("", out, 32)


def _digits_and_articles(text: str) -> str:
    """Lower case, number words to digits, articles dropped, contractions restored."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _clean(text: str) -> str:
    """Newlines and tabs to spaces, surrounding whitespace stripped (done to every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """The official VQA answer normalisation: ``"Two dogs!"`` -> ``"2 dogs"``, ``"dont"`` -> ``"don't"``."""
    return _digits_and_articles(_punctuation(_clean(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy in [0, 1]: the mean over annotators ``i`` of
    ``min(#{j != i : answer_j == prediction} / 3, 1)`` (10 answers in VQA v2, VizWiz, TextVQA).

    With fewer than 4 answers a prediction can never reach 1; that is the metric, not a bug.
    """
    if isinstance(answers, str) or not answers:
        raise InputError(
            "vqa_accuracy needs the list of human answers of the question (10 in VQA v2), got "
            f"{answers!r}; for a single reference answer use vlmzoo.eval.exact_match"
        )
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:  # the official script normalises only answers that disagree
        gts = [_digits_and_articles(_punctuation(a)) for a in gts]
        pred = _digits_and_articles(_punctuation(pred))
    matches = sum(a == pred for a in gts)
    # Leaving annotator i out removes one match when annotator i gave the prediction.
    total = sum(min(1.0, (matches - (a == pred)) / 3) for a in gts)
    return total / len(gts)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean :func:`vqa_accuracy` over questions, in [0, 1] (the challenge reports it x100)."""
    if len(predictions) != len(answers):
        raise InputError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        return 0.0
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)
