"""Training: the loop, the process group and its strategies, batches across ranks, run checkpoints.

- :mod:`~vlmzoo.train.trainer`: :class:`Trainer` and :class:`TrainConfig` (AdamW, schedule, loop);
- :mod:`~vlmzoo.train.world`: :class:`World`, :func:`init_world` / :func:`teardown` under torchrun;
- :mod:`~vlmzoo.train.strategies`: DDP and FSDP2 wrapping;
- :mod:`~vlmzoo.train.batches`: splitting a global batch over ranks;
- :mod:`~vlmzoo.train.run_checkpoint`: a run's checkpoint (weights, optimizer, scheduler, generators,
  step) as one atomic unit, on one process or sharded, and its conversion to a model directory;
- :mod:`~vlmzoo.train.shards`: tensors spread over ranks as one safetensors file per rank;
- :mod:`~vlmzoo.train.rng`: the random generators of a process, captured and restored;
- :mod:`~vlmzoo.train.run_dir`: the run folder's manifest (vlmzoo deletes only what it wrote).
"""

from vlmzoo.train.trainer import TrainConfig, Trainer
from vlmzoo.train.world import World, init_world, teardown

__all__ = ["TrainConfig", "Trainer", "World", "init_world", "teardown"]
