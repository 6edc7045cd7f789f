"""The kind of model an evaluation needs, checked before it runs.

vlmzoo has three families that evaluate differently: dual encoders (CLIP, SigLIP) score image-text
pairs, BLIP scores them with its ITC and ITM heads, and vision-language models (LLaVA, Donut,
BLIP-2, Flamingo, OneChart, ...) generate text. Handing one family's model to another's metric
would otherwise fail deep inside with an ``AttributeError`` (``'VisionLanguageModel' object has
no attribute 'encode_text'``); :func:`require_kind` refuses it up front with an
:class:`~vlmzoo.errors.InputError` that names what was given, what is needed and where the
functions for the given model are.

A kind is recognised by the methods the metrics call, not by class, so wrappers that forward
attributes to the model they hold (a peft ``PeftModel``, ``torch.compile``'s module) pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vlmzoo.errors import InputError


@dataclass(frozen=True)
class ModelKind:
    """``name`` as a message says it, the ``methods`` its metrics call, an ``example`` preset, and
    ``functions``: where the evaluations of this kind live."""

    name: str
    methods: tuple[str, ...]
    example: str
    functions: str

    def missing(self, model: Any) -> list[str]:
        """The methods of this kind that ``model`` lacks (empty: it is of this kind)."""
        return [m for m in self.methods if not callable(getattr(model, m, None))]


DUAL_ENCODER = ModelKind(
    "a dual encoder (CLIP, SigLIP)",
    ("encode_image", "encode_text", "pair_logits"),
    "clip-vit-b16",
    "vlmzoo.eval.clip (zero_shot_accuracy, model_retrieval_recall)",
)
BLIP = ModelKind(
    "a BLIP model (ITC/ITM heads)",
    ("encode_image", "image_embeds", "text_embeds", "itm_logits"),
    "blip-base-retrieval",
    "vlmzoo.eval.blip (evaluate_retrieval, itm_scores)",
)
# ``encoder`` tells a vision-language model from a bare text decoder, which generates too
GENERATIVE = ModelKind(
    "a vision-language model that generates text (LLaVA, Donut, BLIP-2, ...)",
    ("generate", "encoder"),
    "llava-1.5-7b",
    "vlmzoo.eval.vlm (generate_answers, perplexity, multiple_choice) or "
    "vlmzoo.recipes.evaluate.evaluate_items",
)
CHART_READER = ModelKind(
    "a OneChart model (read_chart)",
    ("read_chart",),
    "onechart",
    "vlmzoo.recipes.chart (read_charts)",
)
KINDS = (DUAL_ENCODER, BLIP, CHART_READER, GENERATIVE)  # most specific first: OneChart generates too


def require_kind(model: Any, kind: ModelKind, function: str) -> None:
    """Raise :class:`InputError` unless ``model`` is of ``kind``; ``function`` is the caller's name.

    The message names the model's class, the methods ``kind`` needs that it lacks, and the fix:
    the functions for the kind the model is, or how to get a model of ``kind``.
    """
    missing = kind.missing(model)
    if not missing:
        return
    needs = f"{function} needs {kind.name} with {'/'.join(kind.methods)}"
    if isinstance(model, str | os.PathLike):
        raise InputError(
            f"{needs}; got the {type(model).__name__} {str(model)!r}: load the model first, "
            f"model = vlmzoo.load({str(model)!r}) (a checkpoint folder or Hub id)"
        )
    got = type(model).__name__
    other = next((k for k in KINDS if k is not kind and not k.missing(model)), None)
    if other is not None:
        fix = f"{got} is {other.name}: use {other.functions} instead"
    else:
        fix = f"build one with e.g. vlmzoo.create_model({kind.example!r}) or load a saved one"
    raise InputError(f"{needs}; got {got}, which has no {', '.join(missing)}: {fix}")
