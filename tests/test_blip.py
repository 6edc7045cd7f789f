"""BLIP: parity with transformers' Blip* models, the losses against the paper's equations, the parts.

Parity: random small transformers models (float32) converted with vlmzoo.convert, max abs diff
<= 1e-4, generated tokens equal. Losses: references written here from Li et al. 2022, section 3.2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff

import vlmzoo
from vlmzoo.convert import from_transformers
from vlmzoo.encoders.blip_text import MEDCache, MEDConfig, MEDText
from vlmzoo.encoders.vit import VisionTransformer
from vlmzoo.errors import InputError
from vlmzoo.models.blip import BLIPModel

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BOS, ENC, SEP, PAD, CLS = 126, 127, 102, 0, 101
VISION = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    bos_token_id=BOS,
    sep_token_id=SEP,
    pad_token_id=PAD,
)


TINY_MED = MEDConfig(
    vocab_size=128, width=32, depth=2, num_heads=4, mlp_dim=64, max_positions=64, context_dim=48
)


def randomize_blip_(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Every parameter redrawn, LayerNorm gains around 1: noise around 0 there (conftest's
    ``randomize_``) flattens the post-LN text stack until every image gives the same tokens."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and any(n in name for n in ("LayerNorm", "layer_norm", "layernorm")):
                p.copy_(1 + std * torch.randn_like(p))
            else:
                p.normal_(0.0, std)
    return model


def hf_blip(cls_name: str, vision: dict | None = None, eos_bias: float = 0.0, **text) -> torch.nn.Module:
    config = transformers.BlipConfig(text_config={**TEXT, **text}, vision_config=vision or VISION)
    model = randomize_blip_(getattr(transformers, cls_name)(config)).eval()
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None and eos_bias:
        with torch.no_grad():  # make [SEP] likely, so that some rows end early
            decoder.cls.predictions.bias[SEP] += eos_bias
    return model


def texts(batch: int = 3, length: int = 7, first: int = CLS, pad_from: dict[int, int] | None = None):
    """Right-padded [B, L] ids (first token ``first``, no [SEP]/[DEC]/[ENC] inside) and their mask."""
    ids = torch.randint(3, 100, (batch, length))
    ids[:, 0] = first
    mask = torch.ones_like(ids)
    for row, start in (pad_from or {}).items():
        ids[row, start:], mask[row, start:] = PAD, 0
    return ids, mask


def pixels(batch: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def until_eos(ids: torch.Tensor) -> torch.Tensor:
    """Everything after a row's first [SEP] set to padding (transformers' beam search fills with
    [SEP] when the pad id is 0: ``pad_token_id or eos_token_id``)."""
    ended = (ids == SEP).int().cumsum(dim=1) - (ids == SEP).int()
    return ids.masked_fill(ended > 0, PAD)


# --- parity: the image encoder ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 48], ids=["native", "interpolated"])
def test_image_encoder_matches_blip_vision_model(size):
    hf = randomize_blip_(transformers.BlipVisionModel(transformers.BlipVisionConfig(**VISION))).eval()
    ours = from_transformers(hf).eval()
    assert isinstance(ours, VisionTransformer) and ours.config.norm_eps == hf.config.layer_norm_eps
    x = pixels(2, size)
    with torch.no_grad():
        ref = hf(pixel_values=x, interpolate_pos_encoding=size != 32).last_hidden_state
        out = ours(x).tokens
    assert max_abs_diff(out, ref) <= TOL


# --- parity: captioning -----------------------------------------------------------------------------
def test_caption_logits_match_blip_for_conditional_generation():
    hf = hf_blip("BlipForConditionalGeneration")
    ours = from_transformers(hf).eval()
    assert isinstance(ours, BLIPModel) and ours.text_encoder is None
    x = pixels()
    ids, mask = texts(pad_from={1: 4})
    with torch.no_grad():
        ref = hf(pixel_values=x, input_ids=vlmzoo_first(ids, BOS), attention_mask=mask).logits
        out = ours.decoder_logits(ours.encode_image(x), ids, mask)
    keep = mask.bool()
    assert max_abs_diff(out[keep], ref[keep]) <= TOL


def vlmzoo_first(ids: torch.Tensor, token: int) -> torch.Tensor:
    out = ids.clone()
    out[:, 0] = token
    return out


@pytest.mark.parametrize(
    ("beams", "eos_bias", "min_length"),
    [(1, 0.0, 0), (1, 1.5, 0), (1, 1.5, 7), (3, 0.0, 0), (3, 1.5, 0), (3, 1.5, 7), (4, 2.0, 0)],
    ids=["greedy", "greedy-eos", "greedy-eos-min", "beam", "beam-eos", "beam-eos-min", "beam4-early-stop"],
)
def test_caption_tokens_match_blip_generate(beams, eos_bias, min_length):
    hf = hf_blip("BlipForConditionalGeneration", eos_bias=eos_bias)
    ours = from_transformers(hf).eval()
    x, prompt = pixels(4), [5, 6, 7]
    hf_prompt = torch.tensor([[CLS, *prompt, SEP]]).repeat(4, 1)  # as BertTokenizer writes "a picture of"
    kwargs = dict(max_length=12, min_length=min_length, num_beams=beams)
    with torch.no_grad():
        ref = hf.generate(pixel_values=x, input_ids=hf_prompt, do_sample=False, **kwargs)
        out = ours.caption(x, prompt, **kwargs)
    assert ref[:, : 1 + len(prompt)].tolist() == [[BOS, *prompt]] * 4
    assert until_eos(out).tolist() == until_eos(ref[:, 1 + len(prompt) :]).tolist()
    assert len({tuple(row) for row in out.tolist()}) > 1, "every image gave the same caption: a blind test"
    if eos_bias:
        assert bool((out == SEP).any()), "the test meant some captions to end before max_length"
    if min_length:
        assert not bool((out[:, : min_length - 1 - len(prompt)] == SEP).any())


def test_lm_loss_matches_transformers_label_smoothed_loss():
    hf = hf_blip("BlipForConditionalGeneration", label_smoothing=0.1)
    ours = from_transformers(hf).eval()
    assert ours.config.label_smoothing == pytest.approx(0.1)
    x = pixels()
    ids, mask = texts(pad_from={0: 5})
    dec_ids = vlmzoo_first(ids, BOS)
    labels = dec_ids.masked_fill(dec_ids == PAD, -100)
    labels[:, :3] = -100
    with torch.no_grad():
        ref = hf(pixel_values=x, input_ids=dec_ids, attention_mask=mask, labels=labels).loss
        out = ours.lm_loss(ours.encode_image(x), ids, mask, prompt_length=3)
    assert abs(out.item() - ref.item()) <= TOL


# --- parity: retrieval ------------------------------------------------------------------------------
def test_itm_scores_match_blip_for_image_text_retrieval():
    hf = hf_blip("BlipForImageTextRetrieval")
    ours = from_transformers(hf).eval()
    x = pixels()
    ids, mask = texts(pad_from={2: 3})
    with torch.no_grad():
        ref_enc = hf(input_ids=vlmzoo_first(ids, ENC), pixel_values=x, attention_mask=mask).itm_score
        ref_cls = hf(input_ids=ids, pixel_values=x, attention_mask=mask).itm_score
        out_enc = ours.itm_score(x, ids, mask)  # BLIP's [ENC] in front (blip_retrieval.py)
        out_cls = ours.itm_score(x, ids, mask, replace_first=False)  # ids as given (blip_itm.py)
    assert max_abs_diff(out_enc, ref_enc.softmax(dim=-1)[:, 1]) <= TOL
    assert max_abs_diff(out_cls, ref_cls.softmax(dim=-1)[:, 1]) <= TOL


def test_itc_cosine_scores_match_blip_for_image_text_retrieval():
    hf = hf_blip("BlipForImageTextRetrieval")
    ours = from_transformers(hf).eval()
    x = pixels(2)
    ids, mask = texts(4, pad_from={1: 4, 3: 2})
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=x.repeat(2, 1, 1, 1), attention_mask=mask, use_itm_head=False)
        out = ours.itc_similarity(x, ids, mask)
    assert out.shape == (2, 4)
    assert max_abs_diff(out, ref.itm_score[:2]) <= TOL


# --- parity: VQA --------------------------------------------------------------------------------------
VQA_VISION = {
    **VISION,
    "hidden_size": 32,
    "intermediate_size": 64,
}  # transformers' decoder reads the image width


@pytest.mark.parametrize(("beams", "eos_bias"), [(1, 0.0), (1, 1.5), (3, 0.0), (3, 1.5)])
def test_vqa_answer_tokens_match_blip_for_question_answering(beams, eos_bias):
    hf = hf_blip("BlipForQuestionAnswering", vision=VQA_VISION, eos_bias=eos_bias)
    ours = from_transformers(hf).eval()
    assert ours.config.decoder_reads == "question"
    x = pixels()
    question, _ = texts(length=6)
    kwargs = dict(max_length=8, min_length=1, num_beams=beams)
    with torch.no_grad():
        ref = hf.generate(input_ids=vlmzoo_first(question, ENC), pixel_values=x, do_sample=False, **kwargs)
        out = ours.answer(x, question, **kwargs)
    assert ref[:, 0].tolist() == [BOS] * 3
    assert until_eos(out).tolist() == until_eos(ref[:, 1:]).tolist()
    assert len({tuple(row) for row in out.tolist()}) > 1, "every question gave the same answer: a blind test"
    if eos_bias:
        assert bool((out == SEP).any()), "the test meant some answers to end before max_length"


def test_vqa_converter_refuses_an_answer_decoder_that_cannot_read_the_question():
    hf = hf_blip("BlipForQuestionAnswering")  # image 48 wide, question 32 wide
    with pytest.raises(vlmzoo.ConversionError, match="question encoding"):
        from_transformers(hf)


# --- losses against the paper's equations -------------------------------------------------------------
def reference_itc(image_feat, text_feat, temp):
    """L_itc = 1/2 E[H(y_i2t, p_i2t) + H(y_t2i, p_t2i)], p = softmax(s / tau), one-hot y (in-batch)."""
    batch, total = image_feat.shape[0], 0.0
    for i in range(batch):
        s_i2t = torch.stack([image_feat[i] @ text_feat[j] for j in range(batch)]) / temp
        s_t2i = torch.stack([text_feat[i] @ image_feat[j] for j in range(batch)]) / temp
        total += -torch.log(torch.exp(s_i2t[i]) / torch.exp(s_i2t).sum())
        total += -torch.log(torch.exp(s_t2i[i]) / torch.exp(s_t2i).sum())
    return total / (2 * batch)


def test_itc_loss_matches_the_equation_and_clamps_the_temperature():
    model = vlmzoo.create_model("tiny-blip-retrieval")
    image_feat = F.normalize(torch.randn(4, 256), dim=-1)
    text_feat = F.normalize(torch.randn(4, 256), dim=-1)
    assert (
        abs(model.itc_loss(image_feat, text_feat).item() - reference_itc(image_feat, text_feat, 0.07).item())
        < 1e-5
    )
    with torch.no_grad():
        model.temp.fill_(3.0)
    loss = model.itc_loss(image_feat, text_feat)
    assert model.temp.item() == 0.5  # BLIP's clamp to [0.001, 0.5]
    assert abs(loss.item() - reference_itc(image_feat, text_feat, 0.5).item()) < 1e-5


def test_itc_loss_spreads_targets_over_texts_of_the_same_image():
    model = vlmzoo.create_model("tiny-blip-retrieval")
    image_feat = F.normalize(torch.randn(3, 256), dim=-1)
    text_feat = F.normalize(torch.randn(3, 256), dim=-1)
    ids = torch.tensor([7, 7, 9])
    sim = image_feat @ text_feat.t() / 0.07
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    ref = 0.5 * (
        -(sim.log_softmax(1) * target).sum(1).mean() - (sim.t().log_softmax(1) * target).sum(1).mean()
    )
    assert abs(model.itc_loss(image_feat, text_feat, ids).item() - ref.item()) < 1e-5


def test_hard_negatives_follow_the_similarities_never_the_positives_and_are_reproducible():
    sim = torch.randn(6, 6) * 3
    a = BLIPModel.hard_negatives(sim, torch.Generator().manual_seed(1))
    b = BLIPModel.hard_negatives(sim, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    draws_image, draws_text = [], []
    gen = torch.Generator().manual_seed(2)
    for _ in range(300):
        neg_image, neg_text = BLIPModel.hard_negatives(sim, gen)
        draws_image.append(neg_image)
        draws_text.append(neg_text)
    neg_image, neg_text = torch.stack(draws_image), torch.stack(draws_text)
    rows = torch.arange(6)
    assert not bool((neg_image == rows).any()) and not bool((neg_text == rows).any())
    # text 0's negative image is drawn in proportion to softmax(sim[:, 0]) over the other images
    expected = sim[:, 0].softmax(0).masked_fill(rows == 0, 0)
    expected = expected / expected.sum()
    observed = torch.bincount(neg_image[:, 0], minlength=6).float() / 300
    assert max_abs_diff(observed, expected) < 0.1
    same = BLIPModel.hard_negatives(sim, gen, image_ids=torch.tensor([0, 0, 1, 1, 2, 2]))[0]
    assert not bool((same // 2 == rows // 2).any())


def test_itm_loss_matches_cross_entropy_over_positives_and_the_sampled_negatives():
    model = vlmzoo.create_model("tiny-blip-retrieval").eval()
    x = pixels(4)
    ids, mask = texts(4, pad_from={1: 5})
    image_tokens = model.encode_image(x)
    sim = torch.randn(4, 4)
    with torch.no_grad():
        loss = model.itm_loss(image_tokens, ids, mask, sim, torch.Generator().manual_seed(3))
        # the reference draws the same negatives from the same generator state
        gen = torch.Generator().manual_seed(3)
        eye = torch.eye(4, dtype=torch.bool)
        neg_image = torch.multinomial(sim.t().softmax(1).masked_fill(eye, 0), 1, generator=gen).squeeze(1)
        neg_text = torch.multinomial(sim.softmax(1).masked_fill(eye, 0), 1, generator=gen).squeeze(1)
        terms = []
        for i in range(4):
            pairs = [(i, i, 1), (neg_image[i], i, 0), (i, neg_text[i], 0)]  # (image, text, label)
            for image, text, label in pairs:
                logits = model.itm_logits(image_tokens[image][None], ids[text][None], mask[text][None])
                terms.append(-logits.log_softmax(-1)[0, label])
    ref = torch.stack(terms).mean()
    assert abs(loss.item() - ref.item()) < 1e-5


def reference_lm(logits, ids, skip, eps):
    """Label-smoothed next-token NLL (Szegedy et al. 2016): (1 - eps) * -log p(y) + eps * mean_v -log p(v),
    averaged over the scored positions (not padding, not the first ``skip``)."""
    terms = []
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if t < skip or ids[b, t] == PAD:
                continue
            logp = logits[b, t - 1].log_softmax(-1)
            terms.append((1 - eps) * -logp[ids[b, t]] + eps * -logp.mean())
    return torch.stack(terms).mean()


def test_lm_loss_matches_label_smoothed_nll_masked_on_the_prompt():
    model = vlmzoo.create_model("tiny-blip-caption").eval()
    assert model.config.prompt_length == 4 and model.config.label_smoothing == 0.1
    x = pixels()
    ids, mask = texts(length=9, pad_from={2: 6})
    with torch.no_grad():
        tokens = model.encode_image(x)
        loss = model.lm_loss(tokens, ids, mask)  # default: [DEC] + the 3 prompt tokens not scored
        logits = model.decoder_logits(tokens, ids, mask)
    assert abs(loss.item() - reference_lm(logits, ids, 4, 0.1).item()) < 1e-5


def test_answer_loss_weights_each_answers_summed_loss_and_divides_by_the_images():
    model = vlmzoo.create_model("tiny-blip-vqa").eval()
    x = pixels(2)
    question, q_mask = texts(2, length=5, pad_from={1: 3})
    answers, a_mask = texts(3, length=4, pad_from={2: 2})
    weights = torch.tensor([0.7, 0.3, 1.0])
    with torch.no_grad():
        loss = model.answer_loss(x, question, q_mask, answers, a_mask, [2, 1], weights)
        q = model.encode_question(model.encode_image(x), question, q_mask)
        total = 0.0
        for a, qi in enumerate([0, 0, 1]):
            ids = vlmzoo_first(answers[a : a + 1], BOS)
            logits = model.text_decoder(
                ids, a_mask[a : a + 1], context=q[qi : qi + 1], context_mask=q_mask[qi : qi + 1], causal=True
            ).logits
            n = int((ids[0, 1:] != PAD).sum())
            total += weights[a] * reference_lm(logits, ids, 0, 0.1) * n
    assert abs(loss.item() - (total / 2).item()) < 1e-5


def test_pretraining_forward_sums_itc_itm_and_lm():
    model = vlmzoo.create_model("tiny-blip")
    x = pixels(4)
    ids, mask = texts(4, pad_from={0: 5})
    out = model(x, ids, mask, generator=torch.Generator().manual_seed(0))
    assert out.itc is not None and out.itm is not None and out.lm is not None
    assert abs(out.loss.item() - (out.itc + out.itm + out.lm).item()) < 1e-6
    out.loss.backward()
    assert model.temp.grad is not None and model.itm_head.weight.grad is not None


# --- the parts ----------------------------------------------------------------------------------------
def test_decoding_with_the_kv_cache_equals_recomputing_the_whole_prefix():
    model = vlmzoo.create_model("tiny-blip-caption").eval()
    x = pixels(2)
    with torch.no_grad():
        out = model.caption(x, max_length=10)
        tokens = model.encode_image(x)
        ids = torch.tensor([[BOS, 5, 6, 7]]).repeat(2, 1)
        while ids.shape[1] < 10:
            logits = model.text_decoder(ids, context=tokens, causal=True).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert until_eos(out).tolist() == until_eos(ids[:, 4:]).tolist()


def test_cache_positions_continue_and_logits_match_a_full_pass():
    decoder = MEDText(TINY_MED.replace(lm_head=True)).eval()
    ids, context = torch.randint(3, 100, (2, 6)), torch.randn(2, 5, 48)
    with torch.no_grad():
        full = decoder(ids, context=context, causal=True).logits
        cache = MEDCache.empty(2)
        parts = [decoder(ids[:, :4], context=context, causal=True, cache=cache).logits]
        parts += [
            decoder(ids[:, t : t + 1], context=context, causal=True, cache=cache).logits for t in (4, 5)
        ]
    assert cache.length == 6
    assert max_abs_diff(torch.cat(parts, dim=1), full) <= TOL


def test_text_mode_skips_cross_attention():
    model = vlmzoo.create_model("tiny-blip-retrieval").eval()
    ids, mask = texts()
    with torch.no_grad():
        before = model.text_embeds(ids, mask)
        for layer in model.text_encoder.layers:
            layer.cross_attn.kv.weight.normal_()
        after = model.text_embeds(ids, mask)
        grounded = model.text_encoder(ids, mask, context=model.encode_image(pixels())).tokens
    assert torch.equal(before, after)
    assert not torch.allclose(grounded, model.text_encoder(ids, mask).tokens)


def test_pretraining_decoder_shares_everything_but_self_attention_with_the_encoder():
    model = vlmzoo.create_model("tiny-blip")
    enc, dec = model.text_encoder, model.text_decoder
    assert dec.word_embeddings is enc.word_embeddings and dec.layernorm is enc.layernorm
    assert dec.lm_head.decoder.weight is enc.word_embeddings.weight
    for e, d in zip(enc.layers, dec.layers, strict=True):
        assert d.cross_attn is e.cross_attn and d.mlp is e.mlp and d.mlp_norm is e.mlp_norm
        assert d.attn is not e.attn and d.attn_norm is not e.attn_norm
    own = sum(
        p.numel() for layer in dec.layers for p in (*layer.attn.parameters(), *layer.attn_norm.parameters())
    )
    head = sum(p.numel() for n, p in dec.lm_head.named_parameters() if n != "decoder.weight")
    untied = vlmzoo.create_model("tiny-blip", tie_decoder=False)
    assert count(model) == count(untied) - count(untied.text_decoder) + own + head


def test_tied_model_saves_and_loads_with_its_ties(tmp_path):
    model = vlmzoo.create_model("tiny-blip").eval()
    model.save_pretrained(tmp_path / "blip")
    loaded = vlmzoo.load(tmp_path / "blip").eval()
    assert loaded.text_decoder.layers[0].mlp is loaded.text_encoder.layers[0].mlp
    assert loaded.text_decoder.lm_head.decoder.weight is loaded.text_encoder.word_embeddings.weight
    x, (ids, mask) = pixels(2), texts(2)
    with torch.no_grad():
        assert torch.equal(model.itm_score(x, ids, mask), loaded.itm_score(x, ids, mask))
        assert torch.equal(model.caption(x, max_length=8), loaded.caption(x, max_length=8))


@pytest.mark.parametrize("name", ["tiny-blip", "tiny-blip-caption", "tiny-blip-retrieval", "tiny-blip-vqa"])
def test_tiny_presets_build_from_the_registry(name):
    model = vlmzoo.create_model(name)
    assert isinstance(model, BLIPModel) and set(vlmzoo.list_models("tiny-blip*")) >= {name}
    assert model.wrap_units()  # the ViT blocks and MED layers are the checkpointing / FSDP units


def test_methods_a_model_lacks_say_which_part_is_missing():
    caption = vlmzoo.create_model("tiny-blip-caption")
    with pytest.raises(InputError, match="text_encoder"):
        caption.itm_score(pixels(1), *texts(1))
    with pytest.raises(InputError, match="VQA"):
        vlmzoo.create_model("tiny-blip-vqa").caption(pixels(1))
    with pytest.raises(InputError, match="temperature"):
        vlmzoo.create_model("tiny-blip-retrieval", temperature=None).itc_loss(
            torch.ones(2, 4), torch.ones(2, 4)
        )


def test_med_saves_and_loads_on_its_own_with_the_tied_lm_head(tmp_path):
    decoder = MEDText(TINY_MED.replace(lm_head=True)).eval()
    loaded = vlmzoo.load(decoder.save_pretrained(tmp_path / "med"))
    assert isinstance(loaded, MEDText) and loaded.lm_head.decoder.weight is loaded.word_embeddings.weight
    ids = torch.randint(3, 100, (2, 5))
    assert torch.equal(
        decoder(ids, context=torch.ones(2, 3, 48)).logits, loaded(ids, context=torch.ones(2, 3, 48)).logits
    )


# --- parameter counts: presets vs the released transformers models (all on the meta device) -----------
def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


BASE_VISION: dict = {}  # transformers' BlipVisionConfig defaults: ViT-B/16 at 384
LARGE_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24)
RELEASES = {  # preset: (transformers class, vision_config of the released config.json)
    "blip-base-caption": ("BlipForConditionalGeneration", BASE_VISION),
    "blip-large-caption": ("BlipForConditionalGeneration", LARGE_VISION),
    "blip-base-retrieval": ("BlipForImageTextRetrieval", BASE_VISION),
    "blip-large-retrieval": ("BlipForImageTextRetrieval", LARGE_VISION),
    "blip-base-vqa": ("BlipForQuestionAnswering", BASE_VISION),
}


def released(cls_name: str, vision: dict) -> torch.nn.Module:
    config = transformers.BlipConfig(text_config={"num_attention_heads": 12}, vision_config=vision)
    return getattr(transformers, cls_name)(config)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_preset_parameter_count_matches_the_released_transformers_model(name):
    with torch.device("meta"):
        ours = vlmzoo.create_model(name)
        peer = released(*RELEASES[name])
    assert count(ours) == count(peer)


@pytest.mark.parametrize(("name", "vision"), [("blip-base", BASE_VISION), ("blip-large", LARGE_VISION)])
def test_pretraining_preset_is_retrieval_plus_temperature_plus_the_decoders_own_parts(name, vision):
    with torch.device("meta"):
        ours = vlmzoo.create_model(name)
        retrieval = released("BlipForImageTextRetrieval", {**vision, "image_size": 224})
        captioner = released("BlipForConditionalGeneration", {**vision, "image_size": 224}).text_decoder
    own = sum(count(layer.attention) for layer in captioner.bert.encoder.layer)
    head = count(captioner.cls.predictions.transform) + captioner.cls.predictions.bias.numel()
    assert count(ours) == count(retrieval) + 1 + own + head
