"""Tensors spread over ranks, stored as one safetensors file per rank and read back in any layout.

Each rank writes the part of every tensor it holds (a DTensor's ``to_local()`` shard; a plain,
replicated tensor only on rank 0) into ``rank-0000r-of-0000W.safetensors``. The file's header
metadata records, as JSON, the global shape and offset of every shard whose tensor is not whole
(``vlmzoo_chunks``), the rank, the world size, and the SHA-256 of its tensors
(:func:`vlmzoo.weights.format.tensors_sha256`). Nothing in these files is code: a header is
JSON, the data is raw tensor bytes.

Reading builds a table of every stored chunk from the headers alone, checks it (every chunk
inside its tensor, no two chunks overlapping, together covering the whole tensor), then fills
any target — a rank's own shard, or a full tensor when shards are merged — from the chunks that
overlap it, so a checkpoint written by FSDP on W ranks is read by DDP on W ranks, and merged
into one full model by one process.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

# DCP's own helper for where a DTensor's local shard sits in the global tensor (private in torch).
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from vlmzoo.config import parse_json
from vlmzoo.errors import CheckpointError
from vlmzoo.weights.files import atomic_write
from vlmzoo.weights.format import VERIFY_ENV, tensors_sha256, verify_enabled

RANK_FILE = re.compile(r"rank-(\d{5})-of-(\d{5})\.safetensors")
LOCAL_PREFIX = "local/"  # tensors of one rank alone, outside the chunk table


def rank_file_name(rank: int, world_size: int) -> str:
    return f"rank-{rank:05d}-of-{world_size:05d}.safetensors"


@dataclass(frozen=True)
class Local:
    """The part of a tensor this process holds: ``data`` at ``offset`` in a tensor of ``shape``."""

    data: torch.Tensor
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    replicated: bool  # every rank holds the same data (then only rank 0 stores it)


def local_part(tensor: torch.Tensor) -> Local:
    """This rank's part of ``tensor``: a DTensor's local shard with its global offset, or a plain
    tensor as a whole (plain tensors are replicas: DDP's parameters, buffers, step counters)."""
    if isinstance(tensor, DTensor):
        _, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        replicated = all(p.is_replicate() for p in tensor.placements)
        return Local(tensor.to_local(), tuple(offset), tuple(tensor.shape), replicated)
    return Local(tensor, (0,) * tensor.ndim, tuple(tensor.shape), True)


def write_rank_file(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    rank: int,
    world_size: int,
    metadata: Mapping[str, str],
    rank_local: Mapping[str, torch.Tensor],
) -> None:
    """Write this rank's parts of ``tensors``, its own ``rank_local`` tensors (stored whole, under
    ``local/``: a generator state differs from rank to rank) and ``metadata`` to ``path``
    (atomically, synced to disk)."""
    from safetensors.torch import save_file

    stored: dict[str, torch.Tensor] = {
        LOCAL_PREFIX + k: v.detach().cpu().contiguous() for k, v in rank_local.items()
    }
    chunks: dict[str, dict[str, list[int]]] = {}
    storages: set[int] = set()
    for key, tensor in tensors.items():
        part = local_part(tensor.detach())
        if part.replicated and rank != 0:
            continue
        data = part.data.cpu().contiguous()
        storage = data.untyped_storage().data_ptr()
        if data.numel() and storage in storages:  # safetensors refuses tensors sharing memory
            data = data.clone()
        storages.add(storage)
        stored[key] = data
        if part.shape != tuple(data.shape):
            chunks[key] = {"offset": list(part.offset), "shape": list(part.shape)}
    header = {
        **metadata,
        "vlmzoo_rank": str(rank),
        "vlmzoo_world_size": str(world_size),
        "vlmzoo_chunks": json.dumps(chunks, sort_keys=True),
        "vlmzoo_tensors_sha256": tensors_sha256(stored),
    }
    atomic_write(path, lambda tmp: save_file(stored, tmp, metadata=header))


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: in the file ``path``, of ``size`` at ``offset`` in the tensor."""

    path: Path
    offset: tuple[int, ...]
    size: tuple[int, ...]


@dataclass
class Stored:
    """A tensor of the checkpoint: its global shape, dtype and chunks."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: list[Chunk]


class ShardReader:
    """The chunk table of a set of rank files (headers only), and :meth:`fill` to read targets.

    Use as a context manager: files are opened (memory-mapped) once and closed at the end.
    """

    def __init__(self, files: list[Path], world_size: int, verify: bool | None = None):
        self.files = files
        self.tensors: dict[str, Stored] = {}
        self.local: dict[Path, set[str]] = {}
        self.metadata: dict[Path, dict[str, str]] = {}
        self._verify = verify_enabled(verify)
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, object] = {}
        for rank, path in enumerate(files):
            self._read_header(path, rank, world_size)
        for key, stored in self.tensors.items():
            _check_tiling(key, stored)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _read_header(self, path: Path, rank: int, world_size: int) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (no __iter__)
                shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
                # The torch dtype from a zero-element read (a 0-dim tensor is one value: read it).
                dtypes = {k: (s[:0] if shapes[k] else f.get_tensor(k)).dtype for k, s in slices.items()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupted?): {e}"
            ) from e
        if metadata.get("vlmzoo_rank") != str(rank) or metadata.get("vlmzoo_world_size") != str(world_size):
            raise CheckpointError(
                f"{path} does not say it is rank {rank} of {world_size} (its header says rank "
                f"{metadata.get('vlmzoo_rank')!r} of {metadata.get('vlmzoo_world_size')!r}): a file from "
                "another save; restore the checkpoint from an intact copy"
            )
        chunks = _parse_chunks(path, metadata.get("vlmzoo_chunks", "{}"))
        self.local[path] = {k.removeprefix(LOCAL_PREFIX) for k in shapes if k.startswith(LOCAL_PREFIX)}
        for key, size in shapes.items():
            if key.startswith(LOCAL_PREFIX):
                continue
            offset, shape = chunks.get(key, ((0,) * len(size), size))
            known = self.tensors.setdefault(key, Stored(shape, dtypes[key], []))
            if known.shape != shape or known.dtype != dtypes[key]:
                raise CheckpointError(
                    f"{path}: {key} is stored as {dtypes[key]} {list(shape)} here but as {known.dtype} "
                    f"{list(known.shape)} in another rank file; the checkpoint is damaged"
                )
            known.chunks.append(Chunk(path, offset, size))
        if set(chunks) - set(shapes):
            raise CheckpointError(
                f"{path}: its header describes tensors it does not hold: {sorted(chunks)[:5]}"
            )
        self.metadata[path] = metadata

    def _open(self, path: Path):
        from safetensors import safe_open

        if path not in self._handles:
            if self._verify:
                self._check_digest(path)
            self._handles[path] = self._stack.enter_context(safe_open(path, framework="pt"))
        return self._handles[path]

    def _check_digest(self, path: Path) -> None:
        from safetensors import safe_open

        expected = self.metadata[path].get("vlmzoo_tensors_sha256")
        with safe_open(path, framework="pt") as f:
            actual = tensors_sha256(_LazyTensors(f))  # one tensor in memory at a time
        if actual != expected:
            raise CheckpointError(
                f"{path} is corrupted: its tensors' SHA-256 is {actual[:12]}..., the save recorded "
                f"{str(expected)[:12]}... (a flipped bit on disk, a truncated copy or an edit); restore the "
                f"checkpoint from an intact copy (or skip this check with {VERIFY_ENV}=0)"
            )

    def keys(self, prefix: str) -> set[str]:
        return {k for k in self.tensors if k.startswith(prefix)}

    def read_local(self, rank: int) -> dict[str, torch.Tensor]:
        """The ``rank_local`` tensors that rank ``rank`` wrote."""
        path = self.files[rank]
        return {k: self._open(path).get_tensor(LOCAL_PREFIX + k) for k in sorted(self.local[path])}

    def check_fits(self, key: str, target: torch.Tensor) -> None:
        """:class:`CheckpointError` unless the stored ``key`` has ``target``'s (global) shape and dtype."""
        stored, part = self.tensors[key], local_part(target)
        if part.shape != stored.shape:
            raise CheckpointError(
                f"{key}: the checkpoint holds a tensor of shape {list(stored.shape)} but the model being "
                f"trained needs {list(part.shape)}; the checkpoint was written for another model or optimizer"
            )
        if stored.dtype != part.data.dtype:
            raise CheckpointError(
                f"{key}: stored as {stored.dtype} but the model being trained holds it as "
                f"{part.data.dtype}; resume in the precision the run was written in"
            )

    def fill(self, key: str, target: torch.Tensor) -> None:
        """Copy the stored ``key`` into ``target`` (a plain tensor, or a DTensor: its local shard);
        checked first with :meth:`check_fits`."""
        self.check_fits(key, target)
        stored, part = self.tensors[key], local_part(target)
        local = part.data
        for chunk in stored.chunks:
            box = _intersection(chunk.offset, chunk.size, part.offset, tuple(local.shape))
            if box is None:
                continue
            low, high = box
            f = self._open(chunk.path)
            if (
                tuple(low) == chunk.offset
                and tuple(h - lo for lo, h in zip(low, high, strict=True)) == chunk.size
            ):
                data = f.get_tensor(key)  # the whole chunk (also the only way to read a 0-dim tensor)
            else:
                rows = zip(low, high, chunk.offset, strict=True)
                data = f.get_slice(key)[tuple(slice(lo - o, h - o) for lo, h, o in rows)]
            region = tuple(slice(lo - o, h - o) for lo, h, o in zip(low, high, part.offset, strict=True))
            local[region].copy_(data.reshape(local[region].shape))


def _parse_chunks(path: Path, text: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    try:
        document = parse_json(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: the shard layout in its header is not valid JSON: {e}") from e
    chunks = {}
    for key, entry in document.items() if isinstance(document, dict) else [(None, None)]:
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(f), list) for f in ("offset", "shape"))
            and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in entry["offset"] + entry["shape"]
            )
        ):
            raise CheckpointError(f"{path}: the shard layout in its header is malformed (at {key!r})")
        chunks[key] = (tuple(entry["offset"]), tuple(entry["shape"]))
    return chunks


def _check_tiling(key: str, stored: Stored) -> None:
    """The chunks of ``key`` lie inside it, do not overlap and cover it: exactly one value each."""
    for chunk in stored.chunks:
        inside = len(chunk.offset) == len(chunk.size) == len(stored.shape) and all(
            o + s <= n for o, s, n in zip(chunk.offset, chunk.size, stored.shape, strict=True)
        )
        if not inside:
            raise CheckpointError(
                f"{chunk.path}: its part of {key} (offset {list(chunk.offset)}, size {list(chunk.size)}) lies "
                f"outside the tensor's shape {list(stored.shape)}; the checkpoint is damaged"
            )
    for i, a in enumerate(stored.chunks):
        for b in stored.chunks[i + 1 :]:
            if math.prod(a.size) and math.prod(b.size) and _intersection(a.offset, a.size, b.offset, b.size):
                raise CheckpointError(
                    f"{key} is stored twice over, in {a.path.name} and {b.path.name}; the checkpoint is damaged"
                )
    if sum(math.prod(c.size) for c in stored.chunks) != math.prod(stored.shape):
        raise CheckpointError(
            f"{key} is incomplete: its stored parts cover {sum(math.prod(c.size) for c in stored.chunks)} of "
            f"{math.prod(stored.shape)} values (a rank file is missing or from another save)"
        )


def _intersection(
    offset_a: tuple[int, ...], size_a: tuple[int, ...], offset_b: tuple[int, ...], size_b: tuple[int, ...]
) -> tuple[list[int], list[int]] | None:
    """The overlap of two boxes as (low, high) corners, or None if they do not overlap."""
    low = [max(a, b) for a, b in zip(offset_a, offset_b, strict=True)]
    high = [min(a + sa, b + sb) for a, sa, b, sb in zip(offset_a, size_a, offset_b, size_b, strict=True)]
    if any(h <= lo for lo, h in zip(low, high, strict=True)):
        return None
    return low, high  # for 0-dim tensors ([], []): the one value overlaps itself


class _LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of an open safetensors file, each read when asked for."""

    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
