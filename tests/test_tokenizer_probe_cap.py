"""Comparing a saved tokenizer with its reload probes a capped, deterministic set of tokens: a
tokenizer with hundreds of added tokens stays quick to save, and a difference is still found."""

import time

import pytest
from tiny_tokenizers import llama_tokenizer

from vlmzoo.processing.tokenizer_files import (
    MAX_PROBED_TOKENS,
    load_tokenizer,
    probe_tokens,
    save_tokenizer,
    tokenizer_differences,
)

# 500 added tokens, the image token in the middle where an even sample could miss it
EXTRA = (*(f"<a{i}>" for i in range(250)), "<image>", *(f"<b{i}>" for i in range(249)))


@pytest.fixture(scope="module")
def many():
    return llama_tokenizer(extra=EXTRA)


def test_at_most_the_cap_of_the_other_tokens_is_probed(many):
    tokens = probe_tokens(many, ("<image>",))
    named = {many.bos_token, many.eos_token, many.unk_token}
    assert len(tokens) <= MAX_PROBED_TOKENS + len(named) + 1


def test_the_image_token_and_the_named_special_tokens_are_always_probed(many):
    tokens = probe_tokens(many, ("<image>",))
    assert {"<image>", many.bos_token, many.eos_token, many.unk_token} <= set(tokens)


def test_the_sample_is_deterministic_and_spans_the_added_tokens(many):
    tokens = probe_tokens(many, ("<image>",))
    assert tokens == probe_tokens(many, ("<image>",))
    assert "<a0>" in tokens and "<b248>" in tokens  # the first and the last added token


def test_a_tokenizer_with_few_tokens_probes_them_all():
    tok = llama_tokenizer(extra=("<image>", "<x>"))
    assert {"<image>", "<x>", "<s>", "</s>", "<unk>"} <= set(probe_tokens(tok))


def test_a_difference_after_a_special_token_is_still_found(many, tmp_path):
    many.save_pretrained(str(tmp_path))  # plain save: legacy=True comes back as False
    again = load_tokenizer(str(tmp_path))
    again.legacy = many.legacy  # hide the flag: only the probe texts can tell
    differences = tokenizer_differences(many, again, ("<image>",))
    assert any("special tokens)" in d for d in differences)


def test_saving_a_tokenizer_with_500_added_tokens_is_quick(many, tmp_path):
    start = time.perf_counter()
    save_tokenizer(many, tmp_path, ("<image>",))  # saved, reloaded, compared: no difference
    assert time.perf_counter() - start < 10.0  # about 0.4 s of probing alone before the cap
