"""BLIP's original checkpoints (salesforce/BLIP ``model_*.pth``, LAVIS) and the Hub ports.

The original layouts are written here from random models, under salesforce/BLIP's module names
(models/blip*.py: ``visual_encoder``, ``text_encoder``, ``text_decoder.{bert,cls}``, the heads;
models/vit.py: timm's ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.*``,
``norm``; models/med.py: BERT's ``embeddings.*`` and ``encoder.layer.{i}.*``), with what
training leaves in the files (momentum encoders, queues, ``position_ids``). Parity: against the
transformers model the layout was written from (float32, max abs diff <= 1e-4, equal tokens), or
against the vlmzoo model where transformers cannot express the checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff
from fake_hub import fake_hub_fixture  # noqa: F401 (the fake_hub fixture)
from test_blip import (
    BOS,
    ENC,
    SEP,
    TEXT,
    VISION,
    VQA_VISION,
    pixels,
    randomize_blip_,
    texts,
    until_eos,
    vlmzoo_first,
)

import vlmzoo
from vlmzoo import releases
from vlmzoo.convert import from_original, from_transformers
from vlmzoo.errors import ConversionError
from vlmzoo.models.blip import PICTURE_OF, BLIPModel
from vlmzoo.releases.blip import MODELS
from vlmzoo.releases.source import TRANSFORMERS_FILES, Release

transformers = pytest.importorskip("transformers")

TOL = 1e-4
# salesforce/BLIP's vit.py builds its LayerNorms with eps 1e-6 (transformers' default is 1e-5).
ORIGINAL_VISION = {**VISION, "layer_norm_eps": 1e-6}
HEADS = dict(vision_heads=4, text_heads=4)  # the tiny models' heads are 8 wide, not BLIP's 64


# --- writing the original layout ------------------------------------------------------------------
# transformers' BlipVisionModel names -> salesforce/BLIP's vit.py names (those of transformers'
# convert_blip_original_pytorch_to_hf.py, read backwards)
HF_VISION = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.": "patch_embed.proj.",
    "post_layernorm.": "norm.",
    "encoder.layers.": "blocks.",
    ".self_attn.qkv.": ".attn.qkv.",
    ".self_attn.projection.": ".attn.proj.",
    ".layer_norm1.": ".norm1.",
    ".layer_norm2.": ".norm2.",
}


def original_from_hf(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers Blip* model's state dict in salesforce/BLIP's names (the text keys are the same)."""
    out = {}
    for key, value in hf.state_dict().items():
        if key.startswith("vision_model."):
            key = "visual_encoder." + key[len("vision_model.") :]
            for old, new in HF_VISION.items():
                key = key.replace(old, new)
        out[key] = value.clone()
    return out


# vlmzoo's MED names -> med.py's, per layer (q/k/v and k/v are split below)
MED_LAYER = {
    "attn.proj": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "cross_attn.q": "crossattention.self.query",
    "cross_attn.proj": "crossattention.output.dense",
    "cross_norm": "crossattention.output.LayerNorm",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "mlp_norm": "output.LayerNorm",
}


def med_layout(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A :class:`MEDText` state dict as med.py's ``BertModel`` under ``prefix`` (no LM head)."""
    out = {
        f"{prefix}embeddings.word_embeddings.weight": state["word_embeddings.weight"],
        f"{prefix}embeddings.position_embeddings.weight": state["position_embeddings.weight"],
        f"{prefix}embeddings.LayerNorm.weight": state["layernorm.weight"],
        f"{prefix}embeddings.LayerNorm.bias": state["layernorm.bias"],
        f"{prefix}embeddings.position_ids": torch.arange(state["position_embeddings.weight"].shape[0])[None],
    }
    for key, value in state.items():
        if not key.startswith("layers."):
            continue
        _, i, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        base = f"{prefix}encoder.layer.{i}."
        if module == "attn.qkv":
            for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
                out[f"{base}attention.self.{name}.{param}"] = part
        elif module == "cross_attn.kv":
            for name, part in zip(("key", "value"), value.chunk(2), strict=True):
                out[f"{base}crossattention.self.{name}.{param}"] = part
        else:
            out[f"{base}{MED_LAYER[module]}.{param}"] = value
    return out


def original_layout(model: BLIPModel) -> dict[str, torch.Tensor]:
    """A vlmzoo BLIP model as salesforce/BLIP saves it: ``model.state_dict()``, tied tensors under
    every name they have (one storage), the LM head's bias also as ``decoder.bias``."""
    state = model.state_dict()
    out = {f"visual_encoder.{k[15:]}": v for k, v in state.items() if k.startswith("visual_encoder.")}
    for part in ("text_encoder", "text_decoder"):
        own = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(f"{part}.")}
        if not own:
            continue
        out |= med_layout(own, "text_encoder." if part == "text_encoder" else "text_decoder.bert.")
        if part == "text_decoder":
            p = "text_decoder.cls.predictions."
            out[f"{p}transform.dense.weight"] = own["lm_head.dense.weight"]
            out[f"{p}transform.dense.bias"] = own["lm_head.dense.bias"]
            out[f"{p}transform.LayerNorm.weight"] = own["lm_head.norm.weight"]
            out[f"{p}transform.LayerNorm.bias"] = own["lm_head.norm.bias"]
            out[f"{p}decoder.weight"] = own["lm_head.decoder.weight"]
            out[f"{p}bias"] = out[f"{p}decoder.bias"] = own["lm_head.decoder.bias"]
    for key in ("vision_proj", "text_proj", "itm_head"):
        for param in ("weight", "bias"):
            if f"{key}.{param}" in state:
                out[f"{key}.{param}"] = state[f"{key}.{param}"]
    if "temp" in state:
        out["temp"] = state["temp"]
    return out


def with_training_state(sd: dict[str, torch.Tensor], queue_ptr: str = "queue_ptr") -> dict[str, torch.Tensor]:
    """``sd`` plus what blip_pretrain.py / blip_retrieval.py save besides the model: momentum
    copies (``*_m``, noise: they must not leak into the model), feature queues, the pointer."""
    out = dict(sd)
    for key, value in sd.items():
        part, _, rest = key.partition(".")
        if (
            part in ("visual_encoder", "text_encoder", "vision_proj", "text_proj")
            and value.is_floating_point()
        ):
            out[f"{part}_m.{rest}"] = torch.randn_like(value)
    embed = sd["vision_proj.weight"].shape[0]
    out |= {
        "image_queue": torch.randn(embed, 16),
        "text_queue": torch.randn(embed, 16),
        "idx_queue": torch.full((1, 16), -100),
        queue_ptr: torch.zeros(1, dtype=torch.long),
    }
    return out


def hf_model(cls_name: str, vision: dict | None = None) -> torch.nn.Module:
    config = transformers.BlipConfig(text_config=TEXT, vision_config=vision or ORIGINAL_VISION)
    return randomize_blip_(getattr(transformers, cls_name)(config)).eval()


def caption_logit_diff(hf: torch.nn.Module, ours: BLIPModel) -> float:
    """Max abs diff of the decoder's logits at the real (unpadded) positions of three captions."""
    x, (ids, mask) = pixels(), texts(pad_from={1: 4})
    with torch.no_grad():
        ref = hf(pixel_values=x, input_ids=vlmzoo_first(ids, BOS), attention_mask=mask).logits
        keep = mask.bool()
        return max_abs_diff(ours.decoder_logits(ours.encode_image(x), ids, mask)[keep], ref[keep])


# --- captioning (blip.py BLIP_Decoder) -------------------------------------------------------------
def test_caption_checkpoint_logits_and_captions_match_blip_for_conditional_generation():
    hf = hf_model("BlipForConditionalGeneration")
    ours = from_original(original_from_hf(hf), "blip", **HEADS).eval()
    c = ours.config
    assert ours.text_encoder is None and not c.retrieval_heads and c.temperature is None
    assert (c.bos_token_id, c.enc_token_id, c.sep_token_id) == (BOS, ENC, SEP)
    assert c.vision.image_size == 32 and c.vision.norm_eps == 1e-6 and c.label_smoothing == 0.1
    assert caption_logit_diff(hf, ours) <= TOL
    x, prompt = pixels(), [5, 6, 7]
    with torch.no_grad():
        hf_prompt = torch.tensor([[101, *prompt, SEP]]).repeat(3, 1)
        for beams in (1, 3):
            kwargs = dict(max_length=10, min_length=0, num_beams=beams)
            expected = hf.generate(pixel_values=x, input_ids=hf_prompt, do_sample=False, **kwargs)
            got = ours.caption(x, prompt, **kwargs)
            assert until_eos(got).tolist() == until_eos(expected[:, 1 + len(prompt) :]).tolist()


def test_captioner_with_the_bert_vocabulary_gets_the_a_picture_of_prompt():
    hf = hf_model("BlipForConditionalGeneration")
    sd = original_from_hf(hf)
    words = sd["text_decoder.bert.embeddings.word_embeddings.weight"]
    big = torch.randn(30524, words.shape[1])
    sd["text_decoder.bert.embeddings.word_embeddings.weight"] = sd[
        "text_decoder.cls.predictions.decoder.weight"
    ] = big
    for key in ("bias", "decoder.bias"):
        sd[f"text_decoder.cls.predictions.{key}"] = torch.zeros(30524)
    ours = from_original(sd, "blip", **HEADS)
    c = ours.config
    assert (c.prompt_ids, c.bos_token_id, c.enc_token_id) == (PICTURE_OF, 30522, 30523)


# --- retrieval (blip_retrieval.py BLIP_Retrieval, blip_itm.py BLIP_ITM) ----------------------------
@pytest.mark.parametrize("layout", ["blip", "lavis-blip"])
def test_retrieval_checkpoint_with_momentum_encoders_and_queues_matches_blip_for_image_text_retrieval(layout):
    hf = hf_model("BlipForImageTextRetrieval")
    sd = original_from_hf(hf) | {"temp": torch.tensor(0.05)}
    # blip_retrieval.py names the pointer ptr_queue, LAVIS's blip_retrieval.py queue_ptr
    sd = with_training_state(sd, "ptr_queue" if layout == "blip" else "queue_ptr")
    ours = from_original(sd, layout, **HEADS).eval()
    assert ours.text_decoder is None and ours.config.retrieval_heads
    assert (
        ours.temp.item() == pytest.approx(0.05) and ours.config.embed_dim == hf.config.image_text_hidden_size
    )
    x = pixels()
    ids, mask = texts(pad_from={2: 3})
    with torch.no_grad():
        itm = hf(input_ids=vlmzoo_first(ids, ENC), pixel_values=x, attention_mask=mask).itm_score
        itc = hf(input_ids=ids, pixel_values=x, attention_mask=mask, use_itm_head=False).itm_score
        assert max_abs_diff(ours.itm_score(x, ids, mask), itm.softmax(dim=-1)[:, 1]) <= TOL
        assert max_abs_diff(ours.itc_similarity(x, ids, mask).diagonal(), itc.diagonal()) <= TOL


# --- VQA (blip_vqa.py BLIP_VQA) ------------------------------------------------------------------
def test_vqa_checkpoint_holds_the_weights_and_answers_of_the_converted_blip_for_question_answering():
    """Against the transformers conversion, whose answers test_blip.py proves equal to transformers'."""
    hf = hf_model("BlipForQuestionAnswering", vision={**VQA_VISION, "layer_norm_eps": 1e-6})
    ours = from_original(original_from_hf(hf), "blip", **HEADS).eval()
    peer = from_transformers(hf).eval()
    assert ours.config.decoder_reads == "question" and ours.config.vision.drop_path_rate == 0.1
    for (key, a), (_, b) in zip(ours.state_dict().items(), peer.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    x, (question, mask) = pixels(), texts(length=6, pad_from={2: 4})
    with torch.no_grad():
        for beams in (1, 3):
            kwargs = dict(max_length=8, num_beams=beams)
            assert torch.equal(
                ours.answer(x, question, mask, **kwargs), peer.answer(x, question, mask, **kwargs)
            )


def test_vqa_checkpoint_at_its_own_resolution_with_a_tower_wider_than_the_text():
    """blip_vqa.py fine-tunes at 480 px (pos_embed of 1 + 30 x 30 rows) with a 768-wide text side
    whichever the tower; transformers cannot hold a tower wider than the answer decoder reads."""
    vision = vlmzoo.create_model("tiny-blip-vqa").config.vision.replace(image_size=40, drop_path_rate=0.1)
    source = randomize_blip_(vlmzoo.create_model("tiny-blip-vqa", vision=vision)).eval()
    sd = original_layout(source)
    assert sd["visual_encoder.pos_embed"].shape[1] == 1 + 5 * 5
    ours = from_original(sd, "blip", **HEADS).eval()
    assert ours.config == source.config
    x = pixels(3, size=40)
    question, q_mask = texts(length=6, pad_from={1: 4})
    with torch.no_grad():
        assert torch.equal(ours.answer(x, question, q_mask), source.answer(x, question, q_mask))
        answers, a_mask = texts(3, length=4)
        assert ours.answer_loss(x, question, q_mask, answers, a_mask).item() == pytest.approx(
            source.answer_loss(x, question, q_mask, answers, a_mask).item(), abs=1e-6
        )


# --- pretraining (blip_pretrain.py BLIP_Pretrain) ------------------------------------------------
def test_pretraining_checkpoint_with_tied_tensors_stored_twice_keeps_the_ties(tmp_path):
    source = randomize_blip_(vlmzoo.create_model("tiny-blip")).eval()
    with torch.no_grad():
        source.temp.fill_(0.07)
    sd = with_training_state(original_layout(source))
    enc, dec = "text_encoder.encoder.layer.0.", "text_decoder.bert.encoder.layer.0."
    assert sd[f"{enc}output.dense.weight"].data_ptr() == sd[f"{dec}output.dense.weight"].data_ptr()
    path = tmp_path / "model_base.pth"
    torch.save({"model": sd, "epoch": 19}, path)  # as pretrain.py saves it
    ours = from_original(path, "blip", **HEADS).eval()
    assert ours.config.tie_decoder and ours.config.replace(temperature=0.07) == source.config
    d, e = ours.text_decoder, ours.text_encoder
    assert d.layers[1].mlp is e.layers[1].mlp and d.word_embeddings is e.word_embeddings
    assert d.lm_head.decoder.weight is e.word_embeddings.weight and d.layers[0].attn is not e.layers[0].attn
    x = pixels(4)
    ids, mask = texts(4, pad_from={0: 5})
    with torch.no_grad():
        assert torch.equal(ours.itm_score(x, ids, mask), source.itm_score(x, ids, mask))
        assert torch.equal(ours.itc_similarity(x, ids, mask), source.itc_similarity(x, ids, mask))
        tokens = source.encode_image(x)
        assert torch.equal(ours.decoder_logits(tokens, ids, mask), source.decoder_logits(tokens, ids, mask))
        generator = torch.Generator().manual_seed(0)
        loss = ours(x, ids, mask, generator=generator).loss
        expected = source(x, ids, mask, generator=torch.Generator().manual_seed(0)).loss
        assert abs(loss.item() - expected.item()) <= 1e-6


def test_decoder_with_its_own_copies_of_the_encoder_parts_converts_untied():
    source = randomize_blip_(vlmzoo.create_model("tiny-blip")).eval()
    sd = {k: v.clone() for k, v in original_layout(source).items()}
    sd["text_decoder.bert.encoder.layer.1.output.dense.weight"] += 0.5
    ours = from_original(sd, "blip", **HEADS)
    assert not ours.config.tie_decoder
    assert ours.text_decoder.layers[1].mlp is not ours.text_encoder.layers[1].mlp


# --- what is refused ----------------------------------------------------------------------------------
def caption_layout() -> dict[str, torch.Tensor]:
    return original_from_hf(hf_model("BlipForConditionalGeneration"))


def retrieval_layout() -> dict[str, torch.Tensor]:
    return original_from_hf(hf_model("BlipForImageTextRetrieval"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd | {"cls_head.0.weight": torch.ones(2, 2)}, "NLVR2"),
        (lambda sd: sd | {"text_decoder.extra.weight": torch.ones(2)}, r"not part of a BLIP model.*extra"),
        (lambda sd: sd | {"temp": torch.tensor(0.07)}, r"not part of a BLIP model.*temp"),
        (
            lambda sd: sd | {"visual_encoder.pos_embed": sd["visual_encoder.pos_embed"][:, :-1]},
            "not \\[1, 1 \\+ a square grid",
        ),
        (
            lambda sd: (
                sd
                | {"text_decoder.cls.predictions.decoder.bias": sd["text_decoder.cls.predictions.bias"] + 1}
            ),
            "decoder.bias differs",
        ),
        (
            lambda sd: (
                sd
                | {
                    "text_decoder.cls.predictions.decoder.weight": torch.randn_like(
                        sd["text_decoder.cls.predictions.decoder.weight"]
                    )
                }
            ),
            "differs from the word embeddings",
        ),
        (
            lambda sd: {k: v for k, v in sd.items() if not k.startswith("visual_encoder.")},
            "no visual_encoder",
        ),
    ],
    ids=[
        "nlvr",
        "stray-tensor",
        "temp-without-heads",
        "non-square-grid",
        "lm-bias",
        "untied-lm-head",
        "no-image",
    ],
)
def test_checkpoints_that_are_not_a_blip_model_are_refused_naming_why(edit, match):
    with pytest.raises(ConversionError, match=match):
        from_original(edit(caption_layout()), "blip", **HEADS)


@pytest.mark.parametrize(
    "key",
    [
        "visual_encoder.blocks.3000000.norm1.weight",
        "text_encoder.encoder.layer.3000000.attention.self.query.weight",
        "text_decoder.bert.encoder.layer.3000000.output.dense.weight",
    ],
)
def test_a_planted_block_index_is_refused_before_anything_is_built(key):
    sd = original_from_hf(hf_model("BlipForQuestionAnswering", vision={**VQA_VISION, "layer_norm_eps": 1e-6}))
    with pytest.raises(ConversionError, match="3000000"):
        from_original(sd | {key: torch.ones(1)}, "blip", **HEADS)


def test_blip2_checkpoints_are_pointed_to_their_layout():
    with pytest.raises(ConversionError, match="'lavis-blip2'"):
        from_original(
            {"query_tokens": torch.ones(1, 2, 8), "visual_encoder.pos_embed": torch.ones(1, 5, 8)}, "blip"
        )


def test_partial_retrieval_heads_and_non_blip_berts_are_refused():
    sd = retrieval_layout()
    with pytest.raises(ConversionError, match="come together"):
        from_original({k: v for k, v in sd.items() if not k.startswith("itm_head.")}, "blip", **HEADS)
    with pytest.raises(ConversionError, match="token type embeddings"):
        from_original(
            sd | {"text_encoder.embeddings.token_type_embeddings.weight": torch.ones(2, 32)}, "blip"
        )
    with pytest.raises(ConversionError, match="no whole number of heads"):
        from_original(sd, "blip")  # 48 and 32 wide: not BLIP's 64-wide heads


# --- the Hub ports ------------------------------------------------------------------------------------
def test_shipped_blip_releases_are_salesforces_transformers_ports():
    repos = {name: (r.repo_id, r.name) for name, r in MODELS.items()}
    assert repos == {
        "blip-base-caption": ("Salesforce/blip-image-captioning-base", "BlipForConditionalGeneration"),
        "blip-large-caption": ("Salesforce/blip-image-captioning-large", "BlipForConditionalGeneration"),
        "blip-base-retrieval": ("Salesforce/blip-itm-base-coco", "BlipForImageTextRetrieval"),
        "blip-large-retrieval": ("Salesforce/blip-itm-large-coco", "BlipForImageTextRetrieval"),
        "blip-base-vqa": ("Salesforce/blip-vqa-base", "BlipForQuestionAnswering"),
    }
    assert all(releases.releases("model", name) == (r,) for name, r in MODELS.items())


def test_captioning_port_downloads_converts_and_matches(fake_hub, monkeypatch, tmp_path):
    hf = hf_model("BlipForConditionalGeneration", vision=VISION)
    hf.save_pretrained(tmp_path / "port")
    fake_hub.push_folder("test-org/blip-tiny", tmp_path / "port")
    port = Release("test-org/blip-tiny", TRANSFORMERS_FILES, "transformers", "BlipForConditionalGeneration")
    monkeypatch.setattr(releases, "_TABLE", {**releases._table(), ("model", "tiny-blip-caption"): (port,)})
    ours = vlmzoo.create_model("tiny-blip-caption", pretrained=True).eval()
    assert isinstance(ours, BLIPModel) and ours.config.vision.norm_eps == 1e-5  # the port's config
    assert caption_logit_diff(hf, ours) <= TOL
    assert set(fake_hub.downloads("test-org/blip-tiny")) <= {"config.json", "model.safetensors"}
