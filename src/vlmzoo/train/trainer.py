"""A plain PyTorch training loop for vlmzoo models — nothing hidden, one screen per idea.

AdamW with decoupled weight decay (no decay on norms, biases and embeddings' position tables),
linear warmup then cosine decay, gradient accumulation, gradient clipping, optional bf16
autocast (on CUDA, where it helps; CPU autocast is slower for these sizes), tqdm progress,
evaluation of the in-memory model every ``eval_every`` steps (without moving the random
generators), and checkpoints with exact resume (:mod:`vlmzoo.train.run_checkpoint`: weights,
optimizer, scheduler, generators and step swapped in as one unit): the batch of step ``s`` is a
pure function of ``(seed, s)``, so a resumed run computes bit for bit what the uninterrupted one
does. Ctrl-C saves a checkpoint at the current step before it stops. The run folder's manifest
(:mod:`vlmzoo.train.run_dir`) lists every file the trainer writes there.

LLaVA's two-stage recipe is two calls: ``model.set_trainable(adapter="full")`` then ``fit``; then
``model.set_trainable(adapter="full", decoder="full")`` and ``fit`` again into a second run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import CheckpointError, ConfigError, InputError
from vlmzoo.train.batches import batch_rows, shard_batch, to_device
from vlmzoo.train.rng import rng_preserved
from vlmzoo.train.run_checkpoint import STATE_NAME, RunState, load_run_checkpoint, save_run_checkpoint
from vlmzoo.train.run_dir import CHECKPOINT_DIR, HISTORY_NAME, RunDir, check_location
from vlmzoo.train.strategies import apply_strategy
from vlmzoo.train.world import World
from vlmzoo.weights.format import DEFAULT_MAX_SHARD_SIZE
from vlmzoo.weights.peft import base_model

# Fields a resumed run may change: they decide what is logged, evaluated and saved, never what is
# computed (evaluation runs with the random generators set aside). ``steps`` may change too (see
# Trainer.resume); every other field must be the saved one.
RESUME_NEUTRAL_FIELDS = frozenset({"log_every", "eval_every", "checkpoint_every"})


@dataclass
class TrainConfig(Config):
    """Optimisation settings; ``steps`` counts optimizer steps (each of ``grad_accum`` micro-batches)."""

    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8  # AdamW's denominator term; raise it to damp updates of near-zero gradients
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_accum: int = 1
    clip_grad: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 250
    log_every: int = 10
    bf16: bool = False
    seed: int = 0

    def validate(self) -> None:
        self._check_positive(
            "steps", "lr", "eps", "grad_accum", "eval_every", "checkpoint_every", "log_every"
        )
        self._check_non_negative("weight_decay", "warmup_steps", "clip_grad")
        if not 0 <= self.min_lr_ratio <= 1:
            self._fail("min_lr_ratio", "must be in [0, 1]")
        if not all(0 <= b < 1 for b in self.betas):
            self._fail("betas", "AdamW's betas must be in [0, 1)")
        if self.warmup_steps >= self.steps:
            warnings.warn(
                f"TrainConfig: warmup_steps={self.warmup_steps} >= steps={self.steps}, so the learning "
                f"rate never reaches lr={self.lr:g} and the cosine decay never starts; set warmup_steps "
                f"below steps (e.g. {max(1, self.steps // 10)}, a tenth)",
                UserWarning,
                stacklevel=4,
            )


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; 1-D tensors (norms, biases, gates) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: unfreeze a part with set_trainable()")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def parameter_table(model: nn.Module) -> str:
    """A table of trainable / frozen parameters per top-level part."""
    lines = [f"{'part':<12}{'trainable':>14}{'frozen':>14}"]
    for name, child in model.named_children():
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in child.parameters() if not p.requires_grad)
        lines.append(f"{name:<12}{trainable:>14,}{frozen:>14,}")
    total_t = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_f = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lines.append(f"{'total':<12}{total_t:>14,}{total_f:>14,}")
    return "\n".join(lines)


class Trainer:
    """Trains ``model`` on ``batch_fn(step, micro) -> batch`` for ``config.steps`` optimizer steps.

    ``loss_fn(model, batch) -> loss`` computes the scalar loss; ``evaluate(model) -> dict`` (optional)
    returns metrics of the in-memory model. ``run_dir`` receives ``checkpoint/`` (the run
    checkpoint, :mod:`vlmzoo.train.run_checkpoint`), ``metrics.json`` (the history) and the
    manifest listing both (:mod:`vlmzoo.train.run_dir`); it may not be the working directory, a
    folder holding it, or the home directory. ``max_shard_size`` splits the model's weights in a
    single-process checkpoint into safetensors shards above that size (as :func:`vlmzoo.save`).

    With a distributed ``world`` (:func:`vlmzoo.train.world.init_world` under ``torchrun``) the
    trainer wraps the model by ``world.strategy`` (DDP or FSDP2), and every rank builds the same
    *global* batch and keeps its rows (``shard_fn``). Each rank's mean loss is weighted by its share
    of the global batch's loss items (``loss_items``: label tokens by default), so the gradient is
    that of the global mean — the same as single-process training on the whole batch, whatever the
    number of processes. Rank 0 alone logs and writes the history; checkpoints are sharded (one
    safetensors file per rank) and every rank takes part in saving them.
    ``evaluate`` runs on rank 0 under DDP and on every rank under FSDP (the weights are sharded).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        batch_fn: Callable[[int, int], Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        run_dir: str | os.PathLike,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        progress: bool = True,
        world: World | None = None,
        shard_fn: Callable[[Any, int, int], Any] = shard_batch,
        loss_items: Callable[[Any], int] | None = None,
        find_unused_parameters: bool = False,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    ):
        self.world = world or World()
        self.config = config
        self.batch_fn, self.loss_fn, self.evaluate = batch_fn, loss_fn, evaluate
        self.shard_fn, self.loss_items = shard_fn, loss_items or count_label_tokens
        self.run_dir = check_location(run_dir)
        self.run = RunDir(self.run_dir, writer=self.world.is_main)
        self.max_shard_size = max_shard_size
        self.progress = progress and self.world.is_main
        # Read before wrapping: fully_shard swaps the model's class for an FSDP subclass.
        self.architecture = type(base_model(model)).__name__  # a PeftModel: the model inside
        self.model_config = getattr(model, "config", None)
        self.module = apply_strategy(
            model, self.world, bf16=config.bf16, find_unused_parameters=find_unused_parameters
        )
        self.model = model  # the unwrapped model (under FSDP the same object, now sharded)
        self.device = self.world.device if self.world.distributed else next(model.parameters()).device
        self.optimizer = make_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval": []}

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the run checkpoint (collective on several processes), then the history.

        Nothing is saved before the first step: there is no progress to keep, and resuming such a
        run is starting it."""
        if self.step == 0:
            return
        save_run_checkpoint(
            self.checkpoint_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            RunState(self.step, self.history, self.config.to_dict()),
            self.world,
            architecture=self.architecture,
            device=self.device,
            staged=self._list_checkpoint,
            max_shard_size=self.max_shard_size,
        )
        self._write_history()

    def _list_checkpoint(self, names: Sequence[str]) -> None:
        self.run.record(f"{CHECKPOINT_DIR}/", *(f"{CHECKPOINT_DIR}/{name}" for name in names))

    def resume(self) -> None:
        """Restore the run folder's checkpoint: model, optimizer, scheduler, generators, step.

        Refused (:class:`CheckpointError`), before anything changes: a checkpoint of another
        architecture or config, one written by another number of processes
        (:func:`vlmzoo.train.run_checkpoint.check_world`), a missing or damaged trainer state,
        stored tensors that do not fit the model or optimizer, and a different training config.
        Only ``log_every``, ``eval_every`` and ``checkpoint_every`` may differ (they change what is
        logged and saved, not what is computed), and ``steps``, to extend or shorten the run: the
        remaining steps then follow the schedule of the new total (the change is recorded in the
        history under ``"steps_changed"``).
        """
        state = load_run_checkpoint(
            self.checkpoint_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            self.world,
            architecture=self.architecture,
            device=self.device,
            check_train_config=self._check_resumable,
        )
        self.step, self.history = state.step, state.history
        saved_steps = state.train_config.get("steps")
        if saved_steps != self.config.steps:
            change = {"at_step": self.step, "from": saved_steps, "to": self.config.steps}
            self.history.setdefault("steps_changed", []).append(change)

    def _check_resumable(self, saved: dict[str, Any], step: int) -> None:
        """Refuse to resume with a training config that changes what the run computes."""
        where = self.checkpoint_dir / STATE_NAME
        try:
            before = TrainConfig.from_dict(saved)
        except ConfigError as e:
            raise CheckpointError(
                f"{where}: the stored training config is not valid ({e}); the checkpoint is damaged"
            ) from e
        differing = [
            f"{f.name} {getattr(before, f.name)!r} -> {getattr(self.config, f.name)!r}"
            for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUME_NEUTRAL_FIELDS | {"steps"}
            and getattr(before, f.name) != getattr(self.config, f.name)
        ]
        if differing:
            raise CheckpointError(
                f"--resume with a different training config than {where} holds: {', '.join(differing)}; "
                "the resumed run would not continue the saved one. Resume with the saved settings, or start "
                "a new run (another run folder, or --overwrite); only steps, log_every, eval_every and "
                "checkpoint_every may change"
            )
        if self.config.steps < step:
            raise CheckpointError(
                f"--resume with steps={self.config.steps}, but {where} is already at step {step}; pass "
                f"steps >= {step}"
            )

    def _write_history(self) -> None:
        if self.world.is_main:
            self.run.write_json(HISTORY_NAME, self.history)

    # --- the loop -------------------------------------------------------------------------------
    def _shards(self, step: int, micro: int) -> tuple[Any, float]:
        """This rank's part of the global batch and the weight that turns its mean loss into its
        share of the global mean: ``items_rank * world_size / items_global`` (1 on one process)."""
        w = self.world
        batch = self.batch_fn(step, micro)
        if w.world_size == 1:
            return to_device(batch, self.device), 1.0
        # Every rank computes every rank's count (cheap, no communication), so all agree on errors.
        counts = [self.loss_items(self.shard_fn(batch, r, w.world_size)) for r in range(w.world_size)]
        if min(counts) == 0:
            raise InputError(
                f"step {step}: the global batch splits into shards with {counts} loss items; a rank "
                "without any would have an undefined mean loss — use a larger batch"
            )
        shard = to_device(self.shard_fn(batch, w.rank, w.world_size), self.device)
        return shard, counts[w.rank] * w.world_size / sum(counts)

    def _sync_context(self, last_micro: bool) -> contextlib.AbstractContextManager:
        """Skip gradient synchronisation on all but the last micro-batch of an accumulation."""
        if self.world.strategy == "ddp" and not last_micro:
            return self.module.no_sync()
        if self.world.strategy == "fsdp":
            self.module.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss (global)."""
        c, w = self.config, self.world
        self.module.train()
        total = 0.0
        # FSDP's mixed-precision policy already computes in bf16; autocast serves the others.
        autocast = c.bf16 and w.strategy != "fsdp"
        for micro in range(c.grad_accum):
            shard, weight = self._shards(self.step, micro)
            with self._sync_context(micro == c.grad_accum - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = self.loss_fn(self.module, shard) * weight / c.grad_accum
                # Summed over ranks before backward: a NaN on any rank stops every rank together.
                value = (w.sum(loss.detach()) / w.world_size).item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss is {value} at step {self.step}; lower lr or check the data"
                    )
                loss.backward()
            total += value
        if c.clip_grad > 0:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, c.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def _evaluate(self) -> dict[str, float] | None:
        """Metrics of the in-memory model on rank 0 (every rank joins under FSDP); None elsewhere."""
        w = self.world
        metrics = None
        if w.strategy == "fsdp" or w.is_main:
            with rng_preserved(self.device):  # evaluating never changes what training computes
                metrics = self.evaluate(self.model)
        w.barrier()
        return metrics if w.is_main else None

    def fit(self) -> dict[str, list]:
        """Run until ``config.steps``; returns the history (also written to ``metrics.json`` by rank 0).

        Ctrl-C on a single process saves a checkpoint first; under torchrun the ranks are not
        interrupted at the same point, so only the periodic checkpoints count there.
        """
        from tqdm.auto import tqdm

        c, w = self.config, self.world
        if self.step == 0:  # a fresh run: refused now, not after the first step, if it would overwrite
            self.run.check_free(f"{CHECKPOINT_DIR}/", HISTORY_NAME)
        bar = tqdm(total=c.steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        start = time.perf_counter()
        try:
            while self.step < c.steps:
                loss = self.train_step()
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self.history["step"].append(self.step)
                    self.history["loss"].append(loss)
                    self.history["lr"].append(self.scheduler.get_last_lr()[0])
                    bar.set_postfix(loss=f"{loss:.3f}")
                if self.evaluate is not None and (self.step % c.eval_every == 0 or self.step == c.steps):
                    metrics = self._evaluate()
                    if metrics is not None:
                        self.history["eval"].append({"step": self.step, **metrics})
                        bar.write(
                            f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                        )
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                bar.update(1)
        except KeyboardInterrupt:
            if not w.distributed and self.step > 0:
                bar.write(f"interrupted at step {self.step}: saving a resumable checkpoint")
                self.save_checkpoint()
            raise
        finally:
            bar.close()
        self.history.setdefault("train_seconds", []).append(time.perf_counter() - start)
        self._write_history()
        return self.history


def count_label_tokens(batch: Any) -> int:
    """Loss items of a causal-LM batch: labels after the one-token shift that are not ignored
    (what transformers' loss averages over); the number of rows for a batch without labels."""
    labels = batch.get("labels") if isinstance(batch, dict) else getattr(batch, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 2:
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return batch_rows(batch)
