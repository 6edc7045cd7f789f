"""Binding a processor to a model: the ids the processor writes are the ids the model reads.

Images are marked in ``input_ids`` in one of two conventions, both legitimate:

* **a sentinel, one per image, expanded by the model**: LLaVA's original ``IMAGE_TOKEN_INDEX =
  -200`` (llava/constants.py), an id outside the vocabulary that ``tokenizer_image_token``
  (llava/mm_utils.py) writes once per image and the model replaces by the image's M embeddings:
  ``VLMConfig(image_token_id=-200, expand_image_tokens=True)``, vlmzoo's default;
* **a real vocabulary id, written out M times per image**: the tokenizer's ``<image>`` (32000 in
  the llava-hf conversions), which transformers' ``LlavaProcessor`` repeats once per image
  embedding and ``LlavaForConditionalGeneration`` fills in place:
  ``VLMConfig(image_token_id=32000, expand_image_tokens=False)``.

A real id expanded by the model (Shikra's ``<im_patch>``, OpenFlamingo's ``<image>``, which its
cross-attention keeps as a token) mixes the two and is fine too. What is never fine is a
processor and a model that disagree: a model reading a real id gets ids its tokenizer does not
write, or a sentinel it cannot embed. The id therefore comes from one place, the model's config,
through :meth:`Processor.for_model <vlmzoo.processing.processor.Processor.for_model>`, which checks
here, when the tokenizer is already loaded (loading one may mean a download; otherwise the same
check runs on first use), that:

* the tokenizer's ``image_token`` has the model's id when that id is a real one
  (:func:`check_image_token`); with a sentinel the tokenizer's own id, if any, is rewritten;
* the ids the processor writes besides images (the padding id, BOS when it adds one) are not the
  model's image id, which would make padding count as image placeholders (:func:`check_special_ids`).

The number of placeholders per image and the context are not checked: binding sets them from the
model (1 per image when it expands them, M when it expects them written out).
"""

from __future__ import annotations

from typing import Any

from vlmzoo.errors import ConfigError

SENTINEL_CONVENTION = (
    "a sentinel outside the vocabulary written once per image and expanded by the model (LLaVA's "
    "original IMAGE_TOKEN_INDEX = -200: VLMConfig(image_token_id=-200, expand_image_tokens=True))"
)
WRITTEN_OUT_CONVENTION = (
    "a real vocabulary id, the tokenizer's image token, written out once per image embedding (as "
    "transformers' LlavaProcessor does: VLMConfig(image_token_id=<its id>, expand_image_tokens=False))"
)


def describe_layout(image_token_id: int, expand: bool, per_image: int | None = None) -> str:
    """How a model reads images, in words: its placeholder id and how many it takes per image.

    ``per_image``: the positions one image takes (M), when known."""
    kind = "a sentinel outside the vocabulary" if image_token_id < 0 else "a vocabulary id"
    m = f"its {per_image} embeddings" if per_image else "its M embeddings"
    count = (
        f"one per image, expanded by the model to {m}"
        if expand
        else f"written out {per_image if per_image else 'M'} times per image"
    )
    return f"id {image_token_id} ({kind}), {count}"


def image_token_mismatch(
    token: str, tokenizer_id: int | None, model_id: int, layout: str, bound: bool = True
) -> str:
    """The message for a tokenizer whose ``token`` is not the model's (real) image id ``model_id``."""
    found = f"has no {token!r} token" if tokenizer_id is None else f"writes {token!r} as id {tokenizer_id}"
    add = f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})"
    rebuild = (
        f"build the VLM with image_token_id={tokenizer_id} (the tokenizer's id; "
        "vlmzoo.create_model(name, image_token_id=...)), "
        if tokenizer_id is not None
        else f"add the token with {add} (it must get id {model_id}; resize the decoder's embeddings "
        "if it grows the vocabulary), or build the VLM with image_token_id=-200 (the sentinel, which "
        "the processor writes between text chunks as LLaVA's tokenizer_image_token does), "
    )
    first = "the model reads" if bound else "the processor writes"
    return (
        f"{first} images as {layout}, but the tokenizer {found}. The two conventions are "
        f"{SENTINEL_CONVENTION}, and {WRITTEN_OUT_CONVENTION}; a processor and a model must use the "
        f"same one. Fix: bind the processor with processor.for_model(model) and use the tokenizer the "
        f"model was trained with, or {rebuild}so that the id the tokenizer writes is the model's"
    )


def check_image_token(
    token: str, tokenizer_id: int | None, model_id: int, expand: bool, per_image: int | None = None
) -> None:
    """:class:`ConfigError` when the model reads a real id (``model_id >= 0``) that is not the
    tokenizer's id of ``token``. A sentinel model (``model_id < 0``) is fine with any tokenizer:
    the processor writes the sentinel where the tokenizer has ``token``, or between text chunks."""
    if model_id >= 0 and tokenizer_id != model_id:
        raise ConfigError(
            image_token_mismatch(token, tokenizer_id, model_id, describe_layout(model_id, expand, per_image))
        )


def padding_id(tokenizer: Any) -> int:
    """The id :meth:`TokenizedProcessor.pad` pads with: PAD, else EOS, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def check_special_ids(tokenizer: Any, image_id: int, add_bos: bool, token: str = "<image>") -> None:
    """:class:`ConfigError` when the padding id, or the BOS the processor puts first, is the
    model's image id: every padded position (or each prompt's first token) would be read as an
    image placeholder, and the placeholder count would be wrong or, worse, right by accident."""
    if image_id < 0:
        return  # a sentinel is never a tokenizer id
    pad = padding_id(tokenizer)
    if pad == image_id:
        raise ConfigError(
            f"the tokenizer pads with id {pad}, which is also the model's image placeholder ({token!r}, "
            f"id {image_id}): padded positions would be read as images. Give the tokenizer another pad "
            "token (e.g. tokenizer.pad_token = tokenizer.unk_token, as LLaVA's train.py does for Vicuna)"
        )
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None and int(bos) == image_id:
        raise ConfigError(
            f"the tokenizer's BOS token is id {bos}, which is also the model's image placeholder "
            f"({token!r}): every prompt would start with an image. Use the tokenizer the model was "
            "trained with, or build the VLM with the id of its image token (image_token_id=...)"
        )


def check_binding(processor: Any, image_id: int, expand: bool, per_image: int | None) -> None:
    """The checks of the module docstring for a :class:`~vlmzoo.processing.processor.Processor`
    about to write ``image_id`` (the model's), when its tokenizer is already loaded."""
    if processor._tokenizer is None:
        return  # loaded on first use; Processor.image_token_id checks then
    token = processor.config.image_token
    check_image_token(token, processor._tokenizer_image_id(), image_id, expand, per_image)
    check_special_ids(processor._tokenizer, image_id, processor.config.add_bos, token)


__all__ = [
    "SENTINEL_CONVENTION",
    "WRITTEN_OUT_CONVENTION",
    "check_binding",
    "check_image_token",
    "check_special_ids",
    "describe_layout",
    "image_token_mismatch",
    "padding_id",
]
