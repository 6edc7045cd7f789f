"""A VLMEvalKit model over a vlmzoo VisionLanguageModel, and what the harness plug-ins share.

VLMEvalKit (open-compass/VLMEvalKit) drives a model through ``vlmeval/vlm/base.py``'s
``BaseModel``: its inference loop (``vlmeval/inference.py``'s ``infer_data``) builds each
question as a message, a list of ``{"type": "image" | "text", "value": ...}`` dicts (images as
file paths), and calls ``model.generate(message=..., dataset=name)``; ``generate`` normalises the
message (``preproc_content``: a string, one dict, a list of strings or a list of dicts) and calls
``generate_inner``. ``INTERLEAVE = True`` says the model reads images where the message puts them;
``is_api = False`` sends it down the local-model path (``set_dump_image`` is called first).
:class:`VLMEvalKitModel` has that interface without importing VLMEvalKit (it is not on PyPI);
register it in a launcher with ``vlmeval.config.supported_VLM["vlmzoo-x"] =
functools.partial(VLMEvalKitModel, "path-or-name")``, or pass the object to
``vlmeval.inference.infer_data_job``.

The functions below are shared with the lmms-eval plug-in (:mod:`vlmzoo.eval.lmms_plugin`):
loading a model and its processor from ``pretrained``, a conversation from ordered text / image
parts, and stop strings added to a processor's template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from vlmzoo.errors import ConfigError, InputError
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.processing.chat import Conversation, chat_batch
from vlmzoo.processing.processor import PROCESSOR_FILE, Processor
from vlmzoo.processing.processor_presets import PROCESSORS, create_processor, processor_for
from vlmzoo.registry import list_models
from vlmzoo.releases.create import create_model
from vlmzoo.releases.fetch import dtype_of
from vlmzoo.weights.hub import load

# One piece of a message in order: ("text", str) or ("image", a path, PIL image or uint8 array).
Part = tuple[str, Any]
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class VLMEvalKitModel:
    """VLMEvalKit's ``BaseModel`` interface (``vlmeval/vlm/base.py``) over a vlmzoo chat model.

    ``model_path``: a checkpoint directory, preset name or Hub id (as lmms-eval's
    ``pretrained=``), or pass ``model`` and ``processor`` objects. ``generate_kwargs`` are the
    generation config of every answer (``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_p``, ``num_beams``), as VLMEvalKit's own models take them (``vlmeval/vlm/llava/llava.py``
    keeps them as ``self.kwargs``); greedy by default.
    """

    INTERLEAVE = True  # images are read where the message puts them
    INSTALL_REQ = False
    VIDEO_LLM = False
    is_api = False
    allowed_types: ClassVar[list[str]] = ["text", "image"]

    def __init__(
        self,
        model_path: str | None = None,
        *,
        model: torch.nn.Module | None = None,
        processor: Processor | str | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        **generate_kwargs: Any,
    ) -> None:
        if (model_path is None) == (model is None):
            raise ConfigError(
                "VLMEvalKitModel takes model_path (a directory, preset or Hub id) or model=, one of them"
            )
        if model is None:
            chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            model = load_model(str(model_path), dtype, chosen)
        self.model = model.eval()
        if isinstance(processor, Processor):
            self.processor = processor
        elif model_path is None and processor is None:
            raise ConfigError(
                "VLMEvalKitModel(model=...) needs processor= (a Processor, directory or preset name)"
            )
        else:
            self.processor = load_processor(str(model_path), self.model, processor, tokenizer)
        self.kwargs = {"max_new_tokens": 256, "do_sample": False, **generate_kwargs}
        self.dump_image_func = None

    # --- BaseModel's surface ----------------------------------------------------------------
    def use_custom_prompt(self, dataset: str | None) -> bool:
        """False: every dataset's own ``build_prompt`` writes the question."""
        return False

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError("vlmzoo models use the dataset's own prompts (use_custom_prompt is False)")

    def set_dump_image(self, dump_image_func: Any) -> None:
        self.dump_image_func = dump_image_func

    def dump_image(self, line: Any, dataset: str | None) -> Any:
        return self.dump_image_func(line)

    def generate(self, message: Any, dataset: str | None = None) -> str:
        """The answer to ``message`` (a string, a dict, a list of strings or of dicts, as
        ``BaseModel.generate`` takes it)."""
        return self.generate_inner(preproc_content(message), dataset)

    def generate_inner(self, message: Sequence[Mapping[str, Any]], dataset: str | None = None) -> str:
        """The answer to one message: ``[{"type": "image" | "text", "value": ...}, ...]``."""
        turns = [("user", _message_parts(message))]
        return self._answer(conversation_from_turns(turns, self.processor))

    def chat(self, messages: Sequence[Mapping[str, Any]], dataset: str | None = None) -> str:
        """Multi-turn chat (``BaseModel.chat``): ``[{"role": ..., "content": message}, ...]``."""
        return self.chat_inner(
            [{"role": m["role"], "content": preproc_content(m["content"])} for m in messages], dataset
        )

    def chat_inner(self, messages: Sequence[Mapping[str, Any]], dataset: str | None = None) -> str:
        """The answer to the last user turn after the earlier ones (contents as lists of dicts)."""
        system: list[str] = []
        turns: list[tuple[str, list[Part]]] = []
        for m in messages:
            parts = _message_parts(m["content"])
            if m["role"] == "system":
                system.extend(v for k, v in parts if k == "text")
            elif turns and turns[-1][0] == m["role"]:
                turns[-1][1].extend(parts)
            else:
                turns.append((m["role"], parts))
        return self._answer(conversation_from_turns(turns, self.processor, system))

    def _answer(self, conversation: Conversation) -> str:
        kwargs = dict(self.kwargs)
        max_new_tokens = kwargs.pop("max_new_tokens", None)
        return chat_batch(
            self.model, self.processor, [conversation], max_new_tokens=max_new_tokens, **kwargs
        )[0]


def preproc_content(inputs: Any) -> list[dict[str, Any]]:
    """A message as a list of ``{"type", "value"}`` dicts, as ``BaseModel.preproc_content`` reads
    it: a string is text, a dict one item, a list of strings is text and image files (a string
    naming an existing file with an image suffix is an image)."""
    if isinstance(inputs, str):
        return [{"type": "text", "value": inputs}]
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    if isinstance(inputs, list | tuple) and inputs:
        if all(isinstance(x, str) for x in inputs):
            return [{"type": "image" if _is_image_file(x) else "text", "value": x} for x in inputs]
        if all(isinstance(x, Mapping) and "type" in x and "value" in x for x in inputs):
            return [dict(x) for x in inputs]
    raise InputError(
        f"a VLMEvalKit message is a string, a dict or a list of strings or of {{'type', 'value'}} "
        f"dicts; got {inputs!r:.80}"
    )


def _is_image_file(text: str) -> bool:
    return Path(text).suffix.lower() in _IMAGE_SUFFIXES and Path(text).is_file()


def _message_parts(message: Iterable[Mapping[str, Any]]) -> list[Part]:
    parts: list[Part] = []
    for item in message:
        kind = item.get("type")
        if kind not in ("text", "image"):
            raise InputError(f"a {kind!r} item: vlmzoo models read text and images only")
        parts.append((kind, item["value"]))
    return parts


# --- shared with the lmms-eval plug-in ----------------------------------------------------------
def conversation_from_turns(
    turns: Sequence[tuple[str, Sequence[Part]]], processor: Processor, system: Sequence[str] = ()
) -> Conversation:
    """A :class:`Conversation` from ordered turns ``(role, parts)``, roles ``"user"`` /
    ``"assistant"`` alternating and ending with the user's question.

    Images stay where the family's template puts them when the turns hold them there (all at the
    start of the first user turn for ``first_user`` templates such as LLaVA's; one in front of
    each question for OpenFlamingo's ``each_example``; anywhere for a ``prefix`` template such as
    BLIP-2's, whose images precede the whole text); elsewhere the template's image text (LLaVA's
    ``"<image>\\n"``) is written where each image is. ``system`` texts are written before the
    first question (the family's own system prompt stays). Text parts of one turn are joined by
    newlines, as VLMEvalKit's ``message_to_promptimg`` joins them.
    """
    template = processor.config.template
    if template is None:
        raise ConfigError("a conversation needs a processor with a template (a chat model's)")
    turns = [(role, list(parts)) for role, parts in turns]
    if not turns or turns[-1][0] != "user":
        raise InputError("the messages must end with a user message (the question to answer)")
    if system:
        turns[0] = (turns[0][0], [("text", "\n".join(system)), *turns[0][1]])
    images = [value for _, parts in turns for kind, value in parts if kind == "image"]
    placed = _template_places(template.images_at, turns, len(images))
    texts = [(role, _text(parts, None if placed else template.image)) for role, parts in turns]
    return Conversation(texts[-1][1], images, texts[:-1])


def with_stops(processor: Processor, stops: Iterable[str]) -> Processor:
    """``processor`` whose template also stops at ``stops`` (generation of a row ends at the
    first one met, and the answer is cut there)."""
    template = processor.config.template
    if template is None:
        raise ConfigError("stop strings need a processor with a template")
    merged = tuple(dict.fromkeys([*template.stop, *(s for s in stops if s)]))
    if merged == template.stop:
        return processor
    config = processor.config.replace(template=template.replace(stop=merged))
    return Processor(config, processor.tokenizer)


def load_model(pretrained: str, dtype: str | torch.dtype | None, device: torch.device) -> torch.nn.Module:
    """A checkpoint directory (``vlmzoo.load``), a registered preset's published weights
    (``vlmzoo.create_model(name, pretrained=True)``) or a Hub id of a vlmzoo checkpoint."""
    if Path(pretrained).is_dir():
        model = load(Path(pretrained), device, dtype=dtype_of(dtype))
    elif pretrained in list_models(kind="model"):
        model = create_model(pretrained, pretrained=True, dtype=dtype_of(dtype), device=device)
    else:
        model = load(pretrained, device, dtype=dtype_of(dtype))
    # VLMEvalKit and lmms-eval score generated answers: a dual encoder or BLIP cannot answer
    require_kind(model, GENERATIVE, f"the VLMEvalKit / lmms-eval model (pretrained={pretrained!r})")
    return model


def load_processor(
    pretrained: str, model: torch.nn.Module, processor: str | None = None, tokenizer: str | None = None
) -> Processor:
    """The model's processor: ``processor`` (a directory or preset name) when given, else the
    files saved beside the checkpoint, else the preset's by name, else the family's recipe for
    the model's config (:func:`vlmzoo.processing.processor_presets.processor_for`)."""
    require_kind(model, GENERATIVE, "load_processor")
    if processor is not None:
        found = create_processor(str(processor), tokenizer=tokenizer)
    elif (Path(pretrained) / PROCESSOR_FILE).is_file() or pretrained in list_models(kind="model"):
        found = create_processor(pretrained, tokenizer=tokenizer)
    else:
        config = processor_for(model)
        if tokenizer is not None:
            config = config.replace(tokenizer=str(tokenizer))
        found = PROCESSORS[type(config)](config)
    if not isinstance(found, Processor) or found.config.template is None:
        raise ConfigError(
            f"evaluation harnesses need a chat processor (a conversation template); {pretrained!r} "
            f"has a {type(found).__name__} of family {found.config.family!r}. Chat models (LLaVA, "
            "BLIP-2, OpenFlamingo, Vary) are supported; pass processor= to name another"
        )
    return found


def _template_places(images_at: str, turns: list[tuple[str, list[tuple[str, Any]]]], n: int) -> bool:
    """Whether the images are where the template itself would write them."""
    if n == 0 or images_at == "prefix":
        return True

    def leading(parts: list[tuple[str, Any]]) -> int:
        count = 0
        for kind, _ in parts:
            if kind != "image":
                break
            count += 1
        return count

    users = [parts for role, parts in turns if role == "user"]
    if images_at == "first_user":
        return leading(users[0]) == n
    return all(leading(parts) == 1 for parts in users) and len(users) == n  # each_example


def _text(parts: list[tuple[str, Any]], image_text: str | None) -> str:
    """A turn's text; images written as ``image_text`` where they are (None: left out)."""
    out, previous = "", None
    for kind, value in parts:
        if kind == "image":
            if image_text is not None:
                out += image_text
        else:
            out += ("\n" if previous == "text" else "") + value
        previous = kind
    return out
