"""Tokenizers behind one small interface: a sentencepiece model trained on the fly, or any HF one.

The demo cannot download a tokenizer, so :func:`train_sentencepiece` trains a small
sentencepiece model on the data set's own text at start. The model file is cached on disk under
a key derived from the settings and the training text, so a second run reuses it. The special
tokens a VLM needs are fixed: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, ``<image>`` 4.

:class:`Tokenizer` is the interface the rest of vlmzoo uses (``encode``, ``decode``, the special
ids); :class:`HFTokenizer` adapts a transformers tokenizer to it. :class:`SentencePieceTokenizer`
also has the part of transformers' tokenizer interface a :class:`~vlmzoo.processing.processor.Processor`
calls (``__call__``, ``get_vocab``, the ``*_token_id`` ids, ``all_special_tokens``,
``save_pretrained``), so the demo's model answers through ``vlmzoo.chat`` like any other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

IMAGE_TOKEN = "<image>"
SENTENCEPIECE_FILE = "sentencepiece.model"  # the model file save_pretrained writes


class Tokenizer(Protocol):
    """What vlmzoo needs from a tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    image_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model with ``<image>`` as a user-defined symbol (never split)."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
        self.image_id = self.sp.piece_to_id(IMAGE_TOKEN)
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added); ``<image>`` becomes ``image_id``."""
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``, special tokens (pad, bos, eos, image) dropped.

        ``skip_special_tokens`` is accepted for transformers' signature; they are always dropped
        (the demo's format has no stop string made of special tokens)."""
        special = {self.pad_id, self.bos_id, self.eos_id, self.image_id}
        return self.sp.decode([int(i) for i in ids if int(i) not in special])

    # --- the part of transformers' tokenizer interface a Processor uses ---------------------
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """``{"input_ids": ids}`` of ``text``, BOS first with ``add_special_tokens``."""
        ids = self.encode(text)
        return {"input_ids": [self.bos_id, *ids] if add_special_tokens else ids}

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int:
        return self.bos_id

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    @property
    def pad_token_id(self) -> int:
        return self.pad_id

    @property
    def all_special_tokens(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in (self.pad_id, self.bos_id, self.eos_id, self.image_id)]

    def get_vocab(self) -> dict[str, int]:
        """Piece -> id for the whole vocabulary (``<image>`` included)."""
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str]:
        """Copy the model file to ``directory/sentencepiece.model`` (read back by
        :meth:`Processor.from_pretrained <vlmzoo.processing.processor.Processor.from_pretrained>`)."""
        target = Path(directory) / SENTENCEPIECE_FILE
        if target.resolve() != self.model_file.resolve():
            shutil.copyfile(self.model_file, target)
        return (str(target),)


class HFTokenizer:
    """Adapts a transformers tokenizer; ``image_token`` must be in its vocabulary (added if missing)."""

    def __init__(self, tokenizer, image_token: str = IMAGE_TOKEN):
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(image_token)
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) != self.image_id], skip_special_tokens=True)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLMZOO_CACHE", Path.home() / ".cache" / "vlmzoo"))


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int = 256,
    model_type: str = "bpe",
    cache_dir: str | os.PathLike | None = None,
    user_defined_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Train (or reuse from the cache) a sentencepiece model on ``texts``.

    ``user_defined_symbols`` become single pieces wherever they occur (``<image>`` always is).
    The cache key hashes the settings and the text, so changing either trains a new model. The
    model file is written atomically (trained into a temporary directory, then renamed).
    """
    import sentencepiece as spm

    corpus = "\n".join(t.strip() for t in texts if t.strip())
    if not corpus:
        raise ValueError("cannot train a tokenizer on empty text")
    symbols = [IMAGE_TOKEN, *user_defined_symbols]
    settings = f"{vocab_size}|{model_type}|" + (f"{symbols}|" if user_defined_symbols else "")
    key = hashlib.sha256(f"{settings}{corpus}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model_file = cache / "tokenizers" / f"spm-{model_type}-{vocab_size}-{key}.model"
    if not model_file.is_file():
        model_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=model_file.parent) as tmp:
            (Path(tmp) / "corpus.txt").write_text(corpus)
            spm.SentencePieceTrainer.train(
                input=str(Path(tmp) / "corpus.txt"),
                model_prefix=str(Path(tmp) / "spm"),
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                unk_id=1,
                bos_id=2,
                eos_id=3,
                user_defined_symbols=symbols,
                hard_vocab_limit=False,  # small corpora may not support the full size
                character_coverage=1.0,
                minloglevel=2,
            )
            os.replace(Path(tmp) / "spm.model", model_file)
    return SentencePieceTokenizer(model_file)
