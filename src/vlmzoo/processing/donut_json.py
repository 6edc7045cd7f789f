"""Donut's JSON <-> token-sequence format (clovaai/donut's donut/model.py ``json2token`` /
``token2json``, donut/util.py ``DonutDataset``; transformers' ``DonutProcessor.token2json``).

A JSON target is written as nested tags: a key ``k`` becomes ``<s_k>value</s_k>``, the items of a
list are joined by ``<sep/>``, and a leaf is ``str(value)``. Keys are written in reverse-sorted
order by default (``sort_json_key=True`` in every released config), so DocVQA's
``{"question": q, "answer": a}`` reads ``<s_question>q</s_question><s_answer>a</s_answer>``. A
dict that is only ``{"text_sequence": t}`` is written as ``t`` itself (pre-training's reading
task). Leaves that name a *category* are written as one special token ``<name/>`` when that
token is in the tokenizer (RVL-CDIP's classes ``<letter/>``, ``<memo/>``...; DocVQA adds
``<yes/>`` and ``<no/>``), and read back as the bare name.

A training sequence is ``task_start_token + json2token(target) + eos`` (:func:`target_sequence`);
the loss ignores everything up to and including the *prompt end* token, which is the task start
token (``<s_cord-v2>``, ``<s_rvlcdip>``) except for DocVQA, where the question is part of the
prompt and the prompt ends at ``<s_answer>`` (:data:`DOCVQA_PROMPT_END`). At inference the
decoded text loses its eos and pad tokens and its first tag, the task start token
(:func:`strip_task_prompt`), before :func:`token2json`.

:func:`token2json` follows transformers' version, which differs from the original in three ways,
all on text the original mishandles: a key is escaped before it is searched for (a key with
regex metacharacters made the original fail or match the wrong tag), a value may span lines
(the original found no value across a newline and dropped the field), and the opening tag is
found without a backtracking pattern. On text without newlines or metacharacters in keys the
two agree.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

from vlmzoo.errors import InputError

SEP_TOKEN = "<sep/>"  # joins list items; clovaai/donut's BARTDecoder adds it to the tokenizer
DOCVQA_PROMPT_END = "<s_answer>"  # donut's train.py: DocVQA's loss starts after this token
TEXT_SEQUENCE = "text_sequence"  # the key of a plain-text target (and of unparsable output)

JSON = dict[str, Any] | list[Any]


# --- JSON -> tokens ---------------------------------------------------------------------------
def json2token(obj: Any, *, sort_keys: bool = True, special_tokens: Collection[str] = ()) -> str:
    """Write a JSON value as Donut's token sequence.

    Args:
        obj: a dict (string keys), list, or leaf (written with ``str``: ``True`` is ``"True"``,
            ``None`` is ``"None"``, as in the original).
        sort_keys: write the keys of each dict in reverse-sorted order (the released configs'
            ``sort_json_key=True``); False keeps insertion order.
        special_tokens: the tokenizer's special tokens; a leaf ``v`` is written as the category
            token ``<v/>`` when that token is among them.

    Returns:
        The sequence, e.g. ``{"menu": [{"nm": "tea"}, {"nm": "cake"}]}`` ->
        ``<s_menu><s_nm>tea</s_nm><sep/><s_nm>cake</s_nm></s_menu>``.
    """
    special = special_tokens if isinstance(special_tokens, set | frozenset | dict) else set(special_tokens)
    return _write(obj, sort_keys, special)


def _write(obj: Any, sort_keys: bool, special: Collection[str]) -> str:
    if isinstance(obj, dict):
        if len(obj) == 1 and TEXT_SEQUENCE in obj:
            text = obj[TEXT_SEQUENCE]
            if not isinstance(text, str):
                raise InputError(
                    f'"{TEXT_SEQUENCE}" must hold a string (it is written as is), got {type(text).__name__}'
                )
            return text
        return "".join(f"<s_{k}>{_write(obj[k], sort_keys, special)}</s_{k}>" for k in _keys(obj, sort_keys))
    if isinstance(obj, list | tuple):  # a tuple is a list, as json.dumps writes it
        return SEP_TOKEN.join(_write(item, sort_keys, special) for item in obj)
    leaf = str(obj)
    return f"<{leaf}/>" if f"<{leaf}/>" in special else leaf


def _keys(obj: dict[Any, Any], sort_keys: bool) -> list[str]:
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise InputError(f"JSON object keys must be strings; got {bad[0]!r} ({type(bad[0]).__name__})")
    return sorted(obj, reverse=True) if sort_keys else list(obj)


def special_tokens_for(objs: Iterable[Any], *, sort_keys: bool = True) -> list[str]:
    """The tokens a tokenizer needs before :func:`json2token` of ``objs`` tokenises as Donut's did.

    ``<sep/>`` first (clovaai/donut's ``BARTDecoder`` adds it when built), then ``</s_k>`` and
    ``<s_k>`` for every key, in the order the original's training set adds them (each key's pair
    sorted, as its ``add_special_tokens`` sorts what it is given), each once. Category tokens
    (``<letter/>``) and task tokens (``<s_cord-v2>``) are the caller's to add.
    """
    seen: dict[str, None] = {SEP_TOKEN: None}

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if len(obj) == 1 and TEXT_SEQUENCE in obj:
                return
            for k in _keys(obj, sort_keys):
                seen.update(dict.fromkeys(sorted((f"<s_{k}>", f"</s_{k}>"))))
                walk(obj[k])
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item)

    for obj in objs:
        walk(obj)
    return list(seen)


def target_sequence(
    obj: Any,
    task_start_token: str,
    eos_token: str,
    *,
    sort_keys: bool = True,
    special_tokens: Collection[str] = (),
) -> str:
    """A training target as donut/util.py's ``DonutDataset`` builds it:
    ``task_start_token + json2token(obj) + eos_token``."""
    return task_start_token + json2token(obj, sort_keys=sort_keys, special_tokens=special_tokens) + eos_token


# --- tokens -> JSON ---------------------------------------------------------------------------
def strip_task_prompt(text: str, *, eos_token: str = "</s>", pad_token: str = "<pad>") -> str:
    """Decoded output -> the text :func:`token2json` reads: eos and pad removed, then the first tag
    (the task start token) and surrounding whitespace, as clovaai/donut's ``DonutModel.inference``."""
    text = text.replace(eos_token, "").replace(pad_token, "")
    return re.sub(r"<.*?>", "", text, count=1).strip()


def token2json(text: str, *, special_tokens: Collection[str] = ()) -> JSON:
    """Read a (generated) token sequence back as JSON, as transformers' ``DonutProcessor.token2json``.

    A field whose closing tag never comes is dropped; a value holding both ``<s_`` and ``</s_`` is
    read as a nested object (dropped when nothing in it parses), any other value is a leaf (split
    at ``<sep/>``; one item is a string, several a list; a category token in ``special_tokens``
    becomes its bare name). Objects separated by ``<sep/>`` form a list. Text with no field at all
    comes back as ``{"text_sequence": text}``.

    Args:
        text: the output after :func:`strip_task_prompt`.
        special_tokens: the tokenizer's added tokens (``tokenizer.get_added_vocab()``), to
            recognise category tokens such as ``<letter/>``.

    Returns:
        A dict, or a list of dicts when the top level is a ``<sep/>``-separated list.
    """
    added = special_tokens if isinstance(special_tokens, set | frozenset | dict) else set(special_tokens)
    try:
        return _read(text, added, inner=False)
    except RecursionError:
        raise InputError(
            "token sequence nests fields too deeply to read (each distinct nested key is one level)"
        ) from None


def _read(tokens: str, added: Collection[str], inner: bool) -> Any:
    # Objects already closed by a following <sep/>: the original recurses once per <sep/>; a loop
    # gives the same result without a recursion depth proportional to the list's length.
    items: list[dict[str, Any]] = []
    output: dict[str, Any] = {}
    while tokens:
        opening = _opening_tag(tokens)
        if opening is None:
            break
        key = opening[len("<s_") : -len(">")]
        closing = re.search(rf"</s_{re.escape(key)}>", tokens, re.IGNORECASE)
        if closing is None:  # never closed: forget every copy of this opening tag
            tokens = tokens.replace(opening, "")
            continue
        value = re.search(
            f"{re.escape(opening)}(.*?){re.escape(closing.group())}", tokens, re.IGNORECASE | re.DOTALL
        )
        if value is not None:
            content = value.group(1).strip()
            if "<s_" in content and "</s_" in content:  # a nested object (or list of them)
                nested = _read(content, added, inner=True)
                if nested:
                    output[key] = nested[0] if len(nested) == 1 else nested
            else:
                leaves = [_leaf(item.strip(), added) for item in content.split(SEP_TOKEN)]
                output[key] = leaves[0] if len(leaves) == 1 else leaves
        tokens = tokens[closing.end() :].strip()
        if tokens.startswith(SEP_TOKEN):
            items.append(output)
            output, tokens, inner = {}, tokens[len(SEP_TOKEN) :], True
    if inner:
        return [*items, output] if output else items
    return output if output else {TEXT_SEQUENCE: tokens}


def _opening_tag(tokens: str) -> str | None:
    """The first ``<s_...>`` tag (the prefix matched without case): from the first ``<s_`` to the
    next ``>``; None when there is none."""
    start = re.search("<s_", tokens, re.IGNORECASE)
    if start is None:
        return None
    end = tokens.find(">", start.start())
    return None if end < 0 else tokens[start.start() : end + 1]


def _leaf(leaf: str, added: Collection[str]) -> str:
    if leaf in added and leaf.startswith("<") and leaf.endswith("/>"):
        return leaf[1:-2]  # a category token: <letter/> -> letter
    return leaf
