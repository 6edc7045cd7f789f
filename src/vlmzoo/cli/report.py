"""How a failure reaches the user: one line saying what is wrong and what to do, and an exit code.

- **2, usage**: the command cannot work as given, and nothing ran. A flag value of the wrong form
  (refused by argparse, :mod:`vlmzoo.cli.arguments`), a value out of range or parts that do not fit
  (:class:`~vlmzoo.errors.ConfigError`), an unknown name (:class:`~vlmzoo.errors.UnknownModelError`),
  bad input (:class:`~vlmzoo.errors.InputError`), a run folder that cannot be used as asked
  (:class:`~vlmzoo.errors.RunFolderError`).
- **1, run time**: the command started and something failed it. A file that cannot be read or
  written (:class:`OSError`: a missing folder, no permission, a read-only file system, a full disk),
  a checkpoint that is corrupt, foreign or does not fit the run (:class:`~vlmzoo.errors.CheckpointError`),
  weights that cannot be converted, a loss that stopped being finite, memory running out. An I/O
  error inside safetensors' writer (a full disk while saving weights) is reported as the
  :class:`OSError` it wraps, naming the folder the command writes into.
- **130**: interrupted (Ctrl-C).

Anything else is a bug in vlmzoo and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

import torch
from safetensors import SafetensorError

from vlmzoo.errors import (
    ConfigError,
    InputError,
    RunFolderError,
    UnknownModelError,
    VlmzooError,
)

USAGE = 2
RUNTIME = 1
INTERRUPTED = 130

USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, InputError, UnknownModelError, RunFolderError)

# What to do about a file-system failure, by errno.
OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere (a run continues from its last "
    "checkpoint with --resume)",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "no permission; choose a folder you can write to, or change its permissions",
    errno.EPERM: "not permitted; choose a folder you can write to, or change its permissions",
    errno.ENOENT: "a folder on the way does not exist; create it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "that is a folder where a file was expected; choose another path",
    errno.EEXIST: "something is already there; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


@dataclass(frozen=True)
class Failure:
    """The exit code and the one line (without the ``vlmzoo: error:`` prefix) for a failure."""

    code: int
    line: str


class CommandLineError(Exception):
    """The command line itself is wrong (raised by the parser instead of printing usage and exiting)."""


def one_line(text: str) -> str:
    """Messages of nested errors can span lines; the report is one line."""
    return " ".join(text.split())


def explain(error: BaseException, output: str | None = None) -> Failure | None:
    """The report for ``error`` when it is the user's to fix; ``None`` for a bug (show the traceback).

    ``output`` is the path the command writes into (a run folder, a file): named for a failure that
    does not say which file it was writing (an I/O error inside safetensors' writer carries no path).
    """
    if isinstance(error, SafetensorError):
        code = re.search(r"I/O error: .*\(os error (\d+)\)", str(error))
        if code is not None:  # the disk or the file system failed the write
            number = int(code.group(1))
            error = OSError(number, os.strerror(number), output)
        else:
            return Failure(RUNTIME, one_line(str(error)))
    if isinstance(error, CommandLineError):
        return Failure(USAGE, one_line(str(error)))
    if isinstance(error, USAGE_ERRORS):
        return Failure(USAGE, one_line(str(error)))
    if isinstance(error, VlmzooError):
        return Failure(RUNTIME, one_line(str(error)))
    if isinstance(error, OSError):
        return Failure(RUNTIME, _os_line(error))
    if isinstance(error, FloatingPointError):  # the trainer's check of a non-finite loss
        return Failure(RUNTIME, one_line(str(error)))
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return Failure(
            RUNTIME,
            "out of memory: use a smaller --batch-size, --grad-checkpointing or --precision bf16 "
            f"({one_line(str(error))[:200]})",
        )
    return None


def _os_line(error: OSError) -> str:
    """``cannot write PATH: Read-only file system; <advice>``: the path, the reason and what to do."""
    reason = error.strerror or one_line(str(error))
    where = error.filename if error.filename is not None else None
    if error.filename2 is not None:
        where = f"{error.filename} -> {error.filename2}"
    advice = OS_ADVICE.get(error.errno)
    text = f"{where}: {reason}" if where is not None else reason
    return one_line(f"{text}; {advice}" if advice else text)
