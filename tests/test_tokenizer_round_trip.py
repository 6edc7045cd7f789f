"""A saved tokenizer reloads with the same behaviour, or the save says what would change."""

import pytest
from tiny_tokenizers import llama_tokenizer

from vlmzoo.errors import CheckpointError
from vlmzoo.processing.tokenizer_files import load_tokenizer, save_tokenizer, tokenizer_differences

TEXT = "<image>\nthe cat"  # legacy and non-legacy Llama differ right after a special token


@pytest.mark.parametrize("legacy", [True, False])
def test_a_llama_tokenizer_reloads_with_its_legacy_flag(legacy, tmp_path):
    tok = llama_tokenizer(legacy=legacy)
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again.legacy == legacy
    assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]


def test_the_padding_side_survives_a_save(tmp_path):
    tok = llama_tokenizer()
    tok.padding_side = "right"
    save_tokenizer(tok, tmp_path)
    assert load_tokenizer(str(tmp_path)).padding_side == "right"


def test_a_plain_save_pretrained_of_a_legacy_tokenizer_is_detected(tmp_path):
    tok = llama_tokenizer(legacy=True)
    tok.save_pretrained(str(tmp_path))
    differences = tokenizer_differences(tok, load_tokenizer(str(tmp_path)))
    assert any("legacy" in d for d in differences)


def test_a_tokenizer_that_cannot_come_back_the_same_is_refused(tmp_path, monkeypatch):
    tok = llama_tokenizer()
    monkeypatch.setattr(
        "vlmzoo.processing.tokenizer_files.tokenizer_differences", lambda a, b, *rest: ["bos id 1 -> 2"]
    )
    with pytest.raises(CheckpointError, match="reloads with other behaviour: bos id 1 -> 2"):
        save_tokenizer(tok, tmp_path)
