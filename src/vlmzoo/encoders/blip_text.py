"""BLIP's text transformer, the "multimodal mixture of encoder-decoder" (MED; Li et al. 2022, section 3.1).

    ids [B, L] ─► word + position embeddings ─► LayerNorm ─► depth x PostLNLayer ─► tokens [B, L, width]
                                                              ▲ cross-attention (every layer)     │
    context [B, N, context_dim] (image tokens, or a question) ┘            lm_head (decoder) ─► logits

One BERT-base network (salesforce/BLIP's ``models/med.py``, configs/med_config.json: 768 wide,
12 layers, 12 heads, FFN 3072, LayerNorm eps 1e-12, vocabulary 30524 = bert-base-uncased +
``[DEC]`` + ``[ENC]``) run in three ways:

- **unimodal encoder** (``context=None``; med.py's ``mode='text'``): bidirectional self-attention,
  the cross-attention blocks skipped. Its ``[CLS]`` feature is the text side of ITC.
- **image-grounded encoder** (``context`` = image tokens): every layer also cross-attends the
  image; the first token (``[ENC]``) feeds ITM. BLIP's VQA question encoder is this mode too.
- **image-grounded decoder** (``causal=True``, ``lm_head``): causal self-attention, first token
  ``[DEC]``, the LM head on top (med.py ``BertLMHeadModel``). VQA's answer decoder cross-attends
  the question encoding instead of the image.

Layers are post-LN (``LN(x + sublayer(x))``): :class:`vlmzoo.layers.post_ln.PostLNLayer`, the
layer BLIP-2's Q-Former is built of too (fused ``attn.qkv``, ``cross_attn.q`` / ``cross_attn.kv``,
``mlp.fc1`` / ``mlp.fc2`` and one norm after each sublayer). ``lm_head.decoder.weight`` is tied to ``word_embeddings.weight``
(BERT's tie, kept by BLIP and transformers). Dropout (0.1 in med_config.json) is not modelled;
outputs in eval mode are unaffected.

Decoding keeps a KV cache (:class:`MEDCache`) on the caller's stack: self-attention keys and values
grow by one position a step, and each layer's cross-attention keys and values of the context are
computed once. :meth:`MEDText.generate` runs greedy search or beam search (the beam search of
transformers' ``GenerationMixin``, which BLIP's ``generate`` calls: length penalty 1,
``early_stopping=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.errors import InputError, require
from vlmzoo.layers import Activation, make_activation
from vlmzoo.layers.post_ln import LayerCache, PostLNLayer
from vlmzoo.layers.stack import BlockStack
from vlmzoo.registry import register_architecture
from vlmzoo.weights.hub import HubMixin

# transformers' beam search marks impossible candidates with this score rather than -inf, so that
# sums stay finite (generation/utils.py ``_beam_search``); ties resolve the same way here.
_BEAM_NEG = -1.0e9


@dataclass
class MEDConfig(Config):
    """Sizes of one MED text transformer.

    ``context_dim`` is the width of what cross-attention reads (the image encoder's width for the
    text encoder and the captioner, the text width for VQA's answer decoder); ``None`` builds no
    cross-attention blocks. ``lm_head`` adds the decoder's BERT prediction head.
    """

    kind = "encoder"

    vocab_size: int = 30524
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    act: Activation = "gelu"
    norm_eps: float = 1e-12
    context_dim: int | None = 768
    lm_head: bool = False
    pad_token_id: int = 0

    def validate(self) -> None:
        self._check_positive(
            "vocab_size", "width", "depth", "num_heads", "mlp_dim", "max_positions", "norm_eps"
        )
        self._check_divisible("width", "num_heads")
        if self.context_dim is not None:
            self._check_positive("context_dim")
        if not 0 <= self.pad_token_id < self.vocab_size:
            self._fail("pad_token_id", f"must be a token id in [0, {self.vocab_size})")


@dataclass
class MEDCache:
    """The KV cache of one decoding pass; ``length`` is the number of positions already seen."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0

    @classmethod
    def empty(cls, depth: int) -> MEDCache:
        return cls([LayerCache() for _ in range(depth)], 0)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the self-attention rows ``index`` [B'] (beam search). The cross-attention rows are
        left alone: beams only move within their own batch item, whose context rows are equal."""
        for layer in self.layers:
            if layer.self_k is not None:
                layer.self_k = layer.self_k.index_select(0, index)
                layer.self_v = layer.self_v.index_select(0, index)


class MEDLMHead(nn.Module):
    """BERT's prediction head: ``decoder(norm(act(dense(x))))``, [..., width] -> [..., vocab]
    (med.py ``BertLMPredictionHead``; ``decoder.weight`` is tied to the word embeddings)."""

    def __init__(self, width: int, vocab_size: int, act: Activation, norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = make_activation(act)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))


@dataclass
class MEDOutput:
    """``tokens`` [B, L, width] the last layer's output; ``logits`` [B, L, vocab] with an LM head."""

    tokens: torch.Tensor
    logits: torch.Tensor | None = None


@register_architecture
class MEDText(BlockStack, HubMixin, nn.Module):
    """BLIP's MED text transformer: token ids [B, L] (+ context) -> :class:`MEDOutput`.

    Parameter names: ``word_embeddings``, ``position_embeddings``, ``layernorm`` (BERT's
    ``embeddings.*``), ``layers.{i}.*`` (:class:`~vlmzoo.layers.post_ln.PostLNLayer`), ``lm_head.*`` (:class:`MEDLMHead`).
    """

    config_class = MEDConfig

    def __init__(self, config: MEDConfig):
        super().__init__()
        self.config = c = config
        # padding_idx as in med.py's BertEmbeddings: the pad row gets no gradient.
        self.word_embeddings = nn.Embedding(c.vocab_size, c.width, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_positions, c.width)
        self.layernorm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.layers = nn.ModuleList(
            PostLNLayer(c.width, c.num_heads, c.mlp_dim, c.context_dim, act=c.act, norm_eps=c.norm_eps)
            for _ in range(c.depth)
        )
        self.lm_head = MEDLMHead(c.width, c.vocab_size, c.act, c.norm_eps) if c.lm_head else None
        self._init_bert_weights()
        self.tie_weights()

    def _init_bert_weights(self) -> None:
        """BERT's init: normal(0, 0.02) weights and embeddings (pad row zero), zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.word_embeddings.weight[self.config.pad_token_id].zero_()

    def tie_weights(self) -> None:
        """Point the LM head's output matrix at the word embeddings (BERT's tie)."""
        if self.lm_head is not None:
            self.lm_head.decoder.weight = self.word_embeddings.weight

    def wrap_units(self) -> list[nn.Module]:
        return list(self.layers)

    def _check(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        start: int,
    ) -> None:
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
            shape = (
                tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            )
            raise InputError(f"input_ids must be a non-empty [B, L] tensor, got {shape}")
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if start + input_ids.shape[1] > c.max_positions:
            raise InputError(
                f"{start + input_ids.shape[1]} positions exceed the {c.max_positions} position embeddings"
            )
        require(
            (input_ids.min() >= 0) & (input_ids.max() < c.vocab_size),
            lambda: (
                f"token ids must be in [0, {c.vocab_size}), got range "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            ),
            f"token ids outside [0, {c.vocab_size})",
        )
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise InputError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            if start:
                raise InputError("attention_mask cannot be combined with a KV cache (decoding runs unpadded)")
            # Padding on the right only: the first token (CLS / ENC / DEC) must be real, or a
            # causal query would see no key at all.
            require(
                attention_mask[:, 0].bool().all(),
                lambda: "attention_mask marks a first token as padding: pad on the right",
                "attention_mask marks a first token as padding",
            )
        if context is not None:
            if self.config.context_dim is None:
                raise InputError("this MED has no cross-attention (context_dim=None) but a context was given")
            if (
                context.ndim != 3
                or context.shape[-1] != c.context_dim
                or context.shape[0] != input_ids.shape[0]
            ):
                raise InputError(
                    f"context must be [B={input_ids.shape[0]}, N, {c.context_dim}], got {tuple(context.shape)}"
                )
            if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise InputError(
                    f"context_mask shape {tuple(context_mask.shape)} != context shape {tuple(context.shape[:2])}"
                )
        elif context_mask is not None:
            raise InputError("context_mask was given without a context")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: MEDCache | None = None,
    ) -> MEDOutput:
        """``input_ids`` [B, L] (right-padded); ``attention_mask`` [B, L] (1 = token, 0 = padding).

        ``context`` [B, N, context_dim] is cross-attended in every layer (omit it for the
        unimodal text mode); ``context_mask`` [B, N] (1 = attend) masks its padding. ``causal``
        makes self-attention causal (the decoder). ``cache`` (decoding, no ``attention_mask``)
        holds the keys and values of earlier positions and is extended in place; positions
        continue from ``cache.length``.
        """
        start = cache.length if cache is not None else 0
        self._check(input_ids, attention_mask, context, context_mask, start)
        length = input_ids.shape[1]
        positions = torch.arange(start, start + length, device=input_ids.device)
        x = self.layernorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        self_mask, is_causal = None, False
        if causal and start == 0 and attention_mask is None:
            is_causal = length > 1
        elif causal and length > 1:
            self_mask = torch.ones(length, start + length, dtype=torch.bool, device=x.device).tril(start)[
                None, None
            ]
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]
            self_mask = keys if self_mask is None else self_mask & keys
        if context is not None:
            context = context.to(x.dtype)
        cross_mask = context_mask.bool()[:, None, None, :] if context_mask is not None else None
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = self.run_block(layer, x, self_mask, is_causal, context, cross_mask, layer_cache)
        if cache is not None:
            cache.length = start + length
        logits = self.lm_head(x) if self.lm_head is not None else None
        return MEDOutput(tokens=x, logits=logits)

    # --- decoding ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        *,
        eos_token_id: int,
        max_length: int = 30,
        min_length: int = 0,
        num_beams: int = 1,
    ) -> torch.Tensor:
        """Decode after the prompt ``input_ids`` [B, P] (unpadded, starting with ``[DEC]``),
        cross-attending ``context`` [B, N, context_dim]: greedy (``num_beams=1``) or beam search.

        Returns [B, T] ids, prompt included, T <= ``max_length`` (which counts the prompt, as
        transformers' ``generate`` does); rows that ended early are padded with ``pad_token_id``
        after their ``eos_token_id``. ``eos_token_id`` cannot end a sequence shorter than
        ``min_length`` (also counting the prompt).
        """
        if self.lm_head is None:
            raise InputError("generate needs a decoder: this MED has no LM head (lm_head=False)")
        if input_ids.ndim != 2 or input_ids.shape[1] >= max_length:
            raise InputError(
                f"the prompt {tuple(input_ids.shape)} must be [B, P] with P < max_length={max_length}"
            )
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise InputError(f"num_beams must be a positive integer, got {num_beams!r}")
        if not 0 <= eos_token_id < self.config.vocab_size:
            raise InputError(
                f"eos_token_id={eos_token_id} is not in the vocabulary [0, {self.config.vocab_size})"
            )
        if num_beams == 1:
            return self._greedy(input_ids, context, context_mask, eos_token_id, max_length, min_length)
        return self._beam_search(
            input_ids, context, context_mask, eos_token_id, max_length, min_length, num_beams
        )

    def _step(
        self,
        ids: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        cache: MEDCache,
    ) -> torch.Tensor:
        """[B, vocab] float32 next-token logits after ``ids`` [B, l]; the cache is extended."""
        logits = self(ids, context=context, context_mask=context_mask, causal=True, cache=cache).logits
        return logits[:, -1].float()

    def _greedy(
        self,
        ids: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        eos: int,
        max_length: int,
        min_length: int,
    ) -> torch.Tensor:
        cache = MEDCache.empty(self.config.depth)
        pad = self.config.pad_token_id
        logits = self._step(ids, context, context_mask, cache)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        while True:
            if ids.shape[1] < min_length:  # transformers' MinLengthLogitsProcessor
                logits[:, eos] = -float("inf")
            token = torch.where(finished, pad, logits.argmax(dim=-1))
            ids = torch.cat([ids, token[:, None]], dim=1)
            finished = finished | (token == eos)
            if bool(finished.all()) or ids.shape[1] >= max_length:
                return ids
            logits = self._step(token[:, None], context, context_mask, cache)

    def _beam_search(
        self,
        ids: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        eos: int,
        max_length: int,
        min_length: int,
        beams: int,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Beam search as transformers' ``GenerationMixin._beam_search`` (``early_stopping=False``).

        Each step keeps the 2K best continuations of the K running beams; those that end (EOS,
        or ``max_length``) among the K best become finished hypotheses scored by
        sum(log p) / generated_length ** ``length_penalty``, and the K best unfinished ones run on.
        An item stops once K hypotheses are finished and its best running beam, divided by its
        current generated length, cannot beat the worst of them.
        """
        batch, prompt = ids.shape
        vocab, pad, dev = self.config.vocab_size, self.config.pad_token_id, ids.device
        context = context.repeat_interleave(beams, dim=0)
        if context_mask is not None:
            context_mask = context_mask.repeat_interleave(beams, dim=0)
        running = torch.full((batch, beams, max_length), pad, dtype=torch.long, device=dev)
        running[:, :, :prompt] = ids[:, None]
        running_scores = torch.zeros(batch, beams, device=dev)
        running_scores[:, 1:] = _BEAM_NEG  # all beams start equal: only the first one may expand
        done_seqs = running.clone()
        done_scores = torch.full((batch, beams), _BEAM_NEG, device=dev)
        done_lengths = torch.zeros(batch, beams, dtype=torch.long, device=dev)
        is_done = torch.zeros(batch, beams, dtype=torch.bool, device=dev)
        can_improve = torch.ones(batch, 1, dtype=torch.bool, device=dev)
        first_k = torch.arange(2 * beams, device=dev) < beams
        offsets = torch.arange(batch, device=dev)[:, None] * beams
        cache = MEDCache.empty(self.config.depth)
        cur = prompt
        logits = self._step(ids.repeat_interleave(beams, dim=0), context, context_mask, cache)
        while True:
            log_probs = F.log_softmax(logits, dim=-1)
            if cur < min_length:  # on the log-probabilities, as transformers' processors run
                log_probs[:, eos] = -float("inf")
            scores = (log_probs.view(batch, beams, vocab) + running_scores[..., None]).view(batch, -1)
            top_scores, top_index = scores.topk(2 * beams, dim=1)
            source, token = top_index // vocab, top_index % vocab
            candidates = running.gather(1, source[..., None].expand(-1, -1, max_length)).clone()
            candidates[:, :, cur] = token
            ends = (token == eos) | (cur + 1 >= max_length)
            # the K best candidates that go on
            alive = top_scores + ends.float() * _BEAM_NEG
            keep = alive.topk(beams, dim=1).indices
            running = candidates.gather(1, keep[..., None].expand(-1, -1, max_length))
            running_scores = alive.gather(1, keep)
            kept_source = source.gather(1, keep)
            # hypotheses that just ended among the K best join the finished ones
            new_done = ends & first_k
            final = top_scores / float(cur + 1 - prompt) ** length_penalty
            final = final + (~can_improve).float() * _BEAM_NEG + (~new_done).float() * _BEAM_NEG
            merged_scores = torch.cat([done_scores, final], dim=1)
            best = merged_scores.topk(beams, dim=1).indices
            done_seqs = torch.cat([done_seqs, candidates], dim=1).gather(
                1, best[..., None].expand(-1, -1, max_length)
            )
            done_scores = merged_scores.gather(1, best)
            new_lengths = torch.full_like(token, cur + 1)
            done_lengths = torch.cat([done_lengths, new_lengths], dim=1).gather(1, best)
            is_done = torch.cat([is_done, new_done], dim=1).gather(1, best)
            cur += 1
            best_running = running_scores[:, :1] / float(cur - prompt) ** length_penalty
            worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True).values, _BEAM_NEG)
            can_improve = can_improve & (best_running > worst_done).any(dim=1, keepdim=True)
            if not bool(can_improve.any()) or bool(ends.all()):
                break
            cache.reorder((kept_source + offsets).view(-1))
            last = running[:, :, cur - 1].reshape(-1, 1)
            logits = self._step(last, context, context_mask, cache)
        out = done_seqs[:, 0]
        length = int(done_lengths[:, 0].max())
        return out[:, :length]
