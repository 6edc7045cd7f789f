"""Saving a transformers tokenizer so that it reloads with the same behaviour, and checking that it does.

``tokenizer.save_pretrained`` writes ``tokenizer.json`` and ``tokenizer_config.json``, but the
config keeps only the arguments the tokenizer class forwards to its base class. Some settings
that change what the tokenizer does are held as attributes and never written (transformers 5.x):

* ``legacy`` of ``LlamaTokenizer`` (and the SentencePiece tokenizers built like it: T5, Gemma):
  whether text right after a special token gets SentencePiece's prefix space ("▁"). The class
  stores it as an attribute only, so a ``legacy=True`` tokenizer (LLaVA's Vicuna tokenizer,
  every Llama-1/2 tokenizer saved before transformers 4.33) reloads as ``legacy=False`` and
  tokenizes ``"<image>\\nthe cat"`` differently (Metaspace ``prepend_scheme`` ``"always"`` against
  ``"first"``, transformers' ``_get_prepend_scheme``).
* ``padding_side`` / ``truncation_side`` set on the object after loading (LlamaTokenizer's class
  default is ``"left"``, so a right-padding training tokenizer comes back left-padding).

:func:`save_tokenizer` writes those settings into ``tokenizer_config.json`` (where
``AutoTokenizer.from_pretrained`` reads them, so plain transformers gets them too), then reloads
the folder and compares the two tokenizers (:func:`tokenizer_differences`): the ids of probe texts
around the special tokens (the named ones, the image token, and at most 64 of the others, sampled
evenly: :func:`probe_tokens`), with and without BOS/EOS (what ``add_bos_token`` / ``add_eos_token``
do), the vocabulary size, the added tokens and which are special, the special token ids, the
padding and truncation sides and the chat template. Any difference is a :class:`CheckpointError`
at save time, naming what changed, rather than a checkpoint that answers differently later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmzoo.errors import CheckpointError, ConfigError
from vlmzoo.weights.files import atomic_write_json, read_json

TOKENIZER_CONFIG = "tokenizer_config.json"
# Attributes that change tokenization but that tokenizer classes do not always write to their config.
_BEHAVIOUR_FLAGS = ("legacy", "padding_side", "truncation_side")
# Texts on which legacy and non-legacy SentencePiece tokenizers differ: text right after a special
# token, with and without a space or a newline, and at the very start.
_PROBES = ("{t} Hello", "{t}Hello", "{t}\nthe cat", "Hi{t} at the cat", "USER: {t} a", " a b", "a\n\nb")
# Probe texts are written around at most this many special / added tokens besides the named ones
# and the image token (probe_tokens): a tokenizer with hundreds of added tokens stays quick to save.
MAX_PROBED_TOKENS = 64
_NAMED = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike, always: Sequence[str] = ()) -> None:
    """``tokenizer.save_pretrained(directory)``, plus the settings it would lose (see the module
    docstring), then reloaded and compared: :class:`CheckpointError` when it does not come back the same.

    ``always``: tokens the comparison always probes (a processor's image token).
    Tokenizers that are not transformers ones (vlmzoo's SentencePieceTokenizer, whose one model
    file holds all it does) are saved by their own ``save_pretrained`` and not reloaded.
    """
    directory = Path(directory)
    tokenizer.save_pretrained(str(directory))
    config_file = directory / TOKENIZER_CONFIG
    if not hasattr(tokenizer, "init_kwargs") or not config_file.is_file():
        return
    config = read_json(config_file, "tokenizer config")
    flags = {name: getattr(tokenizer, name) for name in _BEHAVIOUR_FLAGS if hasattr(tokenizer, name)}
    if isinstance(config, dict) and any(config.get(k) != v for k, v in flags.items()):
        atomic_write_json(config_file, config | flags)
    differences = tokenizer_differences(tokenizer, load_tokenizer(str(directory)), always)
    if differences:
        raise CheckpointError(
            f"the {type(tokenizer).__name__} saved to {str(directory)!r} reloads with other behaviour: "
            + "; ".join(differences)
            + ". Reloading it would tokenize differently from the tokenizer the model was used with; "
            "save it with the settings in its constructor (e.g. LlamaTokenizer.from_pretrained(..., "
            "legacy=True)) or report the setting that transformers does not save"
        )


def load_tokenizer(source: str) -> Any:
    """``AutoTokenizer.from_pretrained(source)`` (a local directory or a hub id)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load a tokenizer from {source!r} ({e}); pass a directory holding tokenizer files, "
            "a hub id you can reach, or a transformers tokenizer object"
        ) from e


def tokenizer_differences(original: Any, reloaded: Any, always: Sequence[str] = ()) -> list[str]:
    """What differs between two transformers tokenizers, one phrase each (empty when they agree).

    Compared: ids of probe texts next to the special and added tokens of :func:`probe_tokens`
    (the named special tokens and ``always``, e.g. the image token, plus at most
    :data:`MAX_PROBED_TOKENS` others; with and without special tokens added), the vocabulary
    size, the added tokens (text -> id, and which are special: all of them), the BOS/EOS/PAD/UNK
    ids, ``legacy``, the padding and truncation sides and the chat template.
    """
    found: list[str] = []
    for name in ("legacy", "padding_side", "truncation_side", "chat_template"):
        a, b = getattr(original, name, None), getattr(reloaded, name, None)
        if a != b:
            found.append(f"{name} {a!r} -> {b!r}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        a, b = getattr(original, name, None), getattr(reloaded, name, None)
        if a != b:
            found.append(f"{name} {a!r} -> {b!r}")
    if len(original) != len(reloaded):
        found.append(f"vocabulary size {len(original)} -> {len(reloaded)}")
    added_a, added_b = _added(original), _added(reloaded)
    if added_a != added_b:
        changed = sorted(set(added_a.items()) ^ set(added_b.items()))[:4]
        found.append(f"added tokens differ ({changed})")
    texts = [probe.format(t=token) for token in probe_tokens(original, always) for probe in _PROBES]
    for special in (False, True):  # one batched call per tokenizer and setting
        ids_a = original(texts, add_special_tokens=special)["input_ids"]
        ids_b = reloaded(texts, add_special_tokens=special)["input_ids"]
        for text, a, b in zip(texts, ids_a, ids_b, strict=True):
            if a != b:
                what = "with" if special else "without"
                found.append(f"{text!r} ({what} special tokens) {a} -> {b}")
                return found  # one probe says enough; the rest would repeat it
    return found


def probe_tokens(tokenizer: Any, always: Sequence[str] = (), limit: int = MAX_PROBED_TOKENS) -> list[str]:
    """The special and added tokens the probe texts are written around, at most ``limit`` of the
    others besides the ones always probed.

    Always probed: the named special tokens (BOS, EOS, UNK, PAD, SEP, CLS, MASK) and the tokens of
    ``always`` the tokenizer has (a processor's image token). The other special and added tokens,
    in id order, are sampled evenly (the first and last included) down to ``limit``: probing every
    one of a tokenizer's hundreds of added tokens would make each save slow, and the behaviour the
    probes look for (text right after a special token) does not depend on which token it is.
    ``[""]`` for a tokenizer with none (the probes then test plain text).
    """
    vocab = tokenizer.get_vocab()
    named = [getattr(tokenizer, f"{name}_token", None) for name in _NAMED]
    required = list(dict.fromkeys(str(t) for t in [*named, *always] if t is not None and str(t) in vocab))
    added = {text for text, _ in _added(tokenizer)}
    others = sorted(
        (set(map(str, tokenizer.all_special_tokens)) | added) - set(required),
        key=lambda t: (vocab.get(t, len(vocab)), t),
    )
    if len(others) > limit:
        step = (len(others) - 1) / max(limit - 1, 1)
        others = [others[round(i * step)] for i in range(limit)]
    return [*required, *others] or [""]


def _added(tokenizer: Any) -> dict[tuple[str, bool], int]:
    """Added tokens as (text, special?) -> id."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {(str(t), bool(getattr(t, "special", False))): int(i) for i, t in decoder.items()}
