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

from vlmzoo.checkpoint import CONFIG_NAME, read_config, save
from vlmzoo.config import Config
from vlmzoo.errors import CheckpointError

STATE_NAME = "trainer_state.pt"
HISTORY_NAME = "metrics.json"


@dataclass
class TrainConfig(Config):
    """Optimisation settings; ``steps`` counts optimizer steps (each of ``grad_accum`` micro-batches)."""

    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
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
        self._check_positive("steps", "lr", "grad_accum", "eval_every", "checkpoint_every", "log_every")
        self._check_non_negative("weight_decay", "warmup_steps", "clip_grad")
        if not 0 <= self.min_lr_ratio <= 1:
            self._fail("min_lr_ratio", "must be in [0, 1]")


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
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


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
    ):
        self.model, self.config = model, config
        self.batch_fn, self.loss_fn, self.evaluate = batch_fn, loss_fn, evaluate
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.optimizer = make_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "lr": [], "eval": []}

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Model (safetensors) + optimizer/scheduler/step, each file replaced atomically."""
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
        """Load the run folder's checkpoint into the in-memory model and optimizer."""
        from safetensors.torch import load_model

        document = read_config(self.checkpoint_dir)
        ours = {"architecture": type(self.model).__name__, "config": self.model.config.to_dict()}
        if document["architecture"] != ours["architecture"] or document["config"] != ours["config"]:
            raise CheckpointError(
                f"{self.checkpoint_dir} holds a {document['architecture']} with a different config than the "
                f"model being trained ({ours['architecture']}); use another run folder or --overwrite"
            )
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
    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        c = self.config
        self.model.train()
        total = 0.0
        device_type = next(self.model.parameters()).device.type
        for micro in range(c.grad_accum):
            batch = self.batch_fn(self.step, micro)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=c.bf16):
                loss = self.loss_fn(self.model, batch) / c.grad_accum
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {self.step}; lower lr or check the data"
                )
            loss.backward()
            total += loss.item()
        if c.clip_grad > 0:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, c.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def fit(self) -> dict[str, list]:
        """Run until ``config.steps``; returns the history (also written to ``metrics.json``)."""
        from tqdm.auto import tqdm

        c = self.config
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
                    metrics = self.evaluate(self.model)
                    self.history["eval"].append({"step": self.step, **metrics})
                    bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                bar.update(1)
        except KeyboardInterrupt:
            bar.write(f"interrupted at step {self.step}: saving a resumable checkpoint")
            self.save_checkpoint()
            raise
        finally:
            bar.close()
        self.history.setdefault("train_seconds", []).append(time.perf_counter() - start)
        self._write_history()
        return self.history


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that already holds a run unless ``resume`` or ``overwrite`` is set."""
    import shutil

    run_dir = Path(run_dir)
    holds_run = (run_dir / "checkpoint" / CONFIG_NAME).is_file() or (run_dir / HISTORY_NAME).is_file()
    if holds_run and not (resume or overwrite):
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not holds_run:
        raise CheckpointError(f"--resume given but {run_dir} holds no checkpoint")
    if overwrite and holds_run and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
