"""The whole pipeline of an OCR-free document model (Donut, Nougat): pages -> pixels, a task prompt
-> decoder ids, generated ids -> JSON or markdown.

A document model reads one page per sample through its decoder's cross-attention
(:mod:`vlmzoo.adapters.encoder_decoder`), so the text holds no image placeholder: the decoder's
input is the task prompt alone.

- **Donut** (clovaai/donut's ``donut/model.py`` ``DonutModel.inference`` and ``app.py``): the prompt
  is the task start token, ``<s_cord-v2>``, ``<s_rvlcdip>``, or for DocVQA
  ``<s_docvqa><s_question>{question}</s_question><s_answer>``, tokenized without special tokens;
  the output is decoded with its special tokens, loses eos, pad and the first tag (the task
  token), and is read back as JSON (:func:`~vlmzoo.processing.donut_json.token2json`).
- **Nougat** (facebookresearch/nougat's ``nougat/model.py`` ``NougatModel.inference``): the prompt
  is the BOS ``<s>``; the output is decoded without special tokens and post-processed into
  markdown (:mod:`vlmzoo.processing.nougat_markdown`).

Every special tag of a prompt (``<s_...>``, ``</s_...>``, ``<.../>``) must be one token of the
tokenizer: a tag it lacks would be split into word pieces the model never saw as a task, so it is
refused with the tags the tokenizer does know. Saved as ``vlmzoo_processor.json`` plus the
tokenizer's files, like :class:`~vlmzoo.processing.processor.Processor`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.errors import InputError
from vlmzoo.processing.document_image import DocumentImageConfig, preprocess_documents
from vlmzoo.processing.donut_json import (
    DOCVQA_PROMPT_END,
    json2token,
    special_tokens_for,
    strip_task_prompt,
    token2json,
)
from vlmzoo.processing.nougat_markdown import postprocess_nougat
from vlmzoo.processing.processor import TokenizedProcessor, load_processor_files, save_processor_files

Output = Literal["json", "markdown"]

# A special tag of a Donut prompt: an opening/closing field tag or a category token.
_TAG = re.compile(r"</?s_[^<>\s]+>|<[^<>\s/]+/>")


@dataclass
class DocumentProcessorConfig(Config):
    """What a :class:`DocumentProcessor` does.

    ``tasks`` maps a task name to its prompt template (``{field}`` placeholders filled from
    keywords, e.g. ``{question}``); ``task`` is the default. ``output`` picks the reading of the
    generated text: ``"json"`` (Donut's token2json) or ``"markdown"`` (Nougat's post-processing).
    ``lowercase_fields``: lower-case the filled-in fields (clovaai/donut's ``test.py`` lower-cases
    DocVQA questions). ``max_length``: the decoding length, prompt included, of a fine-tune (its
    ``config.json`` ``max_length``: 128 for DocVQA, 8 for RVL-CDIP; None: the decoder's
    positions). ``tokenizer``: where to load the tokenizer from when none is given.
    """

    kind = "document_processor"

    family: str
    image: DocumentImageConfig
    tasks: dict[str, str] = field(default_factory=dict)
    task: str | None = None
    output: Output = "json"
    lowercase_fields: bool = False
    max_length: int | None = None
    tokenizer: str | None = None

    def validate(self) -> None:
        if self.max_length is not None:
            self._check_positive("max_length")
        if not self.family:
            self._fail("family", "must name the model family (donut, nougat)")
        if self.output not in ("json", "markdown"):
            self._fail("output", "must be 'json' (Donut) or 'markdown' (Nougat)")
        if not isinstance(self.tasks, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tasks.items()
        ):
            self._fail("tasks", "must map task names to prompt templates (strings)")
        if self.task is not None and self.task not in self.tasks:
            self._fail("task", f"{self.task!r} is not one of the tasks {sorted(self.tasks)}")
        if self.tokenizer is not None and not self.tokenizer.strip():
            self._fail("tokenizer", "must be a tokenizer folder or hub id, or None")


class DocumentProcessor(TokenizedProcessor):
    """Pages, task prompts and outputs of one document model (see the module docstring)."""

    # --- pages ----------------------------------------------------------------------------------
    def pixel_values(
        self, pages: Any, *, random_padding: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``[n, 3, H, W]`` for a page or a list of pages (paths, PIL images, uint8 arrays);
        ``random_padding`` places each page at a random offset (training), from ``generator``."""
        pages = list(pages) if isinstance(pages, list | tuple) else [pages]
        return preprocess_documents(
            pages, self.config.image, random_padding=random_padding, generator=generator
        )

    # --- prompts --------------------------------------------------------------------------------
    def prompt(self, task: str | None = None, **fields: str) -> str:
        """The prompt text of ``task`` (default: the config's), its ``{field}`` s filled from ``fields``."""
        task = task if task is not None else self.config.task
        if task is None or task not in self.config.tasks:
            raise InputError(
                f"unknown task {task!r} for the {self.config.family!r} processor; known tasks: "
                f"{sorted(self.config.tasks)} (or pass the prompt text itself to encode_prompt)"
            )
        template = self.config.tasks[task]
        wanted = set(re.findall(r"{(\w+)}", template))
        if wanted != set(fields):
            raise InputError(
                f"task {task!r} takes the fields {sorted(wanted)} (its prompt is {template!r}), got {sorted(fields)}"
            )
        if self.config.lowercase_fields:
            fields = {k: v.lower() for k, v in fields.items()}
        return template.format(**fields)

    def encode_prompt(self, text: str) -> list[int]:
        """Decoder ids of a prompt, without the tokenizer's own special tokens (the prompt's tags
        are its special tokens); every tag must be one token of the tokenizer."""
        tok = self.tokenizer
        vocab = tok.get_vocab()
        unknown = [tag for tag in _TAG.findall(text) if tag not in vocab]
        if unknown:
            known = sorted(
                name
                for name, template in self.config.tasks.items()
                if all(tag in vocab for tag in _TAG.findall(template))
            )
            raise InputError(
                f"the prompt's task tokens {unknown} are not in the tokenizer, which would split them into "
                f"word pieces the model was never trained on as a task; use the tokenizer the model was "
                f"trained with, a task it has the tokens of ({known or 'none'}), or add the tokens with "
                "tokenizer.add_special_tokens({'additional_special_tokens': [...]}) and resize the decoder's "
                "embeddings before fine-tuning on the new task"
            )
        if self.config.output == "markdown" and not text:
            return [tok.bos_token_id]  # Nougat starts from BOS alone (its generate's decoder start)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def __call__(
        self,
        pages: Any,
        prompts: str | Sequence[str] | None = None,
        *,
        task: str | None = None,
        **fields: str,
    ) -> dict[str, torch.Tensor]:
        """One prompt per page, left-padded for generation: ``pixel_values`` ``[n, 3, H, W]``,
        ``input_ids`` / ``attention_mask`` ``[n, L]``. ``prompts`` are prompt texts (one, or one per
        page); without them every page gets :meth:`prompt` (``task``, ``fields``)."""
        pixels = self.pixel_values(pages)
        n = pixels.shape[0]
        if prompts is None:
            texts = [self.prompt(task, **fields)] * n
        else:
            texts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(texts) != n:
            raise InputError(f"{len(texts)} prompts for {n} pages: give one prompt, or one per page")
        return self.pad([self.encode_prompt(t) for t in texts]) | {"pixel_values": pixels}

    # --- training targets -----------------------------------------------------------------------
    def add_tokens_for(self, targets: Sequence[Any], model: Any = None) -> list[str]:
        """Add the field tags of ``targets`` (and ``<sep/>``) that the tokenizer lacks, as special
        tokens, and grow ``model``'s vocabulary to match: what clovaai/donut's ``json2token(...,
        update_special_tokens_for_json_key=True)`` does before fine-tuning on a new dataset.
        Returns the tokens added (new rows start as the mean embedding)."""
        tok = self.tokenizer
        vocab = tok.get_vocab()
        missing = [t for t in special_tokens_for(targets) if t not in vocab]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if model is not None and len(tok) > model.decoder.vocab_size:
            model.resize_vocab(len(tok))
        return missing

    def training_batch(
        self,
        pages: Any,
        targets: Sequence[Any],
        *,
        task: str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced inputs for fine-tuning, as clovaai/donut's ``DonutDataset`` builds them.

        Each page's sequence is the task start token + ``json2token(target)`` + eos (Donut; the
        target is the whole ground truth, DocVQA's ``{"question": ..., "answer": ...}`` included),
        or BOS + the markdown + eos (Nougat); right-padded. ``labels`` are ``IGNORE_INDEX`` up to
        and including the prompt's end — the task's last tag: the task token itself, DocVQA's
        ``<s_answer>`` (donut's ``train.py`` ``prompt_end_token``), Nougat's BOS — and on padding.
        Pages are placed at random offsets (``generator``), as in training.
        """
        pixels = self.pixel_values(pages, random_padding=True, generator=generator)
        if len(targets) != pixels.shape[0]:
            raise InputError(f"{len(targets)} targets for {pixels.shape[0]} pages: give one per page")
        tok = self.tokenizer
        rows, ends = [], []
        if self.config.output == "markdown":
            for target in targets:
                rows.append(
                    [
                        tok.bos_token_id,
                        *tok(str(target), add_special_tokens=False)["input_ids"],
                        tok.eos_token_id,
                    ]
                )
                ends.append(0)
        else:
            template = self.config.tasks.get(task if task is not None else self.config.task or "", None)
            tags = _TAG.findall(template or "")
            if not tags:
                raise InputError(f"unknown task {task!r}; known tasks: {sorted(self.config.tasks)}")
            start, end = self.encode_prompt(tags[0]), self.encode_prompt(tags[-1])
            special = set(tok.get_vocab())
            for target in targets:
                text = json2token(target, special_tokens=special)
                unknown = sorted({tag for tag in _TAG.findall(text) if tag not in special})
                if unknown:
                    raise InputError(
                        f"the target's field tags {unknown[:6]}{' ...' if len(unknown) > 6 else ''} are not in "
                        "the tokenizer and would be split into word pieces: call "
                        "processor.add_tokens_for(targets, model) first (it adds them as special tokens "
                        "and grows the model's vocabulary, as donut-python does for a new dataset)"
                    )
                row = start + list(tok(text, add_special_tokens=False)["input_ids"])
                row.append(tok.eos_token_id)
                where = [i for i in range(len(row)) if row[i : i + len(end)] == end]
                if not where:
                    raise InputError(
                        f"target {target!r} never reaches the prompt's end {tags[-1]!r}: a {task or self.config.task} "
                        f"target holds every field of its prompt ({template!r})"
                    )
                rows.append(row)
                ends.append(where[0] + len(end) - 1)
        batch = self.pad(rows, padding_side="right")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        for i, end_at in enumerate(ends):
            labels[i, : end_at + 1] = IGNORE_INDEX  # the prompt is given, not predicted
        return batch | {"labels": labels, "pixel_values": pixels}

    # --- outputs --------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, prompt_ids: Sequence[int] | torch.Tensor = ()) -> str:
        """The text of ``prompt_ids + ids`` up to the first EOS after the prompt (special tokens kept
        for JSON, dropped for markdown, as the originals decode)."""
        prompt = [int(i) for i in prompt_ids]
        new = [int(i) for i in ids]
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        return self.tokenizer.decode(prompt + new, skip_special_tokens=self.config.output == "markdown")

    def postprocess(
        self, ids: Sequence[int] | torch.Tensor, prompt_ids: Sequence[int] | torch.Tensor = ()
    ) -> Any:
        """Generated ``ids`` (after ``prompt_ids``) -> Donut's JSON, or Nougat's markdown text."""
        text = self.decode(ids, prompt_ids)
        tok = self.tokenizer
        if self.config.output == "markdown":
            # NougatModel.inference post-processes with markdown_fix=False (nougat/model.py), as does
            # transformers' NougatProcessor.post_process_generation(fix_markdown=False) in its tests.
            return postprocess_nougat(text, fix_markdown=False)
        stripped = strip_task_prompt(
            text, eos_token=tok.eos_token or "</s>", pad_token=tok.pad_token or "<pad>"
        )
        return token2json(stripped, special_tokens=set(tok.get_added_vocab()))

    def batch_postprocess(self, generated: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> list[Any]:
        """:meth:`postprocess` of each row of ``generated`` [B, T] (``prompt_ids`` [B, L], left
        padding removed by their mask's zeros being pad ids)."""
        pad = self.tokenizer.pad_token_id
        outputs = []
        for i, row in enumerate(generated):
            prompt = [] if prompt_ids is None else [t for t in prompt_ids[i].tolist() if t != pad]
            outputs.append(self.postprocess(row, prompt))
        return outputs

    # --- one call from page to answer ----------------------------------------------------------
    def generation_options(self) -> dict[str, Any]:
        """The originals' decoding settings: greedy, ``<unk>`` never generated (``bad_words_ids``
        in ``DonutModel.inference`` and ``NougatModel.inference``), stopping at eos, and for Nougat
        its early stop on repeating pages (:mod:`vlmzoo.processing.nougat_stopping`; a fresh one
        per call: it keeps state)."""
        tok = self.tokenizer
        options: dict[str, Any] = {"do_sample": False, "eos_token_id": tok.eos_token_id}
        if tok.unk_token_id is not None:
            options["bad_words_ids"] = [[tok.unk_token_id]]
        if self.config.output == "markdown":  # NougatModel.inference's StoppingCriteriaScores
            from vlmzoo.processing.nougat_stopping import NougatStopping

            stopping = NougatStopping()
            options["logits_processor"] = [stopping]
            options["stopping_criteria"] = [stopping]
        return options

    def read(
        self,
        model: Any,
        pages: Any,
        prompts: str | Sequence[str] | None = None,
        *,
        task: str | None = None,
        max_new_tokens: int | None = None,
        **fields: str,
    ) -> list[Any]:
        """Each page's answer: JSON (Donut) or markdown (Nougat), generated by ``model`` (a
        document :class:`~vlmzoo.models.vlm.VisionLanguageModel`) with :meth:`generation_options`.

        Pages whose prompts have the same length are generated together and never padded: mBART
        numbers positions from the first column, so a left-padded row would not generate what it
        does alone (clovaai/donut's ``test.py`` reads one page at a time). ``max_new_tokens`` None:
        the config's ``max_length`` (the fine-tune's decoding length) less the prompt, else what
        the prompt leaves of the decoder's positions.
        """
        batch = self(pages, prompts, task=task, **fields)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows = [ids[i][mask[i] == 1].tolist() for i in range(ids.shape[0])]
        weight = model.decoder.embed_tokens.weight
        pixels = batch["pixel_values"].to(device=weight.device, dtype=next(model.encoder.parameters()).dtype)
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        answers: list[Any] = [None] * len(rows)
        for length, indices in by_length.items():
            limit = self.config.max_length or model.decoder.max_positions or length + 512
            new = max_new_tokens if max_new_tokens is not None else max(limit - length, 1)
            prompt = torch.tensor([rows[i] for i in indices], device=weight.device)
            generated = model.generate(
                pixels[indices], prompt, max_new_tokens=new, **self.generation_options()
            )
            for i, out in zip(indices, generated.cpu(), strict=True):
                answers[i] = self.postprocess(out, rows[i])
        return answers

    # --- files ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vlmzoo_processor.json`` and the tokenizer's files (when it has one)."""
        return save_processor_files(directory, self.config, self._tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None) -> DocumentProcessor:
        """Read a processor saved by :meth:`save_pretrained` (its tokenizer unless one is given)."""
        config, tokenizer = load_processor_files(directory, DocumentProcessorConfig, tokenizer)
        return cls(config, tokenizer)


# --- the published families --------------------------------------------------------------------
DOCVQA_PROMPT = "<s_docvqa><s_question>{question}</s_question>" + DOCVQA_PROMPT_END
# Donut's tasks (clovaai/donut's app.py and the released fine-tunes' task start tokens):
# pre-training reads text (<s_synthdog>, <s_iitcdip>); fine-tunes parse receipts (CORD), classify
# documents (RVL-CDIP) and answer questions (DocVQA).
DONUT_TASKS: dict[str, str] = {
    "synthdog": "<s_synthdog>",
    "iitcdip": "<s_iitcdip>",
    "cord-v2": "<s_cord-v2>",
    "rvlcdip": "<s_rvlcdip>",
    "docvqa": DOCVQA_PROMPT,
}


def donut(
    canvas: tuple[int, int] = (2560, 1920),
    *,
    task: str = "synthdog",
    align_long_axis: bool = False,
    max_length: int | None = None,
    tokenizer: str | None = "naver-clova-ix/donut-base",
) -> DocumentProcessorConfig:
    """Donut: its page recipe on ``canvas``, its task prompts, JSON output."""
    return DocumentProcessorConfig(
        family="donut",
        image=DocumentImageConfig.donut(canvas, align_long_axis=align_long_axis),
        tasks=dict(DONUT_TASKS),
        task=task,
        output="json",
        lowercase_fields=True,
        max_length=max_length,
        tokenizer=tokenizer,
    )


def nougat(
    canvas: tuple[int, int] = (896, 672), *, tokenizer: str | None = "facebook/nougat-base"
) -> DocumentProcessorConfig:
    """Nougat: margin crop + Donut's page steps, the BOS prompt, markdown output."""
    return DocumentProcessorConfig(
        family="nougat",
        image=DocumentImageConfig.nougat(canvas),
        tasks={"markdown": ""},
        task="markdown",
        output="markdown",
        tokenizer=tokenizer,
    )
