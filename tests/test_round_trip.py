"""Whatever a model holds comes back from ``vlmzoo.save`` / ``vlmzoo.load`` exactly: every tensor
bit for bit, the same ties, the same outputs — for every VLM family and training state (as built,
an LM head untied and trained apart from the embeddings, LoRA merged into the weights)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

import vlmzoo
from vlmzoo.weights.materialize import tied_names

FAMILIES = ["tiny-llava", "tiny-blip2", "tiny-openflamingo", "tiny-vary", "tiny-donut"]


def _inputs(model) -> tuple:
    """Two samples of one image each, at the encoder's native size, with the model's placeholders."""
    encoder = model.get_base_model().encoder if hasattr(model, "get_base_model") else model.encoder
    towers = getattr(encoder, "towers", None)
    sizes = [t.config.image_size for t in towers.values()] if towers else [encoder.config.image_size]
    g = torch.Generator().manual_seed(0)
    shaped = [s if isinstance(s, tuple | list) else (s, s) for s in sizes]
    pixels = [torch.randn(2, 3, *hw, generator=g) for hw in shaped]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    placeholders = base.config.layout.placeholders_per_image(base.tokens_per_image)
    image = [base.config.image_token_id] * placeholders  # none for an encoder-decoder
    ids = torch.tensor([[1, *image, 5, 6, 7], [1, *image, 8, 9, 10]])
    return (tuple(pixels) if towers else pixels[0]), ids


def _round_trip(model, tmp_path):
    vlmzoo.save(model, tmp_path / "ckpt")
    return vlmzoo.load(tmp_path / "ckpt").eval()


def _assert_same(model, loaded):
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]
    assert tied_names(loaded) == tied_names(model)
    pixels, ids = _inputs(model)
    with torch.no_grad():
        assert torch.equal(model(pixels, ids).logits, loaded(pixels, ids).logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_model_as_built_comes_back_bit_for_bit(name, tmp_path):
    model = randomize_(vlmzoo.create_model(name)).eval()
    _assert_same(model, _round_trip(model, tmp_path))


@pytest.mark.parametrize("name", FAMILIES)
def test_an_lm_head_untied_and_trained_apart_comes_back_apart(name, tmp_path):
    model = randomize_(vlmzoo.create_model(name)).eval()
    lm = model.decoder.lm
    head = lm.get_output_embeddings()
    with torch.no_grad():  # untie (as peft's modules_to_save or a fine-tune of the head does), then train it
        head.weight = torch.nn.Parameter(head.weight + 0.1 * torch.randn_like(head.weight))
    assert head.weight is not lm.get_input_embeddings().weight
    _assert_same(model, _round_trip(model, tmp_path))


def _lora(name: str):
    peft = pytest.importorskip("peft")
    model = randomize_(vlmzoo.create_model(name)).eval()
    config = peft.LoraConfig(
        r=2, target_modules=["q_proj", "v_proj", "c_attn", "fc1"], init_lora_weights=False
    )
    return peft.get_peft_model(model, config).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_merged_into_the_weights_comes_back_bit_for_bit(name, tmp_path):
    merged = _lora(name).merge_and_unload().eval()
    _assert_same(merged, _round_trip(merged, tmp_path))


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_unmerged_comes_back_as_the_same_peft_model(name, tmp_path):
    model = _lora(name)
    loaded = _round_trip(model, tmp_path)
    assert type(loaded) is type(model)
    _assert_same(model, loaded)
