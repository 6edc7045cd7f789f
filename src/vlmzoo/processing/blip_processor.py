"""BLIP's input pipeline (Li et al. 2022): images -> pixels, texts -> BERT ids, generated ids -> text.

What salesforce/BLIP does at evaluation, and this processor with it:

* **Images** (data/__init__.py ``transform_test``): ``Resize((image_size, image_size),
  BICUBIC)`` on the PIL image (no crop: the aspect ratio is not kept), ``ToTensor``, CLIP's
  mean/std. 384 px for captioning and retrieval, 480 for VQA (configs/*.yaml), 224 for
  pretraining. transformers' ``BlipImageProcessorPil`` is the same recipe (equal to 1e-6); its
  default ``BlipImageProcessor`` resizes the uint8 tensor with torchvision instead, which puts a
  few pixels one or two uint8 levels away (at most 0.03 in normalised units, mean below 1e-4).
* **Text** (models/blip.py ``init_tokenizer``): bert-base-uncased's WordPiece tokenizer with
  ``[DEC]`` added as the BOS token (id 30522) and ``[ENC]`` as an additional special token (30523);
  texts are written ``[CLS] ... [SEP]`` and padded on the right. The model puts ``[DEC]`` or
  ``[ENC]`` in place of ``[CLS]`` itself. Retrieval pads / truncates to 35 tokens
  (blip_retrieval.py, train_retrieval.py), captioning to 40 (blip.py ``BLIP_Decoder``).
  The data sets clean captions with :func:`pre_caption` and questions with
  :func:`pre_question` (data/utils.py) before tokenizing.
* **Captions** start from the prompt "a picture of " (blip.py ``BLIP_Decoder``):
  :attr:`BLIPProcessor.prompt_ids` are its word pieces for ``BLIPModel.caption``, and
  :meth:`BLIPProcessor.decode` writes generated ids as BLIP does: special tokens skipped, the
  prompt cut off the front of a whole sequence (``caption[len(self.prompt):]``). VQA answers
  decode the same way (blip_vqa.py ``generate``), without a prompt.

Saved as every vlmzoo processor is: ``vlmzoo_processor.json`` (the config, tagged
``BLIPProcessorConfig``, written atomically) plus the tokenizer's own files, no pickle.
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
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.blip import BLIPConfig
from vlmzoo.processing.image import CLIP_MEAN, CLIP_STD, ImageProcessorConfig
from vlmzoo.processing.image_input import Alpha
from vlmzoo.processing.processor import (
    ImageStreamConfig,
    Processor,
    ProcessorConfig,
    TokenizedProcessor,
    load_processor_files,
    save_processor_files,
)
from vlmzoo.registry import get_entry

CAPTION_PROMPT = "a picture of "
DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
# bert-base-uncased's special tokens and their ids; a tokenizer built for tests keeps them
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def blip_image_recipe(image_size: int = 384) -> ImageProcessorConfig:
    """BLIP's ``transform_test``: bicubic resize to ``image_size`` x ``image_size``, CLIP mean/std."""
    return ImageProcessorConfig(
        size=image_size, crop_size=image_size, mean=CLIP_MEAN, std=CLIP_STD, do_center_crop=False
    )


@dataclass
class BLIPProcessorConfig(Config):
    """What a :class:`BLIPProcessor` does (see the module docstring).

    ``image``: the resize / normalise recipe; ``alpha`` / ``exif_transpose``: how files are read
    (:mod:`vlmzoo.processing.image_input`; BLIP's ``Image.open(...).convert('RGB')`` is
    ``"drop"``, no EXIF). ``max_length``: tokens per text, ``[CLS]`` and ``[SEP]`` included
    (longer texts are truncated, as BLIP's tokenizer calls do). ``padding``: to the batch's
    longest text or always to ``max_length``. ``prompt``: the captioning prompt ("" for none).
    ``bos_token_id`` / ``enc_token_id``: the model's ``[DEC]`` and ``[ENC]`` ids, checked against
    the tokenizer (None: unchecked). ``tokenizer``: where to load it from when none is given.
    """

    kind = "blip_processor"

    family: str = "blip"
    image: ImageProcessorConfig = field(default_factory=blip_image_recipe)
    alpha: Alpha = "drop"
    exif_transpose: bool = False
    max_length: int = 35
    padding: Literal["longest", "max_length"] = "longest"
    prompt: str = CAPTION_PROMPT
    bos_token_id: int | None = 30522
    enc_token_id: int | None = 30523
    tokenizer: str | None = "bert-base-uncased"

    def validate(self) -> None:
        if self.max_length < 2:
            self._fail("max_length", "must hold at least [CLS] and [SEP] (>= 2)")
        for name in ("bos_token_id", "enc_token_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                self._fail(name, "must be a token id (>= 0) or None")
        if self.tokenizer is not None and not self.tokenizer.strip():
            self._fail(
                "tokenizer", "must be a tokenizer folder or hub id, or None for the caller's tokenizer"
            )


def pre_caption(caption: str, max_words: int = 50) -> str:
    """salesforce/BLIP's caption cleaning (data/utils.py ``pre_caption``): lower case, each of
    ``.!"()*#:;~`` replaced by a space, runs of spaces collapsed, stripped, at most ``max_words``
    words (the retrieval and caption data sets use 30)."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def pre_question(question: str, max_words: int = 50) -> str:
    """salesforce/BLIP's question cleaning (data/utils.py ``pre_question``): lower case, each of
    ``.!"()*#:;~`` removed, trailing spaces stripped, at most ``max_words`` words."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])


def add_blip_tokens(tokenizer: Any) -> Any:
    """``tokenizer`` with ``[DEC]`` as its BOS token and ``[ENC]`` as an additional special token,
    each added only when missing (models/blip.py ``init_tokenizer``); changed in place."""
    if tokenizer.bos_token != DEC_TOKEN:
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    if ENC_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def tiny_bert_tokenizer(words: Sequence[str], directory: str | os.PathLike, vocab_size: int = 128) -> Any:
    """A BERT WordPiece tokenizer (lower-casing) over ``words`` for tests and CPU demos with tiny
    models, laid out as bert-base-uncased + BLIP: ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101,
    ``[SEP]`` 102, ``[MASK]`` 103, the words from 104 on, unused slots up to ``vocab_size`` - 2,
    then ``[DEC]`` and ``[ENC]`` (126 and 127 for the tiny presets' 128 tokens). The vocabulary
    file is written to ``directory``.
    """
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(104)]
    for token, index in BERT_SPECIALS.items():
        vocab[index] = token
    vocab += sorted({w.lower() for w in words} - set(vocab), key=[w.lower() for w in words].index)
    if len(vocab) > vocab_size - 2:
        raise InputError(f"{len(vocab)} tokens and [DEC], [ENC] do not fit vocab_size={vocab_size}")
    vocab += [f"[unused{i}]" for i in range(len(vocab), vocab_size - 2)]
    path = Path(directory) / "vocab.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # the vocabulary file is the first argument in transformers 4 (vocab_file) and 5 (vocab)
    return add_blip_tokens(BertTokenizerFast(str(path), do_lower_case=True))


class BLIPProcessor(TokenizedProcessor):
    """BLIP's images, texts and decoding (see the module docstring).

    ``tokenizer``: a transformers BERT tokenizer (``[DEC]`` / ``[ENC]`` are added when missing),
    else loaded from ``config.tokenizer`` on first use; either way its ids of ``[DEC]`` and
    ``[ENC]`` are checked against the config's.
    """

    def __init__(self, config: BLIPProcessorConfig | None = None, tokenizer: Any = None) -> None:
        config = BLIPProcessorConfig() if config is None else config
        super().__init__(config, tokenizer)
        self._ready = False
        if tokenizer is not None:
            self.tokenizer  # noqa: B018 (a wrong tokenizer is refused here, not at first use)
        # image reading and the recipe are the chat Processor's, with no text side
        self._images = Processor(
            ProcessorConfig(
                family=config.family,
                image=ImageStreamConfig(config.image),
                alpha=config.alpha,
                exif_transpose=config.exif_transpose,
            )
        )

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any = None) -> BLIPProcessor:
        """The processor of a BLIP model: a registered name (``"blip-base-caption"``), its
        :class:`~vlmzoo.models.blip.BLIPConfig` or the model (:func:`blip_processor_config`)."""
        return cls(blip_processor_config(model), tokenizer)

    # --- the tokenizer ----------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The BERT tokenizer with BLIP's two tokens (loaded from ``config.tokenizer`` if none was given)."""
        tok = super().tokenizer
        if not self._ready:
            add_blip_tokens(tok)
            vocab = tok.get_vocab()
            for token, wanted in (
                (DEC_TOKEN, self.config.bos_token_id),
                (ENC_TOKEN, self.config.enc_token_id),
            ):
                if wanted is not None and vocab.get(token) != wanted:
                    raise ConfigError(
                        f"the model writes {token} as token {wanted} but the tokenizer has it as "
                        f"{vocab.get(token)}; use bert-base-uncased (BLIP appends [DEC] then [ENC] to its "
                        "30522 tokens), or the tokenizer the model was trained with"
                    )
            self._ready = True
        return tok

    # --- images -----------------------------------------------------------------------------
    def pixel_values(self, images: Any) -> torch.Tensor:
        """[n, 3, S, S] pixel values of an image or a list of them (paths, PIL images, uint8 HWC arrays)."""
        out = self._images.pixel_values(images)
        if out is None:
            raise InputError("no images given; pass a path, a PIL image, a uint8 array or a list of them")
        return out  # type: ignore[return-value]

    # --- text -------------------------------------------------------------------------------
    def text(self, texts: str | Sequence[str], *, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` [B, L] of ``texts`` as BLIP tokenizes them: ``[CLS]``
        first, ``[SEP]`` last, right-padded (``config.padding``), truncated to ``max_length``
        (default ``config.max_length``)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch or not all(isinstance(t, str) for t in batch):
            raise InputError("text() takes a string or a non-empty list of strings")
        length = self.config.max_length if max_length is None else max_length
        if length < 2:
            raise InputError(f"max_length={length} cannot hold [CLS] and [SEP]")
        out = self.tokenizer(
            batch,
            padding=self.config.padding,
            truncation=True,
            max_length=length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The captioning prompt's word pieces without ``[CLS]`` / ``[SEP]`` (``BLIPModel.caption``'s
        ``prompt_ids``; blip.py feeds ``[DEC]`` + these)."""
        if not self.config.prompt:
            return ()
        return tuple(self.tokenizer(self.config.prompt, add_special_tokens=False)["input_ids"])

    # --- generated ids ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, *, strip_prompt: bool = False) -> str:
        """Generated ``ids`` -> text, up to the first ``[SEP]``, special tokens skipped.

        ``BLIPModel.caption`` and ``answer`` return the ids after the prompt: decode them as they
        are. ``strip_prompt=True`` is for a whole sequence (``[DEC]`` + prompt + caption, what
        transformers' ``generate`` returns): the prompt's characters are cut off the decoded text,
        as blip.py does.
        """
        ids = [int(i) for i in ids]
        sep = self.tokenizer.sep_token_id
        if sep is not None and sep in ids:
            ids = ids[: ids.index(sep)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text[len(self.config.prompt) :] if strip_prompt else text.strip()

    def batch_decode(
        self, ids: torch.Tensor | Sequence[Sequence[int]], *, strip_prompt: bool = False
    ) -> list[str]:
        """:meth:`decode` of each row of [B, T] ids."""
        return [self.decode(row, strip_prompt=strip_prompt) for row in ids]

    # --- files ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vlmzoo_processor.json`` and the tokenizer's files (when it has one) to ``directory``."""
        return save_processor_files(directory, self.config, self._tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None) -> BLIPProcessor:
        """Read a processor saved by :meth:`save_pretrained` (the tokenizer from the same directory
        unless ``tokenizer`` is given: an object, a directory or a hub id)."""
        config, tokenizer = load_processor_files(directory, BLIPProcessorConfig, tokenizer)
        return cls(config, tokenizer)


def blip_processor_config(model: Any) -> BLIPProcessorConfig:
    """The processor config of a BLIP model — a registered name, a
    :class:`~vlmzoo.models.blip.BLIPConfig` or a module built from one: its image size, its
    ``[DEC]`` / ``[ENC]`` ids, and the "a picture of " prompt for a captioner (none for
    pretraining, retrieval and VQA models)."""
    config = get_entry(model, "model").config if isinstance(model, str) else getattr(model, "config", model)
    if not isinstance(config, BLIPConfig):
        raise ConfigError(f"a BLIP processor needs a BLIP model or BLIPConfig, got {type(config).__name__}")
    captioner = (
        config.text_decoder is not None and config.decoder_reads == "image" and not config.retrieval_heads
    )
    return BLIPProcessorConfig(
        image=blip_image_recipe(config.vision.image_size),
        prompt=CAPTION_PROMPT if captioner else "",
        alpha="drop",  # salesforce/BLIP's data sets: Image.open(path).convert('RGB') (data/*_dataset.py)
        bos_token_id=config.bos_token_id,
        enc_token_id=config.enc_token_id,
    )
