"""Batches on several processes: every rank builds the same *global* batch and keeps its rows.

Keeping a contiguous ``1/world_size`` of the rows makes the data seen independent of the number
of processes; :func:`to_device` moves a nested batch in one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from vlmzoo.errors import InputError


def _map_tensors(batch: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor in nested dataclasses, mappings, lists and tuples."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: _map_tensors(getattr(batch, f.name), fn) for f in dataclasses.fields(batch)}
        return type(batch)(**fields)
    if isinstance(batch, Mapping):
        return type(batch)({k: _map_tensors(v, fn) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def batch_rows(batch: Any) -> int:
    """The number of rows (samples) of a batch: the common first dimension of all its tensors."""
    sizes: set[int] = set()
    _map_tensors(batch, lambda t: sizes.add(t.shape[0]) if t.ndim else None)
    if len(sizes) != 1:
        raise InputError(
            f"cannot split a batch whose tensors have first dimensions {sorted(sizes) or 'none'}: every "
            "tensor must have one row per sample (pass Trainer(shard_fn=...) for other layouts, e.g. a "
            "varying number of images per sample)"
        )
    return sizes.pop()


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """Rows ``[rank * B / W, (rank + 1) * B / W)`` of every tensor in ``batch`` (B rows, W processes).

    ``batch`` is a tensor or a dataclass / mapping / list / tuple of them (e.g. a
    :class:`~vlmzoo.processing.prompts.Batch` with one image per sample); every tensor must have B
    rows. Non-tensor leaves are kept as they are.
    """
    if world_size == 1:
        return batch
    rows = batch_rows(batch)
    if rows % world_size:
        raise InputError(
            f"a global batch of {rows} rows does not split evenly over {world_size} processes; make the "
            f"batch size a multiple of {world_size}"
        )
    per = rows // world_size
    return _map_tensors(batch, lambda t: t[rank * per : (rank + 1) * per] if t.ndim else t)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (no copy when already there)."""
    return _map_tensors(batch, lambda t: t.to(device))
