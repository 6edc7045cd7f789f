"""Tiny transformers tokenizers written in the test (no download) for the processor and chat tests.

* :func:`llama_tokenizer`: Llama's BPE with byte fallback over single characters, Metaspace
  prefix space, BOS ``<s>`` = 1, EOS ``</s>`` = 2 (the shape of Vicuna's tokenizer).
* :func:`opt_tokenizer`: GPT-2's byte-level BPE with OPT's BOS/EOS ``</s>``, which OPT prepends.
* :func:`qwen_tokenizer`: byte-level BPE with Qwen's chat tokens and Vary's image tokens.
"""

from __future__ import annotations

import string

CHARS = string.ascii_letters + string.digits + ".,:?!'\"-()/<>|_"


def llama_tokenizer(legacy: bool = True, extra: tuple[str, ...] = ("<image>",)):
    """A Llama tokenizer; ``extra`` tokens are added as special tokens right after the specials
    (ids 3, 4, ...), so a model can use them as real tokens."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in extra:
        vocab[token] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    vocab["▁"] = len(vocab)
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("▁", "c"), ("a", "t")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_bos_token=True)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def _byte_level(specials: list[str], **kwargs):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    vocab = {s: i for i, s in enumerate(specials)}
    for c in sorted(ByteLevel.alphabet()):
        vocab.setdefault(c, len(vocab))
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return GPT2Tokenizer(vocab=vocab, merges=merges, **kwargs)


def opt_tokenizer():
    """OPT's tokenizer shape: byte-level BPE, ``<pad>`` 1, ``</s>`` 2 as BOS and EOS (prepended)."""
    return _byte_level(
        ["<s>", "<pad>", "</s>", "<unk>"],
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )


def qwen_tokenizer():
    """Qwen's shape for Vary: no BOS, ``<|endoftext|>`` pad, ``<|im_end|>`` EOS, Vary's image tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]
    tok = _byte_level(
        specials, bos_token=None, eos_token="<|im_end|>", unk_token=None, pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


DONUT_TOKENS = (
    "<sep/>",
    "<s_synthdog>",
    "<s_docvqa>",
    "<s_question>",
    "</s_question>",
    "<s_answer>",
    "</s_answer>",
    "<yes/>",
    "<no/>",
)


def donut_tokenizer(extra: tuple[str, ...] = DONUT_TOKENS):
    """mBART's special ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3) over byte-level BPE,
    with Donut's added task and field tokens (``<s_docvqa>``, ``<s_question>``, ``<sep/>`` ...)."""
    tok = _byte_level(
        ["<s>", "<pad>", "</s>", "<unk>"],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok
