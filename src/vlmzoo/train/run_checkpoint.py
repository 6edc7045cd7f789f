"""A run's checkpoint: weights, optimizer, scheduler, generators and data position, one atomic unit.

The trainer calls :func:`save_run_checkpoint` and :func:`load_run_checkpoint`; this module owns
the files. A run checkpoint is one directory (``RUN_DIR/checkpoint``):

- ``config.json``: the model's architecture and config (as :func:`vlmzoo.save` writes it);
- the model's weights: on one process ``model.safetensors`` (or shards and their index) written
  by :func:`vlmzoo.save`, so the directory opens with :func:`vlmzoo.load`; on several processes
  each rank's shards inside its rank file;
- ``rank-0000r-of-0000W.safetensors``, one per rank (:mod:`vlmzoo.train.shards`): the optimizer
  state (AdamW's ``exp_avg``, ``exp_avg_sq`` and ``step`` of every parameter, by parameter
  name), the model's shards when sharded, and the rank's own torch generator states; its
  header holds the rank's Python and numpy generator states as JSON;
- ``trainer_state.json``: the step (the data position: the batch of step ``s`` is a pure function
  of the seed and ``s``), the scheduler, the optimizer's parameter groups, the history, the
  training config, and the world (number of processes, strategy) that wrote it.

Every file is written into one staging directory that replaces the old checkpoint as a whole
(:func:`vlmzoo.weights.swap.replace_directory`): a crash at any moment leaves either the previous
checkpoint or the new one, never weights of step k+1 beside a trainer state of step k. On several
processes every rank writes its file into the staging directory rank 0 created, the ranks agree
that all files are written, and rank 0 swaps. Nothing is pickled: JSON and safetensors only.
Checkpoints of older vlmzoo versions (``trainer_state.pt``, a pickle; or ``dcp/``, whose
``.metadata`` is a pickle) are refused with the way forward, never unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vlmzoo.config import parse_json
from vlmzoo.errors import CheckpointError
from vlmzoo.train.rng import capture_rng, restore_rng
from vlmzoo.train.run_dir import CHECKPOINT_DIR
from vlmzoo.train.shards import RANK_FILE, ShardReader, rank_file_name, write_rank_file
from vlmzoo.train.world import World
from vlmzoo.weights.files import atomic_write_json, read_json
from vlmzoo.weights.format import (
    CONFIG_NAME,
    DEFAULT_MAX_SHARD_SIZE,
    architecture_and_config,
    config_document,
    is_checkpoint_file,
    load_directory,
    load_weights,
    read_config,
    save,
)
from vlmzoo.weights.peft import is_peft_model, peft_document
from vlmzoo.weights.peft import wrap as wrap_peft
from vlmzoo.weights.swap import replace_directory

STATE_NAME = "trainer_state.json"
STATE_FORMAT = "vlmzoo-run-checkpoint"
STATE_VERSION = 1
MODEL_PREFIX, OPTIMIZER_PREFIX = "model/", "optimizer/"
WEIGHTS_IN_MODEL_FILES, WEIGHTS_IN_RANK_FILES = "model files", "rank files"
# Written by vlmzoo before run checkpoints carried no pickle: recognised (and replaced by the next
# save), never read.
LEGACY_STATE_NAME, LEGACY_SHARDS_DIR, LEGACY_SHARDED_FORMAT = "trainer_state.pt", "dcp", "vlmzoo-sharded"


@dataclass
class RunState:
    """What a run checkpoint holds besides tensors: the data position and the run's records."""

    step: int
    history: dict[str, Any]
    train_config: dict[str, Any]


def is_run_checkpoint_file(name: str) -> bool:
    """Whether a name in a checkpoint directory is a run checkpoint's own (vs. a user's file)."""
    return (
        is_checkpoint_file(name)
        or name == STATE_NAME
        or RANK_FILE.fullmatch(name) is not None
        or name in (LEGACY_STATE_NAME, LEGACY_SHARDS_DIR)
    )


# --- saving ------------------------------------------------------------------------------------


def save_run_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: RunState,
    world: World,
    *,
    architecture: str,
    device: torch.device,
    staged: Callable[[Sequence[str]], None] = lambda names: None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Collective on several processes: write the whole run checkpoint and swap it in at once.

    ``architecture`` names the model's class (read before FSDP wrapped it); ``device`` is where
    training runs (its generator is saved); ``staged(names)`` is called with the checkpoint's file
    names once they are written, before they replace the old ones (the run folder lists them).
    """
    directory = Path(directory)
    sharded = world.distributed
    if not optimizer.state:
        # Reading an empty optimizer's state would initialise it (torch takes a step at lr 0),
        # and its next real step would then differ from a fresh optimizer's.
        raise CheckpointError("nothing to checkpoint before the first optimizer step")
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    tensors = _optimizer_tensors(optimizer_state)
    if sharded:
        tensors.update({MODEL_PREFIX + k: v for k, v in _model_tensors(model).items()})
    rng_tensors, rng_document = capture_rng(device)
    names = [rank_file_name(r, world.world_size) for r in range(world.world_size)]
    document = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "step": state.step,
        "world_size": world.world_size,
        "strategy": world.strategy,
        "weights": WEIGHTS_IN_RANK_FILES if sharded else WEIGHTS_IN_MODEL_FILES,
        "rank_files": names,
        "param_groups": _param_groups_document(optimizer_state["param_groups"]),
        "scheduler": scheduler.state_dict(),
        "train_config": state.train_config,
        "history": state.history,
    }
    metadata = {"vlmzoo_step": str(state.step), "vlmzoo_rng": json.dumps(rng_document)}

    def write_own(staging: Path) -> None:
        path = staging / names[world.rank]
        write_rank_file(path, tensors, world.rank, world.world_size, metadata, rng_tensors)

    def write_shared(staging: Path) -> None:
        if sharded:  # the weights are in the rank files; config.json names the model
            atomic_write_json(staging / CONFIG_NAME, {**config_document(model), "architecture": architecture})
        else:
            save(model, staging, max_shard_size=max_shard_size)
        atomic_write_json(staging / STATE_NAME, document)
        staged(sorted(os.listdir(staging)))

    _write_collectively(directory, world, write_own, write_shared)
    return directory


def _write_collectively(
    directory: Path, world: World, write_own: Callable[[Path], None], write_shared: Callable[[Path], None]
) -> None:
    """Every rank ``write_own``s into one staging directory, rank 0 adds ``write_shared`` and swaps
    it in. A failure on any rank leaves the old checkpoint in place and raises on every rank: the
    ranks agree through collectives (:meth:`World.all_ok`) rather than barriers, so none waits
    forever for a rank that failed."""
    joined = 0  # how far this rank got through the three collectives below
    try:
        staging_dir = replace_directory(directory, managed=is_run_checkpoint_file) if world.is_main else None
        with staging_dir or contextlib.nullcontext() as created:
            name = world.broadcast_text(str(created) if world.is_main else "")
            joined = 1
            if not name:
                raise CheckpointError(f"rank 0 could not start writing {directory}; see its error")
            staging = Path(name)
            failure = _attempt(write_own, staging)
            if not world.all_ok(failure is None):
                raise failure or CheckpointError(f"another rank failed to write its part of {directory}")
            joined = 2
            if world.is_main:
                write_shared(staging)
        # Rank 0 has swapped the new checkpoint in (leaving the block), or raised.
    except BaseException:
        if world.is_main and joined == 0:
            world.broadcast_text("")  # the others are waiting for the staging directory's name
        elif world.is_main and joined == 2:
            world.all_ok(False)
        raise
    if not world.all_ok(True):
        raise CheckpointError(
            f"rank 0 failed to complete {directory}; see its error (the old checkpoint is kept)"
        )


def _attempt(write: Callable[[Path], None], staging: Path) -> BaseException | None:
    try:
        write(staging)
    except BaseException as e:  # reported to the other ranks first, then raised
        return e
    return None


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state (DTensor shards under FSDP), each tied tensor under its first name only."""
    aliases = _aliases(model)
    return {k: v for k, v in get_model_state_dict(model).items() if k not in aliases}


def _aliases(model: nn.Module) -> set[str]:
    """Second and later names of a parameter or buffer registered under several names (tied
    weights): rank-independent, so every rank drops the same keys."""
    seen: set[int] = set()
    aliases = set()
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return aliases


def _optimizer_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``optimizer/<parameter name>/<field>`` for every tensor of the optimizer's state."""
    tensors = {}
    for name, fields in state["state"].items():
        for field, value in fields.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"the optimizer's state holds {type(value).__name__} values ({name}: {field}); run "
                    "checkpoints store optimizer state as tensors (AdamW's is)"
                )
            tensors[f"{OPTIMIZER_PREFIX}{name}/{field}"] = value
    return tensors


def _param_groups_document(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The optimizer's parameter groups as JSON (hyperparameters; parameters by name)."""
    document = []
    for group in groups:
        entry = {}
        for key, value in group.items():
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, torch.Tensor) or not _is_json(value):
                raise CheckpointError(
                    f"the optimizer's parameter group holds {key}={value!r}, which JSON cannot store; use "
                    "plain numbers for optimizer hyperparameters"
                )
            entry[key] = value
        document.append(entry)
    return document


def _is_json(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


# --- reading -----------------------------------------------------------------------------------


def read_run_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked ``trainer_state.json`` of a run checkpoint (no tensors read).

    :class:`CheckpointError`, naming the file and the way forward, for a missing or damaged file
    and for checkpoints of older vlmzoo versions (pickles, never opened).
    """
    directory = Path(directory)
    path = directory / STATE_NAME
    if not path.is_file():
        if (directory / LEGACY_STATE_NAME).is_file() or (directory / LEGACY_SHARDS_DIR).is_dir():
            raise CheckpointError(_legacy_message(directory))
        if any(RANK_FILE.fullmatch(p.name) for p in directory.glob("rank-*")):
            hint = (
                "the checkpoint is incomplete (a file was removed after the save); resume from an intact copy"
            )
        elif (directory / CONFIG_NAME).is_file():
            hint = "it holds a saved model, which vlmzoo.load opens as it is"
        else:
            hint = f"vlmzoo's Trainer writes run checkpoints into RUN_DIR/{CHECKPOINT_DIR}"
        raise CheckpointError(
            f"{directory} is not a sharded vlmzoo checkpoint ({STATE_NAME} not found): {hint}; to start the "
            "run again, pass --overwrite"
        )
    state = read_json(path, "trainer state")
    if isinstance(state, dict) and state.get("format") == LEGACY_SHARDED_FORMAT:
        raise CheckpointError(_legacy_message(directory))
    problem = _state_problem(state)
    if problem is not None:
        raise CheckpointError(
            f"{path} is not a vlmzoo trainer state ({problem}): the checkpoint is damaged; resume from an "
            "intact copy, or start the run again with --overwrite"
        )
    return state


def _state_problem(state: Any) -> str | None:
    """What is wrong with a parsed trainer state, or None."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f'no "format": "{STATE_FORMAT}"'
    version = state.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
        return (
            f"format_version {version!r}; this vlmzoo reads 1 to {STATE_VERSION} (upgrade vlmzoo for newer)"
        )
    kinds = {
        "step": int,
        "world_size": int,
        "strategy": str,
        "weights": str,
        "rank_files": list,
        "param_groups": list,
        "scheduler": dict,
        "train_config": dict,
        "history": dict,
    }
    for key, kind in kinds.items():
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), kind):
            return f'"{key}" missing or not of type {kind.__name__}'
    if state["step"] < 0 or state["world_size"] < 1:
        return f"step {state['step']} and world_size {state['world_size']} are out of range"
    if state["weights"] not in (WEIGHTS_IN_MODEL_FILES, WEIGHTS_IN_RANK_FILES):
        return f'"weights" is {state["weights"]!r}'
    expected = [rank_file_name(r, state["world_size"]) for r in range(state["world_size"])]
    if state["rank_files"] != expected:
        return f'"rank_files" should be {expected[:3]}...'
    return None


def _legacy_message(directory: Path) -> str:
    if (directory / LEGACY_SHARDS_DIR).is_dir():
        return (
            f"{directory} was written by an older vlmzoo with torch.distributed.checkpoint, whose "
            f"{LEGACY_SHARDS_DIR}/.metadata is a pickle (it can run code when read), so this vlmzoo does not "
            "read it; merge it with the vlmzoo version that wrote it (`vlmzoo convert-checkpoint`) and start a "
            "new run from the merged weights (--init-from)"
        )
    return (
        f"{directory} was written by an older vlmzoo: its {LEGACY_STATE_NAME} is a pickle, which this vlmzoo "
        f"does not read; its weights still open with vlmzoo.load({str(directory)!r}): start a new run from "
        "them (--init-from) instead of resuming"
    )


def check_world(directory: str | os.PathLike, state: Mapping[str, Any], world: World) -> None:
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


def load_run_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: World,
    *,
    architecture: str,
    device: torch.device,
    check_train_config: Callable[[dict[str, Any], int], None],
) -> RunState:
    """Collective on several processes: restore a run checkpoint into the (wrapped) model, its
    optimizer and scheduler, and the generators; returns the step, history and training config.

    Checked before anything is changed, each with a :class:`CheckpointError`: the trainer state,
    the model's architecture and config (``config.json``), the world (:func:`check_world`), the
    training config (``check_train_config(saved, step)`` raises), and every stored tensor's name, shape
    and dtype against the model and optimizer.
    """
    directory = Path(directory)
    state = read_run_state(directory)
    document = read_config(directory)
    config = getattr(model, "config", None)
    if document["architecture"] != architecture or document["config"] != _as_json(config.to_dict()):
        raise CheckpointError(
            f"{directory} holds a {document['architecture']} with a different config than the model being "
            f"trained ({architecture}); use another run folder or --overwrite"
        )
    _check_peft(directory, document.get("peft"), model)
    check_world(directory, state, world)
    sharded = state["weights"] == WEIGHTS_IN_RANK_FILES
    if sharded != world.distributed:
        raise CheckpointError(f"{directory / STATE_NAME}: its weights layout does not match its world size")
    check_train_config(state["train_config"], state["step"])
    files = [directory / name for name in state["rank_files"]]
    with ShardReader(files, state["world_size"]) as reader:
        _check_rank_files(reader, state["step"])
        # Creates the state of every trainable parameter (to fill); parameters that had no state when
        # saved (never given a gradient) get none back.
        optimizer_state = get_optimizer_state_dict(model, optimizer)
        try:
            saved = {
                k.removeprefix(OPTIMIZER_PREFIX).rsplit("/", 1)[0] for k in reader.keys(OPTIMIZER_PREFIX)
            }
            live = {name: fields for name, fields in optimizer_state["state"].items() if name in saved}
            targets = _optimizer_tensors({"state": live})
            if sharded:
                model_state = get_model_state_dict(model)
                aliases = _aliases(model)
                targets.update({MODEL_PREFIX + k: v for k, v in model_state.items() if k not in aliases})
            _check_keys(directory, set(reader.tensors), targets)
            for key, target in targets.items():
                reader.check_fits(key, target)
            groups = _param_groups(directory, state["param_groups"], optimizer_state["param_groups"])
            scheduler_state = _scheduler_state(directory, state, scheduler)
            rng_document = _rng_document(reader, world.rank)
            if not sharded:
                load_weights(model, directory)
            with torch.no_grad():
                for key, target in targets.items():
                    reader.fill(key, target)
            restore_rng(reader.read_local(world.rank), rng_document, device, str(files[world.rank]))
        except BaseException:
            optimizer.state.clear()  # not half-restored: as fresh as before this call
            raise
    # Not strict: a trainable parameter that never had a gradient had no state when saved, and gets
    # none back (the keys were checked above, against exactly what was saved).
    options = StateDictOptions(strict=False)
    set_optimizer_state_dict(model, optimizer, {"state": live, "param_groups": groups}, options=options)
    if sharded:
        set_model_state_dict(model, model_state)
    scheduler.load_state_dict(scheduler_state)
    return RunState(state["step"], state["history"], state["train_config"])


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a file."""
    return json.loads(json.dumps(value))


def _check_peft(directory: Path, saved: Any, model: nn.Module) -> None:
    """The model being trained is wrapped by peft exactly as the checkpoint's was (or neither is).

    Checked before the tensors, so that a resume that forgot ``get_peft_model`` (or used another
    LoRA config) is told so, not handed a list of optimizer keys that do not fit."""
    live = _as_json(peft_document(model)) if is_peft_model(model) else None
    if saved == live:
        return
    reload = f"or take the checkpoint's own model: vlmzoo.load({str(directory)!r})"
    if live is None:
        raise CheckpointError(
            f"{directory} holds a peft model (adapters {sorted(saved['adapters'])}) but the model being "
            f"trained is not wrapped by peft: wrap it with the same config (get_peft_model) before resuming, {reload}"
        )
    if saved is None:
        raise CheckpointError(
            f"{directory} holds a plain model but the model being trained is wrapped by peft: resume with the "
            f"unwrapped model, or start the peft run in another run folder"
        )
    differing = sorted(
        f"{name}.{key}"
        for name in saved["adapters"].keys() | live["adapters"].keys()
        for key in (saved["adapters"].get(name) or {}).keys() | (live["adapters"].get(name) or {}).keys()
        if (saved["adapters"].get(name) or {}).get(key) != (live["adapters"].get(name) or {}).get(key)
    ) or ["active adapter"]
    raise CheckpointError(
        f"{directory} was trained with another peft config than the model being trained (differing: "
        f"{', '.join(differing)}): wrap the model with the saved config to resume, {reload}"
    )


def _check_rank_files(reader: ShardReader, step: int) -> None:
    for path, metadata in reader.metadata.items():
        if metadata.get("vlmzoo_step") != str(step):
            raise CheckpointError(
                f"{path} holds step {metadata.get('vlmzoo_step')!r} but {STATE_NAME} step {step}: files of two "
                "saves are mixed; restore the checkpoint from an intact copy"
            )


def _check_keys(directory: Path, stored: set[str], targets: Mapping[str, torch.Tensor]) -> None:
    """The ``stored`` tensors are exactly the ``targets`` (the model's, and the optimizer's)."""
    missing, unexpected = sorted(set(targets) - stored), sorted(stored - set(targets))
    if missing or unexpected:
        parts = [
            f"{len(names)} {title}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
            for title, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise CheckpointError(
            f"{directory}: the stored state does not fit the model (and optimizer) it is loaded into "
            f"({'; '.join(parts)}); resume with the same model and the same trainable parts (set_trainable)"
        )


def _param_groups(directory: Path, stored: list[Any], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored parameter groups, checked against the optimizer's (same parameters, same keys)."""
    path = directory / STATE_NAME
    if len(stored) != len(live):
        raise CheckpointError(
            f"{path}: {len(stored)} optimizer parameter groups stored, the optimizer has {len(live)}"
        )
    groups = []
    for i, (saved, group) in enumerate(zip(stored, live, strict=True)):
        if (
            not isinstance(saved, dict)
            or set(saved) != set(group)
            or saved["params"] != list(group["params"])
        ):
            raise CheckpointError(
                f"{path}: optimizer parameter group {i} does not match the optimizer being trained (other "
                "parameters or hyperparameter names); resume with the same model and trainable parts"
            )
        restored = {}
        for key, value in saved.items():
            kind = type(group[key])
            if kind is tuple and isinstance(value, list):
                value = tuple(value)
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if group[key] is not None and value is not None and type(value) is not kind:
                raise CheckpointError(f"{path}: optimizer parameter group {i} holds {key}={value!r}")
            restored[key] = value
        groups.append(restored)
    return groups


def _scheduler_state(directory: Path, state: Mapping[str, Any], scheduler: Any) -> dict[str, Any]:
    """The stored scheduler state, checked key by key against the scheduler's own (a scheduler
    loads a state by updating its attributes: nothing else may be set)."""
    stored, live = state["scheduler"], scheduler.state_dict()
    wrong = sorted(k for k in set(stored) | set(live) if k not in live or k not in stored)
    wrong += [
        k for k in live if k in stored and live[k] is not None and not isinstance(stored[k], type(live[k]))
    ]
    if wrong or stored.get("last_epoch") != state["step"]:
        raise CheckpointError(
            f"{directory / STATE_NAME}: the stored scheduler state does not fit the scheduler (keys {wrong}, "
            f"last_epoch {stored.get('last_epoch')!r} at step {state['step']}); the checkpoint is damaged"
        )
    return stored


def _rng_document(reader: ShardReader, rank: int) -> dict[str, Any]:
    path = reader.files[rank]
    try:
        document = parse_json(reader.metadata[path].get("vlmzoo_rng", ""))
    except ValueError as e:
        raise CheckpointError(f"{path}: the generator states in its header are not valid JSON: {e}") from e
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: the generator states in its header are malformed")
    return document


# --- converting --------------------------------------------------------------------------------


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A run checkpoint (``RUN_DIR/checkpoint``, or the run folder holding it) -> a vlmzoo checkpoint
    directory ``dst`` (``config.json`` + ``model.safetensors``) for :func:`vlmzoo.load`.

    Runs in one process without a process group: the model is built once on the CPU from the
    checkpoint's own config and every tensor is assembled from the rank files' shards, so this
    needs the memory of one full copy of the weights.
    """
    src = Path(src)
    if not (src / STATE_NAME).is_file() and (src / CHECKPOINT_DIR / STATE_NAME).is_file():
        src = src / CHECKPOINT_DIR
    state = read_run_state(src)
    if state["weights"] == WEIGHTS_IN_MODEL_FILES:  # one process: the weights are vlmzoo's own files
        return save(load_directory(src), dst)
    model = _build(src)
    aliases = _aliases(model)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    targets = {MODEL_PREFIX + k: v for k, v in model.state_dict().items() if k not in aliases}
    with ShardReader([src / n for n in state["rank_files"]], state["world_size"]) as reader:
        _check_rank_files(reader, state["step"])
        _check_keys(src, reader.keys(MODEL_PREFIX), targets)
        with torch.no_grad():
            for key, target in targets.items():
                stored, name = reader.tensors[key].dtype, key.removeprefix(MODEL_PREFIX)
                if stored != target.dtype and target.is_floating_point() and name in tensors:
                    tensors[name].data = tensors[name].data.to(stored)  # a bf16 run converts to bf16
                    target = tensors[name].data
                reader.fill(key, target)
    return save(model, dst)


def _build(directory: Path) -> nn.Module:
    """The model ``config.json`` describes, freshly initialised on the CPU."""
    document = read_config(directory)
    cls, config = architecture_and_config(directory, document)
    model = cls(config)
    return wrap_peft(model, document["peft"], str(directory / CONFIG_NAME)) if "peft" in document else model


def full_state_dict(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """Collective: the whole (unsharded) model state on the CPU of rank 0; an empty dict elsewhere."""
    if not world.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
