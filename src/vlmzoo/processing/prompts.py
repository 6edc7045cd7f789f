"""Prompts with image placeholders -> padded token batches with prompt-masked labels.

A training example is ``(images, prompt, answer)``: the prompt holds one ``<image>`` per image,
the answer is what the model learns to produce. Labels are ``IGNORE_INDEX`` on the prompt and on
padding (the loss covers the answer and EOS only, as in LLaVA's instruction tuning). Training
batches pad on the right; generation prompts pad on the left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import InputError
from vlmzoo.processing.tokenizer import Tokenizer


@dataclass
class Batch:
    """``input_ids``/``attention_mask``/``labels`` [B, L]; ``pixel_values`` [n_img, 3, H, W] or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    pixel_values: torch.Tensor | None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(
            move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.pixel_values)
        )


def encode_prompt(tokenizer: Tokenizer, prompt: str, num_images: int) -> list[int]:
    """BOS + prompt tokens; checks that the prompt holds exactly one placeholder per image."""
    ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    found = ids.count(tokenizer.image_id)
    if found != num_images:
        raise InputError(
            f"prompt {prompt!r} holds {found} image placeholders but {num_images} images were given"
            + (" (add '<image>' where the image belongs)" if found == 0 else "")
        )
    return ids


def collate(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str] | None = None,
    pixel_values: Sequence[torch.Tensor] | None = None,
    images_per_sample: Sequence[int] | None = None,
    padding_side: str = "right",
) -> Batch:
    """Tokenise and pad a batch.

    ``pixel_values``: one [3, H, W] (or [k, 3, H, W]) tensor per sample with images;
    ``images_per_sample`` defaults to 1 per sample when images are given, else 0. With
    ``answers``, each sequence is prompt + answer + EOS and labels cover answer + EOS.
    """
    n = len(prompts)
    if n == 0:
        raise InputError("collate got no prompts (an empty batch)")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
    if answers is not None and len(answers) != n:
        raise InputError(f"{n} prompts but {len(answers)} answers")
    if images_per_sample is None:
        images_per_sample = [1] * n if pixel_values is not None else [0] * n
    if len(images_per_sample) != n:
        raise InputError(f"{n} prompts but images_per_sample has {len(images_per_sample)} entries")
    given = sum(1 if p.ndim == 3 else p.shape[0] for p in pixel_values or ())
    if given != sum(images_per_sample):
        raise InputError(
            f"pixel_values hold {given} images but images_per_sample counts {sum(images_per_sample)}"
        )
    rows, label_rows = [], []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(tokenizer, prompt, images_per_sample[i])
        labels = [IGNORE_INDEX] * len(ids)
        if answers is not None:
            answer = [*tokenizer.encode(answers[i]), tokenizer.eos_id]
            ids, labels = ids + answer, labels + answer
        rows.append(ids)
        label_rows.append(labels)
    length = max(len(r) for r in rows)
    input_ids = torch.full((n, length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, span] = torch.tensor(ids)
        mask[i, span] = 1
        labels[i, span] = torch.tensor(lab)
    pixels = None
    if pixel_values is not None and len(pixel_values):
        pixels = torch.cat([p if p.ndim == 4 else p[None] for p in pixel_values])
    return Batch(input_ids, mask, labels if answers is not None else None, pixels)
