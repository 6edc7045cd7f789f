"""The exceptions vlmzoo raises.

Every error subclasses both :class:`VlmzooError` (catch everything from the library) and the
built-in type a caller would naturally expect (``ValueError`` for bad values, ``LookupError``
for unknown names), so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class VlmzooError(Exception):
    """Base class of all vlmzoo errors."""


class ConfigError(VlmzooError, ValueError):
    """A config field is missing, of the wrong type, or out of range."""


class InputError(VlmzooError, ValueError):
    """A tensor handed to a model has the wrong shape, dtype, channel count or size."""


class UnknownModelError(VlmzooError, LookupError):
    """A name is not in the registry; the message lists the closest registered names."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class CheckpointError(VlmzooError, ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped keys, or a bad file."""


class ConversionError(VlmzooError, ValueError):
    """A peer model (transformers, timm, original release) cannot be converted faithfully."""


class InsufficientMemoryError(VlmzooError, MemoryError):
    """A model would not fit in the memory its device has free; refused before anything was allocated.

    The message gives the bytes needed (in the requested dtype) and free, and the ways out: a
    smaller dtype, another device, or freeing memory.
    """


class MissingDependencyError(VlmzooError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


class RunFolderError(CheckpointError):
    """A run folder cannot be used as asked, so the job refused to start (nothing ran, nothing was deleted).

    It holds a run and neither resume nor overwrite was asked, it holds nothing to resume, it is the
    working directory, or it holds files vlmzoo did not write. A :class:`CheckpointError`, so code
    that catches those keeps working; the command line reports it as a usage error (exit code 2).
    """


class RunsFailedError(VlmzooError, RuntimeError):
    """Runs of a grid failed after the others finished (the command line exits with code 1).

    Each failed run's error and traceback are in its ``result.json``; the finished runs and the
    tables of their results are kept, and running the same command again retries only the failed
    runs (from their last checkpoint, where they reached one).
    """


def require(condition: torch.Tensor, explain: Callable[[], str], traced: str) -> None:
    """Raise :class:`InputError` unless the 0-dim bool tensor ``condition`` holds.

    For checks that read tensor *values* (token ranges, placeholder counts, NaN pixels). Eagerly,
    the condition is read on the host and ``explain()`` words the error with the values. While
    ``torch.compile`` traces, reading a value would break the graph, so the check becomes an
    assertion inside it (``torch._assert_async``: a RuntimeError carrying ``traced`` on the CPU, a
    device-side assert on CUDA) — never a silently skipped check.
    """
    import torch

    if condition.device.type == "meta":  # shape propagation (FLOP counting): no values to check
        return
    if torch.compiler.is_compiling():
        torch._assert_async(condition, traced)
    elif not bool(condition):
        raise InputError(explain())
