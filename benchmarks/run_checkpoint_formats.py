"""Sharded run checkpoints without pickle: vlmzoo's rank files vs DCP's safetensors storage.

Run under torchrun (2 gloo processes on the CPU by default)::

    torchrun --standalone --nproc_per_node 2 benchmarks/run_checkpoint_formats.py [--width 1024]

An FSDP2-sharded MLP (``--layers`` x ``--width``^2 weights, AdamW state after one step) is saved
and loaded three ways, ``--repeats`` times each (the median is printed, in seconds, with the
bytes on disk):

- ``rank files``: :mod:`vlmzoo.train.shards` (one safetensors file per rank, its shards with their
  offsets as JSON in the header; read back by box intersection), with and without the SHA-256
  check of every file;
- ``dcp hf``: ``torch.distributed.checkpoint`` with ``HuggingFaceStorageWriter(save_distributed=
  True)`` / ``HuggingFaceStorageReader`` (safetensors per rank, offsets as JSON in the header);
- ``dcp default``: ``FileSystemWriter`` / ``FileSystemReader``, whose ``.metadata`` is a pickle
  (what vlmzoo wrote before; for reference only).

Rank 0 then reads every rank's files into full tensors in one process (as a conversion does)
with ``pickle.load``, ``pickle.loads`` and the unpickler of torch's collectives replaced by
functions that raise; the last column says whether the reader got through ("no": it unpickles a
file). Under a process group DCP's load also exchanges its plans between ranks by pickling them
(``all_gather_object``): not a file, but not checked here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.distributed_c10d as c10d
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from vlmzoo.train.shards import ShardReader, rank_file_name, write_rank_file


def sharded_state(width: int, layers: int, world_size: int) -> dict[str, torch.Tensor]:
    """Model + AdamW tensors of an FSDP2-sharded MLP after one step, flat by name."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    flat = {f"model/{k}": v for k, v in get_model_state_dict(model).items()}
    for name, fields in get_optimizer_state_dict(model, optimizer)["state"].items():
        flat.update({f"optimizer/{name}/{field}": t for field, t in fields.items()})
    return flat


def zeros_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        out[k] = v.detach().clone()
        (out[k].to_local() if hasattr(out[k], "to_local") else out[k]).zero_()
    return out


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    return all(torch.equal(local(a[k]), local(b[k])) for k in a)


@contextlib.contextmanager
def no_unpickling():
    def refuse(*args, **kwargs):
        raise RuntimeError("unpickling attempted")

    class Refused(pickle.Unpickler):
        def load(self):
            raise RuntimeError("unpickling attempted")

    saved = pickle.load, pickle.loads, c10d._unpickler
    pickle.load, pickle.loads, c10d._unpickler = refuse, refuse, Refused
    try:
        yield
    finally:
        pickle.load, pickle.loads, c10d._unpickler = saved


def rank_files_save(state, directory: Path) -> None:
    rank, size = dist.get_rank(), dist.get_world_size()
    write_rank_file(directory / rank_file_name(rank, size), state, rank, size, {}, {})


def rank_files_load(state, directory: Path, verify: bool) -> None:
    size = dist.get_world_size()
    files = [directory / rank_file_name(r, size) for r in range(size)]
    with ShardReader(files, size, verify=verify) as reader, torch.no_grad():
        for key, target in state.items():
            reader.fill(key, target)


def rank_files_load_all(full, directory: Path) -> None:
    size = dist.get_world_size()
    files = [directory / rank_file_name(r, size) for r in range(size)]
    with ShardReader(files, size, verify=True) as reader, torch.no_grad():
        for key, target in full.items():
            reader.fill(key, target)


def dcp_hf_save(state, directory: Path) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))


def dcp_hf_load(state, directory: Path) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(directory)))


def dcp_hf_load_all(full, directory: Path) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(full, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=True)


def dcp_default_save(state, directory: Path) -> None:
    dcp.save(state, checkpoint_id=str(directory))


def dcp_default_load(state, directory: Path) -> None:
    dcp.load(state, checkpoint_id=str(directory))


def dcp_default_load_all(full, directory: Path) -> None:
    dcp.load(full, checkpoint_id=str(directory), no_dist=True)


def measure(name, save, load, load_all, state, root: Path, repeats: int) -> None:
    rank = dist.get_rank()
    saves, loads, unpickle_free, exact = [], [], True, True
    for i in range(repeats):
        directory = root / f"{name.replace(' ', '-')}-{i}"
        if rank == 0:
            directory.mkdir(parents=True)
        dist.barrier()
        start = time.perf_counter()
        save(state, directory)
        dist.barrier()
        saves.append(time.perf_counter() - start)
        target = zeros_like(state)
        dist.barrier()
        start = time.perf_counter()
        load(target, directory)
        dist.barrier()
        loads.append(time.perf_counter() - start)
        exact &= equal(state, target)
        if i == 0 and rank == 0:
            # One process reads every rank's files into full tensors (as a conversion does), with
            # unpickling refused; no collectives, so a failure cannot leave another rank waiting.
            full = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
            try:
                with no_unpickling():
                    load_all(full, directory)
            except BaseException:  # DCP's CheckpointException is a BaseException
                unpickle_free = False
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        dist.barrier()
        if rank == 0 and i < repeats - 1:
            shutil.rmtree(directory)
    if rank == 0:
        print(
            f"| {name} | {statistics.median(saves):.3f} | {statistics.median(loads):.3f} | "
            f"{size / 2**20:.1f} | {'yes' if exact else 'NO'} | {'yes' if unpickle_free else 'no'} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    state = sharded_state(args.width, args.layers, dist.get_world_size())
    values = sum(v.numel() for v in state.values())
    root = Path(tempfile.mkdtemp(prefix="vlmzoo-ckpt-bench-")) if dist.get_rank() == 0 else None
    holder = [str(root)]
    dist.broadcast_object_list(holder, src=0)  # the benchmark's own setup, not a checkpoint reader
    root = Path(holder[0])
    if dist.get_rank() == 0:
        print(
            f"{dist.get_world_size()} ranks (gloo, CPU), {values / 1e6:.1f}M values (model + AdamW), "
            f"median of {args.repeats}\n"
        )
        print("| format | save s | load s | MiB on disk | bit-exact | reads with unpickling refused |")
        print("|---|---|---|---|---|---|")
    formats = [
        (
            "rank files (verify)",
            rank_files_save,
            lambda s, d: rank_files_load(s, d, True),
            rank_files_load_all,
        ),
        (
            "rank files (no verify)",
            rank_files_save,
            lambda s, d: rank_files_load(s, d, False),
            rank_files_load_all,
        ),
        ("dcp hf", dcp_hf_save, dcp_hf_load, dcp_hf_load_all),
        ("dcp default (pickle)", dcp_default_save, dcp_default_load, dcp_default_load_all),
    ]
    for name, save, load, load_all in formats:
        measure(name, save, load, load_all, state, root, args.repeats)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
