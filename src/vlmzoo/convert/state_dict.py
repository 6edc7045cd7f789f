"""The state-dict work every converter shares: prefixes, fused projections, block counts, loading.

- :func:`strip_prefix`: the entries under a prefix, with it removed (a tower out of a whole
  checkpoint, or a module's own keys that may or may not carry its attribute name).
- :func:`unwrap`: the prefixes training wrappers put in front of *every* key (DDP's ``module.``).
- :func:`renamed`, :func:`moved`: key renames by rule (regexes, in order) or per block (sub-module
  names, one block's prefix to another's).
- :func:`fuse_rows`, :func:`fuse_groups`: separate q / k / v (or k / v) projections -> one fused
  Linear, rows in order — for one block, or for every block a key pattern finds.
- :func:`count_blocks`: how many numbered blocks a state dict holds, *checked*: a converter that
  sized a model from the largest index it saw would let one stray key
  (``blocks.3000000.norm1.weight``) allocate three million blocks. Indices must run 0 .. n-1 with
  every block complete; anything else is a :class:`ConversionError` naming the key.
- :func:`build_loaded`: build the module on the meta device first, compare every key and shape
  there, and only then build it for real, adopting the tensors instead of copying them — so a
  size inferred wrongly (or planted) costs nothing, and a conversion never holds two copies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn as nn

from vlmzoo.errors import ConversionError
from vlmzoo.weights.format import check_state_dict
from vlmzoo.weights.materialize import adopt, meta_tensors, parameters_placed, retie, tied_names

StateDict = dict[str, torch.Tensor]
M = TypeVar("M", bound=nn.Module)

# The sub-keys every pre-LN ViT block has in vlmzoo's names, which are timm's and the originals'
# of DINOv2, EVA, SAM (after mlp.lin -> mlp.fc) and Swin: checked before a depth is read off keys.
BLOCK_KEYS = (
    "norm1.weight",
    "attn.qkv.weight",
    "attn.proj.weight",
    "norm2.weight",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
)

# Nine digits allow a billion blocks, far beyond any model; longer runs are refused before int()
# (which also refuses numbers of more than 4300 digits with a ValueError of its own).
_MAX_INDEX_DIGITS = 9


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str, *, if_present: bool = False) -> StateDict:
    """The entries of ``sd`` whose key starts with ``prefix``, with the prefix removed.

    Keys outside the prefix are dropped, and a state dict in which no key carries it gives an
    empty dict — the caller's own check then names what is missing, instead of the whole state
    dict passing for the part. ``if_present=True`` is for a module's *own* state dict that may or
    may not carry its attribute name (transformers 5 drops a tower's prefix in memory, a bare
    ``image_encoder`` has none): when no key carries the prefix, ``sd`` is returned as it is.
    """
    if if_present and not any(k.startswith(prefix) for k in sd):
        return dict(sd)
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def unwrap(sd: Mapping[str, torch.Tensor], prefixes: Sequence[str] = ("module.",)) -> StateDict:
    """``sd`` without the wrapper prefixes (in order) that *every* key carries.

    DDP saves ``module.<key>``; some training scripts save ``model.<key>``. A prefix carried by
    only some keys is part of their names and stays (a model may have a submodule called ``model``).
    """
    out = dict(sd)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


Rename = tuple[str, str | Callable[[re.Match[str]], str]]  # (regex, replacement), as re.sub takes


def rename_key(key: str, renames: Sequence[Rename]) -> str:
    """``key`` rewritten by the ``(pattern, replacement)`` regex rules, in order."""
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


def renamed(sd: Mapping[str, torch.Tensor], renames: Sequence[Rename]) -> StateDict:
    """``sd`` with every key rewritten by :func:`rename_key`."""
    return {rename_key(key, renames): value for key, value in sd.items()}


def moved(
    sd: Mapping[str, torch.Tensor],
    src: str,
    dst: str,
    names: Mapping[str, str],
    params: Sequence[str] = ("weight", "bias"),
) -> StateDict:
    """``{f"{dst}{new}.{p}": sd[f"{src}{old}.{p}"]}`` for every ``old -> new`` of ``names`` and ``p``
    of ``params``: one block's sub-modules under another prefix and other names. A missing key is
    a :class:`ConversionError` naming it."""
    out: StateDict = {}
    for old, new in names.items():
        for p in params:
            key = f"{src}{old}.{p}"
            if key not in sd:
                raise ConversionError(f"{key} is missing (looked for to fill {dst}{new}.{p})")
            out[f"{dst}{new}.{p}"] = sd[key]
    return out


def fuse_rows(
    sd: Mapping[str, torch.Tensor],
    parts: Sequence[str],
    into: str,
    params: Iterable[str] = ("weight", "bias"),
) -> StateDict:
    """``{f"{into}.{p}": cat([sd[f"{part}.{p}"] for part in parts])}`` for each ``p`` in ``params``.

    Concatenates the output rows of separate projections into one fused Linear, in the order of
    ``parts`` (q, k, v for a fused ``qkv``; k, v for a fused ``kv``), the layout OpenAI CLIP's
    ``in_proj_weight``, timm and DINOv2 use. A parameter that no part has is skipped (bias-free
    projections); one that some parts have and others lack is a :class:`ConversionError` naming
    the missing key.
    """
    out: StateDict = {}
    for p in params:
        keys = [f"{part}.{p}" for part in parts]
        held = [k for k in keys if k in sd]
        if not held:
            continue
        if len(held) != len(keys):
            missing = next(k for k in keys if k not in sd)
            raise ConversionError(f"{missing} is missing, but {held[0]} is there: cannot fuse {into}.{p}")
        out[f"{into}.{p}"] = torch.cat([sd[k] for k in keys], dim=0)
    return out


def fuse_groups(
    sd: Mapping[str, torch.Tensor], pattern: str, parts: Sequence[str], into: str
) -> tuple[StateDict, StateDict]:
    """(fused, rest): every group of separate projections in ``sd`` fused with :func:`fuse_rows`.

    ``pattern`` matches a whole key of one part: a regex with a named group ``part`` (one of
    ``parts``) followed by ``.weight`` or ``.bias``; the keys of a group share what precedes
    ``part``. ``into`` is the fused module's name, a ``match.expand`` template (``\\1`` for the
    pattern's groups). ``rest`` holds the keys ``pattern`` does not match, untouched.
    """
    compiled = re.compile(pattern)
    fused: StateDict = {}
    rest: StateDict = {}
    seen: set[tuple[str, str]] = set()
    for key, value in sd.items():
        match = compiled.match(key)
        if match is None:
            rest[key] = value
            continue
        group = key[: match.start("part")], key[match.end("part") + 1 :]  # (prefix, param)
        if group not in seen:  # fuse_rows names a part the group lacks
            seen.add(group)
            fused |= fuse_rows(sd, [group[0] + part for part in parts], match.expand(into), (group[1],))
    return fused, rest


def count_blocks(
    sd: Mapping[str, object],
    prefix: str,
    required: Sequence[str] = (),
    what: str = "block",
    origin: str | Callable[[str], str] = "",
) -> int:
    """The number n of blocks ``{prefix}{i}.*`` in ``sd`` (0 when no key is under ``prefix``).

    Checked before anything is sized from it: the indices are exactly 0 .. n-1, written without
    leading zeros, and every block holds each of the ``required`` sub-keys (e.g. ``"norm1.weight"``).
    Otherwise a :class:`ConversionError` names the offending key: a gap or an absurd index
    (``blocks.3000000.norm1.weight`` beside 12 blocks) is a truncated file or a stray key, never
    a reason to allocate more blocks. ``origin`` gives keys their names in the user's file for
    the messages: the prefix the caller stripped, or a function from ``sd``'s names to the file's.
    """
    name = origin if callable(origin) else (lambda key: f"{origin}{key}")
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    first_key: dict[int, str] = {}
    for key in sorted(sd):
        match = pattern.match(key)
        if match is None:
            continue
        digits = match.group(1)
        if len(digits) > _MAX_INDEX_DIGITS or (len(digits) > 1 and digits[0] == "0"):
            raise ConversionError(
                f"{name(key)[:120]!r}: {digits[:20]}{'...' if len(digits) > 20 else ''} is not a {what} "
                f"index (indices are 0, 1, 2, ... without leading zeros, at most {_MAX_INDEX_DIGITS} "
                "digits); remove the key"
            )
        first_key.setdefault(int(digits), key)
    n = len(first_key)
    beyond = [i for i in first_key if i >= n]
    if beyond:
        absent = min(set(range(n)) - set(first_key))
        worst = max(beyond)
        raise ConversionError(
            f"{name(first_key[worst])!r} asks for {what} {worst}, but {what} {absent} "
            f"({name(f'{prefix}{absent}.')}*) is absent: {what}s must be numbered 0 .. n-1 without gaps. "
            "The file is truncated or holds a stray key; remove the key or restore the missing ones"
        )
    for i in range(n):
        for sub in required:
            if f"{prefix}{i}.{sub}" not in sd:
                raise ConversionError(
                    f"{name(f'{prefix}{i}.{sub}')} is missing: every {what} of this layout has {sub} "
                    f"({n} {what}s found, e.g. {name(first_key[i])})"
                )
    return n


def build_loaded(factory: Callable[[], M], state: Mapping[str, torch.Tensor], source: str) -> M:
    """``factory()`` holding the tensors of ``state``, checked on the meta device first.

    The module is built once on the meta device (no memory), every key and shape of ``state`` is
    compared with it (:func:`vlmzoo.weights.format.check_state_dict`: a :class:`CheckpointError`
    naming missing, unexpected and mis-shaped keys), and only a state dict that fits is given a
    module — built with its parameters still on the meta device, which then *adopt* the tensors
    of ``state`` (:func:`vlmzoo.weights.materialize.adopt`: no random initialisation, no copy, the
    tensors' own dtypes and devices). A converted model therefore shares memory with the tensors
    it was given wherever the layout did not change (a peer model's, or a memory-mapped file's);
    ``copy.deepcopy`` it for independent weights. ``factory`` builds the module from an already
    validated config.
    """
    with torch.device("meta"):
        skeleton = factory()
    check_state_dict(skeleton, state, source)
    del skeleton
    with parameters_placed("meta"):  # buffers are made for real: non-persistent ones are not in state
        module = factory()
    ties = tied_names(module)
    for name, tensor in state.items():
        adopt(module, name, tensor)
    retie(module, ties)
    left = meta_tensors(module)
    if left:
        raise ConversionError(f"{type(module).__name__}: {left[:5]} were not filled from {source}")
    return module
