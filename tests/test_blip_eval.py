"""BLIP evaluation: the retrieval protocol against plain references (train_retrieval.py's loops,
written out), and the processor that feeds it against salesforce/BLIP's transform and transformers'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_blip import pixels, texts

import vlmzoo
from vlmzoo.errors import InputError
from vlmzoo.eval.blip import (
    OUTSIDE_TOP_K,
    encode_images,
    encode_texts,
    evaluate_retrieval,
    itm_rerank,
    itm_scores,
    recall_at_k,
)
from vlmzoo.eval.clip import retrieval_recall
from vlmzoo.processing.blip_processor import BLIPProcessor, blip_processor_config, tiny_bert_tokenizer
from vlmzoo.processing.image import CLIP_STD


def tiny_retrieval() -> torch.nn.Module:
    model = vlmzoo.create_model("tiny-blip-retrieval").eval()
    with torch.no_grad():  # larger weights than BERT's init, so that images and texts differ
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.2)
    return model


def dataset(n_img: int = 6, per_image: int = 2, seed: int = 0):
    """Images, their captions (``per_image`` each, right-padded) and each caption's image."""
    torch.manual_seed(seed)
    x = pixels(n_img)
    n_txt = n_img * per_image
    ids, mask = texts(n_txt, length=7, pad_from={r: 3 + r % 4 for r in range(1, n_txt, 3)})
    return x, ids, mask, torch.arange(n_img).repeat_interleave(per_image)


# --- a case whose answer is known ------------------------------------------------------------------
def make_text_embeddings_those_of_their_images_(model, x, ids, mask, owner) -> None:
    """Solve ``text_proj`` so that each caption's ITC embedding is its image's (exact: the 12
    text features are linearly independent in 32 dimensions), and zero the ITM head."""
    with torch.no_grad():
        targets = model.vision_proj(model.encode_image(x)[:, 0])[owner]  # [N_txt, D]
        features = model.text_encoder(ids, mask).tokens[:, 0]  # [N_txt, 32]
        model.text_proj.bias.zero_()
        model.text_proj.weight.copy_((torch.linalg.pinv(features) @ targets).t())
        model.itm_head.weight.zero_()
        model.itm_head.bias.zero_()


@pytest.mark.parametrize("k_test", [None, 3, 256])
def test_retrieval_is_perfect_when_each_caption_embeds_as_its_image(k_test):
    model = tiny_retrieval()
    x, ids, mask, owner = dataset()
    make_text_embeddings_those_of_their_images_(model, x, ids, mask, owner)
    result = evaluate_retrieval(model, x, ids, mask, owner, k_test=k_test)
    assert all(v == 1.0 for v in result.metrics.values()), result.metrics
    assert torch.allclose(result.sims[owner, torch.arange(12)], torch.ones(12), atol=1e-5)


def test_retrieval_metrics_do_not_depend_on_the_order_of_images_and_texts():
    model = tiny_retrieval()
    x, ids, mask, owner = dataset()
    base = evaluate_retrieval(model, x, ids, mask, owner, k_test=4)
    assert 0.0 < base.metrics["R_mean"] < 1.0, "a random model should be neither blind nor perfect"
    p_img, p_txt = torch.randperm(6), torch.randperm(12)
    new_owner = torch.argsort(p_img)[owner[p_txt]]  # image p_img[j] is now image j
    permuted = evaluate_retrieval(model, x[p_img], ids[p_txt], mask[p_txt], new_owner, k_test=4)
    assert permuted.metrics == pytest.approx(base.metrics)
    assert torch.allclose(permuted.i2t, base.i2t[p_img][:, p_txt], atol=1e-5)
    assert torch.allclose(permuted.t2i, base.t2i[p_txt][:, p_img], atol=1e-5)


# --- the re-ranking against train_retrieval.py's loops ---------------------------------------------
def reference_rerank(model, sims, image_tokens, ids, mask, k_test):
    """train_retrieval.py ``evaluation``: one query at a time, ``[ENC]`` first, raw match logit + sim
    (``k_test`` capped at the number of candidates)."""
    n_img, n_txt = sims.shape
    enc_ids = ids.clone()
    enc_ids[:, 0] = model.config.enc_token_id
    i2t = torch.full((n_img, n_txt), -100.0)
    t2i = torch.full((n_txt, n_img), -100.0)
    with torch.no_grad():
        k = min(k_test, n_txt)
        for i in range(n_img):
            top_sim, top_idx = sims[i].topk(k)
            out = model.text_encoder(enc_ids[top_idx], mask[top_idx], context=image_tokens[i].repeat(k, 1, 1))
            i2t[i, top_idx] = model.itm_head(out.tokens[:, 0])[:, 1] + top_sim
        k = min(k_test, n_img)
        for t in range(n_txt):
            top_sim, top_idx = sims[:, t].topk(k)
            out = model.text_encoder(
                enc_ids[t].repeat(k, 1), mask[t].repeat(k, 1), context=image_tokens[top_idx]
            )
            t2i[t, top_idx] = model.itm_head(out.tokens[:, 0])[:, 1] + top_sim
    return i2t, t2i


@pytest.mark.parametrize(
    ("k_test", "batch_size"), [(3, 5), (6, 128), (20, 7)], ids=["k3", "k6", "k-beyond-n"]
)
def test_itm_rerank_equals_the_per_query_loop_of_train_retrieval(k_test, batch_size):
    model = tiny_retrieval()
    x, ids, mask, _ = dataset()
    features = encode_images(model, x, batch_size=4)
    sims = features.embeds @ encode_texts(model, ids, mask, batch_size=5).t()
    i2t, t2i = itm_rerank(model, sims, features.tokens, ids, mask, k_test=k_test, batch_size=batch_size)
    ref_i2t, ref_t2i = reference_rerank(model, sims, features.tokens, ids, mask, k_test)
    assert (i2t - ref_i2t).abs().max() <= 1e-5 and (t2i - ref_t2i).abs().max() <= 1e-5
    assert int((i2t != OUTSIDE_TOP_K).sum(dim=1).min()) == min(k_test, 12)


def reference_recall(i2t, t2i, owner, k):
    """train_retrieval.py ``itm_eval`` with numpy: best rank of an image's texts; rank of a text's image."""
    img2txt = [np.where(owner.numpy() == i)[0] for i in range(i2t.shape[0])]
    ranks_i = [
        min(np.where(np.argsort(s)[::-1] == t)[0][0] for t in img2txt[i]) for i, s in enumerate(i2t.numpy())
    ]
    ranks_t = [np.where(np.argsort(s)[::-1] == owner[j].item())[0][0] for j, s in enumerate(t2i.numpy())]
    return float(np.mean(np.array(ranks_i) < k)), float(np.mean(np.array(ranks_t) < k))


def test_recall_at_k_counts_the_best_caption_of_an_image_as_itm_eval_does():
    torch.manual_seed(3)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    i2t, t2i = torch.randn(5, 10), torch.randn(10, 5)
    out = recall_at_k(i2t, t2i, owner, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert (out[f"image_to_text_R@{k}"], out[f"text_to_image_R@{k}"]) == pytest.approx(
            reference_recall(i2t, t2i, owner, k)
        )
    assert out["R_mean"] == pytest.approx(np.mean([v for key, v in out.items() if key != "R_mean"]))


def test_a_true_pair_left_out_of_the_reranked_top_k_is_never_found():
    i2t = torch.full((6, 6), OUTSIDE_TOP_K)
    i2t[:, 0] = 1.0  # only text 0 was re-ranked, for every image
    out = recall_at_k(i2t, i2t.t().contiguous(), torch.arange(6), ks=(1, 3))
    # image 0 finds its text; the others' texts tie at -100 with four more, behind text 0: rank 5
    assert out["image_to_text_R@1"] == out["image_to_text_R@3"] == pytest.approx(1 / 6)
    assert out["text_to_image_R@3"] == 0.0  # every text ties its own image with all five others


def test_itc_only_retrieval_equals_the_clip_recall_of_the_same_embeddings():
    model = tiny_retrieval()
    x, ids, mask, _ = dataset(per_image=1)
    result = evaluate_retrieval(model, x, ids, mask, torch.arange(6), k_test=None, ks=(1, 5))
    with torch.no_grad():
        ref = retrieval_recall(
            model.image_embeds(model.encode_image(x)), model.text_embeds(ids, mask), ks=(1, 5)
        )
    assert {k: v for k, v in result.metrics.items() if k != "R_mean"} == pytest.approx(ref)


# --- ITM pair scores, batching, modes --------------------------------------------------------------
def test_itm_scores_in_batches_equal_the_models_itm_score():
    model = tiny_retrieval()
    x, ids, mask, _ = dataset(5, per_image=1)
    with torch.no_grad():
        ref = model.itm_score(x, ids, mask)
    assert (itm_scores(model, x, ids, mask, batch_size=2) - ref).abs().max() <= 1e-6


def test_images_may_come_as_batches_of_a_loader_and_the_models_mode_is_restored():
    model = tiny_retrieval().train()
    x = pixels(5)
    whole = encode_images(model, x, batch_size=64)
    loader = encode_images(model, [x[:2], x[2:]], progress=True)
    assert model.training
    assert torch.allclose(whole.tokens, loader.tokens, atol=1e-6) and whole.tokens.device.type == "cpu"
    assert torch.allclose(whole.embeds, loader.embeds, atol=1e-6)


def test_bad_arguments_are_refused_with_what_was_given():
    model = tiny_retrieval()
    x, ids, mask, owner = dataset()
    with pytest.raises(InputError, match="k_test must be a positive integer"):
        evaluate_retrieval(model, x, ids, mask, owner, k_test=0)
    with pytest.raises(InputError, match="image indices outside"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(3, 2), [0, 1, 2])
    with pytest.raises(InputError, match="at least one text"):
        recall_at_k(torch.zeros(2, 2), torch.zeros(2, 2), [0, 0])
    with pytest.raises(InputError, match="5 images, 4 texts"):
        itm_scores(model, pixels(5), ids[:4])
    with pytest.raises(InputError, match="needs vision_proj"):
        evaluate_retrieval(vlmzoo.create_model("tiny-blip-caption"), x, ids, mask, owner)


# --- the processor: what an evaluation feeds the model ---------------------------------------------
WORDS = ["a", "picture", "of", "dog", "cat", "on", "the", "beach", "red", "ball", "what", "is", "it", "?"]


def tiny_processor(tmp_path, **overrides):
    from vlmzoo.processing.blip_processor import BLIPProcessorConfig, blip_image_recipe

    tokenizer = tiny_bert_tokenizer(WORDS, tmp_path / "vocab")
    config = BLIPProcessorConfig(image=blip_image_recipe(64), bos_token_id=None, enc_token_id=None)
    return BLIPProcessor(config.replace(**overrides), tokenizer)


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    pixels_ = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels_).convert(mode)


SIZES = [(300, 200), (200, 333), (64, 64), (17, 9), (400, 31)]


@pytest.mark.parametrize("size", SIZES)
def test_pixels_are_blips_transform_test_and_transformers_blip_image_processor_pil(tmp_path, size):
    T = pytest.importorskip("torchvision.transforms")
    transformers = pytest.importorskip("transformers")
    image = photo(*size)
    ours = tiny_processor(tmp_path).pixel_values(image)
    # salesforce/BLIP data/__init__.py transform_test, at 64 px
    original = T.Compose(
        [
            T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )(image)[None]
    hf = transformers.BlipImageProcessorPil(size={"height": 64, "width": 64})(image, return_tensors="pt")
    assert ours.shape == (1, 3, 64, 64)
    assert (ours - original).abs().max() <= 1e-5
    assert (ours - hf["pixel_values"]).abs().max() <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_transformers_torchvision_blip_image_processor_differs_by_uint8_rounding_only(tmp_path, size):
    """``BlipImageProcessor`` resizes the uint8 tensor with torchvision rather than Pillow: a few
    pixels land one or two uint8 levels away (measured at 64 and 384 px: max 2 levels, mean
    below 1e-4 in normalised units; nothing for an image already at the size)."""
    transformers = pytest.importorskip("transformers")
    image = photo(*size)
    ours = tiny_processor(tmp_path).pixel_values(image)
    hf = transformers.BlipImageProcessor(size={"height": 64, "width": 64})(image, return_tensors="pt")
    diff = (ours - hf["pixel_values"]).abs()
    level = 1 / (255 * min(CLIP_STD))  # one uint8 step after normalisation
    assert diff.max() <= (1e-5 if size == (64, 64) else 2 * level + 1e-5) and diff.mean() <= 2e-4


def test_text_is_cls_words_sep_padded_right_and_truncated(tmp_path):
    processor = tiny_processor(tmp_path, max_length=6)
    tok = processor.tokenizer
    assert (tok.convert_tokens_to_ids("[DEC]"), tok.convert_tokens_to_ids("[ENC]")) == (126, 127)
    assert tok.bos_token == "[DEC]" and tok.pad_token_id == 0
    out = processor.text(["A dog on the beach", "a cat", "what is it on the red ball?"])
    dog, cat, long = out["input_ids"].tolist()
    ids = tok.convert_tokens_to_ids
    assert dog == [101, *ids(["a", "dog", "on", "the"]), 102]  # truncated to 6 with [SEP] kept
    assert cat == [101, ids("a"), ids("cat"), 102, 0, 0]
    assert out["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0] and long[-1] == 102
    fixed = tiny_processor(tmp_path, max_length=8, padding="max_length").text("a cat")
    assert fixed["input_ids"].shape == (1, 8)


def test_text_equals_transformers_blip_processor_with_the_same_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    processor = tiny_processor(tmp_path, max_length=35)
    hf = transformers.BlipProcessor(transformers.BlipImageProcessorPil(), processor.tokenizer)
    texts_ = ["a dog on the beach", "a red ball"]
    ref = hf(text=texts_, padding="longest", truncation=True, max_length=35, return_tensors="pt")
    out = processor.text(texts_)
    assert torch.equal(out["input_ids"], ref["input_ids"]) and torch.equal(
        out["attention_mask"], ref["attention_mask"]
    )


def test_captions_decode_as_blip_does_with_and_without_the_prompt(tmp_path):
    processor = tiny_processor(tmp_path)
    tok = processor.tokenizer
    prompt = processor.prompt_ids
    assert prompt == tuple(tok.convert_tokens_to_ids(["a", "picture", "of"]))
    caption = tok.convert_tokens_to_ids(["a", "dog", "on", "the", "beach"])
    # BLIPModel.caption: the ids after the prompt, [SEP] then padding when a row ends early
    assert processor.decode([*caption, 102, 0, 0]) == "a dog on the beach"
    # transformers' generate: [DEC] + prompt + caption + [SEP]; blip.py cuts len(prompt) characters
    assert processor.batch_decode(torch.tensor([[126, *prompt, *caption, 102]]), strip_prompt=True) == [
        "a dog on the beach"
    ]


def test_caption_and_question_cleaning_follow_blips_data_utils():
    from vlmzoo.processing.blip_processor import pre_caption, pre_question

    assert pre_caption("A Dog (brown)  on the beach!!\n", max_words=4) == "a dog brown on"
    assert pre_question("What is it?  ") == "what is it?"
    assert pre_question("Is it 'red'.") == "is it 'red'"


def test_processor_saves_as_json_and_tokenizer_files_and_loads_back(tmp_path):
    from vlmzoo.processing.processor import saved_config_class

    processor = tiny_processor(tmp_path, prompt="")
    folder = processor.save_pretrained(tmp_path / "saved")
    names = sorted(p.name for p in folder.iterdir())
    assert "vlmzoo_processor.json" in names and "tokenizer_config.json" in names
    assert not any(n.endswith((".pkl", ".bin", ".pt")) for n in names)
    assert saved_config_class(folder) == "BLIPProcessorConfig"  # what create_processor dispatches on
    loaded = BLIPProcessor.from_pretrained(folder)
    assert loaded.config == processor.config
    assert torch.equal(loaded.text("a dog")["input_ids"], processor.text("a dog")["input_ids"])
    assert loaded.tokenizer.convert_tokens_to_ids("[ENC]") == 127


def test_processor_file_of_another_family_is_refused(tmp_path):
    from vlmzoo.processing.processor import Processor
    from vlmzoo.processing.processor_presets import clip_encoder

    folder = Processor(clip_encoder(32)).save_pretrained(tmp_path / "clip")
    with pytest.raises(vlmzoo.ConfigError, match="holds a ProcessorConfig, not a BLIPProcessorConfig"):
        BLIPProcessor.from_pretrained(folder)


def test_presets_give_their_image_size_token_ids_and_prompt(tmp_path):
    caption = blip_processor_config("blip-base-caption")
    assert (caption.image.size, caption.prompt) == (384, "a picture of ")
    assert (caption.bos_token_id, caption.enc_token_id, caption.tokenizer) == (
        30522,
        30523,
        "bert-base-uncased",
    )
    assert (
        blip_processor_config("blip-base").image.size == 224
        and blip_processor_config("blip-base").prompt == ""
    )
    assert blip_processor_config(vlmzoo.create_model("tiny-blip-vqa")).prompt == ""
    with pytest.raises(vlmzoo.ConfigError, match="needs a BLIP model"):
        blip_processor_config("tiny-blip2")
    tiny = BLIPProcessor.for_model("tiny-blip-caption", tiny_bert_tokenizer(WORDS, tmp_path))
    assert tiny.pixel_values(photo(40, 50)).shape == (1, 3, 32, 32)
    with pytest.raises(vlmzoo.ConfigError, match=r"\[DEC\] as token 30522 but the tokenizer has it as 126"):
        BLIPProcessor.for_model("blip-base-caption", tiny_bert_tokenizer(WORDS, tmp_path))


def test_processor_feeds_a_tiny_captioner_and_matcher(tmp_path):
    tokenizer = tiny_bert_tokenizer(WORDS, tmp_path)
    captioner = vlmzoo.create_model("tiny-blip-caption").eval()
    processor = BLIPProcessor.for_model(captioner, tokenizer)
    x = processor.pixel_values([photo(50, 40), photo(30, 60, seed=1)])
    ids = captioner.caption(x, processor.prompt_ids, max_length=12)
    assert all(isinstance(c, str) for c in processor.batch_decode(ids))
    matcher = vlmzoo.create_model("tiny-blip-retrieval").eval()
    text = processor.text(["a dog on the beach", "a red ball"])
    scores = itm_scores(matcher, x, text["input_ids"], text["attention_mask"])
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())
