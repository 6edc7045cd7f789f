"""Training on several processes with ``torch.distributed``: DDP or FSDP2, launched by ``torchrun``.

vlmzoo never starts processes itself (DESIGN, "Where users outgrow one machine"): ``torchrun``
starts one process per device and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_world` reads them and joins the process group. What vlmzoo adds
is what only the model knows:

- :func:`apply_strategy` — ``"ddp"`` wraps the model in ``DistributedDataParallel``; ``"fsdp"``
  calls FSDP2's ``fully_shard`` on every unit of ``model.wrap_units()`` (encoder blocks, adapter
  layers, the decoder's own layers), then on the root, with an optional bf16
  ``MixedPrecisionPolicy`` (bf16 compute, fp32 gradient reduction).
- :func:`shard_batch` — every rank builds the same *global* batch and keeps its contiguous
  ``1/world_size`` of the rows, so the data seen is independent of the number of processes.
- :func:`save_sharded` / :func:`load_sharded` — model, optimizer and trainer state with
  ``torch.distributed.checkpoint`` (each rank writes its own shards), replaced atomically.
- :func:`convert_checkpoint` — one sharded checkpoint to a single vlmzoo directory
  (``config.json`` + ``model.safetensors``) that :func:`vlmzoo.load` opens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn

from vlmzoo.checkpoint import CONFIG_NAME, read_config, save
from vlmzoo.errors import CheckpointError, ConfigError, InputError

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BACKENDS: tuple[str, ...] = ("gloo", "nccl")
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

SHARDS_DIR = "dcp"  # the torch.distributed.checkpoint files inside a checkpoint directory
SHARDED_STATE_NAME = "trainer_state.json"
SHARDED_FORMAT = "vlmzoo-sharded"


@dataclass(frozen=True)
class World:
    """Where this process stands: its strategy, rank among ``world_size`` processes, and device.

    ``owns_group`` is True when :func:`init_world` created the process group (so :func:`teardown`
    destroys it); a group the caller created stays theirs.
    """

    strategy: str = "single"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes history and single-file outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all ranks (a copy; ``value`` itself on a single process)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when a GPU is visible, else cpu; refuses cuda without a GPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} requested but no CUDA GPU is visible (torch.cuda.is_available() is "
            "False); train with --device cpu (the gloo backend)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} is not supported for training; use cpu or cuda")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run: only fp32 and bf16 exist, and bf16 on CUDA needs a
    GPU with bf16 support (Ampere or newer); fp16 would also need a loss scaler, which vlmzoo omits."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision 'bf16' requested but {torch.cuda.get_device_name(device)} has no bf16 support; "
            "use --precision fp32"
        )


def init_world(
    strategy: str = "single", device: str | torch.device | None = "cpu", backend: str | None = None
) -> World:
    """Join the process group ``torchrun`` prepared (or stay alone for ``"single"``).

    ``backend`` defaults to nccl on CUDA and gloo on CPU. Each process uses GPU ``LOCAL_RANK``.
    Raises :class:`ConfigError` for an unknown strategy, a distributed strategy without torchrun's
    environment, a single-process strategy under torchrun, or a backend the device cannot use.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    device = resolve_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            "backend 'nccl' needs CUDA GPUs but training runs on the CPU; use the gloo backend on CPU"
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single":
        if world_size > 1:
            raise ConfigError(
                f"launched by torchrun with WORLD_SIZE={world_size} but --strategy single: every process "
                "would train the whole model alone; pass --strategy ddp or --strategy fsdp"
            )
        return World(device=device)
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--strategy {strategy} needs the process group that torchrun sets up (missing environment: "
            f"{', '.join(missing)}); launch with `torchrun --nproc_per_node N -m vlmzoo train --strategy "
            f"{strategy} ...` — vlmzoo does not start processes itself"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    elif dist.get_backend() != backend:
        raise ConfigError(f"the process group already uses backend {dist.get_backend()!r}, not {backend!r}")
    return World(strategy, rank, local_rank, world_size, device, owns)


def teardown(world: World) -> None:
    """Destroy the process group if :func:`init_world` created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# --- strategies -----------------------------------------------------------------------------------
def apply_strategy(
    model: nn.Module,
    world: World,
    bf16: bool = False,
    find_unused_parameters: bool = False,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Move ``model`` to the world's device and wrap it; returns the module to run forward on.

    - single: ``model`` itself.
    - ddp: ``DistributedDataParallel(model)``. Frozen parameters (``requires_grad=False``) are not
      synchronised at all, so a frozen encoder needs no ``find_unused_parameters``; pass it only if
      some *trainable* parameter gets no gradient in a step.
    - fsdp: ``fully_shard`` on each of ``model.wrap_units()``, then on ``model`` (the root takes
      the remaining parameters: embeddings, final norms, heads). Returns ``model``, whose
      parameters are now DTensor shards — build the optimizer after this call. ``generate`` is
      registered as a forward method so evaluation can generate from the sharded model. With
      ``bf16`` the policy computes in bf16 and reduces gradients in fp32 (then autocast is not
      needed).
    """
    if world.strategy == "single":  # left where the caller put it
        return model
    model.to(world.device)
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("the model has no trainable parameters: unfreeze a part with set_trainable()")
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not hasattr(model, "wrap_units"):
        raise ConfigError(
            f"FSDP needs per-block units: {type(model).__name__} has no wrap_units() (see layers/stack.py)"
        )
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for unit in model.wrap_units():
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return model


# --- batches --------------------------------------------------------------------------------------
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


# --- sharded checkpoints --------------------------------------------------------------------------
def is_sharded_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / SHARDED_STATE_NAME).is_file()


def read_sharded_state(directory: str | os.PathLike) -> dict:
    """The trainer state (step, scheduler, history, world size, strategy) of a sharded checkpoint."""
    path = Path(directory) / SHARDED_STATE_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a sharded vlmzoo checkpoint ({SHARDED_STATE_NAME} not found); it is "
            "written by `vlmzoo train --strategy ddp|fsdp` into RUN_DIR/checkpoint"
        )
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if state.get("format") != SHARDED_FORMAT:
        raise CheckpointError(
            f'{path} is not a sharded vlmzoo trainer state (no "format": "{SHARDED_FORMAT}")'
        )
    return state


def _write_json(path: Path, document: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_sharded(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    config_document: dict,
    world: World,
) -> Path:
    """Collective: every rank writes its shards of model + optimizer state; rank 0 adds
    ``config.json`` and ``trainer_state.json`` (with ``world_size`` and ``strategy``).

    Written into ``<directory>.tmp`` and renamed over ``directory`` only after every rank has
    finished (a barrier), so a crash mid-save leaves the previous checkpoint intact. The directory
    must be on a file system all ranks share.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDS_DIR)
    if world.is_main:
        _write_json(tmp / CONFIG_NAME, config_document)
        state = {
            "format": SHARDED_FORMAT,
            "world_size": world.world_size,
            "strategy": world.strategy,
            **trainer_state,
        }
        _write_json(tmp / SHARDED_STATE_NAME, state)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return directory


def recover_checkpoint(directory: str | os.PathLike) -> None:
    """If a save died between its two renames, put the previous checkpoint back in place."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)


def check_world(directory: str | os.PathLike, state: dict, world: World) -> None:
    """Refuse to resume a checkpoint written by another number of processes.

    The weights and optimizer state could be resharded, but the checkpoint's promise — continuing
    exactly as the uninterrupted run would — holds only for the world size it was written with, so
    a change must be explicit: convert and start a new run from the weights.
    """
    saved, strategy = int(state.get("world_size", 1)), state.get("strategy", "single")
    if saved != world.world_size or (strategy == "single") != (world.strategy == "single"):
        raise CheckpointError(
            f"{directory} was written by {saved} process(es) (--strategy {strategy}) but this run has "
            f"{world.world_size} (--strategy {world.strategy}); resume it with the same number of "
            f"processes (`torchrun --nproc_per_node {saved} -m vlmzoo train --strategy {strategy} --resume "
            f"...`{'' if strategy != 'single' else ', without torchrun'}), or turn it into weights with "
            f"`vlmzoo convert-checkpoint {directory} OUT` and start a new run from them (--init-from OUT)"
        )


def load_sharded(
    directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, world: World
) -> dict:
    """Collective: load model + optimizer shards into the (already wrapped) ``model`` and
    ``optimizer``; returns the trainer state. Checks the world size first (:func:`check_world`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_sharded_state(directory)
    check_world(directory, state, world)
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(shards, checkpoint_id=Path(directory) / SHARDS_DIR)
    except Exception as e:  # DCP raises a bare RuntimeError/CheckpointException for missing keys
        raise CheckpointError(f"{directory}: the sharded weights do not fit the model: {e}") from e
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    return state


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A sharded checkpoint (``RUN_DIR/checkpoint``, or the run folder holding it) -> a single vlmzoo
    checkpoint directory ``dst`` (``config.json`` + ``model.safetensors``) for :func:`vlmzoo.load`.

    Runs in one process without a process group (``torch.distributed.checkpoint`` reads every
    rank's shards); the model is built once on the CPU from the checkpoint's own config, so this
    needs the memory of one full copy of the weights.
    """
    import torch.distributed.checkpoint as dcp

    from vlmzoo.registry import get_architecture

    src = Path(src)
    if not (src / CONFIG_NAME).is_file() and (src / "checkpoint" / CONFIG_NAME).is_file():
        src = src / "checkpoint"
    read_sharded_state(src)
    document = read_config(src)
    cls = get_architecture(document["architecture"])
    model = cls(cls.config_class.from_dict(document["config"]))
    weights = model.state_dict()  # tensors that share the model's storage: loaded in place
    try:
        dcp.load({"model": weights}, checkpoint_id=src / SHARDS_DIR, no_dist=True)
    except Exception as e:
        raise CheckpointError(f"{src}: the sharded weights do not fit {document['architecture']}: {e}") from e
    return save(model, dst)


def full_state_dict(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """Collective: the whole (unsharded) model state on the CPU of rank 0; an empty dict elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not world.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
