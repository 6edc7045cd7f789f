"""Conversation templates: how a question (and earlier turns) become the prompt a model was trained on.

A :class:`TemplateConfig` writes ``system``, then each turn through ``user`` / ``assistant``
(``{}`` marks the message), then ``generation``, the text that opens the reply. Images are placed
by ``images_at``: ``"first_user"`` writes ``image`` once per image at the start of the first
user message (LLaVA, Vary), ``"each_example"`` one image in front of every user turn
(OpenFlamingo's few-shot prompts: each example is an image, a question and its answer),
``"prefix"`` writes nothing in the text because the image tokens precede the whole sequence, BOS
included (BLIP-2; the processor puts them there). When the caller has written the image placeholder in the texts themselves,
the template adds none.

The published templates, with their sources:

* ``vicuna_v1`` (LLaVA-1.5): llava/conversation.py ``conv_vicuna_v1``, ``SeparatorStyle.TWO``
  with ``sep=" "`` and ``sep2="</s>"``; llava/serve/cli.py puts ``"<image>\\n"`` before the first
  question. ``"SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"``.
* ``blip2`` (BLIP-2 OPT): the VQA prompt ``"Question: {} Answer:"`` of LAVIS's BLIP-2 examples,
  earlier turns as ``"Question: {} Answer: {}."`` joined by spaces (LAVIS
  examples/blip2_instructed_generation.ipynb); generation stops at a newline (LAVIS
  lavis/models/blip2_models/blip2_opt.py sets ``eos_token_id`` to the id of ``"\\n"``).
* ``openflamingo`` (OpenFlamingo VQA): open_flamingo/eval/models/open_flamingo.py
  ``get_vqa_prompt``: ``"<image>Question:{q} Short answer:{a}<|endofchunk|>"`` per example, the
  query ending at ``"Short answer:"``; ``Flamingo.generate`` stops at ``<|endofchunk|>`` and
  open_flamingo/eval/evaluate.py ``postprocess_vqa_generation`` cuts at ``Question``, ``Answer``
  or ``Short``.
* ``vary_toy`` / ``vary_base`` (Qwen chat): vary/utils/conversation.py ``conv_mpt``
  (``SeparatorStyle.MPT``, ``sep="<|im_end|>"``); vary/demo/run_qwen_vary.py writes
  ``<img>`` + ``<imgpad>`` x 256 + ``</img>`` before the question, followed by ``"\\n"`` in
  Vary-toy's demo and directly by the question in Vary's.
* ``plain``: the text as given (no roles), one ``<image>`` per image in front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vlmzoo.config import Config
from vlmzoo.errors import InputError

ImagesAt = Literal["first_user", "each_example", "prefix"]
ROLES = ("user", "assistant")

# A finished exchange: (role, text) pairs or {"role": ..., "content": ...} dicts, user first.
History = Sequence[tuple[str, str] | Mapping[str, Any]]


@dataclass
class TemplateConfig(Config):
    """A conversation format (see the module docstring); ``stop`` are the strings an answer ends at."""

    kind = "template"

    name: str
    system: str = ""
    user: str = "{}"
    assistant: str = "{}"
    generation: str = ""
    image: str = "<image>"
    images_at: ImagesAt = "first_user"
    stop: tuple[str, ...] = ()

    def validate(self) -> None:
        for field in ("user", "assistant"):
            if getattr(self, field).count("{}") != 1:
                self._fail(field, "must hold exactly one '{}' where the message goes")
        if any(not s for s in self.stop):
            self._fail("stop", "stop strings must be non-empty")

    def render(
        self, question: str, history: History | None = None, num_images: int = 0, image_token: str = "<image>"
    ) -> str:
        """The prompt for ``question`` after the turns in ``history``, with ``num_images`` images.

        Image text is inserted only when no message already holds ``image_token``; the count of
        placeholders against images is the processor's check (it sees the tokens).
        """
        turns = [*normalize_history(history), ("user", question)]
        before = [""] * len(turns)  # image text in front of each formatted turn
        if num_images and not any(image_token in text for _, text in turns):
            turns, before = self._place_images(turns, before, num_images, image_token)
        parts = [self.system]
        for (role, text), lead in zip(turns, before, strict=True):
            parts.append(lead + (self.user if role == "user" else self.assistant).replace("{}", text, 1))
        parts.append(self.generation)
        return "".join(parts)

    def _place_images(
        self, turns: list[tuple[str, str]], before: list[str], num_images: int, image_token: str
    ) -> tuple[list[tuple[str, str]], list[str]]:
        users = [i for i, (role, _) in enumerate(turns) if role == "user"]
        if self.images_at == "first_user":  # inside the first message, after its role
            first = users[0]
            turns[first] = ("user", self.image * num_images + turns[first][1])
        elif self.images_at == "each_example":  # before each user turn
            if num_images != len(users):
                raise InputError(
                    f"the {self.name!r} template puts one image before each question: {len(users)} "
                    f"question(s) ({len(users) - 1} in the history) but {num_images} image(s); pass one "
                    f"image per question, or write {image_token!r} in the texts where the images belong"
                )
            for i in users:
                before[i] = self.image
        return turns, before

    def clean(self, text: str) -> str:
        """The answer in generated ``text``: cut at the first stop string, whitespace stripped."""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=len(text))
        return text[:cut].strip()


def normalize_history(history: History | None) -> list[tuple[str, str]]:
    """``history`` as (role, text) pairs; roles must alternate user, assistant, user, ... and end
    with an assistant turn (the new question is the next user turn)."""
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(history or ()):
        if isinstance(turn, Mapping):
            role, text = turn.get("role"), turn.get("content")
        elif isinstance(turn, tuple | list) and len(turn) == 2:
            role, text = turn
        else:
            raise InputError(
                f"history[{i}] is {turn!r:.60}; pass (role, text) pairs or {{'role': ..., 'content': ...}} dicts"
            )
        if role not in ROLES or not isinstance(text, str):
            raise InputError(
                f"history[{i}] has role {role!r} and content of type {type(text).__name__}; roles are "
                f"'user' or 'assistant', contents are strings"
            )
        expected = ROLES[i % 2]
        if role != expected:
            raise InputError(
                f"history roles must alternate user, assistant, user, ...: history[{i}] is {role!r} "
                f"where {expected!r} was expected; merge consecutive messages of one role into one"
            )
        turns.append((role, text))
    if turns and turns[-1][0] != "assistant":
        raise InputError(
            f"history ends with a user turn (history[{len(turns) - 1}]); it must end with the "
            "assistant's answer, the new question is passed separately"
        )
    return turns


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_VARY_SYSTEM = "You should follow the instructions carefully and explain your answers in detail."


def _qwen_chat(name: str, image: str) -> TemplateConfig:
    return TemplateConfig(
        name=name,
        system=f"<|im_start|>system\n{_VARY_SYSTEM}<|im_end|>",
        user="<|im_start|>user\n{}<|im_end|>",
        assistant="<|im_start|>assistant\n{}<|im_end|>",
        generation="<|im_start|>assistant\n",
        image=image,
        stop=("<|im_end|>",),
    )


TEMPLATES: dict[str, TemplateConfig] = {
    "vicuna_v1": TemplateConfig(
        name="vicuna_v1",
        system=_VICUNA_SYSTEM + " ",
        user="USER: {} ",
        assistant="ASSISTANT: {}</s>",
        generation="ASSISTANT:",
        image="<image>\n",
        stop=("</s>",),
    ),
    "blip2": TemplateConfig(
        name="blip2",
        user="Question: {} ",
        assistant="Answer: {}. ",
        generation="Answer:",
        images_at="prefix",
        stop=("\n",),
    ),
    "openflamingo": TemplateConfig(
        name="openflamingo",
        user="Question:{} ",
        assistant="Short answer:{}<|endofchunk|>",
        generation="Short answer:",
        image="<image>",
        images_at="each_example",
        stop=("<|endofchunk|>", "Question", "Answer", "Short"),
    ),
    "vary_toy": _qwen_chat("vary_toy", "<img><imgpad></img>\n"),
    "vary_base": _qwen_chat("vary_base", "<img><imgpad></img>"),
    "plain": TemplateConfig(name="plain"),
}
