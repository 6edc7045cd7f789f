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

The same text renames read the original releases (:func:`from_original_blip`, layouts ``"blip"``
and ``"lavis-blip"``): salesforce/BLIP's ``model_*.pth`` files and LAVIS's BLIP checkpoints, whose
modules carry the same names (LAVIS's ``lavis/models/blip_models/*.py`` build ``visual_encoder``
from its ``vit.py`` and ``text_encoder`` / ``text_decoder`` from its ``med.py``, copies of
salesforce/BLIP's), and whose image keys are vlmzoo's already.

What transformers' configs leave out is taken from salesforce/BLIP: ``[ENC]`` = ``[DEC]`` + 1
(models/blip.py ``init_tokenizer`` adds ``[DEC]`` then ``[ENC]``), and the captioning prompt
"a picture of " for the 30524-token BERT vocabulary. The image encoder's LayerNorm eps is the
checkpoint config's (1e-5 in transformers' ``BlipVisionConfig`` and the released configs; the
original trains with 1e-6, which vlmzoo's presets keep). The LM label smoothing is the config's
(``text_config.label_smoothing``, 0.0 in the released configs; BLIP trains with 0.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vlmzoo.convert.activations import from_hf_activation
from vlmzoo.convert.blip2 import vision_stem_state_dict
from vlmzoo.convert.state_dict import BLOCK_KEYS, build_loaded, count_blocks, fuse_rows, moved, strip_prefix
from vlmzoo.encoders.blip_text import MEDConfig
from vlmzoo.encoders.vit import BLIP_VISION_PRESETS, VisionTransformer, ViTConfig, blip_vision_config
from vlmzoo.errors import ConversionError
from vlmzoo.models.blip import PICTURE_OF, SEP_TOKEN_ID, TEMP_MAX, TEMP_MIN, BLIPConfig, BLIPModel

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
    out = vision_stem_state_dict(sd)
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


# --- salesforce/BLIP and LAVIS checkpoints --------------------------------------------------------
# Head counts are not in a state dict. salesforce/BLIP fixes them in code, at 64 wide everywhere:
# models/blip.py ``create_vit`` (ViT-B 768/12 heads, ViT-L 1024/16) and configs/med_config.json
# (BERT-base 768/12).
ORIGINAL_HEAD_DIM = 64
# What training leaves in the files besides the model (blip_pretrain.py, blip_retrieval.py):
# the momentum encoders and projections (``*_m``, momentum 0.995), the ITC feature queues and
# their pointer (``queue_ptr`` in blip_pretrain.py and LAVIS, ``ptr_queue`` in
# blip_retrieval.py), and BERT's ``position_ids`` buffers.
_TRAINING_PREFIXES = ("visual_encoder_m.", "text_encoder_m.", "vision_proj_m.", "text_proj_m.")
_TRAINING_KEYS = frozenset({"image_queue", "text_queue", "idx_queue", "ptr_queue", "queue_ptr"})
_HEADS = ("vision_proj", "text_proj", "itm_head")
_DEC = "text_decoder.bert."
_LM = "text_decoder.cls.predictions."
# vlmzoo keys of the parts blip_pretrain.py ties between encoder and decoder
# (``tie_encoder_decoder_weights(..., '/attention')``: all but the self-attention).
_TIED = re.compile(
    r"^(word_embeddings|position_embeddings|layernorm)\.|^layers\.\d+\.(cross_attn|cross_norm|mlp|mlp_norm)\."
)


class _Reads(dict):
    """A state dict that notes each key read, so that what no rule converted can be refused."""

    def __init__(self, sd: Mapping[str, torch.Tensor]):
        super().__init__(sd)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default


def _model_tensors(state_dict: Mapping[str, torch.Tensor]) -> _Reads:
    """The model's own tensors: training state dropped, layouts vlmzoo cannot express refused."""
    sd = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith(_TRAINING_PREFIXES)
        and k not in _TRAINING_KEYS
        and not k.endswith("embeddings.position_ids")
    }
    if any(k.startswith("cls_head.") for k in sd) or any(".crossattention.self0." in k for k in sd):
        raise ConversionError(
            "a BLIP NLVR2 checkpoint (blip_nlvr.py: two cross-attentions per layer and cls_head) is not "
            "a BLIPModel; vlmzoo converts the pretraining, captioning, retrieval / ITM and VQA checkpoints"
        )
    if "query_tokens" in sd or any(k.startswith("Qformer.") for k in sd):
        raise ConversionError(
            "a BLIP-2 checkpoint (query_tokens, Qformer.bert.*): convert it with the 'lavis-blip2' layout"
        )
    if "visual_encoder.pos_embed" not in sd:
        raise ConversionError(
            "not a BLIP checkpoint: no visual_encoder.pos_embed (salesforce/BLIP and LAVIS BLIP files hold "
            "visual_encoder.*, text_encoder.* and / or text_decoder.*)"
        )
    return _Reads(sd)


def _heads_of(width: int, heads: int | None, what: str) -> int:
    heads = width // ORIGINAL_HEAD_DIM if heads is None else heads
    if heads <= 0 or width % heads:
        raise ConversionError(
            f"the {what} is {width} wide: no whole number of heads of {ORIGINAL_HEAD_DIM} (BLIP's), "
            f"or {heads} does not divide it; pass the head count"
        )
    return heads


def _original_vision(sd: _Reads, heads: int | None, vqa: bool) -> tuple[ViTConfig, StateDict]:
    """``visual_encoder.*`` (timm names, 1:1) -> its :class:`ViTConfig` and state; the image size
    is the one ``pos_embed`` was stored for (CLS + a square grid). Drop path as BLIP trained the
    tower (models/blip.py ``create_vit``: 0.1 for ViT-L and in blip_vqa.py, else 0)."""
    p = "visual_encoder."
    pos, conv = sd[f"{p}pos_embed"], sd[f"{p}patch_embed.proj.weight"]
    width, patch = pos.shape[-1], conv.shape[-1]
    grid = round((pos.shape[1] - 1) ** 0.5)
    if pos.ndim != 3 or grid * grid + 1 != pos.shape[1]:
        raise ConversionError(f"{p}pos_embed {tuple(pos.shape)} is not [1, 1 + a square grid, width]")
    depth = count_blocks(sd, f"{p}blocks.", BLOCK_KEYS, "ViT block")
    mlp = sd[f"{p}blocks.0.mlp.fc1.weight"].shape[0]
    config = BLIP_VISION_PRESETS["blip-vit-b16"].replace(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        depth=depth,
        num_heads=_heads_of(width, heads, "image encoder"),
        mlp_dim=None if mlp == 4 * width else mlp,  # timm's mlp_ratio 4 when it is
        qkv_bias=f"{p}blocks.0.attn.qkv.bias" in sd,
        drop_path_rate=0.1 if vqa or width == 1024 else 0.0,
    )
    state = {k[len(p) :]: sd[k] for k in list(sd) if k.startswith(p)}  # every key read: checked below
    return config, state


def _original_text(sd: _Reads, prefix: str, heads: int | None, lm_head: bool) -> MEDConfig:
    """The :class:`MEDConfig` of the BERT under ``prefix`` (med.py ``BertModel``), read off its tensors."""
    e, layer = f"{prefix}embeddings.", f"{prefix}encoder.layer."
    if f"{e}token_type_embeddings.weight" in sd or f"{prefix}pooler.dense.weight" in sd:
        raise ConversionError(
            f"{prefix}: token type embeddings or a pooler (a BERT that is not BLIP's MED, e.g. LAVIS's "
            "ALBEF); BLIP's MED has neither"
        )
    words = sd[f"{e}word_embeddings.weight"]
    depth = count_blocks(sd, layer, _TEXT_LAYER_KEYS, "text layer")
    cross = [i for i in range(depth) if f"{layer}{i}.crossattention.self.key.weight" in sd]
    if cross and cross != list(range(depth)):
        raise ConversionError(
            f"{prefix}: cross-attention in layers {cross} of {depth}; BLIP's MED cross-attends in every layer"
        )
    return MEDConfig(
        vocab_size=words.shape[0],
        width=words.shape[1],
        depth=depth,
        num_heads=_heads_of(words.shape[1], heads, f"text transformer {prefix}"),
        mlp_dim=sd[f"{layer}0.intermediate.dense.weight"].shape[0],
        max_positions=sd[f"{e}position_embeddings.weight"].shape[0],
        context_dim=sd[f"{layer}0.crossattention.self.key.weight"].shape[1] if cross else None,
        lm_head=lm_head,
    )


def _lm_head(sd: _Reads, words: torch.Tensor) -> StateDict:
    """``cls.predictions.*`` -> ``lm_head.*``; med.py's ``decoder.bias`` is the same tensor as ``bias``."""
    bias, duplicate = sd.get(f"{_LM}bias"), sd.get(f"{_LM}decoder.bias")
    if bias is not None and duplicate is not None and not torch.equal(bias, duplicate):
        raise ConversionError(
            f"{_LM}decoder.bias differs from {_LM}bias; med.py's BertLMPredictionHead makes them one tensor"
        )
    return lm_head_state_dict(sd, _LM, words)


def _is_tied(encoder: StateDict, decoder: StateDict) -> bool:
    """Whether every part blip_pretrain.py ties holds the same values in encoder and decoder."""
    shared = [k for k in decoder if _TIED.match(k)]
    return bool(shared) and all(
        k in encoder and encoder[k].shape == decoder[k].shape and torch.equal(encoder[k], decoder[k])
        for k in shared
    )


def from_original_blip(
    state_dict: Mapping[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    prompt_ids: Sequence[int] | None = None,
) -> BLIPModel:
    """A salesforce/BLIP or LAVIS BLIP checkpoint -> :class:`BLIPModel` holding the parts it has.

    The parts present decide the model: ``visual_encoder`` always; ``text_encoder`` (ITC / ITM,
    VQA's question encoder); ``text_decoder`` (``bert`` + ``cls`` head); ``vision_proj``,
    ``text_proj`` and ``itm_head`` together (retrieval heads) and ``temp``. So
    ``model_base.pth`` / ``model_*_capfilt_large.pth`` (blip_pretrain.py) give the pretraining
    model, its decoder tied to the encoder when the file holds the tied tensors equal under both
    names; ``model_*_caption*.pth`` (blip.py ``BLIP_Decoder``) a captioner; ``model_*_retrieval_*.pth``
    (blip_retrieval.py / blip_itm.py) an ITC / ITM model; ``model_base_vqa_capfilt_large.pth``
    (blip_vqa.py) a VQA model whose decoder reads the question (480 px: its ``pos_embed`` has
    1 + 30 x 30 rows). Widths, depths, FFN sizes, vocabulary and image size are read off the
    tensors; head counts are BLIP's 64-wide heads unless ``vision_heads`` / ``text_heads`` say
    otherwise. Momentum encoders, queues and ``position_ids`` are dropped; NLVR2 checkpoints and
    any tensor no rule converts are refused (:class:`ConversionError`).

    Token ids are the tokenizer's of models/blip.py ``init_tokenizer``: ``[DEC]`` and ``[ENC]``
    appended to bert-base-uncased (the last two ids of the vocabulary), ``[SEP]`` 102.
    ``prompt_ids``: the captioning prompt's word pieces (default "a picture of " for the 30524-token
    vocabulary of a captioner, none otherwise).
    """
    sd = _model_tensors(state_dict)
    has_encoder = "text_encoder.embeddings.word_embeddings.weight" in sd
    has_decoder = f"{_DEC}embeddings.word_embeddings.weight" in sd
    heads = [h for h in _HEADS if f"{h}.weight" in sd]
    if heads and len(heads) != len(_HEADS):
        raise ConversionError(
            f"the checkpoint holds {heads} but not all of {list(_HEADS)}: BLIPModel's retrieval heads "
            "(ITC projections and the ITM head) come together"
        )
    if not (has_encoder or has_decoder):
        raise ConversionError("a BLIP checkpoint without text_encoder.* or text_decoder.bert.* weights")
    if heads and not has_encoder:
        raise ConversionError(
            f"{list(_HEADS)} without text_encoder.*: the ITC / ITM heads read the text encoder"
        )
    encoder = _original_text(sd, "text_encoder.", text_heads, lm_head=False) if has_encoder else None
    decoder = _original_text(sd, _DEC, text_heads, lm_head=True) if has_decoder else None
    reads = "image"
    if encoder is not None and decoder is not None and not heads:
        reads = "question"  # blip_vqa.py: the only BLIP with both text parts and no heads
    vision, vision_state = _original_vision(sd, vision_heads, vqa=reads == "question")
    for part, config, wants in (
        ("text_encoder", encoder, vision.width),
        ("text_decoder", decoder, encoder.width if reads == "question" else vision.width),  # type: ignore[union-attr]
    ):
        if config is not None and config.context_dim != wants:
            raise ConversionError(
                f"{part} cross-attends {config.context_dim}-wide states, but what it reads is {wants} wide"
            )
    state = _prefixed(vision_state, "visual_encoder.")
    text_state: dict[str, StateDict] = {}
    if encoder is not None:
        text_state["text_encoder"] = text_state_dict(sd, "text_encoder.", encoder)
    if decoder is not None:
        dec = text_state_dict(sd, _DEC, decoder)
        text_state["text_decoder"] = dec | _lm_head(sd, dec["word_embeddings.weight"])
    tie = reads == "image" and len(text_state) == 2 and _is_tied(*text_state.values())
    for part, part_state in text_state.items():
        state |= _prefixed(part_state, f"{part}.")
    fields: dict[str, Any] = dict(retrieval_heads=bool(heads), temperature=None)
    if heads:
        for head in _HEADS:
            state[f"{head}.weight"], state[f"{head}.bias"] = sd[f"{head}.weight"], sd[f"{head}.bias"]
        fields["embed_dim"] = state["vision_proj.weight"].shape[0]
        if "temp" in sd:
            state["temp"] = sd["temp"]
            # the initial value of the config; BLIP clamps temp before each step, an optimiser
            # step after the clamp may leave it just outside (the model clamps it before use too)
            fields["temperature"] = min(max(float(sd["temp"]), TEMP_MIN), TEMP_MAX)
    vocab = {c.vocab_size for c in (encoder, decoder) if c is not None}
    if len(vocab) != 1:
        raise ConversionError(f"text_encoder and text_decoder have different vocabularies {sorted(vocab)}")
    (size,) = vocab
    if prompt_ids is None:  # BLIP_Decoder's prompt; pretraining scores its captions without one
        captioner = decoder is not None and reads == "image" and not heads
        prompt_ids = PICTURE_OF if captioner and size == 30524 else ()
    left = sorted(set(sd) - sd.read)
    if left:
        raise ConversionError(
            f"{len(left)} tensor(s) of the checkpoint are not part of a BLIP model vlmzoo converts: "
            f"{left[:8]}{' ...' if len(left) > 8 else ''}"
        )
    config = BLIPConfig(
        vision=vision,
        text_encoder=encoder,
        text_decoder=decoder,
        decoder_reads=reads,
        tie_decoder=tie,
        bos_token_id=size - 2,
        enc_token_id=size - 1,
        sep_token_id=SEP_TOKEN_ID,
        prompt_ids=tuple(int(t) for t in prompt_ids),
        **fields,
    )
    return build_loaded(lambda: BLIPModel(config), state, "BLIP checkpoint")


TRANSFORMERS = dict.fromkeys(
    (
        "BlipForConditionalGeneration",
        "BlipForImageTextRetrieval",
        "BlipForQuestionAnswering",
        "BlipVisionModel",
    ),
    from_hf_blip,
)
ORIGINAL = {"blip": from_original_blip, "lavis-blip": from_original_blip}
