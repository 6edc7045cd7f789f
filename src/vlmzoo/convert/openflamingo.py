"""OpenFlamingo checkpoints -> vlmzoo :class:`VisionLanguageModel` with the Flamingo adapter.

The state dict of OpenFlamingo's ``Flamingo`` module (mlfoundations/open_flamingo v2,
``open_flamingo/src/flamingo.py``, ``helpers.py``, ``flamingo_lm.py``):

- ``vision_encoder.*``: open_clip's ``visual`` tower, OpenAI CLIP names (``conv1``,
  ``class_embedding``, ``transformer.resblocks.{i}.*``, ``ln_post``, ``proj``);
- ``perceiver.*``: the Perceiver Resampler, the same sub-keys as vlmzoo's ``adapter.perceiver``;
- ``lang_encoder.<layers>.{i}.gated_cross_attn_layer.*``: the gated block before LM layer i
  (``<layers>`` is the LM's decoder path, e.g. ``transformer.blocks`` for MPT, ``model.layers``
  for LLaMA), the same sub-keys as vlmzoo's ``adapter.gated_cross_attn_layers.{i}``;
- ``lang_encoder.<layers>.{i}.decoder_layer.*``: LM layer i (OpenFlamingo's ``FlamingoLayer``
  wraps it), and the LM's other keys under ``lang_encoder.`` (embeddings, final norm, head);
- ``lang_encoder.gated_cross_attn_layers.*`` and ``lang_encoder.old_decoder_blocks.*``: the
  same tensors again under alias names (ignored).

The released ``checkpoint.pt`` files keep only the trained parts (``filter_state_dict_to_trainable``
in ``open_flamingo/train/train_utils.py``):
the perceiver, the gated blocks and the LM's input embeddings, which hold the added ``<image>``
and ``<|endofchunk|>`` rows. The base CLIP tower and LM are then passed as ``encoder=`` and
``decoder=`` (:mod:`vlmzoo.convert.parts`): nothing is silently left random. Training checkpoints
(``{"model_state_dict": ...}``, read by :func:`vlmzoo.convert.read_state_dict`) may carry DDP's
``module.`` prefix and activation checkpointing's ``_checkpoint_wrapped_module.``; both are removed.

Sizes are read off the tensors, block counts checked first
(:func:`~vlmzoo.convert.state_dict.count_blocks`). Head counts are not stored: OpenFlamingo fixes
the head width at 64 in the resampler and the gated blocks (``dim_head=64`` of
``PerceiverResampler`` and ``MaskedCrossAttention`` in ``helpers.py``), so heads = inner width / 64;
the placement (a block before layer i iff (i+1) % n == 0, ``flamingo_lm.py``'s
``init_flamingo``) gives ``cross_attn_every_n_layers``.

Visual features are the last block's patch tokens, with or without ``ln_post`` (``vision_tokens=``).
OpenFlamingo takes ``self.vision_encoder(vision_x)[1]`` (``_encode_vision_x`` in
``open_flamingo/src/flamingo.py``; ``factory.py`` sets ``visual.output_tokens = True``): the tokens
open_clip's ``VisionTransformer.forward`` returns (``src/open_clip/transformer.py``). Up to open_clip
2.22 those tokens skip ``ln_post``, which only the pooled token gets. From 2.23 (the CLIPA/SigLIP
merge) ``ln_post`` is applied to every token before pooling unless ``final_ln_after_pool=True``,
which only the CLIPA configs set, not ``model_configs/ViT-L-14.json`` (OpenFlamingo's tower). The
released models (v2, August 2023) predate open_clip 2.23 (October 2023), hence the default
``"before_ln_post"``; ``"after_ln_post"`` is what the original code computes on open_clip >= 2.23.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Literal

import torch

from vlmzoo.adapters.cross_attention import FlamingoConfig
from vlmzoo.convert.clip import openai_vision_state_dict
from vlmzoo.convert.parts import assemble_vlm, supplied_decoder, supplied_encoder
from vlmzoo.convert.state_dict import count_blocks, strip_prefix, unwrap
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder
from vlmzoo.encoders.vit import ViTConfig
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel

StateDict = dict[str, torch.Tensor]

DIM_HEAD = 64  # OpenFlamingo's PerceiverResampler and MaskedCrossAttention default (helpers.py)
# The sub-keys of every resampler layer: (PerceiverAttention, FeedForward = LN, Linear, GELU, Linear).
PERCEIVER_LAYER_KEYS = ("0.to_q.weight", "0.to_kv.weight", "0.to_out.weight", "1.1.weight", "1.3.weight")
_GATED = re.compile(r"^lang_encoder\.(?P<path>.+)\.(?P<index>\d+)\.gated_cross_attn_layer\.(?P<rest>.+)$")
_ALIASES = ("lang_encoder.gated_cross_attn_layers.", "lang_encoder.old_decoder_blocks.")


def _unwrapped(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Keys without DDP's ``module.`` prefix and activation checkpointing's wrapper segment."""
    return {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in unwrap(sd).items()}


VisionTokens = Literal["before_ln_post", "after_ln_post"]
VISION_TOKENS: tuple[VisionTokens, ...] = ("before_ln_post", "after_ln_post")


def _check_vision_tokens(vision_tokens: str) -> None:
    if vision_tokens not in VISION_TOKENS:
        raise ConversionError(
            f"vision_tokens={vision_tokens!r}: must be one of {list(VISION_TOKENS)} ('before_ln_post' for "
            "the released OpenFlamingo models, 'after_ln_post' for the original code on open_clip >= 2.23)"
        )


def openflamingo_features(config: ViTConfig, vision_tokens: VisionTokens = "before_ln_post") -> ViTConfig:
    """OpenFlamingo's visual tokens: the last block's patch tokens, no projection; ``ln_post``
    (the tower's final norm) applied only for ``vision_tokens="after_ln_post"``."""
    _check_vision_tokens(vision_tokens)
    return config.replace(
        feature_layer=-1,
        feature_tokens="patch",
        feature_norm=vision_tokens == "after_ln_post",
        pool="none",
        embed_dim=None,
    )


def _ff_mult(weight: torch.Tensor, dim: int, key: str) -> int:
    """The FF widening of a ``Linear(dim, mult·dim)`` weight [mult·dim, dim]."""
    mult, rest = divmod(weight.shape[0], dim)
    if rest:
        raise ConversionError(f"{key} {tuple(weight.shape)}: FF width is not a whole multiple of {dim}")
    return mult


def _heads(weight: torch.Tensor, key: str) -> int:
    heads, rest = divmod(weight.shape[0], DIM_HEAD)
    if rest:
        raise ConversionError(
            f"{key} {tuple(weight.shape)}: attention width is not a multiple of OpenFlamingo's head dim {DIM_HEAD}"
        )
    return heads


def _adapter(sd: StateDict) -> tuple[FlamingoConfig, StateDict, str]:
    """(config, adapter weights, the LM's decoder path) from ``perceiver.*`` and the gated blocks."""
    perceiver = strip_prefix(sd, "perceiver.")
    if "latents" not in perceiver:
        found = sorted(sd)[:5]
        raise ConversionError(f"not an OpenFlamingo checkpoint: no perceiver.latents (found e.g. {found})")
    gated: StateDict = {}
    paths: set[str] = set()
    where: dict[int, str] = {}  # LM layer index -> one of its gated block's keys (for errors)
    for key, value in sd.items():
        if match := _GATED.match(key):
            paths.add(match["path"])
            index = int(match["index"])
            gated[f"{index}.{match['rest']}"] = value
            where.setdefault(index, key)
    if len(paths) != 1:
        raise ConversionError(
            "not an OpenFlamingo checkpoint: expected gated blocks under one decoder path, "
            f"lang_encoder.<layers>.<i>.gated_cross_attn_layer.*, found paths {sorted(paths)}"
        )
    indices = sorted(where)
    every = indices[0] + 1
    # A block before layer i iff (i + 1) % n == 0 (OpenFlamingo's init_flamingo). Checked without
    # materialising the range: a stray index may be huge.
    expected = range(every - 1, indices[-1] + 1, every)
    stray = next((i for i in indices if i not in expected), None)
    if stray is not None or len(indices) != len(expected):
        if stray is not None:
            problem = f"{where[stray]!r} is not before every {every}-th layer"
        else:
            gap = next(j for j in expected if j not in where)
            problem = f"no gated block before LM layer {gap}, yet {where[indices[-1]]!r} is there"
        raise ConversionError(
            f"gated blocks must sit before every n-th LM layer ((i + 1) % n == 0): {problem}. "
            "The file is truncated or holds a stray key"
        )
    num_latents, dim = perceiver["latents"].shape
    first = gated[f"{indices[0]}.attn.to_q.weight"]
    ff_mult = _ff_mult(perceiver["layers.0.1.1.weight"], dim, "perceiver.layers.0.1.1.weight")
    xattn_ff = _ff_mult(
        gated[f"{indices[0]}.ff.1.weight"], first.shape[1], "gated_cross_attn_layer.ff.1.weight"
    )
    if xattn_ff != ff_mult:
        raise ConversionError(f"FF widening differs: perceiver {ff_mult}x, gated blocks {xattn_ff}x")
    media, frames = perceiver.get("media_time_embs"), perceiver.get("frame_embs")
    config = FlamingoConfig(
        in_dim=dim,
        out_dim=first.shape[1],
        resampler_depth=count_blocks(
            perceiver, "layers.", PERCEIVER_LAYER_KEYS, "resampler layer", "perceiver."
        ),
        resampler_heads=_heads(perceiver["layers.0.0.to_q.weight"], "perceiver.layers.0.0.to_q.weight"),
        resampler_dim_head=DIM_HEAD,
        num_latents=num_latents,
        max_num_media=None if media is None else media.shape[0],
        max_num_frames=None if frames is None else frames.shape[0],
        cross_attn_every_n_layers=every,
        xattn_heads=_heads(first, "gated_cross_attn_layer.attn.to_q.weight"),
        xattn_dim_head=DIM_HEAD,
        ff_mult=ff_mult,
    )
    state = {f"perceiver.{k}": v for k, v in perceiver.items()}
    state |= {f"gated_cross_attn_layers.{k}": v for k, v in gated.items()}
    return config, state, paths.pop()


def from_openflamingo(
    state_dict: Mapping[str, torch.Tensor],
    *,
    encoder: torch.nn.Module | None = None,
    decoder: HFDecoder | DecoderConfig | None = None,
    image_token_id: int | None = None,
    only_attend_immediate_media: bool = True,
    vision_tokens: VisionTokens = "before_ln_post",
) -> VisionLanguageModel:
    """An OpenFlamingo state dict (released ``checkpoint.pt`` or a full one) -> :class:`VisionLanguageModel`.

    ``encoder``: the CLIP tower when ``vision_encoder.*`` is absent (the releases: ViT-L/14
    ``openai``, e.g. ``from_original("ViT-L-14.pt", "openai-clip")``). ``decoder``: the base LM
    (an :class:`HFDecoder`, or a ``DecoderConfig`` with ``pretrained=``; a config alone describes
    the architecture when the checkpoint holds the whole LM). ``image_token_id``: the id of
    ``<image>`` in the tokenizer OpenFlamingo extended (it adds ``<|endofchunk|>``, ``<image>`` and,
    without a pad token, ``<PAD>``, in that order), e.g. ``tokenizer.encode("<image>")[-1]``.
    ``vision_tokens``: the CLIP patch tokens the resampler reads, ``"before_ln_post"`` (as the
    released models were trained, open_clip <= 2.22) or ``"after_ln_post"`` (what the original code
    computes on open_clip >= 2.23); see the module docstring.
    """
    _check_vision_tokens(vision_tokens)
    features = partial(openflamingo_features, vision_tokens=vision_tokens)
    sd = _unwrapped(state_dict)
    adapter_config, adapter_state, path = _adapter(sd)
    adapter_config = adapter_config.replace(only_attend_immediate_media=only_attend_immediate_media)
    if image_token_id is None:
        raise ConversionError(
            "pass image_token_id=<id of '<image>' in OpenFlamingo's tokenizer>: the placeholder is a real "
            "token of the extended vocabulary and its id is not stored in the checkpoint"
        )
    if any(k.startswith("vision_encoder.") for k in sd):
        if encoder is not None:
            raise ConversionError(
                "the checkpoint holds its vision tower (vision_encoder.*): do not pass encoder="
            )
        vision_config, vision_state = openai_vision_state_dict(sd, "vision_encoder.")
        vision_config = features(vision_config)
        vision = vision_config, {k: v for k, v in vision_state.items() if not k.startswith("head.")}
    else:
        vision = supplied_encoder(encoder, features, "no vision_encoder.* keys")
    layer = re.compile(rf"^{re.escape(path)}\.(\d+)\.decoder_layer\.")
    lm_state = {
        layer.sub(rf"{path}.\1.", k[len("lang_encoder.") :]): v
        for k, v in sd.items()
        if k.startswith("lang_encoder.") and not _GATED.match(k) and not k.startswith(_ALIASES)
    }
    language = supplied_decoder(decoder, lm_state, f"only {sorted(lm_state)[:3]} under lang_encoder.")
    if not any(k.startswith(f"{path}.0.") for k in language[1]):
        raise ConversionError(
            f"the checkpoint's gated blocks sit in lang_encoder.{path}, but the decoder "
            f"({language[0].model_type}) has no {path}.*: a checkpoint for another LM"
        )
    return assemble_vlm(
        {"encoder": vision, "adapter": (adapter_config, adapter_state), "decoder": language},
        source="OpenFlamingo state dict",
        image_token_id=image_token_id,
    )


ORIGINAL = {"openflamingo": from_openflamingo}
