"""The synthetic data set and the on-the-fly tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from vlmzoo.data import SyntheticDataset
from vlmzoo.processing.tokenizer import train_sentencepiece


@pytest.mark.parametrize("variant", ["shapes", "text", "chart"])
def test_items_are_a_pure_function_of_variant_split_seed_and_index(variant):
    a, b = SyntheticDataset(variant, size=20, seed=3), SyntheticDataset(variant, size=20, seed=3)
    for i in (0, 7, 19):
        assert a[i].caption == b[i].caption and a[i].qa == b[i].qa
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
    assert [s.caption for s in (SyntheticDataset(variant, size=20, seed=4)[i] for i in range(20))] != [
        a[i].caption for i in range(20)
    ]


@pytest.mark.parametrize(("variant", "objects"), [("shapes", 1), ("shapes", 3), ("text", 1), ("chart", 1)])
def test_train_and_validation_never_share_a_scene(variant, objects):
    train = SyntheticDataset(variant, "train", 400, max_objects=objects)
    val = SyntheticDataset(variant, "validation", 100, max_objects=objects)
    assert not set(train.scenes) & set(val.scenes)


def test_answers_describe_the_drawn_shape():
    sample = SyntheticDataset("shapes", size=5, seed=1, image_size=48)[0]
    obj = sample.scene[1]
    answers = dict(sample.qa)
    assert answers["what color is the shape?"] == obj.color and answers["what shape is it?"] == obj.shape
    assert sample.image.size == (48, 48)


def test_chart_answers_are_its_numbers():
    sample = SyntheticDataset("chart", size=3)[0]
    values = sample.scene[1]
    assert dict(sample.qa)["what are the values?"] == " ".join(map(str, values))


def test_unique_scenes_beyond_the_scene_space_are_refused():
    with pytest.raises(ValueError, match="distinct validation scenes"):
        SyntheticDataset("shapes", "validation", 500, unique=True)


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="variant must be"):
        SyntheticDataset("photos")
    with pytest.raises(ValueError, match="image_size >= 16"):
        SyntheticDataset(image_size=8)


def test_tokenizer_keeps_the_image_placeholder_whole_and_is_cached(tmp_path):
    texts = ["what color is the shape? red", "where is the shape? top left"]
    tok = train_sentencepiece(texts, vocab_size=40, cache_dir=tmp_path)
    ids = tok.encode("<image> what color is the shape?")
    assert ids.count(tok.image_id) == 1
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id) == (0, 2, 3, 4)
    assert tok.decode(tok.encode("where is the shape?")) == "where is the shape?"
    again = train_sentencepiece(texts, vocab_size=40, cache_dir=tmp_path)
    assert again.model_file == tok.model_file
    assert len(list((tmp_path / "tokenizers").glob("*.model"))) == 1


def test_tokenizer_refuses_empty_text(tmp_path):
    with pytest.raises(ValueError, match="empty text"):
        train_sentencepiece(["", "  "], cache_dir=tmp_path)
