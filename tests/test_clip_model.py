"""The CLIP model: contrastive loss and zero-shot classification against plain references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff

import vlmzoo
from vlmzoo.errors import InputError
from vlmzoo.models import SELECTED_TEMPLATES, ZeroShotClassifier, contrastive_loss


def char_tokenizer(texts: list[str], length: int = 16, vocab: int = 1000) -> torch.Tensor:
    """Bytes as ids, then the EOT id (vocab - 1, the largest: OpenAI's argmax rule), zero padded."""
    rows = []
    for t in texts:
        ids = [*(b % (vocab - 2) + 1 for b in t.encode()[: length - 1]), vocab - 1]
        rows.append(ids + [0] * (length - len(ids)))
    return torch.tensor(rows)


def test_contrastive_loss_is_mean_of_both_directions():
    logits = torch.randn(5, 5)
    manual = []
    for m in (logits, logits.t()):
        log_p = m.log_softmax(dim=1)
        manual.append(-torch.diagonal(log_p).mean())
    assert max_abs_diff(contrastive_loss(logits), (manual[0] + manual[1]) / 2) <= 1e-6


def test_contrastive_loss_needs_square_logits():
    with pytest.raises(InputError, match="square"):
        contrastive_loss(torch.randn(4, 3))


def test_logits_are_scaled_cosine_similarities():
    model = vlmzoo.create_model("clip-tiny").eval()
    x, ids = torch.randn(3, 3, 32, 32), char_tokenizer(["a", "bb", "ccc"])
    with torch.no_grad():
        out = model(x, ids)
        img = F.normalize(model.visual(x).embeds, dim=-1)
        txt = F.normalize(model.text(ids).embeds, dim=-1)
    assert max_abs_diff(out.logits_per_image, model.logit_scale.exp() * img @ txt.t()) <= 1e-5
    assert torch.equal(out.logits_per_text, out.logits_per_image.t())


def test_zero_shot_weights_average_normalised_template_embeddings():
    model = vlmzoo.create_model("clip-tiny").eval()
    classes, templates = ["circle", "square"], SELECTED_TEMPLATES[:3]
    clf = ZeroShotClassifier.from_classnames(model, char_tokenizer, classes, templates)
    assert clf.weights.shape == (32, 2)
    with torch.no_grad():
        emb = model.encode_text(char_tokenizer([t.format("square") for t in templates]), normalize=True)
    assert max_abs_diff(clf.weights[:, 1], F.normalize(emb.mean(0), dim=-1)) <= 1e-6
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ clf.weights
        assert max_abs_diff(clf(x), expected) <= 1e-6


def test_zero_shot_template_without_placeholder_is_rejected():
    model = vlmzoo.create_model("clip-tiny")
    with pytest.raises(InputError, match="placeholder"):
        ZeroShotClassifier.from_classnames(model, char_tokenizer, ["cat"], ["a photo of a cat"])


def test_text_longer_than_context_is_rejected():
    model = vlmzoo.create_model("clip-tiny")
    with pytest.raises(InputError, match="exceeds the context length 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_token_ids_outside_vocabulary_are_rejected():
    model = vlmzoo.create_model("clip-tiny")
    with pytest.raises(InputError, match=r"token ids must be in \[0, 1000\)"):
        model.encode_text(torch.full((1, 4), 1000))


def test_left_padded_text_stays_finite():
    model = vlmzoo.create_model("clip-tiny").eval()
    ids = char_tokenizer(["hi"])
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:, :13]], dim=1)
    mask = (ids != 0).long()
    assert torch.isfinite(model.text(ids, mask).tokens).all()
