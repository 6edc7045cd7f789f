"""Types of flag values: argparse calls one on each value given, and a value that cannot work is refused
with one line naming the flag (exit code 2) before anything runs.

Each raises :class:`argparse.ArgumentTypeError`, whose text argparse prefixes with the flag
(``argument --steps: must be at least 1, got 0``). They check the form of a value and what the
file system already says about a path; whatever depends on the run (a GPU, the registry, the
contents of a checkpoint) is checked by the recipe.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed accepts


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A count: a whole number >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate): NaN and inf would pass a ``<= 0`` check."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a sampling temperature, where 0 means greedy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: any whole number torch can seed with."""
    value = _integer(text)
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from -2**63 to 2**63-1, got {value}")
    return value


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether a GPU is visible is checked when the run starts)."""
    if text == "auto":
        return text
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device vlmzoo trains on; use cpu, cuda, cuda:N or auto"
        )
    return text


FLOAT_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def float_dtype(text: str) -> str:
    """A float dtype a checkpoint is stored in: float32/fp32, bfloat16/bf16, float16/fp16 (canonical name)."""
    if text not in FLOAT_DTYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a float dtype; use float32, bf16 or fp16")
    return FLOAT_DTYPES[text]


def revision(text: str) -> str:
    """A Hub revision: a branch, tag or commit hash (no blanks)."""
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a branch, tag or commit")
    return text


def names(text: str) -> list[str]:
    """Comma-separated names (blanks around them and empty items are dropped; the recipe refuses an
    empty list and unknown names, with suggestions)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _file_on_the_way(path: Path) -> Path | None:
    """The first existing part of ``path`` above it that is not a folder (nothing can be created under it)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def folder(text: str) -> str:
    """A folder to write into (created if missing): not a file, and no file on the way to it."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; choose another path")
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(
            f"{text} cannot be created: {blocker} is a file, not a folder; choose another path"
        )
    return text


def existing_folder(text: str) -> str:
    """A folder to read (a checkpoint): it must exist."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist; give the folder of a vlmzoo checkpoint")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder that holds config.json")
    return text


def output_file(text: str) -> str:
    """A file to write: its folder must exist (it is not created), and it must not be a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file, e.g. {path / 'zoo.md'}")
    parent = path.absolute().parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"the folder {parent} {what}; create it or write elsewhere")
    return text
