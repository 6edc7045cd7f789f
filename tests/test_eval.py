"""Evaluation metrics against plain references."""

from __future__ import annotations

import pytest
import torch

from vlmzoo.eval import exact_match, multiple_choice, normalize_answer, retrieval_recall


def test_answers_are_normalised_before_matching():
    assert normalize_answer("The Red!") == "red"
    assert exact_match(["The red.", "blue", "a circle"], ["red", "green", "circle"]) == pytest.approx(2 / 3)


def test_exact_match_needs_one_reference_per_prediction():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


def test_retrieval_recall_matches_a_brute_force_ranking():
    torch.manual_seed(0)
    img, txt = torch.randn(12, 8), torch.randn(12, 8)
    txt[:6] = img[:6] + 0.01 * torch.randn(6, 8)  # the first six pairs are near-duplicates
    out = retrieval_recall(img, txt, ks=(1, 5))
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).t()
    for k in (1, 5):
        hits = [i in sim[i].topk(k).indices.tolist() for i in range(12)]
        assert out[f"image_to_text_R@{k}"] == pytest.approx(sum(hits) / 12)
    assert out["image_to_text_R@1"] >= 0.5


def test_multiple_choice_picks_the_highest_likelihood_continuation(tmp_path):
    from vlmzoo.processing.tokenizer import train_sentencepiece
    from vlmzoo.recipes.shapes import build_model

    tok = train_sentencepiece(["what color is it? red blue green"], vocab_size=40, cache_dir=tmp_path)
    model = build_model(tok, image_size=32).eval()
    pixels = torch.randn(1, 3, 32, 32)
    choices = ["red", "blue", "green"]
    picked = multiple_choice(model, tok, pixels, "<image> what color is it?", choices)
    scores = []
    for choice in choices:  # plain reference: one sequence at a time
        ids = [tok.bos_id, *tok.encode("<image> what color is it?")]
        answer = [*tok.encode(choice), tok.eos_id]
        full = torch.tensor([ids + answer])
        with torch.no_grad():
            out = model(pixels, full)
        logp = out.logits[0, :-1].log_softmax(-1)
        start = out.logits.shape[1] - len(answer)
        scores.append(sum(logp[start - 1 + j, t].item() for j, t in enumerate(answer)))
    assert picked == max(range(3), key=scores.__getitem__)


def test_multiple_choice_conditions_every_choice_on_all_of_the_samples_images(tmp_path):
    from vlmzoo.processing.tokenizer import train_sentencepiece
    from vlmzoo.recipes.shapes import build_model

    tok = train_sentencepiece(["which is red? left right both"], vocab_size=40, cache_dir=tmp_path)
    model = build_model(tok, image_size=32).eval()
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    prompt, choices = "<image> <image> which is red?", ["left", "right", "both"]

    def scores(images: torch.Tensor) -> list[float]:
        out = []
        for choice in choices:  # plain reference: one sequence at a time, both images
            ids = [tok.bos_id, *tok.encode(prompt)]
            answer = [*tok.encode(choice), tok.eos_id]
            with torch.no_grad():
                logits = model(images, torch.tensor([ids + answer])).logits
            logp, start = logits[0, :-1].log_softmax(-1), logits.shape[1] - len(answer)
            out.append(sum(logp[start - 1 + j, t].item() for j, t in enumerate(answer)))
        return out

    reference = scores(pixels)
    assert multiple_choice(model, tok, pixels, prompt, choices) == max(range(3), key=reference.__getitem__)
    assert reference != scores(torch.stack([pixels[0], pixels[0]]))  # the second image matters


def test_multiple_choice_refuses_images_that_do_not_match_the_placeholders(tmp_path):
    from vlmzoo.errors import InputError
    from vlmzoo.processing.tokenizer import train_sentencepiece
    from vlmzoo.recipes.shapes import build_model

    tok = train_sentencepiece(["what color is it? red blue"], vocab_size=40, cache_dir=tmp_path)
    model = build_model(tok, image_size=32).eval()
    with pytest.raises(InputError, match="1 image placeholders but 2 images"):
        multiple_choice(model, tok, torch.randn(2, 3, 32, 32), "<image> what color is it?", ["red", "blue"])
