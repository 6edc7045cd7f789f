"""Wrapping a model for its world: as it is (one process), DDP, or FSDP2 with per-block units.

``"fsdp"`` calls FSDP2's ``fully_shard`` on every unit of ``model.wrap_units()`` (encoder blocks,
adapter layers, the decoder's own layers), then on the root, with an optional bf16
``MixedPrecisionPolicy`` (bf16 compute, fp32 gradient reduction).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlmzoo.errors import ConfigError
from vlmzoo.train.world import World


def apply_strategy(
    model: nn.Module,
    world: World,
    bf16: bool = False,
    find_unused_parameters: bool = False,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Move ``model`` to the world's device and wrap it; returns the module to run forward on.

    - single: ``model`` itself.
    - ddp: ``DistributedDataParallel(model)``. Frozen parameters (``requires_grad=False``) are not
      synchronised at all, so a frozen encoder needs no ``find_unused_parameters``; pass it only if
      some *trainable* parameter gets no gradient in a step.
    - fsdp: ``fully_shard`` on each of ``model.wrap_units()``, then on ``model`` (the root takes
      the remaining parameters: embeddings, final norms, heads). Returns ``model``, whose
      parameters are now DTensor shards — build the optimizer after this call. ``generate`` is
      registered as a forward method so evaluation can generate from the sharded model. With
      ``bf16`` the policy computes in bf16 and reduces gradients in fp32 (then autocast is not
      needed).
    """
    if world.strategy == "single":  # left where the caller put it
        return model
    model.to(world.device)
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("the model has no trainable parameters: unfreeze a part with set_trainable()")
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not hasattr(model, "wrap_units"):
        raise ConfigError(
            f"FSDP needs per-block units: {type(model).__name__} has no wrap_units() (see layers/stack.py)"
        )
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for unit in model.wrap_units():
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return model
