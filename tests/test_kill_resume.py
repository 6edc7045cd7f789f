"""A run checkpoint is one atomic unit: SIGKILL at random moments, resume, and end bit-identical.

A subprocess (this file run as a script) trains a tiny ViT with drop-path (torch's generator)
and a loss jittered by Python's and numpy's generators, checkpointing after every step, and
resumes when its run folder holds a checkpoint. The test kills it with SIGKILL at seeded random
moments — after a random number of steps plus a random fraction of a step, so kills land in
training, in writing a checkpoint and in swapping it in — restarts it each time, and finally
compares the finished run with one that was never interrupted: weights, optimizer state,
generator states and history, bit for bit.

The default run kills a handful of times; ``-m slow`` runs the long version.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 12


def _worker(run_dir: Path, steps: int) -> None:
    import numpy as np
    import torch

    import vlmzoo
    from vlmzoo.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = vlmzoo.create_encoder("clip-vit-tiny", drop_path_rate=0.2)

    def batch_fn(step: int, micro: int):
        if micro == 0:  # the checkpoint of step `step` is in place: tell the parent
            print(f"step {step}", flush=True)
        g = torch.Generator().manual_seed(step)
        return torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 16, 64, generator=g)

    def loss_fn(m, batch):
        jitter = 1 + 0.01 * (random.random() + float(np.random.rand()))
        return ((m(batch[0]).tokens - batch[1]) ** 2).mean() * jitter

    config = TrainConfig(steps=steps, lr=3e-3, warmup_steps=2, checkpoint_every=1, eval_every=1000)
    trainer = Trainer(model, config, batch_fn, loss_fn, run_dir, progress=False)
    if (run_dir / "checkpoint").is_dir():
        trainer.resume()
    print("ready", flush=True)
    trainer.fit()


def launch(run_dir: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, __file__, str(run_dir), str(steps)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_line(process: subprocess.Popen, timeout: float) -> str | None:
    """The worker's next line, or None once it exits (fails the test if it says nothing in time)."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        pytest.fail(f"the worker printed nothing for {timeout} s:\n{process.stderr.read()[-3000:]}")
    line = process.stdout.readline()
    return line.strip() if line else None


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"the worker failed (exit {process.returncode}):\n{err[-4000:]}"


def run_state(run_dir: Path) -> dict:
    """Everything the finished run holds, as comparable values (bytes of every tensor)."""
    from safetensors.torch import load_file

    checkpoint = run_dir / "checkpoint"
    tensors = {}
    for name in ("model.safetensors", "rank-00000-of-00001.safetensors"):
        tensors.update({f"{name}:{k}": v.numpy().tobytes() for k, v in load_file(checkpoint / name).items()})
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["history"].pop("train_seconds", None)  # wall-clock time, the one thing allowed to differ
    return {"tensors": tensors, "state": state}


def killed_and_resumed(run_dir: Path, kills: int, seed: int, steps: int) -> int:
    """Train to the end, SIGKILLing the worker up to ``kills`` times; returns the kills made.

    Each launch is killed after a random number (0-2) of completed steps plus a random fraction
    of the next one (timed from the steps just seen), so kills fall anywhere in a step: in the
    forward and backward pass, writing the checkpoint, or swapping it in."""
    rng = random.Random(seed)
    made = 0
    while made < kills:
        process = launch(run_dir, steps)
        if read_line(process, 300) != "ready":
            finish(process)  # it failed before training: show why
        start, step_time = time.perf_counter(), 0.2
        for _ in range(rng.randrange(0, 3)):
            if read_line(process, 300) is None:
                break
            step_time, start = time.perf_counter() - start, time.perf_counter()
        time.sleep(rng.random() * step_time)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        if process.returncode == 0:  # it finished before the kill
            return made
        made += 1
    finish(launch(run_dir, steps))
    return made


def check_kills(tmp_path: Path, kills: int, seed: int, steps: int) -> None:
    finish(launch(tmp_path / "straight", steps))
    made = killed_and_resumed(tmp_path / "killed", kills, seed, steps)
    assert made >= min(kills, 3), f"only {made} kills landed before the run ended"
    assert run_state(tmp_path / "killed") == run_state(tmp_path / "straight")


def test_a_run_killed_at_random_moments_resumes_bit_identical(tmp_path):
    check_kills(tmp_path, kills=5, seed=0, steps=STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_kills_at_random_moments_resume_bit_identical(tmp_path, seed):
    check_kills(tmp_path, kills=25, seed=seed, steps=40)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]))
