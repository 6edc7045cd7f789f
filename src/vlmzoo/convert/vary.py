"""Vary's vision vocabulary and dual-tower encoder, and GOT-OCR2's tower -> vlmzoo.

- transformers ``GotOcr2ForConditionalGeneration`` / ``GotOcr2Model``: the SAM-B ``vision_tower``
  plus ``multi_modal_projector.conv_upsampler1/2`` are Vary's vocabulary network (Vary's
  ``vary/model/vision_encoder/sam.py``: SAM-B, then ``net_2`` and ``net_3``) ->
  :class:`VaryVocabEncoder`. (A bare ``GotOcr2VisionEncoder`` is a SAM encoder: ``convert/sam.py``.)
  A VLM-level GOT-OCR2 converter, when there is one, should take these two class names over.
- ``from_original(sd, "vary")``: Vary's ``vision_tower_high`` (SAM keys with ``mlp.lin1/2`` +
  ``net_2``/``net_3``) under whatever prefix the checkpoint uses -> :class:`VaryVocabEncoder`.
- ``from_original(sd, "vary-encoder")``: a whole Vary-base / Vary-toy checkpoint's vision side —
  ``vision_tower.vision_model.*`` (HF CLIP), ``vision_tower_high.*``, ``mm_projector`` and
  ``mm_projector_vary`` -> the fused encoder of ``vary-base-encoder`` / ``vary-toy-encoder``.

The released key names are derived from Vary's module attribute names (``vision_tower_high``,
``mm_projector_vary`` in ``vary/model/vary_qwen_vary.py``) and were not confirmed on a
downloaded checkpoint, so prefixes are located from anchor keys
(``net_3.weight``, ``mm_projector_vary.weight``) rather than hard-coded, and every missing key is
reported by name.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmzoo.convert.clip import vision_config_from_hub_state_dict, vision_state_dict_from_hf
from vlmzoo.convert.sam import (
    sam_config_from_hf,
    sam_config_from_state_dict,
    sam_state_dict_from_hf,
    sam_state_dict_from_original,
)
from vlmzoo.convert.state_dict import build_loaded, strip_prefix
from vlmzoo.encoders.fusion import FusedEncoder, FusedEncoderConfig
from vlmzoo.encoders.vary import VaryVocabConfig, VaryVocabEncoder, vary_clip_branch, vary_vocab_config
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConversionError

StateDict = dict[str, torch.Tensor]


def from_hf_got_ocr2(model: Any) -> VaryVocabEncoder:
    """``GotOcr2ForConditionalGeneration`` / ``GotOcr2Model`` -> :class:`VaryVocabEncoder`.

    The vision tower plus the projector's two stride-2 convs (``conv_upsampler1/2``) are Vary's
    vocabulary network (``net_2``/``net_3``); the projector's final Linear (``multimodal_projector``)
    belongs to the language side, like Vary's ``mm_projector``, and is not part of the result.
    Tokens equal ``conv_upsampler2``'s output flattened: [B, 256, text hidden] at 1024 px.
    """
    name = type(model).__name__
    if name not in ("GotOcr2ForConditionalGeneration", "GotOcr2Model"):
        raise ConversionError(f"{name} is not a GOT-OCR2 model")
    base = model.model if name == "GotOcr2ForConditionalGeneration" else model
    encoder, projector = base.vision_tower, base.multi_modal_projector
    convs = (projector.conv_upsampler1, projector.conv_upsampler2)
    config = vary_vocab_config(
        sam_config_from_hf(encoder.config), (convs[0].out_channels, convs[1].out_channels)
    )
    state = sam_state_dict_from_hf(dict(encoder.state_dict()))
    state["net_2.weight"], state["net_3.weight"] = convs[0].weight, convs[1].weight
    return build_loaded(
        lambda: VaryVocabEncoder(config), state, f"converted {name} vision tower + conv_upsampler1/2"
    )


def _anchor_prefix(sd: StateDict, anchor: str, what: str) -> str:
    """The prefix before the one key ending in ``anchor``."""
    prefixes = sorted({k[: -len(anchor)] for k in sd if k.endswith(anchor)})
    if len(prefixes) != 1:
        found = f"several candidates {prefixes}" if prefixes else f"no key ending in {anchor!r}"
        raise ConversionError(f"cannot locate {what} in this state dict: {found}")
    return prefixes[0]


def from_original_vary(sd: StateDict) -> VaryVocabEncoder:
    """Vary's vision vocabulary (``vision_tower_high``: SAM keys + ``net_2``/``net_3``) -> :class:`VaryVocabEncoder`.

    The key prefix is found from ``net_3.weight`` (``transformer.vision_tower_high.`` in the Qwen
    releases, ``model.vision_tower.`` in OneChart, none for a bare module), since the released
    names are derived from attribute names, not confirmed on a checkpoint.
    Other keys (CLIP tower, projectors, LLM) are ignored.
    """
    prefix = _anchor_prefix(sd, "net_3.weight", "Vary's vision vocabulary (vision_tower_high)")
    state = sam_state_dict_from_original(strip_prefix(sd, prefix) if prefix else dict(sd))
    for key in ("net_2.weight", "net_3.weight"):
        if key not in state:
            raise ConversionError(f"Vary vision vocabulary without {prefix}{key}")
    state = {
        k: v
        for k, v in state.items()
        if k.startswith(("patch_embed.", "pos_embed", "blocks.", "neck.", "net_2.", "net_3."))
    }
    sam = sam_config_from_state_dict(state, prefix)
    config: VaryVocabConfig = vary_vocab_config(
        sam, (state["net_2.weight"].shape[0], state["net_3.weight"].shape[0])
    )
    return build_loaded(
        lambda: VaryVocabEncoder(config), state, f"Vary vision_tower_high ({prefix or 'no prefix'})"
    )


def _clip_config_from_state_dict(sd: StateDict, origin: str) -> ViTConfig:
    """openai/clip-vit-large-patch14 as Vary loads it (hub-format ``vision_model.*`` tensors under
    ``origin`` in the file)."""
    key = "vision_model.embeddings.patch_embedding.weight"
    if key not in sd:
        raise ConversionError(f"Vary checkpoint without the CLIP tower ({origin}{key})")
    return vision_config_from_hub_state_dict(sd, origin)


def from_original_vary_encoder(sd: StateDict, vision_select_layer: int = -2) -> FusedEncoder:
    """The vision side of a Vary-base / Vary-toy checkpoint -> :class:`FusedEncoder` (towers ``clip``, ``vocab``).

    ``vision_select_layer`` is the CLIP hidden state Vary reads (the README training recipe's
    ``--vision_select_layer -2``; the value in the released configs was not seen). The projector widths (2048 for
    Vary-base, 1024 for Vary-toy) are read off ``mm_projector`` / ``mm_projector_vary``.
    """
    root = _anchor_prefix(sd, "mm_projector_vary.weight", "Vary's mm_projector_vary")
    clip_sd = strip_prefix(sd, f"{root}vision_tower.")
    clip = vary_clip_branch(_clip_config_from_state_dict(clip_sd, f"{root}vision_tower.")).replace(
        feature_layer=vision_select_layer
    )
    vocab = from_original_vary(strip_prefix(sd, f"{root}vision_tower_high."))
    projections = {}
    for tower, name in (("clip", "mm_projector"), ("vocab", "mm_projector_vary")):
        for p in ("weight", "bias"):
            if f"{root}{name}.{p}" not in sd:
                raise ConversionError(f"Vary checkpoint without {root}{name}.{p}")
            projections[f"projections.{tower}.{p}"] = sd[f"{root}{name}.{p}"]
    config = FusedEncoderConfig(
        first=clip,
        second=vocab.config,
        first_proj_dim=projections["projections.clip.weight"].shape[0],
        second_proj_dim=projections["projections.vocab.weight"].shape[0],
        join="channel",
        names=("clip", "vocab"),
    )
    state = {f"towers.clip.{k}": v for k, v in vision_state_dict_from_hf(clip_sd, clip).items()}
    state |= {f"towers.vocab.{k}": v for k, v in vocab.state_dict().items()}
    return build_loaded(
        lambda: FusedEncoder(config), state | projections, f"Vary checkpoint ({root or 'no prefix'})"
    )


TRANSFORMERS = {
    "GotOcr2Model": from_hf_got_ocr2,
    "GotOcr2ForConditionalGeneration": from_hf_got_ocr2,
}
ORIGINAL = {"vary": from_original_vary, "vary-encoder": from_original_vary_encoder}
