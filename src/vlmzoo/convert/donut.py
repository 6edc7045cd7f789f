"""The original Donut and Nougat releases -> vlmzoo :class:`VisionLanguageModel`.

Both originals save one ``DonutModel`` / ``NougatModel`` state dict (clovaai/donut's
``donut/model.py``, facebookresearch/nougat's ``nougat/model.py``; ``pytorch_model.bin``, a pickle
read with ``weights_only=True``):

- ``encoder.model.*``: timm 0.5.4's ``SwinTransformer`` (patch merging at the *end* of stages
  0-2, the original Swin layout vlmzoo keeps), with the ``relative_position_index`` and
  ``attn_mask`` buffers, which vlmzoo recomputes, and — in Nougat only — the final ``norm``, which
  neither original applies (Donut deletes it, Nougat's ``SwinEncoder.forward`` never calls it);
- ``decoder.model.*``: an ``MBartForCausalLM`` (``model.decoder.*``, ``lm_head.weight``).

What the tensors do not say comes from the release's ``config.json`` beside the weights (read
when ``from_original`` is given a path) or from keywords: the canvas ``image_size`` (H, W)
(``input_size``; Swin has no position table to read it from) and the decoder's heads
(``num_heads``; mBART-large's ``d_model / 64`` = 16 when not given, as in both originals). The
head is tied to the token embeddings when the checkpoint's ``lm_head.weight`` equals them (Donut's
``MBartConfig`` default) and untied otherwise (Nougat: transformers' ``convert_nougat_to_hf.py``
sets ``tie_word_embeddings=False``), so the converted model computes what the checkpoint holds.

The result reads one page per sample with no placeholder in the text (``expand_image_tokens=False``):
the task prompt (``<s_docvqa><s_question>...</s_question><s_answer>``; Nougat's ``<s>``) is the
decoder's input.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmzoo.adapters.encoder_decoder import EncoderDecoderConfig
from vlmzoo.convert.state_dict import build_loaded, count_blocks, strip_prefix
from vlmzoo.convert.swin import swin_config_from_donut_original, swin_state_dict_from_donut_original
from vlmzoo.decoders.hf import mbart_config
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.weights.files import read_json

StateDict = dict[str, torch.Tensor]

ENCODER, DECODER = "encoder.model.", "decoder.model."
# The config.json of both originals (DonutConfig / NougatConfig): the field holding the canvas.
CONFIG_FILE = "config.json"
# An mBART decoder layer's tensors (transformers' MBartDecoderLayer), checked before the depth is read.
MBART_LAYER_KEYS = (
    "self_attn.q_proj.weight",
    "self_attn.out_proj.weight",
    "self_attn_layer_norm.weight",
    "encoder_attn.k_proj.weight",
    "encoder_attn_layer_norm.weight",
    "fc1.weight",
    "fc2.weight",
    "final_layer_norm.weight",
)


def _canvas(
    image_size: tuple[int, int] | list[int] | None, path: Path | None, layout: str
) -> tuple[int, int]:
    """(H, W) from the keyword, else from ``input_size`` in the ``config.json`` beside ``path``."""
    if image_size is None and path is not None and (path.parent / CONFIG_FILE).is_file():
        image_size = read_json(path.parent / CONFIG_FILE, f"{layout} config").get("input_size")
    if image_size is None:
        raise ConversionError(
            f"the {layout} checkpoint does not store its canvas size: pass image_size=(H, W) (e.g. "
            "(2560, 1920) for donut-base, (896, 672) for Nougat), or the weights file's path with the "
            f"release's {CONFIG_FILE} (input_size) beside it"
        )
    if (
        not isinstance(image_size, list | tuple)
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        raise ConversionError(f"image_size={image_size!r}: expected (H, W), two positive ints")
    return int(image_size[0]), int(image_size[1])


def _decoder(sd: StateDict, num_heads: int | None) -> tuple[object, StateDict]:
    """(DecoderConfig, MBartForCausalLM weights) read off the ``decoder.model.*`` tensors."""
    for key in ("model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"):
        if key not in sd:
            raise ConversionError(
                f"no {DECODER}{key}: not a Donut/Nougat mBART decoder (found e.g. {sorted(sd)[:3]})"
            )
    tokens = sd["model.decoder.embed_tokens.weight"]
    vocab, width = tokens.shape
    layers = count_blocks(sd, "model.decoder.layers.", MBART_LAYER_KEYS, what="decoder layer")
    heads = num_heads if num_heads is not None else width // 64
    if heads <= 0 or width % heads:
        raise ConversionError(f"num_heads={heads} does not divide the decoder width {width}")
    ffn = sd["model.decoder.layers.0.fc1.weight"].shape[0]
    # MBartLearnedPositionalEmbedding keeps 2 rows in front of the positions (its offset).
    positions = sd["model.decoder.embed_positions.weight"].shape[0] - 2
    head = sd.get("lm_head.weight")
    tied = head is None or (head.shape == tokens.shape and torch.equal(head, tokens))
    config = mbart_config(
        layers=layers, positions=positions, vocab=vocab, width=width, tie_word_embeddings=tied
    )
    config = config.replace(
        hf_config={**config.hf_config, "decoder_attention_heads": heads, "decoder_ffn_dim": ffn}
    )
    if head is None:
        sd = {**sd, "lm_head.weight": tokens}
    state = {f"lm.{k}": v for k, v in sd.items()}
    return config, state


def _convert(
    sd: StateDict, image_size: tuple[int, int] | None, num_heads: int | None, path: Path | None, layout: str
) -> VisionLanguageModel:
    if not any(k.startswith(ENCODER) for k in sd) or not any(k.startswith(DECODER) for k in sd):
        raise ConversionError(
            f"not a {layout} checkpoint: expected keys under {ENCODER!r} and {DECODER!r} "
            f"(found e.g. {sorted(sd)[:3]})"
        )
    canvas = _canvas(image_size, path, layout)
    raw_encoder = {k: v for k, v in sd.items() if k.startswith(ENCODER)}
    encoder = swin_config_from_donut_original(raw_encoder, canvas).replace(pool="none")
    encoder_sd = swin_state_dict_from_donut_original(raw_encoder)
    decoder, decoder_state = _decoder(
        strip_prefix({k: v for k, v in sd.items() if k.startswith(DECODER)}, DECODER), num_heads
    )
    config = VLMConfig(
        encoder=encoder,
        adapter=EncoderDecoderConfig(),
        decoder=decoder,
        expand_image_tokens=False,
        train_encoder="full",
        train_decoder="full",
    )
    state = {f"encoder.{k}": v for k, v in encoder_sd.items()}
    state |= {f"decoder.{k}": v for k, v in decoder_state.items()}
    return build_loaded(lambda: VisionLanguageModel(config), state, f"original {layout} checkpoint")


def from_original_donut(
    sd: StateDict,
    *,
    image_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    path: Path | None = None,
) -> VisionLanguageModel:
    """A clovaai/donut ``DonutModel`` state dict -> :class:`VisionLanguageModel` (module docstring)."""
    return _convert(sd, image_size, num_heads, path, "donut")


def from_original_nougat(
    sd: StateDict,
    *,
    image_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    path: Path | None = None,
) -> VisionLanguageModel:
    """A facebookresearch/nougat ``NougatModel`` state dict (release 0.1.0-small / 0.1.0-base)."""
    return _convert(sd, image_size, num_heads, path, "nougat")


ORIGINAL = {"donut": from_original_donut, "nougat": from_original_nougat}
