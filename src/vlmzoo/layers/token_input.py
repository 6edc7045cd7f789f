"""The checks every text tower makes of its token ids before any compute (CLIP's, SigLIP's)."""

from __future__ import annotations

import torch

from vlmzoo.errors import InputError, require


def check_token_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int, context_length: int
) -> None:
    """``input_ids`` [B, L] integer ids in [0, vocab_size), 0 < L <= context_length, B > 0, and
    ``attention_mask`` (if any) of the same shape; raises :class:`InputError` naming the problem."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise InputError(f"input_ids must be a [B, L] tensor, got {shape}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise InputError(f"input_ids hold an empty batch (shape {tuple(input_ids.shape)})")
    if input_ids.shape[1] == 0:
        raise InputError(f"input_ids hold no tokens (shape {tuple(input_ids.shape)}): nothing to pool")
    if input_ids.shape[1] > context_length:
        raise InputError(f"sequence length {input_ids.shape[1]} exceeds the context length {context_length}")
    require(
        (input_ids.min() >= 0) & (input_ids.max() < vocab_size),
        lambda: (
            f"token ids must be in [0, {vocab_size}), got range [{int(input_ids.min())}, {int(input_ids.max())}]"
        ),
        f"token ids outside [0, {vocab_size})",
    )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise InputError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
