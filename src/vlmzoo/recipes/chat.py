"""``vlmzoo chat NAME|PATH --image x.png``: ask a vision-language model about images, answers streamed.

A PATH is a checkpoint directory holding the model (``vlmzoo.save``) and, beside it, its
processor (``processor.save_pretrained``: ``vlmzoo_processor.json`` and the tokenizer files). A
NAME is a registered preset: its processor comes from :func:`vlmzoo.create_processor` and its
weights are random (a preset names an architecture; trained weights come from a checkpoint).
With a question the answer is printed and the job ends; without one an interactive prompt keeps
the conversation (each turn sees the earlier ones) until an empty line, ``exit`` or end of input.
A document model (Donut, Nougat) reads each ``--image`` page once and prints its JSON or markdown;
``--question`` fills DocVQA's question.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from vlmzoo.errors import ConfigError
from vlmzoo.eval.model_kind import GENERATIVE, require_kind
from vlmzoo.processing.chat import chat
from vlmzoo.processing.document_processor import DocumentProcessor
from vlmzoo.processing.processor import PROCESSOR_FILE, Processor
from vlmzoo.processing.processor_presets import create_processor
from vlmzoo.registry import create_model
from vlmzoo.weights.hub import load

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_QUIT = {"", "exit", "quit"}


def load_chat_model(
    model: str | os.PathLike, tokenizer: str | None = None, device: str = "cpu", dtype: str = "float32"
) -> tuple[Any, Any, bool]:
    """(model in eval mode, its processor, whether the weights are random) for a directory or a name."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
    path = Path(model)
    if path.is_dir():
        module = load(path)
        # the kind first: a dual encoder's folder lacks the processor too, but no processor would help
        require_kind(module, GENERATIVE, f"chat (the model in {str(path)!r})")
        if not (path / PROCESSOR_FILE).is_file():
            raise ConfigError(
                f"{str(path)!r} holds no {PROCESSOR_FILE}; save the processor beside the model with "
                f"processor.save_pretrained({str(path)!r}) (after vlmzoo.save, which replaces the directory)"
            )
        processor = create_processor(path, tokenizer=tokenizer)
        random = False
    else:
        module = create_model(str(model))
        require_kind(module, GENERATIVE, f"chat (the preset {str(model)!r})")
        processor = create_processor(str(model), tokenizer=tokenizer)
        random = True
    module = module.to(device=device, dtype=_DTYPES[dtype]).eval()
    return module, processor, random


def run_chat(
    model: str | os.PathLike,
    images: Sequence[str] = (),
    question: str | None = None,
    *,
    tokenizer: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    device: str = "cpu",
    dtype: str = "float32",
    input: TextIO | None = None,
    output: TextIO | None = None,
) -> list[str]:
    """Answer ``question`` about ``images`` (or hold an interactive chat); returns the answers.

    Tokens are written to ``output`` (stdout) as they are generated. ``temperature`` 0 is greedy
    decoding; above 0, sampling at that temperature. ``max_new_tokens`` None: what the prompt leaves
    of the model's context, at most 256.
    """
    input = sys.stdin if input is None else input
    output = sys.stdout if output is None else output
    module, processor, random = load_chat_model(model, tokenizer, device, dtype)
    if random:
        print(
            f"note: {model} is a preset with random weights; pass a checkpoint directory for answers",
            file=output,
        )
    if isinstance(processor, DocumentProcessor):  # Donut / Nougat read pages, they do not converse
        return _read_pages(module, processor, images, question, max_new_tokens, output)
    if not isinstance(processor, Processor):
        raise ConfigError(
            f"{model} has a {type(processor).__name__}, not a conversation pipeline: use its own "
            "methods (BLIP: BLIPModel.caption / answer with BLIPProcessor)"
        )
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}

    def ask(text: str, history: list[tuple[str, str]]) -> str:
        answer = chat(
            module,
            processor,
            list(images),
            text,
            history=history,
            stream=lambda piece: print(piece, end="", file=output, flush=True),
            max_new_tokens=max_new_tokens,
            **sampling,
        )
        print(file=output, flush=True)
        return answer

    if question is not None:
        return [ask(question, [])]
    history: list[tuple[str, str]] = []
    answers = []
    while True:
        print("> ", end="", file=output, flush=True)
        line = input.readline()
        if not line or line.strip().lower() in _QUIT:
            break
        answer = ask(line.strip(), history)
        history += [("user", line.strip()), ("assistant", answer)]
        answers.append(answer)
    return answers


def _read_pages(
    module: Any,
    processor: DocumentProcessor,
    images: Sequence[str],
    question: str | None,
    max_new_tokens: int | None,
    output: TextIO,
) -> list[str]:
    """A document model's answer per page, printed as JSON (Donut) or markdown (Nougat): the
    question fills the task's ``{question}`` field (DocVQA); other tasks take none."""
    if not images:
        raise ConfigError(f"the {processor.config.family} model reads pages: pass at least one --image")
    template = processor.config.tasks.get(processor.config.task or "", "")
    fields = {"question": question} if question is not None and "{question}" in template else {}
    if question is not None and not fields:
        raise ConfigError(
            f"the {processor.config.family} task {processor.config.task!r} takes no question; drop --question"
        )
    answers = processor.read(module, list(images), max_new_tokens=max_new_tokens, **fields)
    texts = [a if isinstance(a, str) else json.dumps(a, ensure_ascii=False) for a in answers]
    for text in texts:
        print(text, file=output, flush=True)
    return texts
