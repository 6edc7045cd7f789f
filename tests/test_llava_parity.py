"""LLaVA parity: transformers LlavaForConditionalGeneration converted with vlmzoo.convert."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff, randomize_

import vlmzoo
from vlmzoo.models.vlm import VisionLanguageModel

transformers = pytest.importorskip("transformers")

IMAGE_ID, M = 299, 16  # 32 px / patch 8 -> 16 patch tokens per image (CLS dropped)


def hf_llava(strategy: str = "default") -> torch.nn.Module:
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_ID,
        image_seq_length=M + (strategy == "full"),
        vision_feature_select_strategy=strategy,
    )
    return randomize_(transformers.LlavaForConditionalGeneration(config), std=0.1).eval()


def expanded_ids(per_image: int) -> torch.Tensor:
    """Two prompts, one image each, the image run starting at different offsets."""
    ids = torch.randint(3, 290, (2, 8 + per_image))
    ids[0, 2 : 2 + per_image] = IMAGE_ID
    ids[1, 5 : 5 + per_image] = IMAGE_ID
    return ids


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_converted_llava_gives_the_same_logits(strategy):
    hf = hf_llava(strategy)
    ours = vlmzoo.convert.from_transformers(hf).eval()
    assert isinstance(ours, VisionLanguageModel)
    per_image = M + (strategy == "full")
    ids, x = expanded_ids(per_image), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=x, input_ids=ids).logits
        got = ours(x, ids).logits
    assert max_abs_diff(got, want) <= 1e-4


def test_converted_llava_generates_the_same_greedy_tokens():
    hf = hf_llava()
    ours = vlmzoo.convert.from_transformers(hf).eval()
    ids, x = expanded_ids(M), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.generate(pixel_values=x, input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        got = ours.generate(x, ids, max_new_tokens=8)
    assert torch.equal(got, want[:, ids.shape[1] :])


def test_one_placeholder_per_image_expands_to_the_same_logits():
    ours = vlmzoo.convert.from_transformers(hf_llava()).eval()
    expanding = VisionLanguageModel(ours.config.replace(expand_image_tokens=True)).eval()
    expanding.load_state_dict(ours.state_dict())
    ids, x = expanded_ids(M), torch.randn(2, 3, 32, 32)
    single = torch.stack(
        [torch.cat([row[: s + 1], row[s + M :]]) for row, s in zip(ids, (2, 5), strict=True)]
    )
    with torch.no_grad():
        assert max_abs_diff(expanding(x, single).logits, ours(x, ids).logits) <= 1e-5


def test_pre_expanded_text_with_a_cut_image_span_is_rejected():
    ours = vlmzoo.convert.from_transformers(hf_llava()).eval()
    ids = expanded_ids(M)[:, :10]  # the second image's run is cut by truncation
    with pytest.raises(vlmzoo.InputError, match=r"image placeholders .* but 2 images"):
        ours(torch.randn(2, 3, 32, 32), ids)
