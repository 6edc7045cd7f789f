"""The conditioning contract (vlmzoo.adapters.base): every adapter answers the same questions, the
VisionLanguageModel runs one path for all of them, and a new kind of conditioning is one class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import vlmzoo
from vlmzoo.adapters.base import Adapter, Prepared, TextLayout
from vlmzoo.config import Config
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import _ARCHITECTURES, get_entry

pytest.importorskip("transformers")

MODELS = ["tiny-llava", "tiny-blip2", "tiny-openflamingo"]


def model_and_prompt(name: str) -> tuple[VisionLanguageModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = vlmzoo.create_model(name).eval()
    image = model.config.image_token_id
    size = model.encoder.config.image_size
    return model, torch.randn(2, 3, size, size), torch.tensor([[1, image, 10, 11], [1, 12, image, 13]])


@pytest.mark.parametrize("name", MODELS)
def test_image_features_are_the_adapters_visual_features_of_the_encoder_tokens(name):
    model, x, _ = model_and_prompt(name)
    with torch.no_grad():
        want = model.adapter.visual_features(model.encoder(x).tokens)
        assert torch.equal(model.image_features(x), want)
    assert model.tokens_per_image == model.adapter.tokens_per_image(model.encoder.num_tokens())


@pytest.mark.parametrize("name", MODELS)
def test_the_forward_is_the_decoder_run_on_the_prepared_inputs_in_their_conditioning(name):
    model, x, ids = model_and_prompt(name)
    with torch.no_grad():
        prepared = model.adapter.prepare(model.decoder, ids, model.encoder(x).tokens)
        with prepared.conditioning:
            want = model.decoder(**prepared.decoder_inputs()).logits
        assert torch.equal(model(x, ids).logits, want)
    assert prepared.length == want.shape[1] == ids.shape[1] + model.tokens_per_image - 1  # 1 image a row


def test_a_prefix_adapter_hands_embeddings_and_flamingo_the_token_ids():
    llava, x, ids = model_and_prompt("tiny-llava")
    prepared = llava.adapter.prepare(llava.decoder, ids, llava.encoder(x).tokens)
    assert prepared.input_ids is None and prepared.inputs_embeds.shape[:2] == (2, 4 + 15)
    flamingo, x, ids = model_and_prompt("tiny-openflamingo")
    labels = ids.clone()
    prepared = flamingo.adapter.prepare(flamingo.decoder, ids, flamingo.encoder(x).tokens, labels=labels)
    assert prepared.inputs_embeds is None and prepared.input_ids is ids
    assert prepared.labels[ids == flamingo.config.image_token_id].eq(-100).all()  # <image> is not a target


def test_the_summary_counts_each_kind_through_the_contract():
    from vlmzoo.models.summary import summarize

    assert summarize("tiny-llava").tokens_per_image == 16
    assert summarize("tiny-openflamingo").tokens_per_image == 1  # the <image> token
    flamingo, llava = summarize("tiny-openflamingo"), summarize("tiny-llava")
    assert flamingo.gflops_per_image > llava.gflops_per_image  # the resampler is part of an image's cost


def test_a_new_kind_of_conditioning_is_one_class(monkeypatch):
    """A toy third kind (FiLM-like: each sample's mean image vector added to all its text
    embeddings) runs through the unchanged VisionLanguageModel: forward, loss and generate."""

    @dataclass
    class AddMeanConfig(Config):
        kind = "adapter"
        in_dim: int | None = None
        out_dim: int | None = None

    class AddMean(Adapter):
        config_class = AddMeanConfig

        def __init__(self, config: AddMeanConfig):
            super().__init__()
            self.config = config
            self.proj = nn.Linear(config.in_dim, config.out_dim)

        @staticmethod
        def decoder_width(decoder) -> int:
            return decoder.hidden_size

        def wrap_units(self) -> list[nn.Module]:
            return []

        def tokens_per_image(self, num_encoder_tokens: int) -> int:
            return 1  # the placeholder stays (embedded as token 0)

        def visual_features(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.proj(tokens.mean(dim=1, keepdim=True))

        def prepare(
            self, decoder, input_ids, visual_tokens, attention_mask=None, labels=None, *, padding_side=None
        ) -> Prepared:  # rows keep their lengths: padding_side changes nothing
            is_image = input_ids == self.bound_layout().image_token_id
            embeds = decoder.embed(input_ids.masked_fill(is_image, 0))
            if visual_tokens is not None:  # one image per sample, in row order
                embeds = embeds + self.visual_features(visual_tokens)
            return Prepared(attention_mask=attention_mask, labels=labels, inputs_embeds=embeds)

    monkeypatch.setitem(_ARCHITECTURES, "AddMean", AddMean)
    base = get_entry("tiny-llava", "model").config
    model = VisionLanguageModel(VLMConfig(base.encoder, AddMeanConfig(), base.decoder, image_token_id=-200))
    assert (model.adapter.config.in_dim, model.adapter.config.out_dim) == (model.encoder.out_dim, 64)
    model.eval()
    x, ids = torch.randn(2, 3, 32, 32), torch.tensor([[1, -200, 10, 11], [1, 12, -200, 13]])
    out = model(x, ids, labels=ids.clamp(min=0))
    assert out.logits.shape == (2, 4, 512) and out.loss.isfinite()
    assert not torch.equal(out.logits, model(torch.randn_like(x), ids).logits)
    assert model.generate(x, ids, max_new_tokens=3).shape == (2, 3)


def test_a_layout_counts_placeholders_per_image():
    assert TextLayout(5).placeholders_per_image(16) == 1
    assert TextLayout(5, expand_image_tokens=False).placeholders_per_image(16) == 16


def test_a_compiled_vlm_still_refuses_a_mask_that_is_not_0_or_1():
    model, x, ids = model_and_prompt("tiny-llava")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    try:
        with torch.no_grad():
            compiled(x, ids, torch.ones_like(ids))
            with pytest.raises(RuntimeError, match=r"attention_mask holds values other than 0 \(padding\)"):
                compiled(x, ids, torch.full_like(ids, 2))
    finally:
        torch._dynamo.reset()
