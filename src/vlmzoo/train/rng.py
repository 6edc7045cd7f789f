"""The random number generators of one process, captured and restored for exact resume.

A run's data does not depend on them (the batch of step ``s`` is a pure function of the seed and
``s``), but dropout, drop-path and anything a ``loss_fn`` samples draw from the global generators:
torch's CPU generator, the generator of the training GPU, Python's :mod:`random` and numpy's legacy
global generator. A checkpoint stores all of them, so step ``k + 1`` of a resumed run draws the
same numbers as step ``k + 1`` of the uninterrupted one.

The state is split by kind: torch generators are byte tensors (stored in safetensors), Python's
and numpy's Mersenne Twisters are lists of integers (stored as JSON). Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from typing import Any

import torch

from vlmzoo.errors import CheckpointError

TORCH_CPU_KEY = "rng/torch_cpu"
TORCH_CUDA_KEY = "rng/torch_cuda"


def capture_rng(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, document)``: torch generator states (uint8 tensors: the CPU's, and the training
    GPU's when ``device`` is one) and a JSON-ready document holding Python's and (when numpy is
    imported) numpy's global generator states."""
    tensors = {TORCH_CPU_KEY: torch.get_rng_state()}
    if device.type == "cuda":  # only this process's GPU: touching the others would create contexts
        tensors[TORCH_CUDA_KEY] = torch.cuda.get_rng_state(device)
    version, mt, gauss = random.getstate()
    document: dict[str, Any] = {"python": {"version": version, "state": list(mt), "gauss_next": gauss}}
    numpy = sys.modules.get("numpy")  # never imported: nothing can have drawn from it
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        document["numpy"] = {
            "name": name,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return tensors, document


def restore_rng(
    tensors: dict[str, torch.Tensor], document: dict[str, Any], device: torch.device, source: str
) -> None:
    """Put back what :func:`capture_rng` returned; :class:`CheckpointError` (naming ``source``) if
    the stored state is malformed. A GPU state is restored only when training runs on a GPU."""
    try:
        cpu = tensors[TORCH_CPU_KEY]
        python = document["python"]
        python_state = (int(python["version"]), tuple(int(v) for v in python["state"]), python["gauss_next"])
        if python_state[2] is not None:
            python_state = (*python_state[:2], float(python_state[2]))
        numpy_state = document.get("numpy")
        if numpy_state is not None:
            numpy_state = (
                str(numpy_state["name"]),
                [int(k) for k in numpy_state["keys"]],
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["cached_gaussian"]),
            )
        torch.set_rng_state(cpu)
        if device.type == "cuda" and TORCH_CUDA_KEY in tensors:
            torch.cuda.set_rng_state(tensors[TORCH_CUDA_KEY], device)
        random.setstate(python_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: the stored random generator state is malformed ({type(e).__name__}: {e}); the "
            "checkpoint is damaged — resume from an intact copy or start over with --overwrite"
        ) from e
    if numpy_state is not None:
        import numpy

        try:
            numpy.random.set_state(numpy_state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: the stored numpy generator state is malformed: {e}") from e


@contextlib.contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Run a block without moving any global generator (evaluation must not change training).

    Evaluating every ``eval_every`` steps then leaves the training run bit-identical to one that
    never evaluates, which is what lets a resumed run change ``eval_every``.
    """
    devices = [device] if device.type == "cuda" else []
    python = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)
