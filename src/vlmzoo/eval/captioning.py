"""Caption metrics, BLEU-1..4 and CIDEr-D, computed by pycocoevalcap (the COCO caption
evaluation code: Papineni et al. 2002 for BLEU, Vedantam et al. 2015 for CIDEr; the IDF of
CIDEr-D comes from the references of the captions scored together, so score a whole split at once).

Captions are tokenised first. ``tokenizer="ptb"`` runs pycocoevalcap's own Stanford PTB tokenizer
(Java must be installed), which is what published COCO numbers use. The default ``"simple"`` needs
no Java: lower case, words and punctuation split apart, and the PTB tokenizer's punctuation marks
dropped; it gives the same tokens on plain captions and differs on contractions and some
symbols ("don't" is one token here, "do n't" there), so report which one you used.

Install with ``pip install "vlmzoo[eval]"`` (pycocoevalcap).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from vlmzoo.errors import InputError, MissingDependencyError

__all__ = ["caption_metrics", "tokenize_caption"]

# pycocoevalcap's tokenizer/ptbtokenizer.py removes these tokens after tokenising.
_PTB_PUNCTUATION = frozenset(("''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"))
_TOKEN = re.compile(r"\.\.\.|--|''|``|\w+(?:'\w+)*|[^\w\s]")


def tokenize_caption(text: str) -> str:
    """The ``"simple"`` tokenisation: ``"A dog, running!"`` -> ``"a dog running"``."""
    tokens = _TOKEN.findall(text.lower())
    return " ".join(t for t in tokens if t not in _PTB_PUNCTUATION)


def _scorers():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as error:
        raise MissingDependencyError(
            'caption metrics need pycocoevalcap: pip install "vlmzoo[eval]" (or pip install pycocoevalcap)'
        ) from error
    return Bleu, Cider


def _ptb(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    try:
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    except FileNotFoundError as error:
        raise MissingDependencyError(
            'tokenizer="ptb" runs the Stanford PTB tokenizer in Java, which is not installed; '
            'install a Java runtime or use tokenizer="simple"'
        ) from error


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenizer: Literal["simple", "ptb"] = "simple",
) -> dict[str, float]:
    """``{"BLEU-1".."BLEU-4", "CIDEr"}`` of one caption per image against its reference captions
    (COCO has 5 per image). BLEU is corpus-level, in [0, 1]; CIDEr-D is the mean over images
    (x10 in its definition, so values near 1 are typical of good models)."""
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} captions but {len(references)} reference lists")
    if not predictions:
        raise InputError("caption_metrics needs at least one caption")
    if tokenizer not in ("simple", "ptb"):
        raise InputError(f"tokenizer={tokenizer!r} must be 'simple' or 'ptb'")
    empty = [i for i, refs in enumerate(references) if isinstance(refs, str) or not refs]
    if empty:
        raise InputError(f"references must be lists of captions; entries {empty[:5]} are empty or a string")
    Bleu, Cider = _scorers()
    res = {i: [p] for i, p in enumerate(predictions)}
    gts = {i: list(refs) for i, refs in enumerate(references)}
    if tokenizer == "ptb":
        res, gts = _ptb(res), _ptb(gts)
    else:
        res = {i: [tokenize_caption(c) for c in v] for i, v in res.items()}
        gts = {i: [tokenize_caption(c) for c in v] for i, v in gts.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"BLEU-{n}": float(b) for n, b in enumerate(bleu, 1)}, "CIDEr": float(cider)}
