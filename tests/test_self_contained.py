"""A saved model stands alone: nothing in it refers to the files its parts were built from."""

from __future__ import annotations

import shutil

import torch
import transformers
from conftest import randomize_

import vlmzoo
from vlmzoo.decoders.hf import DecoderConfig
from vlmzoo.models.presets import VLM_PRESETS
from vlmzoo.models.vlm import VisionLanguageModel


def _base_llm(directory) -> None:
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=300, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)


def test_a_vlm_built_on_a_local_llm_loads_after_the_llm_is_deleted(tmp_path):
    _base_llm(tmp_path / "base")
    config = VLM_PRESETS["tiny-llava"].replace(decoder=DecoderConfig(pretrained=str(tmp_path / "base")))
    model = randomize_(VisionLanguageModel(config)).eval()
    assert model.config.decoder.pretrained is None
    assert model.config.decoder.hf_config["tie_word_embeddings"] is True
    vlmzoo.save(model, tmp_path / "vlm")
    assert str(tmp_path / "base") not in (tmp_path / "vlm" / "config.json").read_text()
    shutil.rmtree(tmp_path / "base")
    loaded = vlmzoo.load(tmp_path / "vlm").eval()
    pixels, ids = torch.randn(1, 3, 32, 32), torch.tensor([[1, -200, 5, 6]])
    with torch.no_grad():
        assert torch.equal(model(pixels, ids).logits, loaded(pixels, ids).logits)
