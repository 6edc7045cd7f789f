"""BLEU and CIDEr-D through pycocoevalcap; the default tokeniser needs no Java.

The expected numbers are pycocoevalcap's with its Java PTB tokenizer on the same captions.
"""

import shutil

import pytest

from vlmzoo.eval.captioning import caption_metrics, tokenize_caption

pytest.importorskip("pycocoevalcap")

PREDICTIONS = [
    "a dog runs on the grass.",
    "Two cats sleeping on a red sofa",
    "a man riding a bike down the street",
]
REFERENCES = [
    ["A dog is running on the grass.", "a brown dog runs across a field", "The dog plays in the grass"],
    ["two cats sleep on a sofa", "Cats are sleeping on a red couch.", "two kittens on a red sofa"],
    ["A man rides a bicycle on a street.", "a person riding a bike", "man on a bike in the city street"],
]
EXPECTED = {
    "BLEU-1": 0.95238095,
    "BLEU-2": 0.79681907,
    "BLEU-3": 0.59593569,
    "BLEU-4": 0.43337288,
    "CIDEr": 2.70738071,
}


def test_simple_tokenisation_drops_the_ptb_punctuation():
    assert tokenize_caption("A dog, running!  Fast...") == "a dog running fast"


def test_metrics_match_the_coco_caption_numbers():
    assert caption_metrics(PREDICTIONS, REFERENCES) == pytest.approx(EXPECTED, abs=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer runs in Java")
def test_the_ptb_tokenizer_gives_the_same_numbers_on_plain_captions():
    assert caption_metrics(PREDICTIONS, REFERENCES, tokenizer="ptb") == pytest.approx(EXPECTED, abs=1e-6)
