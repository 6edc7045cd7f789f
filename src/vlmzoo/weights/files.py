"""Writing one file atomically (the only atomic file writer of vlmzoo), and reading JSON safely.

The bytes go to a hidden temporary file in the target's own directory (same file system), are
flushed to disk, and replace the target with ``os.replace``: a reader sees the old file or the new
one, never a torn one, and a crash leaves at most a ``.name.*.tmp`` file that the next write of the
same name removes. Whole directories are replaced with :mod:`vlmzoo.weights.swap`.

:func:`read_json` reads every JSON file vlmzoo opens (a checkpoint's ``config.json``, a shard
index, a trainer state): bounded in size, UTF-8, parsed by :func:`vlmzoo.config.parse_json`,
and any problem a :class:`CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmzoo.config import parse_json
from vlmzoo.errors import CheckpointError

# vlmzoo's JSON files are small: a config is a few kB, the index of a 70B model about 100 kB.
MAX_JSON_BYTES = 64 * 2**20


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it over ``path``; returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, document: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``document`` as JSON (sorted keys, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(document, indent=indent, sort_keys=True) + "\n")


def read_json(path: Path, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed JSON document in ``path``; ``what`` names the file's role in messages (e.g.
    ``"checkpoint config"``, ``"trainer state"``).

    Refused, each with a :class:`CheckpointError` naming the file: a missing file or one that is
    not a regular file (a FIFO is never opened for blocking reads), more than ``max_bytes``,
    text that is not UTF-8 (a leading byte-order mark is allowed), and whatever
    :func:`~vlmzoo.config.parse_json` refuses (malformed JSON, integers of thousands of digits,
    deep nesting, duplicate keys).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found ({what})") from None
    except OSError as e:
        raise CheckpointError(f"{path} ({what}) cannot be opened: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path} ({what}) is not a regular file")
        try:
            data = f.read(max_bytes + 1)  # bounded even where the size on disk lies (/proc)
        except OSError as e:
            raise CheckpointError(f"{path} ({what}) cannot be read: {e.strerror}") from e
    if len(data) > max_bytes:
        raise CheckpointError(
            f"{path} ({what}) is larger than {max_bytes // 2**20} MiB, far more than vlmzoo ever writes "
            "there; refusing to parse it"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({what}): not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start})"
        ) from None
    try:
        return parse_json(text)
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({what}): {e}") from e
