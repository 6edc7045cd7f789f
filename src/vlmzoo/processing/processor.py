"""A model's whole input pipeline: images -> pixels, a conversation -> token ids, generated ids -> answer.

A :class:`Processor` is one :class:`ProcessorConfig` (JSON) plus a transformers tokenizer. The
config names the image recipe(s), how images are read (:mod:`vlmzoo.processing.image_input`),
the conversation template (:mod:`vlmzoo.processing.templates`) and how the image placeholder
becomes ids. The presets of each published family are in
:mod:`vlmzoo.processing.processor_presets`.

Image placeholders and tokenization. Every image is written in the text as ``image_token``
(``"<image>"``, Vary's ``"<imgpad>"``) and becomes ``tokens_per_image`` copies of
``image_token_id`` in ``input_ids``: 1 when the model expands each placeholder to its M image
embeddings (``VLMConfig.expand_image_tokens``), M when it expects them written out (what
transformers' processors produce). When the tokenizer knows ``image_token`` (an added token,
never split or merged with the text around it), the whole text is tokenized at once, as
transformers' ``LlavaProcessor`` does. When it does not (LLaVA's original Vicuna tokenizer and
its ``IMAGE_TOKEN_INDEX = -200``), the text between placeholders is tokenized chunk by chunk, as
LLaVA's ``tokenizer_image_token`` (llava/mm_utils.py) does. Either way nothing is ever truncated:
a prompt longer than the model's context is an error before any compute.

Saved beside a checkpoint as ``vlmzoo_processor.json`` plus the tokenizer's own files
(``tokenizer.save_pretrained`` plus the settings it loses, such as Llama's ``legacy``, checked by
reloading: :mod:`vlmzoo.processing.tokenizer_files`); no pickle. The tokenizer is a transformers one, or vlmzoo's
:class:`~vlmzoo.processing.tokenizer.SentencePieceTokenizer` (the demo's; saved as
``sentencepiece.model``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmzoo.config import Config
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.processing.binding import check_binding, describe_layout, image_token_mismatch, padding_id
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.image_input import Alpha, expand_to_square, load_image, mean_fill, to_rgb
from vlmzoo.processing.referring import PlainFormat, get_format
from vlmzoo.processing.templates import History, TemplateConfig
from vlmzoo.processing.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer
from vlmzoo.processing.tokenizer_files import load_tokenizer, save_tokenizer
from vlmzoo.weights.files import atomic_write_json, read_json

PROCESSOR_FILE = "vlmzoo_processor.json"
_FORMAT = "vlmzoo-processor/1"


@dataclass
class ImageStreamConfig(Config):
    """One image stream: ``pad_to_square`` (LLaVA's ``expand2square`` with the recipe's mean
    colour) and then the resize / crop / normalise ``recipe``."""

    kind = "image_stream"

    recipe: ImageProcessorConfig
    pad_to_square: bool = False


@dataclass
class ProcessorConfig(Config):
    """What a :class:`Processor` does (see the module docstring).

    ``image`` and ``second_image``: the image streams; with two (Vary's CLIP 224 and vocabulary
    1024 px towers) ``pixel_values`` is a tuple in that order, the order of the fused encoder's
    towers. ``template=None`` makes an image-only processor (a vision encoder's). ``alpha``: what
    becomes of transparency (:func:`~vlmzoo.processing.image_input.to_rgb`; each family's preset
    sets its reference pipeline's: ``"drop"`` for every original repository, ``"white"`` for
    transformers' ``convert_to_rgb``, ``"refuse"``). ``image_token_id``
    None takes the tokenizer's id of ``image_token``. ``image_positions``: sequence positions one
    image occupies in the decoder (M for a prefix adapter; defaults to ``tokens_per_image``), used
    with ``context`` (the longest merged sequence, None = unknown) to refuse long prompts early.
    ``add_bos``: put the tokenizer's BOS first (Llama, OPT); GPT-NeoX (OpenFlamingo) and Qwen
    (Vary) tokenizers add none. ``tokenizer``: where to load the tokenizer from when none is given
    (a local directory or a hub id, through ``AutoTokenizer``); ``add_tokens``: special tokens the
    original adds to that tokenizer after loading it (OpenFlamingo's ``<|endofchunk|>``, ``<image>``).
    """

    kind = "processor"

    family: str
    image: ImageStreamConfig | None = None
    second_image: ImageStreamConfig | None = None
    template: TemplateConfig | None = None
    alpha: Alpha = "drop"
    exif_transpose: bool = False
    image_token: str = "<image>"
    image_token_id: int | None = None
    tokens_per_image: int = 1
    image_positions: int | None = None
    add_bos: bool = True
    context: int | None = None
    tokenizer: str | None = None
    add_tokens: tuple[str, ...] = ()

    def validate(self) -> None:
        self._check_positive("tokens_per_image")
        if self.image_positions is not None and self.image_positions < self.tokens_per_image:
            self._fail("image_positions", f"must be >= tokens_per_image={self.tokens_per_image}")
        if self.context is not None:
            self._check_positive("context")
        if self.second_image is not None and self.image is None:
            self._fail("second_image", "a second image stream needs a first one (image=...)")
        if not self.image_token:
            self._fail("image_token", "must be a non-empty string")
        if self.tokenizer is not None and not self.tokenizer.strip():
            self._fail(
                "tokenizer", "must be a tokenizer folder or hub id, or None for the caller's tokenizer"
            )


class TokenizedProcessor:
    """What every processor shares: its config, a tokenizer loaded on first use from
    ``config.tokenizer`` (with the config's ``add_tokens``, if any, added), padding into a batch."""

    def __init__(self, config: Any, tokenizer: Any = None) -> None:
        self.config = config
        self._tokenizer = tokenizer

    def __repr__(self) -> str:
        tok = type(self._tokenizer).__name__ if self._tokenizer is not None else self.config.tokenizer
        return f"{type(self).__name__}(family={self.config.family!r}, tokenizer={tok!r})"

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer (loaded from ``config.tokenizer`` on first use if none was given)."""
        if self._tokenizer is None:
            if self.config.tokenizer is None:
                raise ConfigError(
                    f"the {self.config.family!r} processor has no tokenizer; pass tokenizer= (a "
                    "transformers tokenizer, a local directory or a hub id) to create_processor"
                )
            tok = load_tokenizer(self.config.tokenizer)
            extra = getattr(self.config, "add_tokens", ())
            missing = [t for t in extra if t not in tok.get_vocab()]
            if missing:
                tok.add_special_tokens({"additional_special_tokens": missing})
            self._tokenizer = tok
        return self._tokenizer

    def pad(self, rows: Sequence[Sequence[int]], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` ``[B, max_len]``; padding with the pad (else EOS) id."""
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
        pad = padding_id(self.tokenizer)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class Processor(TokenizedProcessor):
    """Images, conversations and answers for one model family (see the module docstring)."""

    def __init__(self, config: ProcessorConfig, tokenizer: Any = None) -> None:
        super().__init__(config, tokenizer)
        self._own_image_id: int | bool | None = False  # False: not looked up yet
        self._recipes = [
            ImageProcessor(stream.recipe, config.alpha)
            for stream in (config.image, config.second_image)
            if stream
        ]

    def _template(self) -> TemplateConfig:
        if self.config.template is None:
            raise ConfigError(
                f"the {self.config.family!r} processor only preprocesses images (it has no template); "
                "create the processor of a vision-language model for text"
            )
        return self.config.template

    def _tokenizer_image_id(self) -> int | None:
        """The tokenizer's id of ``image_token`` when it is one of its tokens, else None (looked up
        once: building the vocabulary dict of a 150k-token tokenizer is not free)."""
        if self._own_image_id is False:
            self._own_image_id = self.tokenizer.get_vocab().get(self.config.image_token)
        return self._own_image_id

    @property
    def image_token_id(self) -> int:
        """The id images are written as in ``input_ids`` (checked against the tokenizer: a real id
        must be the tokenizer's id of ``image_token``; a negative sentinel replaces it)."""
        own, wanted = self._tokenizer_image_id(), self.config.image_token_id
        token = self.config.image_token
        add = f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})"
        if wanted is None:
            if own is None:
                raise ConfigError(
                    f"the tokenizer has no {token!r} token and the processor no image_token_id; add the "
                    f"token with {add} (and resize the decoder's embeddings), or set image_token_id"
                )
            return own
        if wanted >= 0 and own != wanted:
            per_image = self.config.tokens_per_image
            layout = describe_layout(wanted, per_image == 1, per_image if per_image > 1 else None)
            raise ConfigError(image_token_mismatch(token, own, wanted, layout, bound=False))
        return wanted

    # --- images -----------------------------------------------------------------------------
    def pixel_values(self, images: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """``[n, 3, H, W]`` (a tuple of two for a two-stream family) for a flat list of images
        (paths, PIL images, uint8 HWC arrays); None for no images."""
        items = _as_list(images)
        if not items:
            return None
        if not self._recipes:
            raise ConfigError(f"the {self.config.family!r} processor has no image recipe")
        pils = [self._read(item, i) for i, item in enumerate(items)]
        streams = [s for s in (self.config.image, self.config.second_image) if s is not None]
        out = [
            torch.stack([recipe(self._prepare(pil, stream))[0] for pil in pils])
            for stream, recipe in zip(streams, self._recipes, strict=True)
        ]
        return out[0] if len(out) == 1 else (out[0], out[1])

    def model_image_inputs(self, images_of: Sequence[Sequence[Any]]) -> tuple[Any, dict[str, torch.Tensor]]:
        """Every conversation's images -> (``pixel_values`` for the model, further image inputs the
        model's ``forward``/``generate`` take: none here; an any-resolution processor adds
        ``image_sizes``)."""
        return self.pixel_values([im for images in images_of for im in images]), {}

    def encode_rows(
        self, texts: Sequence[str], images_of: Sequence[Sequence[Any]], image_inputs: dict[str, torch.Tensor]
    ) -> list[list[int]]:
        """Token ids of each prompt (:meth:`encode`), given what :meth:`model_image_inputs` made."""
        return [self.encode(t, len(im)) for t, im in zip(texts, images_of, strict=True)]

    def _read(self, item: Any, index: int) -> Image.Image:
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise InputError(
                    f"image {index} is a {item.dtype} array; pass uint8 HWC pixels, a PIL image or a path"
                )
            item = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
        elif isinstance(item, torch.Tensor):
            raise InputError(
                f"image {index} is a tensor; the processor reads files, PIL images and uint8 arrays "
                "(preprocessed tensors go straight to the model as pixel_values)"
            )
        image = load_image(item, exif_transpose=self.config.exif_transpose)
        return to_rgb(image, self.config.alpha)

    def _prepare(self, image: Image.Image, stream: ImageStreamConfig) -> Image.Image:
        if stream.pad_to_square:
            return expand_to_square(image, mean_fill(stream.recipe.mean))
        return image

    # --- text -------------------------------------------------------------------------------
    def prompt(self, question: str, history: History | None = None, num_images: int = 0) -> str:
        """The templated prompt text for ``question`` after ``history`` with ``num_images`` images."""
        return self._template().render(question, history, num_images, self.config.image_token)

    def encode(self, text: str, num_images: int) -> list[int]:
        """Token ids of one prompt, BOS first where the family has one; every ``image_token`` becomes
        ``tokens_per_image`` image ids (prefixed before BOS for BLIP-2-style templates when the text
        holds none). The number of placeholders must equal ``num_images``."""
        cfg, tok = self.config, self.tokenizer
        image_id = self.image_token_id
        own = self._tokenizer_image_id()
        if own is not None:
            pieces = tok(text, add_special_tokens=False)["input_ids"]
            ids = [image_id if t == own else t for t in pieces]
        else:  # LLaVA's tokenizer_image_token: chunks between placeholders, tokenized on their own
            ids = []
            for i, chunk in enumerate(text.split(cfg.image_token)):
                if i:
                    ids.append(image_id)
                if chunk:
                    ids.extend(tok(chunk, add_special_tokens=False)["input_ids"])
        found = ids.count(image_id)
        template = cfg.template
        if found == 0 and num_images and template is not None and template.images_at == "prefix":
            ids, found = [image_id] * num_images + self._bos() + ids, num_images
        else:
            ids = self._bos() + ids
        if found != num_images:
            more = "more images than placeholders" if num_images > found else "more placeholders than images"
            raise InputError(
                f"the prompt holds {found} image placeholder(s) ({cfg.image_token!r}) but {num_images} "
                f"image(s) were given ({more}); write one {cfg.image_token!r} per image, or pass the "
                "question without placeholders and let the template place them"
            )
        if cfg.tokens_per_image > 1:
            ids = [t for i in ids for t in ([i] * cfg.tokens_per_image if i == image_id else [i])]
        return ids

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.config.add_bos and bos is not None else []

    def sequence_length(self, ids: Sequence[int], num_images: int) -> int:
        """Positions ``ids`` occupy in the decoder once each image spans ``image_positions``."""
        positions = self.config.image_positions or self.config.tokens_per_image
        return len(ids) + num_images * (positions - self.config.tokens_per_image)

    def check_length(self, ids: Sequence[int], num_images: int, new_tokens: int = 0) -> None:
        """Refuse a prompt that, with ``new_tokens`` to generate, exceeds the model's context."""
        context = self.config.context
        length = self.sequence_length(ids, num_images)
        if context is not None and length + new_tokens > context:
            images = length - len(ids) + num_images * self.config.tokens_per_image
            raise InputError(
                f"the prompt takes {length} positions ({length - images} text + {images} for "
                f"{num_images} image(s)) + {new_tokens} new tokens = {length + new_tokens} > the model's "
                f"context of {context}; shorten the question or history, use fewer images, or lower "
                "max_new_tokens (vlmzoo never truncates through an image)"
            )

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        padding_side: str = "left",
    ) -> dict[str, Any]:
        """Tokenize prompt text(s) as given (no template) with their images, padded into a batch.

        ``images``: for one text, an image or a list of images; for a list of texts, one entry
        per text (an image, a list of images, or None). Returns ``input_ids`` and
        ``attention_mask`` ``[B, L]`` (left-padded for generation by default) and
        ``pixel_values`` (``[n_img, 3, H, W]`` in placeholder order, a tuple for two streams, or None).
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_text = _images_per_text(images, len(texts), isinstance(text, str))
        rows = [self.encode(t, len(ims)) for t, ims in zip(texts, per_text, strict=True)]
        return self.pad(rows, padding_side) | {
            "pixel_values": self.pixel_values([im for ims in per_text for im in ims])
        }

    # --- answers ----------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Generated ``ids`` -> text up to EOS (image ids dropped, special tokens kept for the stop
        strings to see)."""
        ids = [int(i) for i in ids]
        tok = self.tokenizer
        if tok.eos_token_id is not None and tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        return tok.decode([i for i in ids if i >= 0], skip_special_tokens=False)

    def answer(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The cleaned answer in generated ``ids``: cut at the first stop string, special tokens
        removed, whitespace stripped."""
        return self.clean(self.decode(ids))

    def clean(self, text: str) -> str:
        template = self._template()
        text = template.clean(text)
        for special in self.tokenizer.all_special_tokens:
            text = text.replace(special, "")
        return text.strip()

    # --- regions (referential dialogue) ------------------------------------------------------
    def box_text(
        self,
        boxes: Sequence[float] | Sequence[Sequence[float]],
        image_size: tuple[int, int],
        format: str | PlainFormat = "shikra",
    ) -> str:
        """Pixel box(es) ``(x1, y1, x2, y2)`` of one mention in an image of ``image_size`` =
        ``(width, height)`` (PIL's ``Image.size``) -> the text the model reads and writes, e.g.
        ``[0.120,0.345,0.678,0.900]`` (:mod:`vlmzoo.processing.referring`), in the frame of the
        pixels this processor makes (the padded square when it pads to square)."""
        width, height = _size(image_size)
        return self._frame_format(format, width, height).box_to_text(boxes, width=width, height=height)

    def point_text(
        self,
        points: Sequence[float] | Sequence[Sequence[float]],
        image_size: tuple[int, int],
        format: str | PlainFormat = "shikra",
    ) -> str:
        """Pixel point(s) ``(x, y)`` of one mention -> its text, e.g. ``[0.500,0.250]``."""
        width, height = _size(image_size)
        return self._frame_format(format, width, height).point_to_text(points, width=width, height=height)

    def boxes_from_text(
        self, text: str, image_size: tuple[int, int], format: str | PlainFormat = "shikra"
    ) -> list[list[tuple[float, float, float, float]]]:
        """The box groups of generated ``text`` as pixel boxes of the original ``(width, height)``
        image, one list per mention (:class:`InputError` for a group that is no box or point)."""
        width, height = _size(image_size)
        return self._frame_format(format, width, height).text_to_boxes(text, width=width, height=height)

    def points_from_text(
        self, text: str, image_size: tuple[int, int], format: str | PlainFormat = "shikra"
    ) -> list[list[tuple[float, float]]]:
        """The point groups of generated ``text`` as pixel points of the original image."""
        width, height = _size(image_size)
        return self._frame_format(format, width, height).text_to_points(text, width=width, height=height)

    def _frame_format(self, format: str | PlainFormat, width: int, height: int) -> PlainFormat:
        """The format with the frame of this processor's pixels: coordinates are fractions of
        what the model sees. Padding to square gives Shikra's frame; a recipe that stretches a
        non-square image keeps fractions of the image; one that crops it (or pads it on one side,
        SAM's) cuts the frame apart from the image, and is refused."""
        fmt = get_format(format)
        stream = self.config.image
        if stream is None or width == height:
            return fmt
        if stream.pad_to_square:
            return replace(fmt, expand_to_square=True)
        recipe = stream.recipe
        if recipe.do_center_crop or recipe.longest_edge:
            raise ConfigError(
                f"the {self.config.family!r} processor {'crops' if recipe.do_center_crop else 'pads on one side'} "
                f"a {width}x{height} image, so fractions of what the model sees are not fractions of the image; "
                "use a processor that pads to square (Shikra's recipe: ImageStreamConfig(pad_to_square=True)) "
                "or pass a square image"
            )
        return replace(fmt, expand_to_square=False)

    # --- adapting to a model ----------------------------------------------------------------
    def for_model(self, model: Any) -> Processor:
        """This processor with the image ids and counts and the context of ``model`` (a
        :class:`~vlmzoo.models.vlm.VisionLanguageModel`): one placeholder per image when the
        model expands them, M when it expects them written out (converted transformers models).

        The image id comes from the model's config, and is checked against the tokenizer (when
        loaded) with :func:`~vlmzoo.processing.binding.check_binding`: a model reading a real id
        needs a tokenizer writing that id, and padding must not look like an image. An
        any-resolution model (LLaVA-NeXT, OneVision) needs an
        :class:`~vlmzoo.processing.anyres.AnyResProcessor` (its ``image_sizes``)."""
        if _tiles(model):
            raise ConfigError(
                f"the model tiles images at any resolution ({type(model.adapter.config).__name__}: "
                f"LLaVA-NeXT / OneVision) and needs each image's views and image_sizes, which a "
                f"{type(self).__name__} does not make; create the family's AnyResProcessor "
                "(vlmzoo.create_processor('llava-v1.6-vicuna-7b'), or processing.anyres.llava_next(...))"
            )
        vlm = model.config
        m = int(model.tokens_per_image)  # positions one image takes (1 for Flamingo's <image> token)
        expand = bool(getattr(vlm, "expand_image_tokens", True))
        check_binding(self, vlm.image_token_id, expand, m)
        config = self.config.replace(
            image_token_id=vlm.image_token_id,
            tokens_per_image=1 if expand else m,
            image_positions=m,
            context=vlm.max_length or decoder_context(model.decoder.lm.config),
        )
        return Processor(config, self._tokenizer)

    # --- files ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vlmzoo_processor.json`` and the tokenizer's files (when it has one) to ``directory``."""
        return save_processor_files(directory, self.config, self._tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None) -> Processor:
        """Read a processor saved by :meth:`save_pretrained` (the tokenizer from the same directory
        unless ``tokenizer`` is given)."""
        config, tokenizer = load_processor_files(directory, ProcessorConfig, tokenizer)
        return cls(config, tokenizer)


# --- the files of every processor ------------------------------------------------------------
def save_processor_files(directory: str | os.PathLike, config: Config, tokenizer: Any) -> Path:
    """``vlmzoo_processor.json`` (the config, tagged with its class) and the tokenizer's own files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"format": _FORMAT, "config_class": type(config).__name__, **config.to_dict()}
    atomic_write_json(directory / PROCESSOR_FILE, document)
    if tokenizer is not None:  # reloaded and compared: it must come back with the same behaviour
        image_token = getattr(config, "image_token", None)  # probed whatever else is sampled
        save_tokenizer(tokenizer, directory, (image_token,) if image_token else ())
    return directory


def saved_config_class(directory: str | os.PathLike) -> str:
    """The config class a saved processor was written with (``ProcessorConfig`` for files that
    predate the tag)."""
    return _read_document(Path(directory))[1].get("config_class", ProcessorConfig.__name__)


def _read_document(directory: Path) -> tuple[Path, dict[str, Any]]:
    path = directory / PROCESSOR_FILE
    if not path.is_file():
        raise ConfigError(
            f"{str(directory)!r} holds no {PROCESSOR_FILE}; save one with processor.save_pretrained"
            f"(directory), or create one by name with vlmzoo.create_processor"
        )
    data = read_json(path, "processor config")  # bounded: size, digits, nesting, UTF-8
    if not isinstance(data, dict) or data.pop("format", None) != _FORMAT:
        raise ConfigError(f"{str(path)!r} is not a {_FORMAT} file; save the processor again")
    return path, data


def load_processor_files(
    directory: str | os.PathLike, config_class: type[Config], tokenizer: Any = None
) -> tuple[Any, Any]:
    """(config, tokenizer) of a processor saved by :func:`save_processor_files`: the tokenizer from
    ``directory`` unless ``tokenizer`` (an object, or a directory / hub id) is given."""
    directory = Path(directory)
    path, data = _read_document(directory)
    saved_class = data.pop("config_class", ProcessorConfig.__name__)
    if saved_class != config_class.__name__:
        raise ConfigError(
            f"{str(path)!r} holds a {saved_class}, not a {config_class.__name__}; open it with "
            "vlmzoo.create_processor(directory), which picks the right processor"
        )
    config = config_class.from_dict(data)
    if tokenizer is None and (directory / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(directory))
    elif tokenizer is None and (directory / SENTENCEPIECE_FILE).is_file():
        tokenizer = SentencePieceTokenizer(directory / SENTENCEPIECE_FILE)
    elif isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(str(tokenizer))
    return config, tokenizer


def _tiles(model: Any) -> bool:
    """Whether ``model``'s adapter tiles images at any resolution (its images have sizes)."""
    from vlmzoo.adapters.anyres import AnyResConfig

    adapter = getattr(model, "adapter", None)
    return isinstance(getattr(adapter, "config", None), AnyResConfig)


def decoder_context(lm_config: Any) -> int | None:
    """The context a transformers LM was trained for (``max_position_embeddings``, GPT-2's
    ``n_positions``, MPT's ``max_seq_len``), or None when its config names none."""
    if hasattr(lm_config, "get_text_config"):
        lm_config = lm_config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(lm_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of an image, as PIL's ``Image.size`` gives it."""
    if not isinstance(image_size, tuple | list) or len(image_size) != 2:
        raise InputError(f"image_size={image_size!r}: pass (width, height), e.g. image.size")
    return image_size[0], image_size[1]


def _as_list(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, list | tuple):
        return list(images)
    return [images]


def _images_per_text(images: Any, n: int, single: bool) -> list[list[Any]]:
    if single:
        return [_as_list(images)]
    if images is None:
        return [[] for _ in range(n)]
    if not isinstance(images, list | tuple) or len(images) != n:
        raise InputError(
            f"{n} texts need a list of {n} image entries (an image, a list of images, or None each); "
            f"got {type(images).__name__}"
            + (f" of {len(images)}" if isinstance(images, list | tuple) else "")
        )
    return [_as_list(entry) for entry in images]
