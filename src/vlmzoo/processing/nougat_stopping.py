"""Nougat's early stop for pages that start repeating (facebookresearch/nougat's nougat/model.py,
``StoppingCriteriaScores`` with ``RunningVarTorch``).

At every step the highest logit of each row is pushed into a window of the last 15; the variance
of that window (divided by its length) is pushed into a window of the last 200. When the variance
of the variances falls below ``threshold`` (0.015) — the model is confidently looping — a stop is
scheduled at ``min(1.15 · step + 150 + 200, 4095)``; it is cancelled if the variance rises again.
Generation ends when every row has reached its scheduled stop, as in the original.

The original reads the step's scores from the tuple ``generate`` collects with
``output_scores=True``; here one object is both the last logits processor (it records the
processed scores, unchanged) and the stopping criterion, so ``generate`` can keep returning plain
token ids. This module imports transformers: it is loaded only when a Nougat processor generates.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, StoppingCriteria


class _RunningVariance:
    """The variance of the last ``length`` values of each row (``normalized``: divided by the count)."""

    def __init__(self, length: int, normalized: bool = False) -> None:
        self.length, self.normalized = length, normalized
        self.values: torch.Tensor | None = None

    def push(self, x: torch.Tensor) -> None:
        column = x[:, None]
        self.values = (
            column if self.values is None else torch.cat([self.values, column], 1)[:, -self.length :]
        )

    def variance(self) -> torch.Tensor:
        """[B]; NaN while only one value is held (the unbiased variance of one sample, as in the original)."""
        if self.values.shape[1] < 2:
            return torch.full((self.values.shape[0],), float("nan"))
        var = torch.var(self.values, dim=1)
        return var / self.values.shape[1] if self.normalized else var


class NougatStopping(LogitsProcessor, StoppingCriteria):
    """Pass the same object as the last of ``logits_processor`` and in ``stopping_criteria``."""

    def __init__(self, threshold: float = 0.015, window_size: int = 200, last_index: int = 4095) -> None:
        self.threshold, self.window_size, self.last_index = threshold, window_size, last_index
        self.vars = _RunningVariance(15, normalized=True)
        self.varvars = _RunningVariance(window_size)
        self.stop_at: torch.Tensor | None = None  # scheduled stop step per row, 0 = none
        self.stopped: torch.Tensor | None = None
        self.steps = 0
        self._scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor | tuple | None) -> torch.Tensor:
        """As the logits processor (``scores`` [B, V]): record them and pass them on unchanged. As
        the stopping criterion (``scores`` None, or generate's tuple of past scores): [B] bool."""
        if isinstance(scores, torch.Tensor) and scores.dim() == 2:
            self._scores = scores
            return scores
        return self._decide(input_ids)

    def _decide(self, input_ids: torch.LongTensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        if self._scores is None:
            return done
        scores, self._scores = self._scores, None
        self.vars.push(scores.max(dim=1).values.float().cpu())
        self.varvars.push(self.vars.variance())
        self.steps += 1
        if self.stop_at is None:
            self.stop_at = torch.zeros(batch, dtype=torch.long)
            self.stopped = torch.zeros(batch, dtype=torch.bool)
        if self.steps < self.window_size:
            return done
        looping = self.varvars.variance() < self.threshold
        # nougat's loop over rows: a looping row with a pending stop is marked stopped (the
        # original's ``stopped[b] = stop_inds[b] >= size``), any other looping row (re)schedules
        # its stop, a row that stopped looping resets.
        pending = looping & (self.stop_at > 0) & ~self.stopped
        stop = int(min(max(self.steps, 1) * 1.15 + 150 + self.window_size, self.last_index))
        self.stopped = torch.where(pending, self.stop_at >= self.steps, self.stopped & looping)
        self.stop_at = torch.where(looping & ~pending, torch.full_like(self.stop_at, stop), self.stop_at)
        self.stop_at = torch.where(looping, self.stop_at, torch.zeros_like(self.stop_at))
        return done | bool(self.stopped.all())
