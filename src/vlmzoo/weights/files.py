"""Writing one file atomically: the only atomic file writer of vlmzoo.

The bytes go to a hidden temporary file in the target's own directory (same file system), are
flushed to disk, and replace the target with ``os.replace``: a reader sees the old file or the new
one, never a torn one, and a crash leaves at most a ``.name.*.tmp`` file that the next write of the
same name removes. Whole directories are replaced with :mod:`vlmzoo.weights.swap`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
