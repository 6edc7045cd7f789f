"""What every stack of repeated blocks offers to training at scale: per-block gradient
checkpointing and the per-block units that FSDP2 shards (``fully_shard``) one at a time.

An encoder, adapter or decoder mixes in :class:`BlockStack`, names its repeated blocks in
:meth:`BlockStack.wrap_units` and runs each of them through :meth:`BlockStack.run_block`. The
same list serves both purposes because the trade-off is the same: a transformer block is the
unit whose activations are worth recomputing and whose parameters are worth gathering together.

A module whose blocks are run by inner modules (the two towers of a fused encoder or of CLIP,
the stages of Swin, the layer stack inside the Q-Former) names those inner stacks in
:meth:`BlockStack.stack_parts`: the switch then reaches them and their units become its units.

Every unit is *called* as a module (``block(...)``, never ``block.forward(...)``) and owns its
parameters alone: FSDP2 gathers a unit's parameters in its forward pre-hook, so a unit whose
parameters were used outside its own call would read shards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class BlockStack:
    """Mixin for an ``nn.Module`` built from repeated blocks.

    ``grad_checkpointing`` (off by default) makes :meth:`run_block` recompute a block's
    activations in the backward pass instead of keeping them (``use_reentrant=False``, so a
    frozen block between trainable parts still passes gradients on, and inputs that do not
    require grad are fine).
    """

    grad_checkpointing: bool = False

    def stack_parts(self) -> list[BlockStack]:
        """Inner stacks that run blocks of their own, in order (none by default)."""
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-block gradient checkpointing on or off (timm's name for it), here and in
        every :meth:`stack_parts` part."""
        self.grad_checkpointing = bool(enable)
        for part in self.stack_parts():
            part.set_grad_checkpointing(enable)

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks, in order: checkpointing and FSDP wrapping units.

        By default the units of the :meth:`stack_parts`; a stack running blocks itself lists them.
        """
        parts = self.stack_parts()
        if not parts:
            raise NotImplementedError(f"{type(self).__name__} must list its blocks in wrap_units()")
        return [unit for part in parts for unit in part.wrap_units()]

    def run_block(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``block(*args, **kwargs)``, checkpointed when enabled and a graph is being built."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)
