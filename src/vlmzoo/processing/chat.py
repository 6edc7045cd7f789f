"""One call from images and a question to the model's cleaned answer, streamed as it is generated.

``chat(model, processor, images, question, history=...)`` renders the family's template, reads
and preprocesses the images, checks the prompt against the model's context (before any
compute), generates through ``VisionLanguageModel.generate`` and returns the answer cut at the
template's stop strings. :func:`chat_batch` does the same for several conversations at once,
left-padded. With ``stream=``, text reaches the callback as tokens arrive (the object given to
``generate`` as ``streamer=`` is also a stopping criterion, so generation ends as soon as every
answer has met a stop string).

Chat lives in ``processing`` (above ``models``): it needs a :class:`Processor` and only calls
the model's ``generate``, so the models room never learns about tokenizers or templates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmzoo.errors import InputError
from vlmzoo.processing.processor import Processor
from vlmzoo.processing.templates import History

# New tokens at most when the caller names no number (and fewer when the context has less room).
DEFAULT_NEW_TOKENS = 256


@dataclass
class Conversation:
    """One conversation for :func:`chat_batch`: its images (files, PIL images or uint8 arrays),
    the new question, and the finished turns before it."""

    question: str
    images: Any = None
    history: History = field(default_factory=list)


def chat(
    model: Any,
    processor: Processor,
    images: Any,
    question: str,
    history: History | None = None,
    stream: Callable[[str], None] | None = None,
    max_new_tokens: int | None = None,
    **generate_kwargs: Any,
) -> str:
    """The model's answer to ``question`` about ``images`` after the turns in ``history``.

    ``stream(text)`` receives the answer piece by piece as it is generated (the pieces join to
    the returned answer). ``max_new_tokens`` None: what the prompt leaves of the model's context,
    at most 256. ``generate_kwargs`` go to transformers' ``generate`` (``do_sample``,
    ``temperature``, ...; greedy by default).
    """
    on_text = None if stream is None else (lambda _index, text: stream(text))
    conversation = Conversation(question, images, list(history or ()))
    return chat_batch(
        model, processor, [conversation], stream=on_text, max_new_tokens=max_new_tokens, **generate_kwargs
    )[0]


def chat_batch(
    model: Any,
    processor: Processor,
    conversations: Sequence[Conversation],
    stream: Callable[[int, str], None] | None = None,
    max_new_tokens: int | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to several conversations, generated together (prompts left-padded).

    ``stream(index, text)`` receives each conversation's answer piece by piece. ``max_new_tokens``
    None: what the longest prompt leaves of the model's context, at most :data:`DEFAULT_NEW_TOKENS`.
    """
    if not conversations:
        raise InputError("chat_batch got no conversations")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0
    ):
        raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive int, or None")
    processor = processor.for_model(model)
    images_of = [_images(c.images) for c in conversations]
    texts = [
        processor.prompt(c.question, c.history, len(im))
        for c, im in zip(conversations, images_of, strict=True)
    ]
    # The pixels and what else the model reads of the images (an any-resolution model's image_sizes).
    pixel_values, image_inputs = processor.model_image_inputs(images_of)
    rows = processor.encode_rows(texts, images_of, image_inputs)
    if max_new_tokens is None:  # what the longest prompt leaves of the context, at most the default
        context = processor.config.context
        longest = max(processor.sequence_length(r, len(im)) for r, im in zip(rows, images_of, strict=True))
        max_new_tokens = DEFAULT_NEW_TOKENS if context is None else min(DEFAULT_NEW_TOKENS, context - longest)
        max_new_tokens = max(max_new_tokens, 1)  # a prompt filling the context is refused just below
    for ids, images in zip(rows, images_of, strict=True):
        processor.check_length(ids, len(images), max_new_tokens)
    batch = processor.pad(rows, "left")
    device = model.decoder.embed_tokens.weight.device
    dtype = next(model.encoder.parameters()).dtype
    watcher = AnswerStream(processor, len(rows), stream)
    beams = int(generate_kwargs.get("num_beams", 1))
    if beams == 1:  # transformers' streamers and per-row stops assume one sequence per row
        generate_kwargs.setdefault("streamer", watcher)
        generate_kwargs.setdefault("stopping_criteria", [watcher])
    eos = processor.tokenizer.eos_token_id
    if eos is not None:
        generate_kwargs.setdefault("eos_token_id", eos)
    new = model.generate(
        _to(pixel_values, device, dtype),
        batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        max_new_tokens=max_new_tokens,
        **{k: v.to(device) for k, v in image_inputs.items()},
        **generate_kwargs,
    )
    answers = [processor.answer(row) for row in new.cpu()]
    if beams == 1:
        watcher.finish(answers)
    return answers


class AnswerStream:
    """Streamer (``put`` / ``end``) and stopping criterion (``__call__``) for ``generate``.

    transformers calls ``put`` with the prompt first (the prompt ids, or an empty [B, 0] tensor
    when the model generates from ``inputs_embeds``), then with each step's new token per row,
    then the stopping criteria. Text is passed on when it can no longer change: the last word,
    the start of a possible stop string and trailing whitespace are held
    back (text is passed on word by word), so the streamed pieces join to exactly the cleaned
    answer.
    """

    def __init__(self, processor: Processor, rows: int, on_text: Callable[[int, str], None] | None) -> None:
        self.processor = processor
        self.on_text = on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows
        self.done = [False] * rows
        self._prompt_seen = False
        template = processor.config.template
        self._stops = template.stop if template is not None else ()

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the prompt
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not self.done[i]:
                self.tokens[i].append(int(token))
                self._emit(i, final=False)

    def end(self) -> None:
        """Called by ``generate`` when it stops (the answers are flushed by :meth:`finish`)."""

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _visible(self, i: int) -> tuple[str, bool]:
        """(answer text so far, whether a stop string or EOS ended it)."""
        tok = self.processor.tokenizer
        ids = self.tokens[i]
        ended = tok.eos_token_id is not None and tok.eos_token_id in ids
        raw = self.processor.decode(ids)
        hits = [raw.find(s) for s in self._stops if s in raw]
        if hits:
            raw, ended = raw[: min(hits)], True
        return raw, ended

    def _emit(self, i: int, final: bool) -> None:
        raw, ended = self._visible(i)
        self.done[i] = self.done[i] or ended
        text = self.processor.clean(raw) if (final or ended) else self._settled(raw)
        if self.on_text is not None and text.startswith(self.sent[i]) and len(text) > len(self.sent[i]):
            self.on_text(i, text[len(self.sent[i]) :])
            self.sent[i] = text

    def _settled(self, raw: str) -> str:
        """The part of ``raw`` later tokens cannot change: up to its last whitespace (byte-level
        tokens may still merge into the last word, as transformers' ``TextStreamer`` also
        assumes), less any tail that could grow into a stop string."""
        text = raw.lstrip()
        cut = max(text.rfind(c) for c in " \n\t")
        text = text[:cut] if cut >= 0 else ""
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if stop.startswith(text[-k:]):
                    text = text[:-k]
                    break
        for special in self.processor.tokenizer.all_special_tokens:
            text = text.replace(special, "")
        return text.rstrip()

    def finish(self, answers: Sequence[str]) -> None:
        """Send each row's rest of its final answer."""
        for i, answer in enumerate(answers):
            if (
                self.on_text is not None
                and answer.startswith(self.sent[i])
                and len(answer) > len(self.sent[i])
            ):
                self.on_text(i, answer[len(self.sent[i]) :])
                self.sent[i] = answer


def _images(images: Any) -> list[Any]:
    if images is None:
        return []
    return list(images) if isinstance(images, list | tuple) else [images]


def _to(pixel_values: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if pixel_values is None:
        return None
    if isinstance(pixel_values, tuple):
        return tuple(p.to(device=device, dtype=dtype) for p in pixel_values)
    return pixel_values.to(device=device, dtype=dtype)
