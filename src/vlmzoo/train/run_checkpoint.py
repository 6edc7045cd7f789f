"""Sharded run checkpoints: model, optimizer and trainer state written by every rank together.

- :func:`save_sharded` / :func:`load_sharded`: each rank writes its own shards, replaced atomically.
- :func:`convert_checkpoint`: one sharded checkpoint to a single vlmzoo directory
  (``config.json`` + ``model.safetensors``) that :func:`vlmzoo.load` opens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from vlmzoo.errors import CheckpointError
from vlmzoo.train.world import World
from vlmzoo.weights.format import CONFIG_NAME, read_config, save

SHARDS_DIR = "dcp"  # the torch.distributed.checkpoint files inside a checkpoint directory
SHARDED_STATE_NAME = "trainer_state.json"
SHARDED_FORMAT = "vlmzoo-sharded"


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
