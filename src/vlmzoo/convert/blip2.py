"""BLIP-2 (transformers and LAVIS) -> vlmzoo.

transformers (the renames of transformers' ``models/blip_2/convert_blip_2_original_to_pytorch.py``):

- ``Blip2VisionModel`` -> :class:`VisionTransformer` (EVA: ``qkv_bias="qv"``, all tokens through
  the final norm). transformers stores one merged ``qkv.bias`` = [q_bias, k_bias, v_bias] whose
  k part is zero in every converted checkpoint; a k bias only adds a per-query constant to the
  attention logits, which softmax removes, so dropping it leaves the outputs unchanged whatever
  its value.
- ``Blip2QFormerModel`` -> :class:`QFormerModel`. transformers' bare Q-Former, like LAVIS's
  ``Qformer.bert``, owns neither the learned queries nor the language projection (both live in
  the composite model) and takes the query embeddings as input; so does the converted module.
  :func:`qformer_from_hf` assembles the full :class:`QFormer` adapter from the three parts.
- ``Blip2ForConditionalGeneration`` -> :class:`VisionLanguageModel`: EVA encoder + Q-Former
  adapter + the causal LM (``language_model`` is a whole ``*ForCausalLM`` in transformers 5). The
  processor writes ``num_query_tokens`` image placeholders, so ``expand_image_tokens=False``.

LAVIS (salesforce/LAVIS ``lavis/models/blip2_models/blip2_opt.py``, ``Qformer.py``,
``lavis/models/eva_vit.py``): :func:`from_lavis_blip2` reads a ``Blip2OPT`` state dict. Published LAVIS
checkpoints hold neither the frozen LLM (LAVIS loads ``facebook/opt-*`` from the hub) nor, in
some files, the frozen ViT; pass the LLM as ``decoder`` then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from vlmzoo.adapters.qformer import QFormer, QFormerConfig, QFormerModel
from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.state_dict import BLOCK_KEYS, build_loaded, count_blocks, fuse_rows, moved, strip_prefix
from vlmzoo.decoders.hf import DecoderConfig, HFDecoder
from vlmzoo.encoders.eva import eva_vit_config
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig
from vlmzoo.errors import ConversionError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.weights.format import check_state_dict

StateDict = dict[str, torch.Tensor]


# --- EVA vision tower -------------------------------------------------------------------------
def vision_config_from_hf(hf: Any) -> ViTConfig:
    """A :class:`ViTConfig` equal to a transformers ``Blip2VisionConfig`` (BLIP-2's EVA use)."""
    return eva_vit_config(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
    ).replace(
        mlp_dim=hf.intermediate_size,  # exact, no ratio rounding
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        qkv_bias="qv" if hf.qkv_bias else False,
    )


# transformers' Blip2EncoderLayer sub-modules -> vlmzoo's Block (the fused qkv is handled apart).
_VISION_LAYER_NAMES = {
    "self_attn.projection": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def vision_stem_state_dict(sd: StateDict) -> StateDict:
    """The embeddings and final norm of transformers' BLIP / BLIP-2 vision towers (the same keys in
    ``BlipVisionModel`` and ``Blip2VisionModel``) -> :class:`VisionTransformer` keys."""
    return {
        "cls_token": sd["embeddings.class_embedding"],
        "pos_embed": sd["embeddings.position_embedding"],
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
        "norm.weight": sd["post_layernorm.weight"],
        "norm.bias": sd["post_layernorm.bias"],
    }


def vision_state_dict_from_hf(sd: StateDict, config: ViTConfig) -> StateDict:
    """Bare ``Blip2VisionModel`` keys (``embeddings.*``, ``encoder.layers.*``, ``post_layernorm``)
    -> :class:`VisionTransformer` keys. The k third of ``qkv.bias`` is dropped (see module doc)."""
    out = vision_stem_state_dict(sd)
    for i in range(config.depth):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        out[f"{dst}attn.qkv.weight"] = sd[f"{src}self_attn.qkv.weight"]
        if config.qkv_bias == "qv":
            q_bias, _, v_bias = sd[f"{src}self_attn.qkv.bias"].chunk(3)
            out[f"{dst}attn.q_bias"], out[f"{dst}attn.v_bias"] = q_bias, v_bias
        out |= moved(sd, src, dst, _VISION_LAYER_NAMES)
    return out


def from_hf_blip2_vision(model: Any) -> VisionTransformer:
    """``Blip2VisionModel`` -> :class:`VisionTransformer` whose ``tokens`` = ``last_hidden_state``."""
    config = vision_config_from_hf(model.config)
    # transformers 5 drops the hub files' "vision_model." prefix in memory; either form converts.
    sd = strip_prefix(model.state_dict(), "vision_model.", if_present=True)
    state = vision_state_dict_from_hf(sd, config)
    return build_loaded(lambda: VisionTransformer(config), state, "converted Blip2VisionModel")


# --- Q-Former -----------------------------------------------------------------------------------
def qformer_config_from_hf(hf: Any, num_query_tokens: int = 32, out_dim: int | None = None) -> QFormerConfig:
    """A :class:`QFormerConfig` equal to a transformers ``Blip2QFormerConfig``.

    The query count and the projection width live in the composite ``Blip2Config``, not here.
    """
    if getattr(hf, "use_qformer_text_input", False):
        raise ConversionError(
            "Blip2QFormerConfig.use_qformer_text_input=True: vlmzoo's Q-Former models the query "
            "stream only (stage-2 BLIP-2 has no text FFN: LAVIS's Blip2OPT sets the Q-Former's "
            "word/position embeddings and text FFNs to None)"
        )
    return QFormerConfig(
        num_query_tokens=num_query_tokens,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        cross_attention_freq=hf.cross_attention_frequency,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        in_dim=hf.encoder_hidden_size,
        out_dim=out_dim,
    )


# transformers' Blip2QFormerLayer sub-modules -> vlmzoo's Q-Former layer (fused projections apart).
_QFORMER_LAYER_NAMES = {
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate_query.dense": "mlp.fc1",
    "output_query.dense": "mlp.fc2",
    "output_query.LayerNorm": "mlp_norm",
}
_QFORMER_CROSS_NAMES = {
    "crossattention.attention.query": "cross_attn.q",
    "crossattention.output.dense": "cross_attn.proj",
    "crossattention.output.LayerNorm": "cross_norm",
}


def qformer_state_dict_from_hf(sd: StateDict, config: QFormerConfig) -> StateDict:
    """Bare ``Blip2QFormerModel`` keys -> :class:`QFormerModel` keys (q, k, v fused; k, v fused)."""
    out = {"layernorm.weight": sd["layernorm.weight"], "layernorm.bias": sd["layernorm.bias"]}
    for i in range(config.depth):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        out |= fuse_rows(
            sd, [f"{src}attention.attention.{n}" for n in ("query", "key", "value")], f"{dst}attn.qkv"
        )
        if config.has_cross_attention(i):
            out |= fuse_rows(
                sd, [f"{src}crossattention.attention.{n}" for n in ("key", "value")], f"{dst}cross_attn.kv"
            )
        out |= moved(sd, src, dst, _QFORMER_LAYER_NAMES)
        if config.has_cross_attention(i):
            out |= moved(sd, src, dst, _QFORMER_CROSS_NAMES)
    return out


def from_hf_blip2_qformer(model: Any) -> QFormerModel:
    """``Blip2QFormerModel`` -> :class:`QFormerModel` (query embeddings + visual tokens in, same outputs)."""
    config = qformer_config_from_hf(model.config)
    sd = strip_prefix(model.state_dict(), "qformer.", if_present=True)
    state = qformer_state_dict_from_hf(sd, config)
    return build_loaded(lambda: QFormerModel(config), state, "converted Blip2QFormerModel")


def qformer_from_hf(
    qformer: Any, query_tokens: torch.Tensor, language_projection: torch.nn.Linear | None = None
) -> QFormer:
    """The :class:`QFormer` adapter from transformers' parts: ``Blip2QFormerModel``, the
    ``query_tokens`` [1, M, width] and (optionally) the ``language_projection`` Linear."""
    out_dim = None if language_projection is None else language_projection.out_features
    config = qformer_config_from_hf(qformer.config, query_tokens.shape[1], out_dim)
    sd = strip_prefix(qformer.state_dict(), "qformer.", if_present=True)
    state = {f"qformer.{k}": v for k, v in qformer_state_dict_from_hf(sd, config).items()}
    state["query_tokens"] = query_tokens.detach()
    if language_projection is not None:
        state |= {f"language_projection.{k}": v for k, v in language_projection.state_dict().items()}
    return build_loaded(lambda: QFormer(config), state, "converted Blip2 Q-Former")


# --- the whole model ----------------------------------------------------------------------------
def _vlm(
    encoder: VisionTransformer,
    adapter: QFormer,
    decoder_config: DecoderConfig,
    decoder_state: Mapping[str, torch.Tensor] | None,
    image_token_id: int | None,
    source: str,
) -> VisionLanguageModel:
    """Compose the VLM and load the parts' weights (``decoder_state``: ``*ForCausalLM`` keys, or
    None to keep the decoder its config builds). With a ``decoder_state`` every key and shape is
    compared on the meta device before the VLM is allocated."""
    config = VLMConfig(
        encoder=encoder.config,
        adapter=adapter.config,
        decoder=decoder_config,
        # Without an image token (LAVIS; older transformers processors) the queries are simply
        # prepended to the text: one placeholder in front, expanded to M positions.
        image_token_id=-200 if image_token_id is None else image_token_id,
        expand_image_tokens=image_token_id is None,
    )
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"adapter.{k}": v for k, v in adapter.state_dict().items()}
    if decoder_state is not None:
        state |= {f"decoder.lm.{k}": v for k, v in decoder_state.items()}
        return build_loaded(lambda: VisionLanguageModel(config), state, source)
    vlm = VisionLanguageModel(config)  # the decoder's weights are the ones its config builds or loads
    state |= {f"decoder.lm.{k}": v for k, v in vlm.decoder.lm.state_dict().items()}
    check_state_dict(vlm, state, source)
    vlm.load_state_dict(state, strict=True)
    return vlm


def from_hf_blip2(model: Any) -> VisionLanguageModel:
    """``Blip2ForConditionalGeneration`` (decoder-only LLM) -> :class:`VisionLanguageModel`.

    Same weights, same logits; ``input_ids`` hold ``num_query_tokens`` placeholders
    (``image_token_id``) per image, as transformers' processor writes them.
    """
    cfg = model.config
    if not cfg.use_decoder_only_language_model:
        raise ConversionError(
            f"BLIP-2 with a {cfg.text_config.model_type} (encoder-decoder) LLM is not supported: "
            "vlmzoo decoders are causal LMs"
        )
    encoder = from_hf_blip2_vision(model.vision_model)
    adapter = qformer_from_hf(model.qformer, model.query_tokens, model.language_projection)
    decoder = HFDecoder.from_hf(model.language_model)  # for its config; weights copied below
    return _vlm(
        encoder,
        adapter,
        decoder.config,
        model.language_model.state_dict(),
        cfg.image_token_id,
        source="converted Blip2ForConditionalGeneration",
    )


# --- LAVIS ---------------------------------------------------------------------------------------
# Head counts are not in a state dict; LAVIS's code fixes them: EVA ViT-g uses head dim 88
# (num_heads = 1408 // 88) and the Q-Former is built from bert-base's config (head dim 64).
LAVIS_EVA_HEAD_DIM = 88
LAVIS_BERT_HEAD_DIM = 64
# LAVIS loads the LLM by hub name (``facebook/opt-*``); the published OPT sizes: hidden -> heads.
OPT_HEADS = {768: 12, 1024: 16, 2048: 32, 2560: 32, 4096: 32, 5120: 40, 7168: 56, 9216: 72}


# The sub-keys every block of each LAVIS part has (checked before a depth is read off the keys).
QFORMER_LAYER_KEYS = (  # LAVIS's names
    "attention.self.query.weight",
    "attention.output.dense.weight",
    "intermediate_query.dense.weight",
    "output_query.dense.weight",
)
OPT_LAYER_KEYS = ("self_attn.q_proj.weight", "self_attn.out_proj.weight", "fc1.weight", "fc2.weight")


def _heads(width: int, head_dim: int, what: str) -> int:
    if width % head_dim:
        raise ConversionError(f"{what} width {width} is not a multiple of LAVIS's head dim {head_dim}")
    return width // head_dim


def _lavis_vision(sd: StateDict) -> VisionTransformer:
    """``visual_encoder.*`` + ``ln_vision.*`` -> EVA :class:`VisionTransformer` (names map 1:1)."""
    p = "visual_encoder."
    pos, conv = sd[f"{p}pos_embed"], sd[f"{p}patch_embed.proj.weight"]
    width, patch = pos.shape[-1], conv.shape[-1]
    grid = round((pos.shape[1] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[1]:
        raise ConversionError(f"{p}pos_embed {tuple(pos.shape)} is not CLS + a square grid")
    config = eva_vit_config(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=count_blocks(sd, f"{p}blocks.", BLOCK_KEYS, what="EVA block"),
        num_heads=_heads(width, LAVIS_EVA_HEAD_DIM, "EVA ViT"),
    ).replace(
        mlp_dim=sd[f"{p}blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="qv" if f"{p}blocks.0.attn.q_bias" in sd else False,
    )
    state = strip_prefix(sd, p)
    state |= {"norm.weight": sd["ln_vision.weight"], "norm.bias": sd["ln_vision.bias"]}
    return build_loaded(lambda: VisionTransformer(config), state, "LAVIS visual_encoder + ln_vision")


def _cross_attention_freq(sd: StateDict, depth: int) -> int:
    """The k of "cross-attention every k-th layer", read off which layers have one."""
    prefix = "Qformer.bert.encoder.layer."
    cross = [i for i in range(depth) if f"{prefix}{i}.crossattention.self.query.weight" in sd]
    freq = cross[1] - cross[0] if len(cross) > 1 else depth
    if not cross or cross != list(range(0, depth, freq)):
        raise ConversionError(f"Q-Former cross-attention layers {cross} are not every k-th layer from 0")
    return freq


def _lavis_qformer(sd: StateDict) -> QFormer:
    """``query_tokens``, ``Qformer.bert.*`` and ``opt_proj`` -> :class:`QFormer`.

    LAVIS's names become transformers' (``Qformer.bert.embeddings.LayerNorm`` -> ``layernorm``,
    ``.self.`` -> ``.attention.``, as transformers' BLIP-2 conversion script renames them) and go
    through the same mapping.
    """
    p = "Qformer.bert."
    hf_names: StateDict = {}
    for key, value in sd.items():
        if not key.startswith(p):
            continue
        key = key[len(p) :]
        if key.startswith("embeddings.") and not key.startswith("embeddings.LayerNorm."):
            continue  # the position_ids buffer (word/position embeddings are gone in stage 2)
        key = key.replace("embeddings.LayerNorm.", "layernorm.").replace(".self.", ".attention.")
        hf_names[key] = value
    text_ffn = sorted(k for k in hf_names if re.search(r"^encoder\.layer\.\d+\.(intermediate|output)\.", k))
    if text_ffn:
        raise ConversionError(
            f"Q-Former with a text FFN ({text_ffn[0]}, ...): a stage-1 checkpoint; only stage-2 "
            "(generative) BLIP-2 checkpoints are supported (Li et al. 2023, BLIP-2 section 3.3)"
        )
    query_tokens = sd["query_tokens"]
    width = query_tokens.shape[-1]
    depth = count_blocks(sd, f"{p}encoder.layer.", QFORMER_LAYER_KEYS, what="Q-Former layer")
    config = QFormerConfig(
        num_query_tokens=query_tokens.shape[1],
        width=width,
        depth=depth,
        num_heads=_heads(width, LAVIS_BERT_HEAD_DIM, "Q-Former"),
        mlp_dim=hf_names["encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        cross_attention_freq=_cross_attention_freq(sd, depth),
        in_dim=hf_names["encoder.layer.0.crossattention.attention.key.weight"].shape[1],
        out_dim=sd["opt_proj.weight"].shape[0],
    )
    state = {f"qformer.{k}": v for k, v in qformer_state_dict_from_hf(hf_names, config).items()}
    state |= {
        "query_tokens": query_tokens,
        "language_projection.weight": sd["opt_proj.weight"],
        "language_projection.bias": sd["opt_proj.bias"],
    }
    return build_loaded(lambda: QFormer(config), state, "LAVIS query_tokens + Qformer + opt_proj")


def opt_config_from_state_dict(sd: Mapping[str, torch.Tensor], origin: str = "") -> DecoderConfig:
    """The :class:`DecoderConfig` of an ``OPTForCausalLM`` state dict (a published OPT size).
    ``origin``: the prefix the caller stripped from the file's keys (for error messages)."""
    p = "model.decoder."
    layers = count_blocks(sd, f"{p}layers.", OPT_LAYER_KEYS, "OPT layer", origin)
    embed = sd[f"{p}embed_tokens.weight"]
    hidden = sd[f"{p}layers.0.self_attn.q_proj.weight"].shape[0]
    if hidden not in OPT_HEADS:
        raise ConversionError(
            f"OPT hidden size {hidden} is not a published OPT size {sorted(OPT_HEADS)}; the head count "
            "is not in a state dict: pass decoder=DecoderConfig('opt', {...}) or an HFDecoder"
        )
    return DecoderConfig(
        "opt",
        dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=OPT_HEADS[hidden],
            ffn_dim=sd[f"{p}layers.0.fc1.weight"].shape[0],
            vocab_size=embed.shape[0],
            word_embed_proj_dim=embed.shape[1],
            max_position_embeddings=sd[f"{p}embed_positions.weight"].shape[0] - 2,  # OPT's offset of 2
            do_layer_norm_before=f"{p}final_layer_norm.weight" in sd,  # False only in OPT-350m
        ),
    )


def from_lavis_blip2(
    state_dict: Mapping[str, torch.Tensor], decoder: HFDecoder | DecoderConfig | None = None
) -> VisionLanguageModel:
    """A LAVIS ``Blip2OPT`` state dict (``lavis/models/blip2_models/blip2_opt.py``) -> :class:`VisionLanguageModel`.

    Needs ``visual_encoder.*``, ``ln_vision.*``, ``query_tokens``, ``Qformer.bert.*`` and
    ``opt_proj.*``. The LLM is ``decoder`` when given (an :class:`HFDecoder` whose weights are
    copied, or a :class:`DecoderConfig`, e.g. ``DecoderConfig("opt", pretrained="facebook/opt-2.7b")``
    as LAVIS itself loads it), else the ``opt_model.*`` tensors of the state dict (a published OPT
    size). As in LAVIS, the 32 query embeddings are prepended to the text: put one placeholder
    (``image_token_id=-200``) in front of the prompt.
    """
    sd = dict(state_dict)
    if "t5_proj.weight" in sd:
        raise ConversionError("BLIP-2 with a Flan-T5 (encoder-decoder) LLM is not supported")
    required = ("visual_encoder.pos_embed", "ln_vision.weight", "query_tokens", "opt_proj.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ConversionError(
            f"not a LAVIS BLIP-2 OPT state dict: no {missing} (LAVIS checkpoints without the frozen ViT "
            "need the EVA weights merged in under visual_encoder.*)"
        )
    encoder, adapter = _lavis_vision(sd), _lavis_qformer(sd)
    if isinstance(decoder, HFDecoder):
        decoder_config, decoder_state = decoder.config, decoder.lm.state_dict()
    elif isinstance(decoder, DecoderConfig):
        decoder_config, decoder_state = decoder, None  # built (or loaded) from its config
    elif any(k.startswith("opt_model.") for k in sd):
        decoder_state = {k[len("opt_model.") :]: v for k, v in sd.items() if k.startswith("opt_model.")}
        decoder_config = opt_config_from_state_dict(decoder_state, "opt_model.")
    else:
        raise ConversionError(
            "the state dict has no opt_model.* weights (LAVIS checkpoints leave out the frozen LLM): "
            "pass decoder=DecoderConfig('opt', pretrained='facebook/opt-2.7b') or an HFDecoder"
        )
    return _vlm(encoder, adapter, decoder_config, decoder_state, None, source="LAVIS BLIP-2 state dict")


TRANSFORMERS = {
    "Blip2VisionModel": from_hf_blip2_vision,
    "Blip2QFormerModel": from_hf_blip2_qformer,
    "Blip2ForConditionalGeneration": from_hf_blip2,
}
ORIGINAL = {"lavis-blip2": from_lavis_blip2}
