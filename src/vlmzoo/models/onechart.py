"""OneChart (Chen et al. 2024, "OneChart: Purify the Chart Structural Extraction via One Auxiliary
Token", arXiv 2404.09987): a VLM that reads a chart into a Python dict, plus one auxiliary token
whose final hidden state a small MLP decodes into the chart's numbers.

    pixel_values ─► encoder ─► adapter ─┐
    "<image> Convert ... dict:" ────────┴► decoder ─► "<Number>{"title": ..., "values": {...}}</s>"
                                                 └─► hidden state at <Number> ─► num_decoder ─► 256 numbers

What the original does (LingyvKong/OneChart's ``OneChart_code/vary/model/vary_opt_math.py``,
``data/conversation_dataset_v1_with_number.py``, ``demo/run_opt_v1.py``):

- The answer starts with the auxiliary token ``<Number>`` (the paper's ``<Chart>``; the code's
  ``DEFAULT_NUMBER_TOKEN``), then the JSON dict. ``num_decoder`` = Linear(D -> D/2) -> ReLU ->
  Linear(D/2 -> D/2) -> ReLU -> Linear(D/2 -> 256) reads the LM's last hidden state (after OPT's
  final LayerNorm: the state the LM head reads) at the first ``<Number>`` of the sequence.
- Training targets: the chart's numbers (the data's ``"Numbers"`` field) padded (or clipped) to 256
  with NaN, min-max normalised per chart over the non-NaN entries; the loss is the mean L1 over all
  non-NaN entries of the batch, *added* to the LM cross-entropy (weight 1). The head's predictions
  are not normalised: it learns to output normalised numbers. A chart whose numbers are all equal
  normalises to 0/0 = NaN and adds nothing.
- Self-evaluation ("reliability check" of run_opt_v1.py): the generated dict's ``values`` are read
  as numbers (``list_json_value``), min-max normalised with ``+ 1e-9`` in the denominator (a single
  value is left as it is), rounded to 4 decimals, and compared with the first ``len(values)``
  predictions by mean L1; a distance below 0.1 says the reading is reliable. Text that cannot be
  read, or more values than predictions, is unreliable.

Here the model is a :class:`~vlmzoo.models.vlm.VisionLanguageModel` subclass, so any encoder,
adapter and decoder vlmzoo composes can carry the head. Differences from the original, each on
purpose: the number position is found per row in the merged sequence (the original takes the first
``<Number>`` column of the batch for every row); targets longer than the head are refused
(the original clips them to 256 silently); the demo compares with all 256 predictions (the original
keeps the first 100); a batch without any scored number gives a number loss of 0 (the original's
mean over nothing is NaN).

The ``onechart`` preset is the released model's layout: Vary-tiny's vision tower (SAM ViT-B at
1024 px + ``net_2``/``net_3``, 256 tokens of width 1024; ``vary/model/vision_encoder/sam.py``
``build_sam_vit_b``), ``mm_projector`` Linear(1024 -> 768), OPT-125M, ``num_decoder`` 768 -> 384
-> 384 -> 256. Its vocabulary, 50269, is derived from the code (OPT-125M's tokenizer holds 50265
tokens; ``initialize_vision_tokenizer`` adds ``<imgpad>``, ``<img>``, ``</img>``, ``<Number>`` and
resizes the embeddings to the tokenizer's length), not read from the released checkpoint.
The original's image transform is a 1024 x 1024 resize and /255 (``Normalize`` with mean 0, std 1;
``vary/model/plug/transforms.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.config import Config, parse_json
from vlmzoo.decoders.hf import DECODER_PRESETS, IGNORE_INDEX, DecoderConfig, HFDecoder, cache_length, kv_cache
from vlmzoo.encoders.vary import VARY_VOCAB_PRESETS
from vlmzoo.errors import ConfigError, InputError
from vlmzoo.models.vlm import Trainable, VisionLanguageModel, VLMConfig, VLMOutput
from vlmzoo.registry import register, register_architecture

__all__ = [
    "CHART_PROMPT",
    "NUMBER_TOKEN",
    "ONECHART_DECODER",
    "ChartReading",
    "OneChartConfig",
    "OneChartModel",
    "OneChartOutput",
    "chart_answer",
    "chart_values",
    "format_chart",
    "number_loss",
    "parse_chart",
    "reliability_distance",
]

NUMBER_TOKEN = "<Number>"  # OneChart's utils/constants.py DEFAULT_NUMBER_TOKEN
CHART_PROMPT = "Convert the key information of the chart to a python dict:"  # demo/run_opt_v1.py
NUM_NUMBERS = 256  # num_decoder's outputs (vary_opt_math.py)
RELIABILITY_THRESHOLD = 0.1  # run_opt_v1.py: "reliable_distence < 0.1"
CHART_KEYS = ("title", "source", "x_title", "y_title")  # the dict's fields before "values" (README)

# OPT-125M (facebook/opt-125m: transformers' OPTConfig defaults) with OneChart's vocabulary: the
# 50265 tokens of its tokenizer + <imgpad> 50265, <img> 50266, </img> 50267, <Number> 50268.
ONECHART_VOCAB = 50269
ONECHART_DECODER = DecoderConfig(
    "opt",
    dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        ffn_dim=3072,
        vocab_size=ONECHART_VOCAB,
        max_position_embeddings=2048,
        word_embed_proj_dim=768,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    ),
)


def _onechart_encoder() -> Config:
    return VARY_VOCAB_PRESETS["vary-vocab"]


def _onechart_adapter() -> Config:
    return MLPProjectorConfig(in_dim=1024, out_dim=768, depth=1)  # mm_projector = nn.Linear(1024, 768)


def _onechart_decoder() -> DecoderConfig:
    return ONECHART_DECODER


@dataclass
class OneChartConfig(VLMConfig):
    """A :class:`VLMConfig` plus the auxiliary number token and its head.

    Defaults are the released OneChart (module docstring): every part trains, as OneChart's
    training script runs with ``--freeze_vision_tower False --freeze_lm_model False``.
    ``number_token_id`` is ``<Number>`` in the tokenizer; ``num_numbers`` the head's outputs;
    ``number_hidden`` its hidden width (None: half the decoder's final width, as
    ``config.hidden_size // 2`` in vary_opt_math.py); ``number_loss_weight`` multiplies the L1
    loss added to the LM loss (1 in the original); ``reliability_threshold`` the distance below
    which a reading is reliable (0.1 in run_opt_v1.py); ``train_numbers`` freezes the head or not.
    """

    encoder: Config = field(default_factory=_onechart_encoder)
    adapter: Config = field(default_factory=_onechart_adapter)
    decoder: DecoderConfig = field(default_factory=_onechart_decoder)
    image_token_id: int = 50265  # <imgpad>
    train_encoder: Trainable = "full"
    train_decoder: Trainable = "full"
    number_token_id: int = 50268
    num_numbers: int = NUM_NUMBERS
    number_hidden: int | None = None
    number_loss_weight: float = 1.0
    reliability_threshold: float = RELIABILITY_THRESHOLD
    train_numbers: Trainable = "full"

    def validate(self) -> None:
        super().validate()
        self._check_non_negative("number_token_id")
        self._check_positive("num_numbers", "number_loss_weight", "reliability_threshold")
        if self.number_hidden is not None:
            self._check_positive("number_hidden")
        if self.number_token_id == self.image_token_id:
            self._fail("number_token_id", f"must differ from image_token_id={self.image_token_id}")


@dataclass
class OneChartOutput(VLMOutput):
    """:class:`VLMOutput` plus the head's ``numbers`` [B, num_numbers] (NaN in rows without the
    number token), ``has_number_token`` [B] bool, and the two losses: ``lm_loss`` (with labels),
    ``number_loss`` (with number targets, unweighted). ``loss`` is ``lm_loss + weight * number_loss``
    (either alone when only one is given)."""

    numbers: torch.Tensor | None = None
    has_number_token: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    number_loss: torch.Tensor | None = None


@dataclass
class ChartReading:
    """One chart read by :meth:`OneChartModel.read_chart`.

    ``text``: the generated answer (special tokens as the tokenizer decodes them); ``chart``: the
    dict read from it (None if unreadable); ``values``: its numbers in reading order (None if they
    cannot be read); ``numbers``: the head's predictions (normalised to [0, 1] like its training
    targets; the first ``len(values)`` when values were read, else all), None without a number
    token; ``distance``: the self-evaluation's mean L1 (None when it cannot be computed);
    ``reliable``: ``distance < reliability_threshold``.
    """

    text: str
    chart: dict[str, Any] | None
    values: list[float] | None
    numbers: list[float] | None
    distance: float | None
    reliable: bool


class _Decodes(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def _final_width(decoder: HFDecoder) -> int:
    """Width of the decoder's last hidden state: the LM head's input (OPT-350m projects 1024 -> 512
    before it, so this is not always ``hidden_size``)."""
    head = decoder.lm.get_output_embeddings()
    return int(head.in_features) if isinstance(head, nn.Linear) else decoder.layer_width


@register_architecture
class OneChartModel(VisionLanguageModel):
    """A :class:`VisionLanguageModel` with OneChart's number head ``num_decoder`` (keys
    ``num_decoder.{0,2,4}`` as in the original)."""

    config_class = OneChartConfig

    def __init__(self, config: OneChartConfig):
        super().__init__(config)
        if not config.number_token_id < self.decoder.vocab_size:
            raise ConfigError(
                f"OneChartConfig.number_token_id={config.number_token_id}: outside the decoder's vocabulary "
                f"of {self.decoder.vocab_size} tokens (add {NUMBER_TOKEN} to the tokenizer and size the decoder)"
            )
        width = _final_width(self.decoder)
        hidden = config.number_hidden or max(1, width // 2)
        self.num_decoder = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, config.num_numbers),
        )
        self.set_trainable(numbers=config.train_numbers)

    def set_trainable(
        self,
        encoder: Trainable | None = None,
        adapter: Trainable | None = None,
        decoder: Trainable | None = None,
        numbers: Trainable | None = None,
    ) -> None:
        """:meth:`VisionLanguageModel.set_trainable`, plus ``numbers`` for the number head."""
        super().set_trainable(encoder=encoder, adapter=adapter, decoder=decoder)
        if numbers is None or not hasattr(self, "num_decoder"):
            return
        if numbers not in ("frozen", "full"):
            raise ConfigError(f"trainable mode for numbers must be 'frozen' or 'full', got {numbers!r}")
        for p in self.num_decoder.parameters():
            p.requires_grad_(numbers == "full")
        self._modes["numbers"] = numbers

    # --- targets --------------------------------------------------------------------------------
    def _number_targets(
        self, numbers: Sequence[Sequence[float] | None] | torch.Tensor | None, has_token: torch.Tensor
    ) -> torch.Tensor | None:
        """Targets [B, num_numbers] padded with NaN (OneChart's ``pad_or_clip_tensor_to_fixed_length``),
        after the checks: one entry per sample, finite values, at most ``num_numbers``, and the
        number token in every sample that has targets."""
        if numbers is None:
            return None
        b, k = has_token.shape[0], self.config.num_numbers
        if isinstance(numbers, torch.Tensor):
            if numbers.ndim != 2 or numbers.shape[0] != b:
                raise InputError(
                    f"numbers must be a [B, K] tensor with B={b} (the batch size) or one sequence per "
                    f"sample, got shape {tuple(numbers.shape)}"
                )
            rows: list[list[float]] = numbers.detach().float().cpu().tolist()
        else:
            if isinstance(numbers, str | bytes) or len(numbers) != b:
                raise InputError(
                    f"numbers must hold one sequence of target numbers per sample (None or [] for a sample "
                    f"without): got {len(numbers) if not isinstance(numbers, str | bytes) else 'a string'} "
                    f"for a batch of {b}"
                )
            rows = []
            for i, row in enumerate(numbers):
                try:
                    rows.append([] if row is None else [float(v) for v in row])
                except (TypeError, ValueError) as e:
                    raise InputError(f"numbers[{i}]={row!r:.60}: not a sequence of numbers ({e})") from e
        targets = torch.full((b, k), math.nan)
        for i, row in enumerate(rows):
            bad = [v for v in row if not math.isfinite(v)]
            if bad:
                raise InputError(
                    f"numbers[{i}] holds non-finite targets {bad[:4]}: every target must be a finite number "
                    "(leave a sample's numbers empty to give it none)"
                )
            if len(row) > k:
                raise InputError(
                    f"numbers[{i}] holds {len(row)} targets but the number head predicts {k} "
                    f"(OneChartConfig.num_numbers); OneChart's data loader clips to 256 silently"
                )
            if row:
                targets[i, : len(row)] = torch.tensor(row)
        missing = [i for i, row in enumerate(rows) if row and not bool(has_token[i])]
        if missing:
            raise InputError(
                f"samples {missing} have target numbers but no number token (id {self.config.number_token_id}, "
                f"{NUMBER_TOKEN}) in input_ids: OneChart's answers start with it (chart_answer writes it)"
            )
        return targets

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        numbers: Sequence[Sequence[float] | None] | torch.Tensor | None = None,
        **decoder_kwargs: Any,
    ) -> OneChartOutput:
        """:meth:`VisionLanguageModel.forward` plus the number head.

        ``numbers``: the target numbers of each sample (a sequence per sample, None or empty for
        none; or a [B, K] tensor, every entry a target), which adds the number loss. The head reads
        the decoder's last hidden state at each row's first number token; ``numbers`` of the output
        are its predictions [B, num_numbers].
        """
        if input_ids is None:
            raise InputError("input_ids are required")
        num_images = self._check_inputs(pixel_values, input_ids, attention_mask, labels, image_sizes)
        is_number = input_ids == self.config.number_token_id
        has_token = is_number.any(dim=1)
        targets = self._number_targets(numbers, has_token)
        b, length = input_ids.shape
        # Where each text token lands in the merged sequence: its column, carried through the adapter
        # as a label (every adapter moves labels with their tokens, IGNORE_INDEX on image slots).
        probe = torch.arange(length, device=input_ids.device).expand(b, length)
        cache = decoder_kwargs.get("cache", decoder_kwargs.get("past_key_values"))
        prepared = self._prepare(
            pixel_values, num_images, input_ids, attention_mask, probe, cache=cache, image_sizes=image_sizes
        )
        source = prepared.labels  # [B, L'] column of the text token at each merged position, or -100
        merged_labels = None
        if labels is not None:
            picked = labels.gather(1, source.clamp(min=0))
            merged_labels = torch.where(source >= 0, picked, torch.full_like(picked, IGNORE_INDEX))
        prepared.labels = merged_labels
        keep_hidden = bool(decoder_kwargs.pop("output_hidden_states", False))
        mask = prepared.attention_mask
        if (
            mask is not None
            and self.decoder.takes_position_ids
            and not cache_length(cache)
            and "position_ids" not in decoder_kwargs
        ):
            # Positions follow the mask, as transformers' generate numbers them, so that a left-padded
            # row (read_chart's prompt + answer) reads as it would alone.
            decoder_kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with prepared.conditioning:
            out = self.decoder(**prepared.decoder_inputs(), output_hidden_states=True, **decoder_kwargs)
        last = out.hidden_states[-1]
        column = is_number.long().argmax(dim=1)  # the first number token of each row
        position = (source == column[:, None]).long().argmax(dim=1)
        predicted = self.num_decoder(last[torch.arange(b, device=last.device), position])
        shown = predicted.masked_fill(~has_token[:, None].to(predicted.device), math.nan)
        lm_loss = out.loss
        loss, aux = lm_loss, None
        if targets is not None:
            aux = number_loss(predicted, targets.to(predicted.device))
            weighted = self.config.number_loss_weight * aux
            loss = weighted if loss is None else loss + weighted
        return OneChartOutput(
            out.logits,
            loss,
            prepared.attention_mask,
            merged_labels,
            kv_cache(out),
            out.hidden_states if keep_hidden else None,
            numbers=shown,
            has_number_token=has_token,
            lm_loss=lm_loss,
            number_loss=aux,
        )

    # --- reading a chart ----------------------------------------------------------------------
    @torch.no_grad()
    def read_chart(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        tokenizer: _Decodes,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 512,
        **generate_kwargs: Any,
    ) -> list[ChartReading]:
        """Generate each chart's dict, read its numbers, and score the reading (self-evaluation).

        ``pixel_values`` [n_img, C, H, W] and left-padded prompts ``input_ids`` [B, L] as for
        :meth:`generate` (the prompt, e.g. ``"<image> " + CHART_PROMPT``, usually leaves the number
        token to the model, which learned to write it first). Greedy by default. The head is read
        from one more forward over prompt + answer (the first number token of the two). ``tokenizer``
        decodes ids (``decode``); its ``eos_id`` / ``eos_token_id`` ends an answer.
        """
        was_training = self.training
        self.eval()
        try:
            eos = _eos_id(tokenizer, self)
            generate_kwargs.setdefault("eos_token_id", eos)
            new = self.generate(pixel_values, input_ids, attention_mask, max_new_tokens, **generate_kwargs)
            rows = [row[: row.index(eos)] if eos in row else row for row in new.tolist()]
            # Teacher-forced pass over prompt + answer; tokens after EOS (and any placeholder id the
            # model may have produced) become padding, which the causal mask keeps out of the way.
            answer = new.masked_fill(new == self.config.image_token_id, self._pad_token_id())
            ends = torch.tensor([len(r) for r in rows], device=new.device)
            answer_mask = (torch.arange(new.shape[1], device=new.device)[None] < ends[:, None]).long()
            prompt_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            out = self(
                pixel_values,
                torch.cat([input_ids, answer], dim=1),
                torch.cat([prompt_mask, answer_mask.to(prompt_mask.dtype)], dim=1),
            )
        finally:
            self.train(was_training)
        readings = []
        for i, row in enumerate(rows):
            text = tokenizer.decode(row)
            chart = parse_chart(text)
            values = chart_values(chart) if chart is not None else None
            numbers = out.numbers[i].tolist() if bool(out.has_number_token[i]) else None
            distance = None
            if numbers is not None and values is not None:
                distance = reliability_distance(numbers, values)
            if numbers is not None and values:
                numbers = numbers[: len(values)]
            reliable = distance is not None and distance < self.config.reliability_threshold
            readings.append(ChartReading(text, chart, values, numbers, distance, reliable))
        return readings


def _eos_id(tokenizer: Any, model: OneChartModel) -> int:
    for name in ("eos_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    value = getattr(model.decoder.lm.config, "eos_token_id", None)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        raise InputError("read_chart needs an end-of-sequence id: the tokenizer has no eos_id / eos_token_id")
    return int(value)


# --- the loss and the self-evaluation ----------------------------------------------------------
def _min_max(targets: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation over the non-NaN entries, NaN kept (vary_opt_math.py's
    ``min_max_normalize_with_nan``: no epsilon, so a constant row becomes NaN)."""
    nan = torch.isnan(targets)
    low = targets.masked_fill(nan, math.inf).amin(dim=1, keepdim=True)
    high = targets.masked_fill(nan, -math.inf).amax(dim=1, keepdim=True)
    return torch.where(nan, targets, (targets - low) / (high - low))


def number_loss(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """OneChart's number loss: predicted [B, K] against targets [B, K] (NaN = no target), targets
    min-max normalised per row, mean L1 over every scored entry of the batch (vary_opt_math.py's
    ``number_loss``). 0 (still in the graph) when nothing is scored."""
    normalised = _min_max(targets.float())
    scored = ~torch.isnan(normalised)
    if not bool(scored.any()):
        return predicted.sum() * 0.0
    return F.l1_loss(predicted.float()[scored], normalised[scored], reduction="mean")


def _normalise_values(values: Sequence[float]) -> list[float]:
    """run_opt_v1.py's ``norm_``: (v - min) / (max - min + 1e-9); fewer than two values unchanged."""
    if len(values) < 2:
        return list(values)
    low, high = min(values), max(values)
    return [(v - low) / (high - low + 1e-9) for v in values]


def reliability_distance(predicted: Sequence[float], values: Sequence[float]) -> float | None:
    """The self-evaluation distance: mean |predicted[i] - norm(values)[i]| over the parsed values
    (normalised and rounded to 4 decimals, as run_opt_v1.py); None when there are no values or more
    values than predictions (the original's comparison fails there: "may be has error")."""
    if not values or len(values) > len(predicted):
        return None
    normalised = [round(v, 4) for v in _normalise_values(values)]
    return sum(abs(p - v) for p, v in zip(predicted, normalised, strict=False)) / len(normalised)


# --- the answer text: strict to write, tolerant to read -------------------------------------------
def _number_text(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"chart value {value!r} is not a finite number")
    return int(value) if float(value).is_integer() else float(value)


def format_chart(
    values: Mapping[str, Any],
    title: str | None = None,
    source: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
) -> str:
    """The chart as OneChart writes it: one JSON object with ``title``, ``source``, ``x_title``,
    ``y_title`` (``"None"`` when absent, as its data does) and ``values`` (label -> value, or
    series -> {label -> value} for several series), in that order (OneChart's README example).
    Values may be numbers (written as JSON numbers, integers without a point) or strings ("6.12%")."""

    def table(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {str(k): table(v) if isinstance(v, Mapping) else _number_text(v) for k, v in mapping.items()}

    header = dict(zip(CHART_KEYS, (title, source, x_title, y_title), strict=True))
    document = {k: "None" if v is None else str(v) for k, v in header.items()}
    document["values"] = table(values)
    return json.dumps(document, ensure_ascii=False)


def chart_answer(values: Mapping[str, Any], **fields: str | None) -> str:
    """The training answer: the number token, then :func:`format_chart` (OneChart's data writes
    ``"<Number>{...}"`` with no space)."""
    return NUMBER_TOKEN + format_chart(values, **fields)


def parse_chart(text: str) -> dict[str, Any] | None:
    """The dict of a generated answer, read tolerantly; None when no JSON object can be read.

    What the original's readers forgive is forgiven: the number token in front (run_opt_v1.py
    removes ``"<Number> "``), a trailing ``</s>`` or full stop, and missing closing braces of a cut
    answer (ChartSE_eval/eval_ChartSE.py's ``complete_json_string``). Text before the first ``{`` is
    skipped. The JSON itself goes through vlmzoo's bounded parser.
    """
    text = text.replace(NUMBER_TOKEN, "").strip()
    start = text.find("{")
    if start < 0:
        return None
    text = text[start:]
    if text.endswith("</s>"):
        text = text[: -len("</s>")].rstrip()
    if text.endswith("."):
        text = text[:-1]
    text += "}" * max(0, text.count("{") - text.count("}"))
    try:
        document = parse_json(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


_FOOTNOTE = re.compile(r"\(\d+\)|\[\d+\]")
_NOT_NUMBER = re.compile(r"[^\d.-]")
_EMPTY = {"-", "*", "none", "None", ""}


def chart_values(chart: Mapping[str, Any]) -> list[float] | None:
    """The numbers of a chart dict's ``values`` in reading order (nested series flattened), read as
    run_opt_v1.py's ``list_json_value``: numbers as they are; strings without footnote marks
    ("(1)", "[2]") and every character but digits, "." and "-" ("6.12%" -> 6.12, "$3,400" -> 3400);
    empty ones ("None", "-") skipped. None when a value cannot be read (a list, or a string like
    "1.2.3"): the original then drops the whole reading. A dict without ``values`` reads as [].
    """
    values = chart.get("values", {}) if isinstance(chart, Mapping) else None
    if not isinstance(values, Mapping):
        return None
    out: list[float] = []

    def walk(mapping: Mapping[str, Any]) -> bool:
        for value in mapping.values():
            if isinstance(value, Mapping):
                if not walk(value):
                    return False
            elif isinstance(value, list | tuple) or value is None:  # JSON true/false read as 1/0, as there
                return False
            elif isinstance(value, int | float):
                if not math.isfinite(value):
                    return False
                out.append(float(value))
            else:
                digits = _NOT_NUMBER.sub("", _FOOTNOTE.sub("", str(value)))
                if digits in _EMPTY:
                    continue
                try:
                    number = float(digits)
                except ValueError:
                    return False
                out.append(number)
        return True

    return out if walk(values) else None


# --- presets -------------------------------------------------------------------------------------
def tiny_onechart_config() -> OneChartConfig:
    """A test-size OneChart: the tiny Vary vocabulary tower (64 px, 16 tokens of width 128), a
    Linear projector and the tiny OPT; image placeholder 3, number token 4, 16 numbers."""
    return OneChartConfig(
        encoder=VARY_VOCAB_PRESETS["vary-vocab-tiny"],
        adapter=MLPProjectorConfig(depth=1),
        decoder=DECODER_PRESETS["tiny-opt"],
        image_token_id=3,
        number_token_id=4,
        num_numbers=16,
    )


ONECHART_PRESETS: dict[str, OneChartConfig] = {
    "onechart": OneChartConfig(),
    "tiny-onechart": tiny_onechart_config(),
}

for _name, _cfg in ONECHART_PRESETS.items():
    register(_name, "model", _cfg, OneChartModel, "OneChart: VLM + <Number> token and number head")
