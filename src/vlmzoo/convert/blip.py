"""transformers BLIP -> vlmzoo (:class:`vlmzoo.models.blip.BLIPModel`).

transformers' ``models/blip/modeling_blip.py`` (``BlipForConditionalGeneration``,
``BlipForImageTextRetrieval``, ``BlipForQuestionAnswering``, ``BlipVisionModel``) and
``modeling_blip_text.py`` (the MED text model). transformers keeps salesforce/BLIP's text keys
(``text_encoder.*``, ``text_decoder.bert.*``, ``text_decoder.cls.predictions.*``, the names of
``models/med.py``) and renames the image encoder's (its converter
``convert_blip_original_pytorch_to_hf.py``: ``visual_encoder`` -> ``vision_model``, ``blocks`` ->
``encoder.layers``, ``attn.proj`` -> ``self_attn.projection``, ``norm1`` -> ``layer_norm1``, ...).
vlmzoo's image encoder keeps the original's timm names, so only the text side is renamed here:

    {p}embeddings.word_embeddings / position_embeddings / LayerNorm -> word_embeddings / position_embeddings / layernorm
    {p}encoder.layer.{i}.attention.self.{query,key,value}           -> layers.{i}.attn.qkv (rows q, k, v)
    {p}encoder.layer.{i}.attention.output.dense / .LayerNorm        -> layers.{i}.attn.proj / attn_norm
    {p}encoder.layer.{i}.crossattention.self.query                  -> layers.{i}.cross_attn.q
    {p}encoder.layer.{i}.crossattention.self.{key,value}            -> layers.{i}.cross_attn.kv (rows k, v)
    {p}encoder.layer.{i}.crossattention.output.dense / .LayerNorm   -> layers.{i}.cross_attn.proj / cross_norm
    {p}encoder.layer.{i}.intermediate.dense / output.dense / .LayerNorm -> layers.{i}.mlp.fc1 / mlp.fc2 / mlp_norm
    text_decoder.cls.predictions.transform.dense / .LayerNorm / decoder / bias -> lm_head.dense / norm / decoder

The same text renames read the original release (the prefixes are those of salesforce/BLIP's
state dicts), whose image keys are vlmzoo's already.

What transformers' configs leave out is taken from salesforce/BLIP: ``[ENC]`` = ``[DEC]`` + 1
(models/blip.py ``init_tokenizer`` adds ``[DEC]`` then ``[ENC]``), and the captioning prompt
"a picture of " for the 30524-token BERT vocabulary. The image encoder's LayerNorm eps is the
checkpoint config's (1e-5 in transformers' ``BlipVisionConfig`` and the released configs; the
original trains with 1e-6, which vlmzoo's presets keep). The LM label smoothing is the config's
(``text_config.label_smoothing``, 0.0 in the released configs; BLIP trains with 0.1).
"""

from __future__ import annotations

from typing import Any

import torch

from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.state_dict import build_loaded, count_blocks, fuse_rows, moved, strip_prefix
from vlmzoo.encoders.blip_text import MEDConfig
from vlmzoo.encoders.vit import VisionTransformer, ViTConfig, blip_vision_config
from vlmzoo.errors import ConversionError
from vlmzoo.models.blip import PICTURE_OF, BLIPConfig, BLIPModel

StateDict = dict[str, torch.Tensor]


# --- image encoder ------------------------------------------------------------------------------
def vision_config_from_hf(hf: Any) -> ViTConfig:
    """A :class:`ViTConfig` equal to a transformers ``BlipVisionConfig``."""
    if hf.intermediate_size <= 0 or hf.hidden_size % hf.num_attention_heads:
        raise ConversionError(f"BlipVisionConfig sizes do not describe a ViT: {hf}")
    return blip_vision_config(
        hf.image_size, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads
    ).replace(
        patch_size=hf.patch_size,
        mlp_dim=hf.intermediate_size,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        pos_embed_resize="bicubic",  # BlipVisionEmbeddings.interpolate_pos_encoding
    )


# transformers' BlipEncoderLayer sub-modules -> vlmzoo's Block (= salesforce/BLIP's vit.py names)
_VISION_LAYER_NAMES = {
    "self_attn.qkv": "attn.qkv",
    "self_attn.projection": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_LAYER_KEYS = tuple(f"{k}.weight" for k in _VISION_LAYER_NAMES)


def vision_state_dict_from_hf(sd: StateDict, config: ViTConfig) -> StateDict:
    """Bare ``BlipVisionModel`` keys (``embeddings.*``, ``encoder.layers.*``, ``post_layernorm``)
    -> :class:`VisionTransformer` keys."""
    depth = count_blocks(sd, "encoder.layers.", _VISION_LAYER_KEYS, "encoder layer")
    if depth != config.depth:
        raise ConversionError(f"the state dict holds {depth} vision layers, the config {config.depth}")
    out = {
        "cls_token": sd["embeddings.class_embedding"],
        "pos_embed": sd["embeddings.position_embedding"],
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
        "norm.weight": sd["post_layernorm.weight"],
        "norm.bias": sd["post_layernorm.bias"],
    }
    for i in range(depth):
        out |= moved(sd, f"encoder.layers.{i}.", f"blocks.{i}.", _VISION_LAYER_NAMES)
    return out


# --- MED text transformer -------------------------------------------------------------------------
def text_config_from_hf(hf: Any, context_dim: int | None, lm_head: bool) -> MEDConfig:
    """A :class:`MEDConfig` equal to a transformers ``BlipTextConfig`` (``context_dim``: what its
    cross-attention reads, which depends on the part)."""
    return MEDConfig(
        vocab_size=hf.vocab_size,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        max_positions=hf.max_position_embeddings,
        act=from_hf_activation(hf.hidden_act),
        norm_eps=hf.layer_norm_eps,
        context_dim=context_dim,
        lm_head=lm_head,
        pad_token_id=hf.pad_token_id,
    )


_TEXT_LAYER_NAMES = {
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp_norm",
}
_CROSS_LAYER_NAMES = {
    "crossattention.self.query": "cross_attn.q",
    "crossattention.output.dense": "cross_attn.proj",
    "crossattention.output.LayerNorm": "cross_norm",
}
_TEXT_LAYER_KEYS = tuple(f"{k}.weight" for k in ("attention.self.query", *_TEXT_LAYER_NAMES))


def text_state_dict(sd: StateDict, prefix: str, config: MEDConfig, origin: str = "") -> StateDict:
    """MED keys under ``prefix`` (med.py's / transformers' ``BertModel`` layout: ``embeddings.*``,
    ``encoder.layer.*``) -> :class:`vlmzoo.encoders.blip_text.MEDText` keys, without the LM head."""
    depth = count_blocks(sd, f"{prefix}encoder.layer.", _TEXT_LAYER_KEYS, "text layer", origin)
    if depth != config.depth:
        raise ConversionError(
            f"{origin}{prefix}: {depth} text layers in the state dict, {config.depth} in the config"
        )
    e = f"{prefix}embeddings."
    out = {
        "word_embeddings.weight": sd[f"{e}word_embeddings.weight"],
        "position_embeddings.weight": sd[f"{e}position_embeddings.weight"],
        "layernorm.weight": sd[f"{e}LayerNorm.weight"],
        "layernorm.bias": sd[f"{e}LayerNorm.bias"],
    }
    for i in range(depth):
        src, dst = f"{prefix}encoder.layer.{i}.", f"layers.{i}."
        out |= fuse_rows(
            sd, [f"{src}attention.self.{n}" for n in ("query", "key", "value")], f"{dst}attn.qkv"
        )
        out |= moved(sd, src, dst, _TEXT_LAYER_NAMES)
        if config.context_dim is not None:
            out |= fuse_rows(
                sd, [f"{src}crossattention.self.{n}" for n in ("key", "value")], f"{dst}cross_attn.kv"
            )
            out |= moved(sd, src, dst, _CROSS_LAYER_NAMES)
    return out


def lm_head_state_dict(sd: StateDict, prefix: str, word_embeddings: torch.Tensor) -> StateDict:
    """BERT's prediction head under ``prefix`` (``cls.predictions.``) -> ``lm_head.*``.

    vlmzoo ties the output matrix to the word embeddings (as BLIP and transformers do); an
    untied head with other values cannot be represented and is refused.
    """
    out = moved(sd, f"{prefix}transform.", "lm_head.", {"dense": "dense", "LayerNorm": "norm"})
    decoder = sd.get(f"{prefix}decoder.weight", word_embeddings)
    if decoder is not word_embeddings and not torch.equal(decoder, word_embeddings):
        raise ConversionError(
            f"{prefix}decoder.weight differs from the word embeddings: vlmzoo's MED ties them (BERT's tie)"
        )
    bias = sd.get(f"{prefix}bias", sd.get(f"{prefix}decoder.bias"))
    if bias is None:
        raise ConversionError(f"{prefix}bias is missing")
    out["lm_head.decoder.weight"] = word_embeddings
    out["lm_head.decoder.bias"] = bias
    return out


def _prefixed(sd: StateDict, prefix: str) -> StateDict:
    return {f"{prefix}{k}": v for k, v in sd.items()}


# --- the models -----------------------------------------------------------------------------------
def _token_ids(text: Any) -> dict[str, Any]:
    bos = text.bos_token_id
    if bos is None or not 0 <= bos + 1 < text.vocab_size:
        raise ConversionError(
            f"BlipTextConfig.bos_token_id={bos}: BLIP's [ENC] is [DEC] + 1 (models/blip.py init_tokenizer), "
            f"which must be a token id below vocab_size={text.vocab_size}"
        )
    return dict(
        bos_token_id=bos,
        enc_token_id=bos + 1,
        sep_token_id=text.sep_token_id,
        prompt_ids=PICTURE_OF if text.vocab_size == 30524 else (),
        label_smoothing=float(getattr(text, "label_smoothing", 0.0) or 0.0),
    )


def from_hf_blip(model: Any) -> torch.nn.Module:
    """Convert ``BlipForConditionalGeneration``, ``BlipForImageTextRetrieval``,
    ``BlipForQuestionAnswering`` (-> :class:`BLIPModel`) or ``BlipVisionModel``
    (-> :class:`VisionTransformer`, ``tokens`` = ``last_hidden_state``)."""
    name, cfg = type(model).__name__, model.config
    sd = dict(model.state_dict())
    if name == "BlipVisionModel":
        vision = vision_config_from_hf(cfg)
        state = vision_state_dict_from_hf(strip_prefix(sd, "vision_model.", if_present=True), vision)
        return build_loaded(lambda: VisionTransformer(vision), state, "converted BlipVisionModel")
    if name not in TRANSFORMERS:
        raise ConversionError(
            f"{name} is not a BLIP model vlmzoo converts; supported: {sorted(TRANSFORMERS)}"
        )
    vision = vision_config_from_hf(cfg.vision_config)
    text = cfg.text_config
    state = _prefixed(vision_state_dict_from_hf(strip_prefix(sd, "vision_model."), vision), "visual_encoder.")
    encoder = decoder = None
    fields: dict[str, Any] = dict(retrieval_heads=False, temperature=None, **_token_ids(text))
    if name in ("BlipForImageTextRetrieval", "BlipForQuestionAnswering"):
        encoder = text_config_from_hf(text, vision.width, lm_head=False)
        state |= _prefixed(text_state_dict(sd, "text_encoder.", encoder), "text_encoder.")
    if name in ("BlipForConditionalGeneration", "BlipForQuestionAnswering"):
        reads = "question" if name == "BlipForQuestionAnswering" else "image"
        # transformers builds every cross-attention from encoder_hidden_size (the image width);
        # VQA's answer decoder reads the question, so both widths must agree for the model to run.
        key = sd["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"]
        if reads == "question" and key.shape[1] != text.hidden_size:
            raise ConversionError(
                f"this BlipForQuestionAnswering's answer decoder cross-attends {key.shape[1]}-wide states, but the "
                f"question encoding is {text.hidden_size} wide (text_config.encoder_hidden_size must equal "
                "hidden_size for VQA)"
            )
        decoder = text_config_from_hf(text, key.shape[1], lm_head=True)
        dec = _prefixed(text_state_dict(sd, "text_decoder.bert.", decoder), "text_decoder.")
        dec |= _prefixed(
            lm_head_state_dict(
                sd, "text_decoder.cls.predictions.", dec["text_decoder.word_embeddings.weight"]
            ),
            "text_decoder.",
        )
        state |= dec
        fields["decoder_reads"] = reads
    if name == "BlipForImageTextRetrieval":
        fields["retrieval_heads"] = True
        for head in ("vision_proj", "text_proj", "itm_head"):
            for p in ("weight", "bias"):
                state[f"{head}.{p}"] = sd[f"{head}.{p}"]
        fields["embed_dim"] = sd["vision_proj.weight"].shape[0]
    config = BLIPConfig(vision=vision, text_encoder=encoder, text_decoder=decoder, **fields)
    return build_loaded(lambda: BLIPModel(config), state, f"converted {name}")


TRANSFORMERS = dict.fromkeys(
    (
        "BlipForConditionalGeneration",
        "BlipForImageTextRetrieval",
        "BlipForQuestionAnswering",
        "BlipVisionModel",
    ),
    from_hf_blip,
)
