"""What one training sample and one training step cost: forward FLOPs and peak extra memory.

- :func:`forward_gflops` runs one forward pass under ``torch.utils.flop_counter.FlopCounterMode``
  (2 FLOPs per multiply-add; the matmuls, convolutions and attention products torch counts).
- :func:`peak_step_memory` runs one optimizer step (forward, backward, AdamW update) on a copy
  of the model and returns the most memory held at once beyond what existed before: activations,
  gradients, optimizer state and temporaries. On CUDA it is the allocator's own peak counter; on
  CPU the running sum of the allocation and free records of ``torch.profiler`` (the CPU allocator
  keeps no peak counter of its own).

Both leave the model and the random generators as they were, so a run that measures itself
trains exactly as one that does not.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vlmzoo.train.rng import rng_preserved


def forward_gflops(forward: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """GFLOPs of one call of ``forward`` (e.g. the model on one sample), as FlopCounterMode counts
    them; ``device`` is where it computes (its generator is left as it was).

    Runs with gradients enabled whatever the caller's mode: the counter's module tracker hooks
    the backward of every module's inputs, and fails on a module whose inputs need gradients
    but were computed without (a Q-Former's learned queries under ``torch.no_grad``)."""
    counter = FlopCounterMode(display=False)
    with rng_preserved(torch.device(device)), torch.enable_grad(), counter:
        forward()
    return counter.get_total_flops() / 1e9


def peak_step_memory(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> int | None:
    """Peak extra bytes of one training step of a copy of ``model`` on ``batch``.

    The step is ``loss_fn(copy, batch).backward()`` then one step of ``make_optimizer(copy)``; the
    copy's weights are the baseline (not counted). ``None`` where it cannot be measured (a device
    other than CPU or CUDA).
    """
    device = next(model.parameters()).device
    twin = copy.deepcopy(model)
    optimizer = make_optimizer(twin)

    def step() -> None:
        loss_fn(twin, batch).backward()
        optimizer.step()

    gc.collect()
    try:
        with rng_preserved(device):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                start = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                return torch.cuda.max_memory_allocated(device) - start
            if device.type == "cpu":
                return _cpu_peak(step)
            return None
    finally:
        optimizer.zero_grad(set_to_none=True)  # the copy's gradients and state go with it


def _cpu_peak(fn: Callable[[], None]) -> int:
    """Max of the running sum of the CPU allocator's records during ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with _profiler_log_dropped(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each "[memory]" record is one allocation (+bytes) or free (-bytes), with its time.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


# What the profiler's native library (Kineto) logs on every start and stop, and on a machine
# without a GPU: noise beside a training log, and "ERROR ... gpuGetDeviceCount" alarms users.
_PROFILER_LOG = re.compile(r"^(USDT|ERROR|WARNING|INFO):\S+ \S+ \d+:\d+ \w+\.cpp:\d+\]")


@contextlib.contextmanager
def _profiler_log_dropped() -> Iterator[None]:
    """Route the process's stderr (file descriptor 2) to a file for the block, then write back
    every line but the profiler library's own log lines: nothing else printed is lost."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not _PROFILER_LOG.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
