"""The bad-input catalogue (docs/errors.md): every bad input raises a vlmzoo error that names the problem.

Two parts. ``CASES`` is the catalogue of bad calls across the public API — each entry is the call,
the expected error type and a regex the message must match (the offending value, the expected vs
given shape or count). The config sweep then introspects every registered config class and feeds
each field values out of its range (0 or negative where a size must be positive, NaN and inf for
floats, an unknown name for ``Literal`` fields, wrong lengths for tuples, a wrong type for the
rest), expecting a :class:`ConfigError` naming the class and field. ``IN_RANGE`` lists the few
generated values that are legitimately valid for a field, each with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import re
import shutil
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest
import torch

import vlmzoo
import vlmzoo.processing.prompts  # the cases reach it as an attribute
from vlmzoo.config import Config
from vlmzoo.errors import (
    CheckpointError,
    ConfigError,
    ConversionError,
    InputError,
    UnknownModelError,
    VlmzooError,
)
from vlmzoo.registry import _ensure_loaded, get_entry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


# --- the models and files the cases run against (built once, all tiny) -------------------------
@functools.cache
def encoder(name: str) -> torch.nn.Module:
    return vlmzoo.create_encoder(name).eval()


@functools.cache
def vlm(decoder: str = "tiny-llama", **overrides: Any) -> torch.nn.Module:
    from vlmzoo.models.vlm import VisionLanguageModel

    config = get_entry("tiny-llava", "model").config.replace(
        decoder=get_entry(decoder, "decoder").config, **overrides
    )
    return VisionLanguageModel(config).eval()


@functools.cache
def clip() -> torch.nn.Module:
    return vlmzoo.create_model("clip-tiny").eval()


@functools.cache
def processor():
    from vlmzoo.processing import ImageProcessor, ImageProcessorConfig

    return ImageProcessor(ImageProcessorConfig.clip(32))


class Tok:
    """A word-level tokenizer: enough for the prompt and collate checks."""

    pad_id, bos_id, eos_id, image_id, vocab_size = 0, 2, 3, 4, 100

    def encode(self, text: str) -> list[int]:
        return [self.image_id if w == "<image>" else 10 + len(w) for w in text.split()]

    def decode(self, ids) -> str:
        return ""


IMG = -200  # tiny-llava's image placeholder
PIX = torch.randn(1, 3, 32, 32)  # one valid image for clip-vit-tiny / tiny-llava
IDS = torch.tensor([[5, IMG, 6]])  # one valid prompt holding one placeholder


def pixels(fill: float, n: int = 1) -> torch.Tensor:
    x = torch.randn(n, 3, 32, 32)
    x[0, 1, 2, 3] = fill
    return x


def fla(q, k, v, heads, **kw):
    from vlmzoo.kernels import focused_linear_attention

    return focused_linear_attention(q, k, v, heads, **kw)


@functools.cache
def encoder_decoder(decoder: str = "tiny-mbart") -> torch.nn.Module:
    """clip-vit-tiny read by a decoder's own cross-attention, one page per sample (Donut's layout)."""
    from vlmzoo.models.vlm import VisionLanguageModel

    config = get_entry("tiny-llava", "model").config.replace(
        adapter=get_entry("encoder-decoder", "adapter").config,
        decoder=get_entry(decoder, "decoder").config,
        expand_image_tokens=False,
    )
    return VisionLanguageModel(config).eval()


def document_processor():
    from tiny_tokenizers import donut_tokenizer

    return vlmzoo.create_processor("tiny-donut", tokenizer=donut_tokenizer())


def document_page_unresized():
    """A page fed at its own size (do_resize=False) that is not a multiple of Swin's stride 32."""
    from vlmzoo.processing.document_image import DocumentImageConfig, preprocess_document

    config = DocumentImageConfig.donut((192, 128)).replace(do_resize=False)
    return preprocess_document(np.zeros((100, 70, 3), dtype=np.uint8), config)


def donut_original_layout() -> dict[str, torch.Tensor]:
    """tiny-donut's weights under clovaai/donut's DonutModel keys (encoder.model.*, decoder.model.*)."""
    model = vlmzoo.create_model("tiny-donut")
    sd = model.state_dict()
    out = {"encoder.model." + k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    return out | {
        "decoder.model." + k[len("decoder.lm.") :]: v for k, v in sd.items() if k.startswith("decoder.")
    }


# A saved tiny checkpoint, copied and damaged per case.
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    vlmzoo.save(encoder("clip-vit-tiny"), root / "vit")
    vlmzoo.save(encoder("sam-vit-tiny"), root / "sam")
    return root


def damaged(saved: Path, name: str, damage: Callable[[Path], None]) -> Path:
    target = saved / name
    if not target.exists():
        shutil.copytree(saved / "vit", target)
        damage(target)
    return target


def truncate(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def scramble_header(d: Path) -> None:
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header right after its 8-byte length
    (d / "model.safetensors").write_bytes(bytes(data))


def foreign_keys(d: Path) -> None:
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3)}, d / "model.safetensors")


def pickle_as_safetensors(d: Path) -> None:
    torch.save(encoder("clip-vit-tiny").state_dict(), d / "model.safetensors")


def edit_config(**changes: Any) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        document = json.loads((d / "config.json").read_text())
        for key, value in changes.items():
            if key == "width":
                document["config"]["width"] = value
            else:
                document[key] = value
        (d / "config.json").write_text(json.dumps(document))

    return apply


def sam_weights(d: Path) -> None:
    shutil.copy(d.parent / "sam" / "model.safetensors", d / "model.safetensors")


def edit_json(**fields: Any) -> Callable[[Path], None]:
    """Set config fields in config.json, keeping the recorded digest (an edit after the save)."""

    def apply(d: Path) -> None:
        document = json.loads((d / "config.json").read_text())
        document["config"].update(fields)
        (d / "config.json").write_text(json.dumps(document))

    return apply


def flip_byte(d: Path) -> None:
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 1  # tensor data (the header comes first)
    (d / "model.safetensors").write_bytes(bytes(data))


def weights_of_another_save(d: Path) -> None:
    other = vlmzoo.create_encoder("clip-vit-tiny")  # same config, other values (a later step)
    with torch.no_grad():
        other.norm.weight.add_(1.0)
    vlmzoo.save(other, d / "other")
    shutil.copy(d / "other" / "model.safetensors", d / "model.safetensors")


def retyped(name: str, dtype: torch.dtype) -> Callable[[Path], None]:
    """Store one tensor of model.safetensors in another dtype, keeping the file's metadata."""

    def apply(d: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(d / "model.safetensors", framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
        save_file({**tensors, name: tensors[name].to(dtype)}, d / "model.safetensors", metadata=metadata)

    return apply


def replace_text(old: str, new: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / "config.json").write_text((d / "config.json").read_text().replace(old, new))

    return apply


def meta_encoder() -> torch.nn.Module:
    with torch.device("meta"):
        return vlmzoo.create_encoder("clip-vit-tiny")


def a_file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(b"not a tensor file " * 8)
    return path


IDS2 = torch.tensor([[5, IMG, 6], [7, 8, 9]])  # two samples, one image


def continue_past_learned_positions() -> Any:
    """A gpt2 VLM continuing a 510-token KV cache by 3 tokens (its table holds 512 positions)."""
    model = vlm("tiny-gpt2")
    with torch.no_grad():
        cache = model(None, torch.ones(1, 510, dtype=torch.long), use_cache=True).cache
        return model(None, torch.ones(1, 3, dtype=torch.long), cache=cache)


def meta_vlm() -> torch.nn.Module:
    from vlmzoo.models.vlm import VisionLanguageModel

    with torch.device("meta"):
        return VisionLanguageModel(get_entry("tiny-llava", "model").config)


# --- the catalogue ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad input: ``call(saved_dir)`` must raise ``error`` with a message matching ``match``."""

    id: str
    call: Callable[[Path], Any]
    error: type[VlmzooError]
    match: str


CASES = [
    # Encoder pixel inputs (layers/patch_embed.check_image, every vision encoder)
    Case("pixels-wrong-channels", lambda _: encoder("clip-vit-tiny")(torch.randn(1, 4, 32, 32)),
         InputError, r"4 channels but the encoder expects 3"),
    Case("pixels-channels-last", lambda _: encoder("clip-vit-tiny")(torch.randn(1, 32, 32, 3)),
         InputError, r"32 channels .* channels-last input must be permuted to \[B, C, H, W\]"),
    Case("pixels-missing-batch-dim", lambda _: encoder("clip-vit-tiny")(torch.randn(3, 32, 32)),
         InputError, r"shape \[B, C, H, W\], got \(3, 32, 32\) \(3 dims\)"),
    Case("pixels-not-a-tensor", lambda _: encoder("clip-vit-tiny")([torch.randn(3, 32, 32)]),
         InputError, r"must be a torch.Tensor, got list"),
    Case("pixels-empty-batch", lambda _: encoder("clip-vit-tiny")(torch.randn(0, 3, 32, 32)),
         InputError, r"empty batch \(B = 0\)"),
    Case("pixels-uint8", lambda _: encoder("clip-vit-tiny")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
         InputError, r"floating-point tensor, got torch.uint8"),
    Case("pixels-int64", lambda _: encoder("swin-tiny")(torch.zeros(1, 3, 64, 64, dtype=torch.long)),
         InputError, r"floating-point tensor, got torch.int64"),
    Case("pixels-size-not-multiple-of-patch", lambda _: encoder("clip-vit-tiny")(torch.randn(1, 3, 33, 30)),
         InputError, r"33x30 is not a multiple of the patch size 8; resize or pad to e.g. 32x24"),
    Case("pixels-size-not-multiple-of-stride", lambda _: encoder("pvt-tiny")(torch.randn(1, 3, 48, 64)),
         InputError, r"48x64 is not a multiple of PVT's total stride 32"),
    Case("pixels-grid-beyond-max-grid-scale", lambda _: encoder("sam-vit-tiny")(torch.randn(1, 3, 512, 512)),
         InputError, r"64x64 token grid, more than max_grid_scale=4"),
    Case("pixels-nan", lambda _: encoder("clip-vit-tiny")(pixels(math.nan)),
         InputError, r"pixel_values contain 1 NaN and 0 inf values"),
    Case("pixels-inf", lambda _: encoder("sam-vit-tiny")(pixels(math.inf).repeat(1, 1, 2, 2)),
         InputError, r"contain 0 NaN and 4 inf values"),
    Case("pixels-nan-hierarchical", lambda _: encoder("pvt-tiny")(pixels(math.nan).repeat(1, 1, 2, 2)),
         InputError, r"contain 4 NaN"),
    Case("pixels-other-device", lambda _: encoder("swin-tiny")(torch.randn(1, 3, 64, 64, device="meta")),
         InputError, r"pixel_values are on meta but the encoder's weights are on cpu"),
    Case("pixels-per-tower-count", lambda _: encoder("vary-toy-encoder-tiny")([torch.randn(1, 3, 32, 32)]),
         InputError, r"one tensor per tower \['clip', 'vocab'\], got 1"),
    # CLIP text tower and dual encoder
    Case("text-longer-than-context", lambda _: clip().encode_text(torch.ones(1, 17, dtype=torch.long)),
         InputError, r"sequence length 17 exceeds the context length 16"),
    Case("text-id-outside-vocab", lambda _: clip().encode_text(torch.tensor([[1, 1000]])),
         InputError, r"token ids must be in \[0, 1000\), got range \[1, 1000\]"),
    Case("text-float-ids", lambda _: clip().encode_text(torch.ones(1, 3)),
         InputError, r"integer tensor, got torch.float32"),
    Case("text-no-tokens", lambda _: clip().encode_text(torch.ones(2, 0, dtype=torch.long)),
         InputError, r"no tokens \(shape \(2, 0\)\)"),
    Case("text-empty-batch", lambda _: clip().encode_text(torch.ones(0, 3, dtype=torch.long)),
         InputError, r"empty batch \(shape \(0, 3\)\)"),
    Case("text-mask-shape", lambda _: clip().encode_text(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4)),
         InputError, r"attention_mask shape \(1, 4\) != input_ids shape \(1, 3\)"),
    Case("clip-loss-not-square",
         lambda _: clip()(torch.randn(2, 3, 32, 32), torch.ones(3, 4, dtype=torch.long), return_loss=True),
         InputError, r"square \[B, B\] logits .* got \(2, 3\)"),
    Case("zero-shot-no-classes",
         lambda _: __import__("vlmzoo.models.clip").models.clip.ZeroShotClassifier.from_classnames(
             clip(), lambda s: torch.ones(len(s), 3, dtype=torch.long), []),
         InputError, r"at least one class name"),
    # VisionLanguageModel
    Case("placeholders-more-than-images", lambda _: vlm()(PIX, torch.tensor([[5, IMG, IMG]])),
         InputError, r"hold 2 image placeholders \(id -200\) but 1 images"),
    Case("image-without-placeholder", lambda _: vlm()(PIX, torch.tensor([[5, 6, 7]])),
         InputError, r"hold 0 image placeholders \(id -200\) but 1 images"),
    Case("placeholder-without-image", lambda _: vlm()(None, IDS),
         InputError, r"hold 1 image placeholders \(id -200\) but 0 images"),
    Case("unexpanded-placeholder-count", lambda _: vlm(expand_image_tokens=False)(PIX, IDS),
         InputError, r"hold 1 image placeholders .* expected 16 placeholders per image"),
    Case("input-ids-1d", lambda _: vlm()(PIX, IDS[0]),
         InputError, r"input_ids must be a \[B, L\] tensor"),
    Case("input-ids-float", lambda _: vlm()(PIX, IDS.float()),
         InputError, r"integer tensor, got torch.float32"),
    Case("input-ids-empty-batch", lambda _: vlm()(None, torch.zeros(0, 3, dtype=torch.long)),
         InputError, r"no tokens \(shape \(0, 3\)\)"),
    Case("input-ids-outside-vocab", lambda _: vlm()(PIX, torch.tensor([[5, IMG, 512]])),
         InputError, r"must be in \[0, 512\) .* got range \[5, 512\]"),
    Case("input-ids-other-device", lambda _: vlm()(None, torch.ones(1, 3, dtype=torch.long, device="meta")),
         InputError, r"input_ids are on meta but the decoder's weights are on cpu"),
    Case("attention-mask-shape", lambda _: vlm()(PIX, IDS, torch.ones(1, 4)),
         InputError, r"attention_mask shape \(1, 4\) != input_ids shape \(1, 3\)"),
    Case("labels-shape", lambda _: vlm()(PIX, IDS, labels=torch.ones(2, 3, dtype=torch.long)),
         InputError, r"labels shape \(2, 3\) != input_ids shape \(1, 3\)"),
    Case("longer-than-max-length", lambda _: vlm(max_length=8)(PIX, IDS),
         InputError, r"grows to 18 > max_length=8; truncating would cut an image span"),
    Case("longer-than-learned-positions",
         lambda _: vlm("tiny-gpt2")(None, torch.ones(1, 513, dtype=torch.long)),
         InputError, r"513 tokens exceeds the 512 learned positions of the gpt2 decoder"),
    Case("generate-past-learned-positions",
         lambda _: vlm("tiny-gpt2").generate(None, torch.ones(1, 510, dtype=torch.long), max_new_tokens=3),
         InputError, r"510 tokens \+ 3 new tokens exceeds the 512 learned positions"),
    Case("generate-right-padded", lambda _: vlm().generate(PIX, IDS, torch.tensor([[1, 1, 0]])),
         InputError, r"needs left padding"),
    Case("generate-no-new-tokens", lambda _: vlm().generate(PIX, IDS, max_new_tokens=0),
         InputError, r"max_new_tokens=0 must be a positive int"),
    Case("unknown-trainable-mode", lambda _: vlm().set_trainable(encoder="half"),
         ConfigError, r"'frozen' or 'full', got 'half'"),
    Case("cross-attention-placeholder-outside-vocab",
         lambda _: vlmzoo.create_model("tiny-openflamingo", image_token_id=-5),
         ConfigError, r"image_token_id=-5: .* token id in \[0, \d+\)"),
    Case("attention-mask-bool", lambda _: vlm()(PIX, IDS, torch.ones(1, 3, dtype=torch.bool)),
         InputError, r"attention_mask is a bool tensor, whose meaning is ambiguous .* pass mask.long\(\)"),
    Case("attention-mask-fraction", lambda _: vlm()(PIX, IDS, torch.tensor([[1.0, 0.5, 1.0]])),
         InputError, r"only 0 \(padding\) and 1 \(token\), got 1 other values \(0.5\); mark tokens with 1"),
    Case("attention-mask-two", lambda _: vlm()(PIX, IDS, torch.tensor([[1, 2, 1]])),
         InputError, r"only 0 \(padding\) and 1 \(token\), got 1 other values \(2\)"),
    Case("attention-mask-minus-one", lambda _: vlm()(PIX, IDS, torch.tensor([[1, -1, 1]])),
         InputError, r"only 0 \(padding\) and 1 \(token\), got 1 other values \(-1\)"),
    Case("attention-mask-additive", lambda _: vlm()(PIX, IDS2, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1e4]])),
         InputError, r"other values \(-10000\); it looks additive .* pass \(mask == 0\).long\(\)"),
    Case("attention-mask-all-zero-row", lambda _: vlm()(PIX, IDS2, torch.tensor([[1, 1, 1], [0, 0, 0]])),
         InputError, r"attention_mask rows \[1\] are all 0: those samples have no token to attend to"),
    Case("attention-mask-additive-without-padding", lambda _: vlm()(PIX, IDS, torch.zeros(1, 3)),
         InputError, r"rows \[0\] are all 0: .*\(an additive mask without padding is all 0 too"),
    Case("generate-attention-mask-bool",
         lambda _: vlm().generate(PIX, IDS, torch.ones(1, 3, dtype=torch.bool), max_new_tokens=2),
         InputError, r"attention_mask is a bool tensor"),
    Case("labels-outside-vocab", lambda _: vlm()(PIX, IDS, labels=torch.tensor([[5, 6, 512]])),
         InputError, r"labels must be token ids in \[0, 512\) .* or -100 \(not scored\), got 1 other values in \[512, 512\]"),
    Case("labels-negative-not-ignore-index", lambda _: vlm()(PIX, IDS, labels=torch.tensor([[-1, 6, 7]])),
         InputError, r"or -100 \(not scored\), got 1 other values in \[-1, -1\]; mark positions that are not scored with -100"),
    Case("labels-float", lambda _: vlm()(PIX, IDS, labels=torch.tensor([[5.0, 6.0, 7.0]])),
         InputError, r"labels must be an integer tensor of token ids, got torch.float32"),
    Case("cache-continued-past-learned-positions", lambda _: continue_past_learned_positions(),
         InputError, r"3 tokens \+ 510 in the KV cache exceeds the 512 learned positions of the gpt2 decoder"),
    Case("generate-flamingo-past-learned-positions",
         lambda _: vlmzoo.create_model("tiny-openflamingo", decoder=get_entry("tiny-gpt2", "decoder").config)
         .generate(None, torch.ones(1, 500, dtype=torch.long), max_new_tokens=13),
         InputError, r"500 tokens \+ 13 new tokens exceeds the 512 learned positions"),
    Case("meta-device-model", lambda _: meta_vlm()(PIX, IDS),
         InputError, r"the model's encoder is on the meta device: its weights have shapes but no values .* vlmzoo.load"),
    Case("encoder-decoder-without-cross-attention", lambda _: encoder_decoder("tiny-llama"),
         ConfigError, r"llama decoder \(LlamaForCausalLM\) has no cross-attention layers"),
    Case("encoder-decoder-call-without-images", lambda _: encoder_decoder()(None, torch.tensor([[5, 6]])),
         InputError, r"reads its images through cross-attention at every call: pass pixel_values"),
    Case("encoder-decoder-images-per-sample", lambda _: encoder_decoder()(PIX.repeat(2, 1, 1, 1), torch.tensor([[5, 6]])),
         InputError, r"2 images for 1 samples: .* exactly one image per sample"),
    # Registry and configs
    Case("unknown-encoder-name", lambda _: vlmzoo.create_encoder("clip-vit-b61"),
         UnknownModelError, r"unknown encoder 'clip-vit-b61'\. Did you mean: clip-vit-b16"),
    Case("name-of-another-kind", lambda _: vlmzoo.create_encoder("tiny-llava"),
         UnknownModelError, r"'tiny-llava' is registered as a model"),
    Case("unknown-model-name", lambda _: vlmzoo.create_model("llava-1.5-7"),
         UnknownModelError, r"unknown model 'llava-1.5-7'\. Did you mean: llava-1.5-7b"),
    Case("unknown-tower-name", lambda _: vlmzoo.create_encoder("vary-toy-encoder-tiny", first="clip-vit-b61"),
         UnknownModelError, r"unknown encoder 'clip-vit-b61'"),
    Case("unknown-kind", lambda _: vlmzoo.list_models(kind="encoders"),
         ConfigError, r"kind must be one of .* got 'encoders'"),
    Case("unknown-override", lambda _: vlmzoo.create_encoder("clip-vit-tiny", widht=64),
         ConfigError, r"ViTConfig has no field\(s\) \['widht'\]"),
    Case("override-out-of-range", lambda _: vlmzoo.create_encoder("clip-vit-tiny", width=-3),
         ConfigError, r"ViTConfig.width=-3: must be a positive number"),
    Case("override-wrong-type", lambda _: vlmzoo.create_encoder("clip-vit-tiny", depth="2"),
         ConfigError, r"ViTConfig.depth='2': expected an integer"),
    Case("config-json-malformed", lambda _: vlmzoo.encoders.vit.ViTConfig.from_json("{width: 3"),
         ConfigError, r"ViTConfig.from_json: not valid JSON"),
    Case("config-json-not-an-object", lambda _: vlmzoo.encoders.vit.ViTConfig.from_json("[1, 2]"),
         ConfigError, r"ViTConfig.from_dict expects a dict of fields, got list"),
    Case("config-unknown-class",
         lambda _: vlmzoo.models.vlm.VLMConfig.from_dict({"encoder": {"_type": "os.system"}}),
         ConfigError, r"unknown config class 'os.system'"),
    Case("attention-layout-bad-block",
         lambda _: get_entry("clip-vit-tiny", "encoder").config.with_attention("window", blocks=[5]),
         ConfigError, r"block index 5 is not in 0 \.\. 1"),
    Case("decoder-unknown-model-type", lambda _: vlmzoo.create_decoder("tiny-llama", model_type="notamodel"),
         ConfigError, r"DecoderConfig.model_type='notamodel'"),
    Case("decoder-field-rejected-by-transformers",
         lambda _: vlmzoo.create_decoder("tiny-llama", hf_config={"hidden_size": 66, "num_attention_heads": 4}),
         ConfigError, r"DecoderConfig.hf_config=.*hidden_size"),
    # Preprocessing and prompts
    Case("processor-empty-batch", lambda _: processor()([]), InputError, r"empty batch"),
    Case("document-page-off-the-stride-grid", lambda _: document_page_unresized(),
         InputError, r"page of size 100x70 .* not a multiple of 32 \(the Swin output stride\) .* 128x96"),
    Case("document-task-token-not-in-tokenizer", lambda _: document_processor().encode_prompt("<s_cord-v2>"),
         InputError, r"task tokens \['<s_cord-v2>'\] are not in the tokenizer"),
    Case("processor-two-channels", lambda _: processor()(torch.rand(2, 16, 16)),
         InputError, r"shape \(2, 16, 16\) has 2 channels; expected 1, 3 or 4"),
    Case("processor-float-0-255", lambda _: processor()(torch.rand(3, 16, 16) * 255),
         InputError, r"looks like 0-255 data"),
    Case("processor-nan", lambda _: processor()(torch.full((3, 16, 16), math.nan)),
         InputError, r"NaN or inf pixels"),
    Case("processor-int32", lambda _: processor()(torch.zeros(3, 16, 16, dtype=torch.int32)),
         InputError, r"unsupported image dtype torch.int32"),
    Case("processor-unknown-type", lambda _: processor()("cat.png"),
         InputError, r"unsupported image type str"),
    Case("prompt-placeholder-count",
         lambda _: vlmzoo.processing.prompts.encode_prompt(Tok(), "a <image> b <image>", 1),
         InputError, r"holds 2 image placeholders but 1 images"),
    Case("collate-answers-count", lambda _: vlmzoo.processing.prompts.collate(Tok(), ["a", "b"], ["x"]),
         InputError, r"2 prompts but 1 answers"),
    Case("collate-images-count",
         lambda _: vlmzoo.processing.prompts.collate(
             Tok(), ["<image> a", "<image> b"], pixel_values=[torch.rand(3, 8, 8)]),
         InputError, r"pixel_values hold 1 images but images_per_sample counts 2"),
    Case("collate-padding-side", lambda _: vlmzoo.processing.prompts.collate(Tok(), ["a"], padding_side="middle"),
         InputError, r"padding_side='middle'"),
    Case("collate-no-prompts", lambda _: vlmzoo.processing.prompts.collate(Tok(), []),
         InputError, r"no prompts"),
    # Focused linear attention kernels
    Case("kernel-heads-do-not-divide", lambda _: fla(*[torch.randn(1, 4, 8)] * 3, 3),
         InputError, r"C=8 is not divisible by num_heads=3"),
    Case("kernel-dtype-mismatch", lambda _: fla(torch.randn(1, 4, 8), torch.randn(1, 4, 8),
                                                torch.randn(1, 4, 8).double(), 2),
         InputError, r"same dtype, got torch.float32, torch.float32, torch.float64"),
    Case("kernel-device-mismatch", lambda _: fla(torch.randn(1, 4, 8), torch.randn(1, 4, 8),
                                                 torch.randn(1, 4, 8, device="meta"), 2),
         InputError, r"same device, got cpu, cpu, meta"),
    Case("kernel-no-tokens", lambda _: fla(*[torch.randn(1, 0, 8)] * 3, 2),
         InputError, r"no tokens \(N = 0\)"),
    Case("kernel-unknown-backend", lambda _: fla(*[torch.randn(1, 4, 8)] * 3, 2, backend="cuda"),
         InputError, r"backend='cuda'"),
    # vlmzoo.save / vlmzoo.load
    Case("load-missing-directory", lambda d: vlmzoo.load(d / "nowhere"), CheckpointError, r"nowhere"),
    Case("load-missing-weights",
         lambda d: vlmzoo.load(damaged(d, "noweights", lambda p: (p / "model.safetensors").unlink())),
         CheckpointError, r"model.safetensors not found"),
    Case("load-config-not-json",
         lambda d: vlmzoo.load(damaged(d, "badjson", lambda p: (p / "config.json").write_text("{nope"))),
         CheckpointError, r"config.json is not valid JSON"),
    Case("load-foreign-config",
         lambda d: vlmzoo.load(damaged(d, "hfjson", lambda p: (p / "config.json").write_text('{"model_type": "x"}'))),
         CheckpointError, r"not a vlmzoo config"),
    Case("load-truncated-safetensors", lambda d: vlmzoo.load(damaged(d, "truncated", truncate)),
         CheckpointError, r"not a readable safetensors file"),
    Case("load-corrupted-safetensors", lambda d: vlmzoo.load(damaged(d, "scrambled", scramble_header)),
         CheckpointError, r"not a readable safetensors file"),
    Case("load-pickle-named-safetensors", lambda d: vlmzoo.load(damaged(d, "pickled", pickle_as_safetensors)),
         CheckpointError, r"not a readable safetensors file"),
    Case("load-foreign-safetensors", lambda d: vlmzoo.load(damaged(d, "foreign", foreign_keys)),
         CheckpointError, r"does not fit VisionTransformer:\n  \d+ missing keys: .*\n  1 unexpected keys: foo.weight"),
    Case("load-weights-of-another-architecture", lambda d: vlmzoo.load(damaged(d, "samweights", sam_weights)),
         CheckpointError, r"come from different saves"),
    Case("load-config-of-another-architecture",
         lambda d: vlmzoo.load(damaged(d, "samarch", edit_config(architecture="SamEncoder"))),
         CheckpointError, r"does not fit SamEncoder"),
    Case("load-unknown-architecture",
         lambda d: vlmzoo.load(damaged(d, "evilarch", edit_config(architecture="os.system"))),
         UnknownModelError, r"unknown architecture 'os.system'"),
    Case("load-config-out-of-range", lambda d: vlmzoo.load(damaged(d, "negative", edit_config(width=-1))),
         CheckpointError, r"ViTConfig.width=-1: must be a positive number"),
    Case("save-not-a-vlmzoo-module", lambda d: vlmzoo.save(torch.nn.Linear(2, 2), d / "linear"),
         CheckpointError, r"Linear has no vlmzoo config"),
    # What is loaded is what was saved; checks before allocation; bounded JSON; save targets
    Case("load-config-edited", lambda d: vlmzoo.load(damaged(d, "edited", edit_json(norm_eps=1e-3))),
         CheckpointError, r"config.json was edited after the save: its config's SHA-256"),
    Case("load-flipped-byte", lambda d: vlmzoo.load(damaged(d, "flipped", flip_byte)),
         CheckpointError, r"model.safetensors is corrupted: its tensors' SHA-256"),
    Case("load-weights-of-another-save", lambda d: vlmzoo.load(damaged(d, "otherstep", weights_of_another_save)),
         CheckpointError, r"come from different saves \(the file's tensor digest"),
    Case("load-float-stored-as-integer",
         lambda d: vlmzoo.load(damaged(d, "int64", retyped("pos_embed", torch.int64)), verify=False),
         CheckpointError, r"pos_embed \(model.safetensors: I64, model: F32\).*does not cast"),
    Case("load-float-stored-as-bool",
         lambda d: vlmzoo.load(damaged(d, "bool", retyped("pos_embed", torch.bool)), verify=False),
         CheckpointError, r"pos_embed \(model.safetensors: BOOL, model: F32\)"),
    Case("load-one-f16-among-f32",
         lambda d: vlmzoo.load(damaged(d, "f16", retyped("norm.weight", torch.float16)), verify=False),
         CheckpointError, r"norm.weight \(model.safetensors: F16, recorded: F32\)"),
    Case("load-config-asks-for-a-huge-model",
         lambda d: vlmzoo.load(damaged(d, "huge", edit_json(width=8192, num_heads=64, depth=4096))),
         CheckpointError, r"describes a VisionTransformer (of more than|asking for a tensor of) .* refused before allocating anything"),
    Case("load-config-5000-digit-integer",
         lambda d: vlmzoo.load(damaged(d, "digits", replace_text('"depth": 2', '"depth": ' + "9" * 5000))),
         CheckpointError, r"config.json is not valid JSON \(vlmzoo checkpoint config\): an integer of 5000 digits"),
    Case("load-config-deep-nesting",
         lambda d: vlmzoo.load(damaged(d, "deep", replace_text('"depth": 2', '"depth": ' + "[" * 200_000 + "]" * 200_000))),
         CheckpointError, r"config.json is not valid JSON .*nested more than 100 levels deep"),
    Case("load-config-duplicate-key",
         lambda d: vlmzoo.load(damaged(d, "twice", replace_text('"depth": 2', '"depth": 2, "depth": 3'))),
         CheckpointError, r"the key 'depth' appears twice"),
    Case("save-meta-device-model", lambda d: vlmzoo.save(meta_encoder(), d / "meta"),
         CheckpointError, r"tensors are on the meta device .* holds shapes but no values"),
    Case("save-onto-a-file", lambda d: vlmzoo.save(encoder("clip-vit-tiny"), a_file(d / "onto.txt")),
         CheckpointError, r"onto.txt: it is a file, not a directory"),
    Case("save-under-a-file", lambda d: vlmzoo.save(encoder("clip-vit-tiny"), a_file(d / "under.txt") / "ckpt"),
         CheckpointError, r"under.txt is a file, so no directory can be made under it"),
    # Converters
    Case("read-garbage-safetensors", lambda d: vlmzoo.convert.read_state_dict(garbage(d / "junk.safetensors")),
         CheckpointError, r"junk.safetensors is not a readable safetensors file"),
    Case("read-garbage-pickle", lambda d: vlmzoo.convert.read_state_dict(garbage(d / "junk.pt")),
         CheckpointError, r"junk.pt cannot be opened with weights_only=True"),
    Case("original-donut-without-its-canvas",
         lambda _: vlmzoo.convert.from_original(donut_original_layout(), "donut"),
         ConversionError, r"does not store its canvas size: pass image_size=\(H, W\)"),
    Case("unknown-original-layout", lambda _: vlmzoo.convert.from_original({}, "openai-clipp"),
         UnknownModelError, r"unknown original layout 'openai-clipp' \(did you mean \['openai-clip', 'open_clip'\]"),
    Case("original-layout-of-another-architecture",
         lambda _: vlmzoo.convert.from_original(encoder("sam-vit-tiny").state_dict(), "swin"),
         ConversionError, r"not in the 'swin' layout: KeyError: 'layers.0.blocks.0.mlp.fc1.weight'"),
    Case("original-pvt-of-another-architecture",
         lambda _: vlmzoo.convert.from_original(encoder("sam-vit-tiny").state_dict(), "pvt"),
         ConversionError, r"not a PVT state dict"),
    Case("no-converter-for-class", lambda _: vlmzoo.convert.from_transformers(torch.nn.Linear(2, 2)),
         ConversionError, r"no vlmzoo converter for transformers Linear"),
    Case("convert-block-index-beyond-a-gap",
         lambda _: vlmzoo.convert.from_original(encoder("dinov2-vit-tiny").state_dict() | {"blocks.3000000.norm1.weight": torch.zeros(1)}, "dinov2"),
         ConversionError, r"'blocks.3000000.norm1.weight' asks for block 3000000, but block 2 \(blocks.2.\*\) is absent"),
    Case("convert-block-index-not-a-number",
         lambda _: vlmzoo.convert.from_original(encoder("dinov2-vit-tiny").state_dict() | {"blocks.01.norm1.weight": torch.zeros(1)}, "dinov2"),
         ConversionError, r"'blocks.01.norm1.weight': 01 is not a block index"),
    Case("convert-incomplete-block",
         lambda _: vlmzoo.convert.from_original({k: v for k, v in encoder("sam-vit-tiny").state_dict().items() if k != "blocks.1.norm2.weight"}, "segment-anything"),
         ConversionError, r"blocks.1.norm2.weight is missing: every block of this layout has norm2.weight"),
    Case("convert-fused-projection-half-present",
         lambda _: vlmzoo.convert.from_original({k.replace("stages.0.0.attn.qkv.bias", "stages.0.0.attn.q.bias"): v for k, v in encoder("flatten-pvt-tiny").state_dict().items()}, "flatten-pvt"),
         ConversionError, r"stages.0.0.attn.kv.bias is missing, but stages.0.0.attn.q.bias is there"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_vlmzoo_error_naming_the_problem(case, saved):
    with pytest.raises(case.error, match=case.match):
        case.call(saved)


def test_catalogue_ids_are_unique_and_listed_in_docs():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    # The command line's rows (a table of commands and exit codes, tested in test_cli.py) follow the catalogue.
    catalogue = DOCS.read_text().split("### The command line")[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)`", catalogue, flags=re.MULTILINE))
    assert set(ids) - listed == set(), "catalogue cases missing from docs/errors.md"
    assert listed - set(ids) - {"config-field-out-of-range", "pickle-carrying-code"} == set()


# --- a pickle that would run code is refused, and the code never runs --------------------------
class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(1), "hook": _RunsShell(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=r"evil.pt cannot be opened with weights_only=True \(refused"):
        vlmzoo.convert.from_original(path, "openai-clip")
    assert not marker.exists()


# --- NaN/inf policy: raise; inside a compiled graph, assert ---------------------------------------
def test_nan_pixels_fail_a_compiled_encoder_too():
    compiled = torch.compile(encoder("clip-vit-tiny"), fullgraph=True, backend="eager")
    assert compiled(PIX).tokens.isfinite().all()
    with pytest.raises(RuntimeError, match="pixel_values contain NaN or inf"):
        compiled(pixels(math.nan))


def test_finite_check_counts_overflow_as_bad_pixels():
    big = torch.full((1, 3, 32, 32), 3e38)  # finite, but no normalised image looks like this
    with pytest.raises(InputError, match=r"too large to be normalised pixels \(max \|x\| = 3e\+38\)"):
        encoder("clip-vit-tiny")(big)


def test_half_precision_pixels_are_checked_without_overflow():
    x = torch.full((1, 3, 256, 256), 60000.0, dtype=torch.float16)  # fp16 sum would overflow
    from vlmzoo.layers.patch_embed import check_finite

    check_finite(x)  # summed in fp32: finite values pass


# --- every config field out of range --------------------------------------------------------------
def _config_classes() -> list[type[Config]]:
    _ensure_loaded()
    import vlmzoo.processing.image
    import vlmzoo.processing.processor
    import vlmzoo.processing.processor_presets  # the document and BLIP processors' configs
    import vlmzoo.processing.templates
    import vlmzoo.train.trainer  # noqa: F401  (TrainConfig)

    def walk(cls: type[Config]) -> list[type[Config]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    return sorted({c for c in walk(Config)[1:] if dataclasses.is_dataclass(c)}, key=lambda c: c.__name__)


def _valid_instance(cls: type[Config]) -> Config:
    from vlmzoo.processing import ImageProcessorConfig
    from vlmzoo.processing.processor_presets import processor_for

    if cls.__name__ == "FusedEncoderConfig":
        return get_entry("vary-toy-encoder-tiny", "encoder").config
    if cls.__name__ == "VLMConfig":
        return get_entry("tiny-llava", "model").config
    if cls is ImageProcessorConfig:
        return ImageProcessorConfig.clip()
    if cls.__name__ == "ProcessorConfig":
        return processor_for("llava-1.5-7b")
    if cls.__name__ == "ImageStreamConfig":
        return processor_for("llava-1.5-7b").image
    if cls.__name__ == "TemplateConfig":
        return processor_for("llava-1.5-7b").template
    if cls.__name__ == "DocumentProcessorConfig":
        return processor_for("donut-docvqa")
    if cls.__name__ == "DocumentImageConfig":
        return processor_for("donut-docvqa").image
    if cls.__name__ == "BLIPProcessorConfig":
        return processor_for("blip-base-caption")
    if cls.__name__ == "AnyResProcessorConfig":
        return processor_for("llava-v1.6-vicuna-7b")
    return cls()


def _out_of_range(hint: Any, default: Any) -> list[Any]:
    """Values outside the range of a field typed ``hint`` (some are valid for some fields: IN_RANGE)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is int:
        return [0, -1, "1"]  # non-positive, and a wrong type (a number in a string, as from a CLI)
    if hint is float:
        return [0.0, -1.0, math.nan, math.inf]
    if hint in (bool, str):
        return [42] if hint is str else ["yes"]
    if hint is Config or (isinstance(hint, type) and issubclass(hint, Config)):
        return [42]
    if origin is Literal:
        return ["no-such-option"]
    if origin is dict:
        return [["not", "a", "dict"]]
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        values = [v for a in options for v in _out_of_range(a, default)]
        return values + ([""] if str in options else [])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # per-stage / per-block tuples
            # in a union (``int | tuple[int, ...]``: ViTConfig.feature_layer) the default may be the other type
            default = default if isinstance(default, tuple) else ()
            n = max(len(default), 1)
            return [
                (),
                (*default, default[-1]) if default else ("x",),
                *((v,) * n for v in _out_of_range(args[0], None)[:2]),
            ]
        # a fixed-length tuple; in a union (``int | tuple[int, int]``) the default may be the other type
        base = default if isinstance(default, tuple) and default else (1,) * len(args)
        return [(*base, base[-1]), *(tuple([v] * len(args)) for v in _out_of_range(args[0], None)[:2])]
    raise AssertionError(f"no out-of-range values for {hint}")  # a new field type: extend this


# Generated values that are valid for one field, with the reason. Each field still gets at least one
# refused value (checked by test_every_config_field_has_an_out_of_range_value).
IN_RANGE = {
    ("BLIPProcessorConfig", "bos_token_id", 0): "any id of the vocabulary",
    ("BLIPProcessorConfig", "enc_token_id", 0): "any id of the vocabulary",
    ("DocumentImageConfig", "mean", (0.0, 0.0, 0.0)): "no centring",
    ("BLIPConfig", "label_smoothing", 0.0): "no smoothing (transformers' released configs)",
    ("BLIPConfig", "bos_token_id", 0): "any id of the vocabulary",
    ("BLIPConfig", "enc_token_id", 0): "any id of the vocabulary",
    ("BLIPConfig", "sep_token_id", 0): "any id of the vocabulary",
    ("BLIPConfig", "prompt_ids", ()): "no prompt (retrieval and VQA models)",
    ("BLIPConfig", "prompt_ids", (0,)): "any ids of the vocabulary",
    ("MEDConfig", "pad_token_id", 0): "any id of the vocabulary (BERT's [PAD] is 0)",
    ("TextTransformerConfig", "eos_token_id", 0): "any id of the vocabulary",
    ("ViTConfig", "num_registers", 0): "no register tokens",
    ("ViTConfig", "feature_layer", 0): "the embeddings (hidden_states[0])",
    ("ViTConfig", "feature_layer", -1): "the last block",
    ("ViTConfig", "feature_layer", (0,)): "the embeddings, as a one-layer tuple",
    ("ViTConfig", "feature_layer", (-1,)): "the last block, as a one-layer tuple",
    ("Siglip2VisionConfig", "feature_layer", 0): "the embeddings (hidden_states[0])",
    ("Siglip2VisionConfig", "feature_layer", -1): "the last block",
    ("NaFlexConfig", "mean", (0.0, 0.0, 0.0)): "any finite mean",
    ("NaFlexConfig", "mean", (-1.0, -1.0, -1.0)): "any finite mean",
    ("EmuConfig", "image_start_token_id", 0): "any id of the vocabulary",
    ("EmuConfig", "image_end_token_id", 0): "any id of the vocabulary",
    ("OneChartConfig", "number_token_id", 0): "any id of the vocabulary",
    ("ViTConfig", "block_attention", ()): "() means every block is global",
    ("SamConfig", "window_size", 0): "0 makes every block global",
    ("SamConfig", "global_attn_indexes", ()): "no global block",
    ("MLPProjectorConfig", "depth", 0): "the identity projector (Vary)",
    ("CLIPConfig", "logit_scale_init", 0.0): "log scale: temperature 1",
    ("CLIPConfig", "logit_scale_init", -1.0): "log scale: temperature e",
    ("SigLIPConfig", "logit_scale_init", 0.0): "log scale: scale 1",
    ("SigLIPConfig", "logit_scale_init", -1.0): "log scale: scale 1/e",
    ("SigLIPConfig", "logit_bias_init", 0.0): "no bias (transformers' _init_weights starts at 0)",
    ("SigLIPConfig", "logit_bias_init", -1.0): "any finite bias (the paper starts at -10)",
    ("VLMConfig", "image_token_id", 0): "any id (prefix adapters never embed it)",
    ("VLMConfig", "image_token_id", -1): "negative ids are LLaVA's convention",
    ("ImageProcessorConfig", "mean", (0.0, 0.0, 0.0)): "any finite mean",
    ("ImageProcessorConfig", "mean", (-1.0, -1.0, -1.0)): "any finite mean",
    ("TrainConfig", "weight_decay", 0.0): "no decay",
    ("TrainConfig", "betas", (0.0, 0.0)): "beta = 0 is allowed by AdamW",
    ("TrainConfig", "warmup_steps", 0): "no warmup",
    ("TrainConfig", "min_lr_ratio", 0.0): "decay to 0",
    ("TrainConfig", "clip_grad", 0.0): "no clipping",
    ("TrainConfig", "seed", 0): "any seed",
    ("TrainConfig", "seed", -1): "any seed",
    ("ProcessorConfig", "image_token_id", 0): "any id of the vocabulary",
    ("ProcessorConfig", "image_token_id", -1): "negative ids are LLaVA's convention (never embedded)",
    ("ProcessorConfig", "add_tokens", ()): "no tokens to add",
    ("ProcessorConfig", "add_tokens", ("x",)): "any token may be added",
    ("TemplateConfig", "stop", ()): "answers end at EOS only",
    ("TemplateConfig", "stop", ("</s>", "</s>")): "a repeated stop string changes nothing",
    **{(cls, "drop_path_rate", 0.0): "no drop path" for cls in ("ViTConfig", "SamConfig", "SwinConfig", "PvtConfig")},
}  # fmt: skip


def _in_range(cls: type[Config], field: str, value: Any) -> bool:
    names = [c.__name__ for c in cls.__mro__ if isinstance(c, type) and issubclass(c, Config)]
    # VaryVocabConfig inherits SamConfig's; == rather than hashing (some values are lists)
    return any(key == (name, field, value) for name in names for key in IN_RANGE)


FIELDS = [(cls, f.name) for cls in _config_classes() for f in dataclasses.fields(cls)]


def _bad_values(cls: type[Config], field: str) -> list[Any]:
    hint = typing.get_type_hints(cls)[field]
    default = getattr(_valid_instance(cls), field)
    return [v for v in _out_of_range(hint, default) if not _in_range(cls, field, v)]


@pytest.mark.parametrize(("cls", "field"), FIELDS, ids=[f"{c.__name__}.{f}" for c, f in FIELDS])
def test_config_field_out_of_range_is_refused_by_name(cls, field):
    base = _valid_instance(cls)
    for value in _bad_values(cls, field):
        with pytest.raises(ConfigError, match=rf"\b{cls.__name__}\.{field}\b") as caught:
            base.replace(**{field: value})
        assert isinstance(caught.value, VlmzooError), value


def test_every_config_field_has_an_out_of_range_value():
    assert len({cls for cls, _ in FIELDS}) >= 15  # every component, the processor and training
    assert [f"{c.__name__}.{f}" for c, f in FIELDS if not _bad_values(c, f)] == []


def test_in_range_exceptions_are_accepted():
    """IN_RANGE documents values the sweep must skip: they really are accepted (no stale entries)."""
    classes = {c.__name__: c for c in _config_classes()}
    for (name, field, value), _reason in IN_RANGE.items():
        _valid_instance(classes[name]).replace(**{field: value})


CROSS_FIELD = [
    ("width-not-divisible-by-heads", dict(width=30, num_heads=4), r"ViTConfig.width=30: must be divisible by num_heads=4"),
    ("image-not-multiple-of-patch", dict(image_size=30), r"ViTConfig.image_size=30: must be divisible by patch_size=8"),
    ("feature-layer-beyond-depth", dict(feature_layer=3), r"ViTConfig.feature_layer=3: must index hidden_states: -3 \.\. 2"),
    ("attention-layout-length", dict(block_attention=("global",)), r"ViTConfig.block_attention=.*one entry per block \(depth=2\)"),
    ("cls-pool-without-cls", dict(class_token=False, pool="cls"), r"ViTConfig.pool='cls': 'cls' pooling needs class_token=True"),
    ("even-dwc-kernel", dict(block_attention=("focused_linear",) * 2, dwc_kernel_size=4), r"ViTConfig.dwc_kernel_size=4: must be odd"),
    ("projection-head-on-patch-tokens", dict(pool="none"), r"ViTConfig.embed_dim=32: .*pool='none' keeps every token: for patch tokens \(a VLM's encoder\) pass embed_dim=None"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "match"), [c[1:] for c in CROSS_FIELD], ids=[c[0] for c in CROSS_FIELD]
)
def test_inconsistent_fields_are_refused_by_name(overrides, match):
    with pytest.raises(ConfigError, match=match):
        vlmzoo.create_encoder("clip-vit-tiny", **overrides)


def _config(name: str, kind: str) -> Config:
    return get_entry(name, kind).config


def _anyres() -> Config:
    from vlmzoo.processing.processor_presets import processor_for

    return processor_for("llava-v1.6-vicuna-7b")


# Rules between fields of other configs: each message names the conflict and the fields to set.
SAYS_THE_FIX = [
    ("pvt-cls-pool-without-cls", lambda: _config("pvt-tiny", "encoder").replace(class_token=False, pool="cls"),
     r"PvtConfig.pool='cls': 'cls' pooling needs class_token=True: set it, or pool='mean' or 'none'"),
    ("clip-tower-without-projection", lambda: _config("clip-tiny", "model").replace(vision=_config("clip-tiny", "model").vision.replace(embed_dim=None)),
     r"got vision.embed_dim=None and text.embed_dim=32: set both to the same width"),
    ("blip-text-encoder-with-lm-head", lambda: _config("tiny-blip", "model").replace(text_encoder=_config("tiny-blip", "model").text_encoder.replace(lm_head=True)),
     r"BLIPConfig.text_encoder=.*set text_encoder.lm_head=False"),
    ("blip-decoder-without-lm-head", lambda: _config("tiny-blip", "model").replace(text_decoder=_config("tiny-blip", "model").text_decoder.replace(lm_head=False)),
     r"BLIPConfig.text_decoder=.*set text_decoder.lm_head=True"),
    ("blip-tied-different-sizes", lambda: _config("tiny-blip", "model").replace(tie_decoder=True, text_decoder=_config("tiny-blip", "model").text_decoder.replace(depth=1)),
     r"BLIPConfig.tie_decoder=True: .*text_encoder.replace\(lm_head=True\), or set tie_decoder=False"),
    ("blip-tied-without-encoder", lambda: _config("tiny-blip", "model").replace(tie_decoder=True, text_encoder=None, retrieval_heads=False, temperature=None),
     r"BLIPConfig.tie_decoder=True: tying needs a text encoder .* or set tie_decoder=False"),
    ("fusion-resample-without-channel-join", lambda: _config("vary-toy-encoder-tiny", "encoder").replace(resample="bilinear", join="sequence"),
     r"FusedEncoderConfig.resample='bilinear': .* set resample='none' or join='channel'"),
    ("anyres-second-image-stream", lambda: _anyres().replace(second_image=_anyres().image),
     r"AnyResProcessorConfig.second_image=.*one image stream: set second_image=None"),
    ("siglip-map-head-without-final-norm", lambda: _config("siglip-vit-tiny", "encoder").replace(final_norm=False),
     r"SiglipVisionConfig.final_norm=False: .* set final_norm=True, or map_head=False"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "match"), [c[1:] for c in SAYS_THE_FIX], ids=[c[0] for c in SAYS_THE_FIX])
def test_inconsistent_fields_error_says_which_field_to_set(build, match):
    with pytest.raises(ConfigError, match=match):
        build()
