"""The lmms-eval plug-in: every vlmzoo chat model as lmms-eval's ``--model vlmzoo``.

lmms-eval (EvolvingLMMs-Lab/lmms-eval, >= 0.7) finds models through the entry-point group
``lmms_eval.models`` (``lmms_eval/models/registry_v2.py``: a callable returning a
``ModelManifest``); vlmzoo's ``pyproject.toml`` points it at :func:`manifest`. One command::

    lmms-eval --model vlmzoo \\
        --model_args pretrained=llava-1.5-7b,dtype=bfloat16,batch_size=8,device=cuda \\
        --tasks pope,mme

``pretrained`` is a checkpoint directory (``vlmzoo.save``; its processor files,
``vlmzoo_processor.json`` + tokenizer, are read from the same directory), a registered preset
name (its published weights through ``vlmzoo.create_model(name, pretrained=True)`` and its
processor through ``vlmzoo.create_processor(name)``), or a Hub id of a vlmzoo checkpoint.
``processor=`` (a directory or a preset name) and ``tokenizer=`` (a directory or Hub id)
override where the processor and tokenizer come from.

The manifest names two classes for one model id, as lmms-eval's own models do: the chat class
(:class:`VlmzooChat`, ``is_simple = False``, the default) reads each request's
``ChatMessages``; the simple class (:class:`Vlmzoo`, chosen by ``--force_simple``) reads
``doc_to_visual`` + the context string. lmms-eval 0.7 builds ``loglikelihood`` requests
(``output_type: loglikelihood`` / ``multiple_choice`` tasks) only for simple models
(``ConfigurableMessagesTask.construct_requests`` in ``lmms_eval/api/task.py`` accepts generation
only), so those tasks run with ``--force_simple``.

Both classes generate through :func:`vlmzoo.processing.chat.chat_batch` (the family's template,
prompts left-padded, the answer cut at the template's stop strings and at the request's
``until`` strings, which also end generation) and score continuations with one forward pass per
batch, as :func:`vlmzoo.eval.vlm.multiple_choice` does. This module is the only one in vlmzoo
that imports lmms_eval.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.eval.vlmevalkit import conversation_from_turns, load_model, load_processor, with_stops
from vlmzoo.processing.chat import Conversation, chat_batch
from vlmzoo.processing.processor import Processor

MODEL_ID = "vlmzoo"

# generate() options a task's generation_kwargs may carry besides until / max_new_tokens /
# temperature / top_p / do_sample; other keys (model-specific ones such as image_aspect_ratio)
# are not generation options and are left out.
_PASSED_THROUGH = ("num_beams", "top_k", "repetition_penalty", "length_penalty", "no_repeat_ngram_size")
_NOT_IMAGES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".wav", ".mp3", ".flac", ".m4a", ".ogg")
_MODEL_ARGS = ("pretrained", "dtype", "device", "batch_size", "processor", "tokenizer", "max_batch_size")


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: model id ``vlmzoo``, chat and simple classes."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID,
        chat_class_path=f"{__name__}.VlmzooChat",
        simple_class_path=f"{__name__}.Vlmzoo",
    )


class Vlmzoo(lmms):
    """lmms-eval's simple model interface over a vlmzoo VisionLanguageModel (``--force_simple``).

    Model args: ``pretrained`` (directory, preset name or Hub id), ``dtype`` (``float32``,
    ``bfloat16``, ``float16``), ``device`` (default ``cuda`` when available, else ``cpu``),
    ``batch_size`` (rows generated or scored together), ``processor``, ``tokenizer``.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 1,
        processor: str | None = None,
        tokenizer: str | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size_per_gpu = _batch_size(batch_size)
        self.model = load_model(str(pretrained), dtype, self._device).eval()
        self.processor = load_processor(str(pretrained), self.model, processor, tokenizer)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Vlmzoo:
        """``key=value,...`` model args; the evaluator's ``batch_size`` / ``device`` (its
        ``--batch_size`` has a default) apply only where the model args name none."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        unknown = sorted(set(args) - set(_MODEL_ARGS))
        if unknown or "pretrained" not in args:
            raise ConfigError(
                f"--model_args {arg_string!r}: "
                + (f"unknown {unknown}; " if unknown else "no pretrained; ")
                + "the vlmzoo model takes pretrained= (a checkpoint directory, preset name or Hub id) "
                "and optionally dtype=, device=, batch_size=, processor=, tokenizer="
            )
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # --- requests ---------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Callable | None, doc: Any) -> list[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(doc)
        return _images_only(visuals if isinstance(visuals, list | tuple) else [visuals])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """``args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)``: the answer to the
        context (written through the family's template) about the document's images."""
        items = []
        for request in requests:
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            images = self._visuals(doc_to_visual, self._doc(task, split, doc_id))
            items.append((Conversation(ctx, images), gen_kwargs))
        return self._generate(items)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """``args = (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``. Round 0
        asks the context; round k asks what ``doc_to_text(doc, previous_output=..., round_idx=k,
        previous_round_info=...)`` returns as ``(visuals, text, terminal, _, info)``, until it says
        terminal (the protocol of lmms-eval's simple models, e.g. ``models/simple/llava_onevision.py``).
        Returns every round's answer per request."""
        states = []
        for request in requests:
            ctx, gen_kwargs, doc_to_visual, _, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            states.append(_Rounds(doc, gen_kwargs, Conversation(ctx, self._visuals(doc_to_visual, doc))))

        def next_round(state: _Rounds, doc_to_text: Callable) -> Conversation | None:
            visuals, text, terminal, _, info = doc_to_text(
                state.doc,
                previous_output=list(state.outputs),
                round_idx=len(state.outputs),
                previous_round_info=state.info,
            )
            state.info = info
            if terminal:
                return None
            listed = visuals if isinstance(visuals, list | tuple) else ([] if visuals is None else [visuals])
            return Conversation(text, _images_only(listed))

        return self._multi_round(states, [r.args[3] for r in requests], next_round)

    def _multi_round(
        self,
        states: list[_Rounds],
        round_fns: list[Callable],
        next_round: Callable[[_Rounds, Callable], Conversation | None],
    ) -> list[list[str]]:
        active = list(range(len(states)))
        while active:  # one round of every unfinished request per pass, batched
            answers = self._generate([(states[i].current, states[i].gen_kwargs) for i in active])
            still = []
            for i, answer in zip(active, answers, strict=True):
                states[i].outputs.append(answer)
                following = next_round(states[i], round_fns[i])
                if following is not None:
                    states[i].current = following
                    still.append(i)
            active = still
        return [s.outputs for s in states]

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """``args = (context, continuation, doc_to_visual, doc_id, task, split)``: per request the
        pair ``(-log p(continuation | images, templated context), greedy)``, the negative log
        likelihood summed over the continuation's tokens and whether greedy decoding would write
        exactly those tokens.

        Negative, because lmms-eval's ``multiple_choice`` picks ``argmin`` of the first values
        (``ConfigurableTask.process_results`` in ``lmms_eval/api/task.py``: its models return a
        loss), so the choice it picks is the most likely one, as
        :func:`vlmzoo.eval.multiple_choice` picks. Each pair is wrapped in lmms-eval's
        ``GenerationResult``: 0.7's evaluator turns any other tuple into its ``str``
        (``unwrap_generation_output`` in ``lmms_eval/api/instance.py``) and passes only a
        ``GenerationResult``'s ``text`` through unchanged.
        """
        from lmms_eval.api.instance import GenerationResult

        items = []
        for request in requests:
            ctx, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            if callable(continuation):  # output_type: loglikelihood passes doc_to_target itself
                continuation = continuation(doc)
            items.append((ctx, str(continuation), self._visuals(doc_to_visual, doc)))
        return [GenerationResult(text=(-logp, greedy)) for logp, greedy in self.score(items)]

    # --- the work ---------------------------------------------------------------------------
    def _generate(self, items: Sequence[tuple[Conversation, Mapping[str, Any] | None]]) -> list[str]:
        """Answers to ``(conversation, gen_kwargs)`` pairs; rows with the same generation kwargs
        are generated ``batch_size`` at a time, in request order."""
        answers: list[str] = [""] * len(items)
        groups: dict[str, list[int]] = {}
        for index, (_, gen_kwargs) in enumerate(items):
            groups.setdefault(json.dumps(gen_kwargs or {}, sort_keys=True, default=str), []).append(index)
        for indices in groups.values():
            processor, max_new_tokens, options = generation_settings(self.processor, items[indices[0]][1])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                out = chat_batch(
                    self.model,
                    processor,
                    [items[j][0] for j in chunk],
                    max_new_tokens=max_new_tokens,
                    **options,
                )
                for j, answer in zip(chunk, out, strict=True):
                    answers[j] = answer
        return answers

    @torch.no_grad()
    def score(self, items: Sequence[tuple[str, str, Sequence[Any]]]) -> list[tuple[float, bool]]:
        """``(log p(continuation), greedy)`` for ``(context, continuation, images)`` triples (the
        sum over the continuation's tokens; EOS is not added),
        ``batch_size`` rows per forward pass (right-padded: causal attention keeps padding out)."""
        processor = self.processor.for_model(self.model)
        rows = [continuation_ids(processor, ctx, cont, len(images)) for ctx, cont, images in items]
        results: list[tuple[float, bool]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(items)))
            ids = [rows[i][0] + rows[i][1] for i in chunk]
            batch = processor.pad(ids, "right")
            labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
            for r, i in enumerate(chunk):
                context, continuation = rows[i]
                labels[r, len(context) : len(context) + len(continuation)] = torch.tensor(continuation)
            images = [im for i in chunk for im in items[i][2]]
            results.extend(self._continuation_logprobs(processor.pixel_values(images), batch, labels))
        return results

    def _continuation_logprobs(
        self, pixel_values: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> list[tuple[float, bool]]:
        """The sum of log p(label) over the labelled positions ([B]), computed as
        :func:`vlmzoo.eval.vlm._sequence_logprobs` does (the model's merged labels line up with
        its logits), and whether each labelled token is the argmax."""
        device = self.model.decoder.embed_tokens.weight.device
        dtype = next(self.model.encoder.parameters()).dtype
        if isinstance(pixel_values, tuple):
            pixel_values = tuple(p.to(device=device, dtype=dtype) for p in pixel_values)
        elif pixel_values is not None:
            pixel_values = pixel_values.to(device=device, dtype=dtype)
        out = self.model(
            pixel_values,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            labels=labels.to(device),
        )
        logits, targets = out.logits[:, :-1].float(), out.labels[:, 1:]
        scored = targets != IGNORE_INDEX
        logp = F.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        sums = (picked * scored).sum(dim=1)
        greedy = ((logits.argmax(dim=-1) == targets) | ~scored).all(dim=1)
        return [(float(s), bool(g)) for s, g in zip(sums.cpu(), greedy.cpu(), strict=True)]


class VlmzooChat(Vlmzoo):
    """lmms-eval's chat model interface (the default for ``--model vlmzoo``): requests carry the
    task's ``doc_to_messages``, whose ``ChatMessages`` become a :class:`Conversation` (see
    :func:`conversation_from_messages`)."""

    is_simple = False

    def _messages(self, doc_to_messages: Any, doc: Any, **round_kwargs: Any) -> Any:
        return doc_to_messages(doc, **round_kwargs) if callable(doc_to_messages) else doc_to_messages

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """``args = (context, doc_to_messages, gen_kwargs, doc_id, task, split)``: the answer to the
        document's messages."""
        items = []
        for request in requests:
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            messages = self._messages(doc_to_messages, self._doc(task, split, doc_id))
            items.append((conversation_from_messages(messages, self.processor), gen_kwargs))
        return self._generate(items)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Same arguments as :meth:`generate_until`. Round 0 asks ``doc_to_messages(doc)``; round k
        ``doc_to_messages(doc, round_idx=k, previous_output=[...], previous_round_info=...)``,
        which returns ``(messages, terminal, _, info)`` (the protocol of
        ``ConfigurableMessagesTask`` and lmms-eval's chat models, e.g. ``models/chat/vllm.py``).
        Each round's messages are the whole prompt of that round. Returns every round's answer
        per request."""
        states = []
        for request in requests:
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            first = conversation_from_messages(self._messages(doc_to_messages, doc), self.processor)
            states.append(_Rounds(doc, gen_kwargs, first))

        def next_round(state: _Rounds, doc_to_messages: Callable) -> Conversation | None:
            payload = self._messages(
                doc_to_messages,
                state.doc,
                round_idx=len(state.outputs),
                previous_output=list(state.outputs),
                previous_round_info=state.info,
            )
            if not (isinstance(payload, tuple) and len(payload) == 4):
                return None
            messages, terminal, _, state.info = payload
            if terminal:
                return None
            return conversation_from_messages(messages, self.processor)

        return self._multi_round(states, [r.args[1] for r in requests], next_round)


class _Rounds:
    """One multi-round request: its document, generation kwargs, the round to ask, the answers."""

    def __init__(self, doc: Any, gen_kwargs: Mapping[str, Any] | None, current: Conversation) -> None:
        self.doc = doc
        self.gen_kwargs = gen_kwargs
        self.current = current
        self.outputs: list[str] = []
        self.info: Any = None


def _batch_size(value: int | str) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
        raise ConfigError(
            f"batch_size={value!r}: the vlmzoo plug-in takes a positive integer (no 'auto': rows are "
            "generated batch_size at a time, left-padded)"
        )
    return int(text)


# --- requests -> vlmzoo -----------------------------------------------------------------------
def generation_settings(
    processor: Processor, gen_kwargs: Mapping[str, Any] | None
) -> tuple[Processor, int | None, dict[str, Any]]:
    """(processor, max_new_tokens, generate options) for a task's ``generation_kwargs``.

    ``until`` strings join the template's stop strings (generation of a row ends at the first
    and the answer is cut there); ``temperature`` > 0 or ``do_sample`` samples (with ``top_p``),
    else decoding is greedy, as lmms-eval's models read them (``models/chat/llava_hf.py``).
    ``max_new_tokens`` None lets :func:`~vlmzoo.processing.chat.chat_batch` choose.
    """
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    until = [until] if isinstance(until, str) else list(until or ())
    max_new_tokens = kwargs.pop("max_new_tokens", None)
    if max_new_tokens is not None:
        max_new_tokens = int(max_new_tokens)
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_p = kwargs.pop("top_p", None)
    do_sample = bool(kwargs.pop("do_sample", False)) or temperature > 0
    options: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        if temperature > 0:
            options["temperature"] = temperature
        if top_p is not None:
            options["top_p"] = float(top_p)
    for name in _PASSED_THROUGH:
        if kwargs.get(name) is not None:
            options[name] = kwargs[name]
    if options.get("num_beams") == 1:
        del options["num_beams"]
    processor = with_stops(processor, until)
    return processor, max_new_tokens, options


def conversation_from_messages(messages: Any, processor: Processor) -> Conversation:
    """lmms-eval ``ChatMessages`` (or their dicts) -> a :class:`Conversation`.

    The last message is the question, the earlier user / assistant messages its history. Images
    stay where the family's template puts them when the messages hold them there (all at the
    start of the first user message; for OpenFlamingo's one image in front of each question;
    anywhere for a prefix template such as BLIP-2's); elsewhere the template's image text
    is written where each image is. A system message is written before the first question (the
    family's own system prompt stays). Several text parts of one message are joined by newlines.
    """
    if hasattr(messages, "messages"):  # a ChatMessages object
        messages = messages.model_dump()["messages"]
    system: list[str] = []
    turns: list[tuple[str, list[tuple[str, Any]]]] = []
    for i, message in enumerate(messages or ()):
        message = message.model_dump() if hasattr(message, "model_dump") else message
        role, parts = message.get("role"), _parts(message.get("content"), i)
        if role == "system":
            if any(kind != "text" for kind, _ in parts):
                raise InputError(
                    f"message {i} is a system message with an image; put images in user messages"
                )
            system.extend(value for _, value in parts)
        elif role in ("user", "assistant"):
            if turns and turns[-1][0] == role:  # consecutive messages of one role are one turn
                turns[-1][1].extend(parts)
            else:
                turns.append((role, list(parts)))
        else:
            raise InputError(f"message {i} has role {role!r}; expected 'system', 'user' or 'assistant'")
    return conversation_from_turns(turns, processor, system)


def _parts(content: Any, index: int) -> list[tuple[str, Any]]:
    if isinstance(content, str):
        return [("text", content)]
    parts = []
    for item in content or ():
        kind = item.get("type")
        if kind == "text":
            parts.append(("text", item.get("text", "")))
        elif kind == "image":
            parts.append(("image", item.get("url", item.get("image"))))
        else:
            raise InputError(
                f"message {index} holds a {kind!r} part; vlmzoo models read text and images only "
                "(video and audio tasks are not supported)"
            )
    return parts


def _images_only(visuals: Sequence[Any]) -> list[Any]:
    for v in visuals:
        media = isinstance(v, str) and Path(v).suffix.lower() in _NOT_IMAGES
        if media or isinstance(v, dict):
            raise InputError(f"visual {v!r:.80} is not an image; vlmzoo models read images only")
    return [v for v in visuals if v is not None]


def continuation_ids(
    processor: Processor, context: str, continuation: str, num_images: int
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of the templated ``context`` followed by ``continuation``.

    The whole text is tokenized at once and split where the context's own ids stop agreeing
    with it (as lm-evaluation-harness's ``_encode_pair`` does: tokenizers merge across the
    boundary, so the continuation's ids are those it has inside the whole text). Checked against
    the model's context length.
    """
    prompt = processor.prompt(context, None, num_images)
    whole = processor.encode(prompt + continuation, num_images)
    alone = processor.encode(prompt, num_images)
    cut = 0
    while cut < min(len(alone), len(whole)) and alone[cut] == whole[cut]:
        cut += 1
    processor.check_length(whole, num_images)
    return whole[:cut], whole[cut:]
