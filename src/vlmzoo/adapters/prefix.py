"""Prefix conditioning: image embeddings spliced into the text at the image placeholders.

    visual tokens [n, N, C_enc] ─► adapter (MLP, Q-Former) ─► [n, M, C_llm] ─┐
    input_ids with placeholders ─► decoder embeddings [B, L, C_llm] ──────────┴► splice ─► [B, L', C_llm]

This is LLaVA's ``prepare_inputs_labels_for_multimodal`` (llava/model/llava_arch.py: each image's
features replace its ``-200`` placeholder, their labels are ``IGNORE_INDEX``) and BLIP-2's prefix
of projected queries (LAVIS blip2_opt.py; transformers' modeling_blip_2.py masked-scatters them
into the ``<image>`` positions its processor wrote), written once for every prefix adapter. A
subclass only maps tokens to embeddings: ``forward`` [n, N, in_dim] -> [n, M, out_dim] and
``num_tokens(N) -> M``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmzoo.adapters.base import Adapter, PaddingSide, Prepared, TextLayout
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import ConfigError, InputError


class PrefixAdapter(Adapter):
    """Base of adapters whose outputs enter the text as M embeddings per image."""

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def num_tokens(self, num_input_tokens: int) -> int:
        """M, the number of embeddings :meth:`forward` makes from N visual tokens."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """[n, N, in_dim] -> [n, M, out_dim]."""
        raise NotImplementedError

    # --- the contract -----------------------------------------------------------------------
    @staticmethod
    def decoder_width(decoder: Any) -> int:
        """The decoder's embedding width: the spliced embeddings stand in for token embeddings."""
        return decoder.hidden_size

    def bind(self, decoder: Any, layout: TextLayout) -> None:
        if self.out_dim != decoder.hidden_size:
            raise ConfigError(f"adapter out_dim={self.out_dim} != decoder hidden size={decoder.hidden_size}")
        super().bind(decoder, layout)

    def tokens_per_image(self, num_encoder_tokens: int) -> int:
        """M: each image's embeddings take M positions of the text."""
        return self.num_tokens(num_encoder_tokens)

    def visual_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embeddings spliced into the text: [n, N, in_dim] -> [n, M, out_dim]."""
        return self(tokens)

    def prepare(
        self,
        decoder: Any,
        input_ids: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        padding_side: PaddingSide | None = None,
    ) -> Prepared:
        """``inputs_embeds`` with every image spliced in; no conditioning beyond the inputs."""
        features = None if visual_tokens is None else self(visual_tokens)
        embeds, mask, labels = self.splice(
            decoder, input_ids, features, attention_mask, labels, padding_side=padding_side
        )
        return Prepared(attention_mask=mask, labels=labels, inputs_embeds=embeds)

    # --- the splice ---------------------------------------------------------------------------
    def splice(
        self,
        decoder: Any,
        input_ids: torch.Tensor,
        features: torch.Tensor | Sequence[torch.Tensor] | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        padding_side: PaddingSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice image embeddings into the text: returns (inputs_embeds, attention_mask, labels).

        ``features`` [n_img, M, hidden] in placeholder order, or one [M_i, hidden] tensor per image
        when images take different numbers of positions (any-resolution tiling); ``decoder`` embeds
        the text (its ``embed``). With ``expand_image_tokens``, each placeholder becomes M (M_i)
        positions; padding
        stays on the side it was on, or goes left with ``padding_side="left"`` (generation). Image positions get
        label ``IGNORE_INDEX``. Without images the text embeddings come back with the mask as given.
        """
        layout = self.bound_layout()
        b, length = input_ids.shape
        is_image = input_ids == layout.image_token_id
        # Placeholders may be a negative sentinel (LLaVA's -200): they are never embedded.
        text_embeds = decoder.embed(input_ids.masked_fill(is_image, 0))
        if features is None:
            # Text alone: the mask stays what the caller gave, None included, so that a call
            # continuing a KV cache lets the decoder cover the cached positions itself (a mask
            # of the new tokens alone would hide them).
            return text_embeds, attention_mask, labels
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths: list[int] | None = None
        if isinstance(features, torch.Tensor):
            num_images, m = features.shape[0], features.shape[1]
        else:  # one [M_i, hidden] per image: flat in placeholder order, each placeholder M_i wide
            lengths = [f.shape[0] for f in features]
            num_images, m = len(lengths), None
            features = (
                torch.cat(list(features)) if lengths else text_embeds.new_zeros(0, text_embeds.shape[-1])
            )
        features = features.to(text_embeds.dtype)
        if not layout.expand_image_tokens:
            embeds = text_embeds.masked_scatter(is_image[..., None], features.reshape(-1, features.shape[-1]))
            return (
                embeds,
                attention_mask,
                None if labels is None else labels.masked_fill(is_image, IGNORE_INDEX),
            )
        if lengths is None:
            width = torch.where(is_image, m, 1)
        else:
            sizes = torch.tensor(lengths, dtype=input_ids.dtype, device=input_ids.device)
            width = torch.ones_like(input_ids).masked_scatter(is_image, sizes)
        start = width.cumsum(dim=1) - width  # first merged position of each input token
        total, offset = merged_length(is_image, width, attention_mask, num_images, m, padding_side)
        if layout.max_length is not None and total > layout.max_length:
            per_image = m if lengths is None else lengths
            raise InputError(
                f"with {per_image} tokens per image the sequence grows to {total} > max_length="
                f"{layout.max_length}; truncating would cut an image span, shorten the text"
            )
        # Data movement by scatters of static shape (no boolean indexing), so that the splice traces
        # into one torch.compile graph. Every input token lands at `position`; a placeholder's slot
        # is then overwritten by its image's M embeddings, in placeholder (row-major) order.
        position = start + offset[:, None]
        hidden = text_embeds.shape[-1]
        embeds = text_embeds.new_zeros(b, total, hidden)
        embeds = embeds.scatter(1, position[..., None].expand(b, length, hidden), text_embeds)
        spans = torch.zeros(b, total + 1, dtype=torch.long, device=input_ids.device)
        spans = spans.scatter_add(1, position, is_image.long())  # +1 where an image starts
        spans = spans.scatter_add(1, position + width - 1 + is_image.long(), -is_image.long())  # -1 after it
        image_slot = spans.cumsum(dim=1)[:, :total] > 0
        embeds = embeds.masked_scatter(image_slot[..., None], features)
        mask = (
            attention_mask.new_zeros(b, total).scatter(1, position, attention_mask).masked_fill(image_slot, 1)
        )
        new_labels = None
        if labels is not None:
            new_labels = labels.new_full((b, total), IGNORE_INDEX).scatter(1, position, labels)
            new_labels = new_labels.masked_fill(image_slot, IGNORE_INDEX)
        return embeds, mask, new_labels


def merged_length(
    is_image: torch.Tensor,
    width: torch.Tensor,
    attention_mask: torch.Tensor,
    num_images: int,
    m: int | None,
    padding_side: PaddingSide | None = None,
) -> tuple[int, torch.Tensor]:
    """(merged length, per-row offset [B]) of the expanded sequence (each placeholder ``m`` wide,
    or as wide as ``width`` says when images differ: ``m`` None).

    Eagerly: the longest row, and shorter rows shifted right — their new padding on the left —
    when ``padding_side="left"`` (generation: every row must end in its last token) or when the
    input is left-padded; otherwise the new padding goes on the right. While ``torch.compile`` traces, the length must not depend on
    where the placeholders are, so every sample must hold the same number of images (asserted
    inside the graph): then every row has the same length and none is shifted. Images of
    different widths (``m`` None) make the length a host-side number: eager only.
    """
    b, length = is_image.shape
    new_len = width.sum(dim=1)
    if torch.compiler.is_compiling() and m is not None:
        per_row = num_images // b
        torch._assert_async(
            (is_image.sum(dim=1) == per_row).all() & (num_images % b == 0),
            "under torch.compile with expand_image_tokens=True every sample must hold the same "
            "number of images (or use expand_image_tokens=False)",
        )
        return length + per_row * (m - 1), torch.zeros_like(new_len)
    total = int(new_len.max())
    left = padding_side == "left" or (
        padding_side is None
        and bool((attention_mask[:, 0] == 0).any() and (attention_mask[:, -1] == 1).all())
    )
    return total, (total - new_len) if left else torch.zeros_like(new_len)
