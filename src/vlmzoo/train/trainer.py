"""A plain PyTorch training loop for vlmzoo models — nothing hidden, one screen per idea.

AdamW with decoupled weight decay (no decay on norms, biases and embeddings' position tables),
linear warmup then cosine decay, gradient accumulation, gradient clipping, optional bf16
autocast (on CUDA, where it helps; CPU autocast is slower for these sizes), tqdm progress,
evaluation of the in-memory model every ``eval_every`` steps, and atomic checkpoints with exact
resume: the batch of step ``s`` is a pure function of ``(seed, s)``, so a resumed run sees the
same data as an uninterrupted one. Ctrl-C saves a checkpoint at the current step (atomically)
before it stops.

LLaVA's two-stage recipe is two calls: ``model.set_trainable(adapter="full")`` then ``fit``; then
``model.set_trainable(adapter="full", decoder="full")`` and ``fit`` again into a second run folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.errors import CheckpointError, InputError
from vlmzoo.processing.prompts import IGNORE_INDEX
from vlmzoo.train.batches import batch_rows, shard_batch, to_device
from vlmzoo.train.run_checkpoint import (
    check_world,
    is_sharded_checkpoint,
    load_sharded,
    recover_checkpoint,
    save_sharded,
)
from vlmzoo.train.strategies import apply_strategy
from vlmzoo.train.world import World
from vlmzoo.weights.format import CONFIG_NAME, config_document, read_config, save

STATE_NAME = "trainer_state.pt"
HISTORY_NAME = "metrics.json"


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Trainer:
    """Trains ``model`` on ``batch_fn(step, micro) -> batch`` for ``config.steps`` optimizer steps.

    ``loss_fn(model, batch) -> loss`` computes the scalar loss; ``evaluate(model) -> dict`` (optional)
    returns metrics of the in-memory model. ``run_dir`` receives ``checkpoint/`` (model +
    trainer state) and ``metrics.json`` (the history).

    With a distributed ``world`` (:func:`vlmzoo.train.world.init_world` under ``torchrun``) the
    trainer wraps the model by ``world.strategy`` (DDP or FSDP2), and every rank builds the same
    *global* batch and keeps its rows (``shard_fn``). Each rank's mean loss is weighted by its share
    of the global batch's loss items (``loss_items``: label tokens by default), so the gradient is
    that of the global mean — the same as single-process training on the whole batch, whatever the
    number of processes. Rank 0 alone logs and writes the history; checkpoints are sharded
    (:func:`vlmzoo.train.run_checkpoint.save_sharded`) and every rank takes part in saving them.
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
    ):
        self.world = world or World()
        self.config = config
        self.batch_fn, self.loss_fn, self.evaluate = batch_fn, loss_fn, evaluate
        self.shard_fn, self.loss_items = shard_fn, loss_items or count_label_tokens
        self.run_dir = Path(run_dir)
        self.progress = progress and self.world.is_main
        # Read before wrapping: fully_shard swaps the model's class for an FSDP subclass.
        self.architecture = type(model).__name__
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
        return self.run_dir / "checkpoint"

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Model + optimizer/scheduler/step. Single process: safetensors + ``trainer_state.pt``, each
        replaced atomically; distributed: a collective sharded save, swapped in after all ranks wrote."""
        if self.world.distributed:
            state = {
                "step": self.step,
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "train_config": self.config.to_dict(),
            }
            document = {**config_document(self.model), "architecture": self.architecture}
            save_sharded(self.checkpoint_dir, self.model, self.optimizer, state, document, self.world)
            if self.world.is_main:
                self._write_history()
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save(self.model, self.checkpoint_dir)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "train_config": self.config.to_dict(),
        }
        _atomic_torch_save(state, self.checkpoint_dir / STATE_NAME)
        self._write_history()

    def resume(self) -> None:
        """Load the run folder's checkpoint into the in-memory model and optimizer.

        Refuses (:class:`CheckpointError`) a checkpoint of another architecture or config, and one
        written by another number of processes (:func:`vlmzoo.train.run_checkpoint.check_world`).
        """
        from safetensors.torch import load_model

        recover_checkpoint(self.checkpoint_dir)
        document = read_config(self.checkpoint_dir)
        ours = {"architecture": self.architecture, "config": self.model_config.to_dict()}
        if document["architecture"] != ours["architecture"] or document["config"] != ours["config"]:
            raise CheckpointError(
                f"{self.checkpoint_dir} holds a {document['architecture']} with a different config than the "
                f"model being trained ({ours['architecture']}); use another run folder or --overwrite"
            )
        if is_sharded_checkpoint(self.checkpoint_dir):
            state = load_sharded(
                self.checkpoint_dir, self.model, self.optimizer, self.world
            )  # checks the world
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.history = state["step"], state["history"]
            return
        check_world(self.checkpoint_dir, {"world_size": 1, "strategy": "single"}, self.world)
        load_model(self.model, self.checkpoint_dir / "model.safetensors")
        state = torch.load(self.checkpoint_dir / STATE_NAME, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]

    def _write_history(self) -> None:
        path = self.run_dir / HISTORY_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.history, indent=1))
        os.replace(tmp, path)

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
            if not w.distributed:
                bar.write(f"interrupted at step {self.step}: saving a resumable checkpoint")
                self.save_checkpoint()
            raise
        finally:
            bar.close()
        self.history.setdefault("train_seconds", []).append(time.perf_counter() - start)
        if w.is_main:
            self._write_history()
        return self.history


def count_label_tokens(batch: Any) -> int:
    """Loss items of a causal-LM batch: labels after the one-token shift that are not ignored
    (what transformers' loss averages over); the number of rows for a batch without labels."""
    labels = batch.get("labels") if isinstance(batch, dict) else getattr(batch, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 2:
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return batch_rows(batch)


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse a run folder that already holds a run unless ``resume`` or ``overwrite`` is set.

    Every rank of a distributed run checks; only ``is_main`` (rank 0) removes an overwritten run,
    and the caller should then wait at a barrier.
    """
    import shutil

    run_dir = Path(run_dir)
    holds_run = (run_dir / "checkpoint" / CONFIG_NAME).is_file() or (run_dir / HISTORY_NAME).is_file()
    if holds_run and not (resume or overwrite):
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not holds_run:
        raise CheckpointError(f"--resume given but {run_dir} holds no checkpoint")
    if is_main:
        if overwrite and holds_run and not resume:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
