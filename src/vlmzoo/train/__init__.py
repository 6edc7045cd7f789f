"""Training: the loop, the process group and its strategies, batches across ranks, run checkpoints.

- :mod:`~vlmzoo.train.trainer`: :class:`Trainer` and :class:`TrainConfig` (AdamW, schedule, loop);
- :mod:`~vlmzoo.train.world`: :class:`World`, :func:`init_world` / :func:`teardown` under torchrun;
- :mod:`~vlmzoo.train.strategies`: DDP and FSDP2 wrapping;
- :mod:`~vlmzoo.train.batches`: splitting a global batch over ranks;
- :mod:`~vlmzoo.train.run_checkpoint`: sharded run checkpoints and their conversion.
"""

from vlmzoo.train.trainer import TrainConfig, Trainer
from vlmzoo.train.world import World, init_world, teardown

__all__ = ["TrainConfig", "Trainer", "World", "init_world", "teardown"]
