"""Every encoder family x every adapter x four decoder families, at tiny sizes.

The grid is read from the registry, so a new tiny encoder or adapter joins it automatically:
forward with a loss, backward reaching exactly the trainable parameters, and generation.
"""

from __future__ import annotations

import pytest
import torch

import vlmzoo
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

ENCODERS = vlmzoo.list_models("*tiny*", kind="encoder")
ADAPTERS = ["mlp2x_gelu", "tiny-qformer", "tiny-flamingo"]
DECODERS = ["tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2"]
# The encoder-decoder kind needs a decoder with cross-attention layers: its own column.
CROSS_ATTENDING = [("encoder-decoder", d) for d in ("tiny-mbart", "tiny-bert-xattn", "tiny-gpt2-xattn")]
IMAGE_ID = 3  # a real token id: cross-attention keeps the placeholder in the text


def build(encoder: str, adapter: str, decoder: str) -> VisionLanguageModel:
    enc = get_entry(encoder, "encoder").config
    # No pooling head: a VLM consumes tokens only (an unused head would get no gradient).
    enc = enc.replace(**{k: v for k, v in dict(pool="none", embed_dim=None).items() if hasattr(enc, k)})
    config = VLMConfig(
        encoder=enc,
        adapter=get_entry(adapter, "adapter").config,
        decoder=get_entry(decoder, "decoder").config,
        image_token_id=IMAGE_ID,
    )
    return VisionLanguageModel(config)


def example_pixels(model: VisionLanguageModel, n: int) -> torch.Tensor:
    config = model.encoder.config
    size = config.image_size
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, config.in_channels, h, w)


def test_grid_covers_at_least_the_core_encoder_families():
    assert {"clip-vit-tiny", "dinov2-vit-tiny", "eva-vit-tiny"} <= set(ENCODERS)


GRID = [(a, d) for a in ADAPTERS for d in DECODERS] + CROSS_ATTENDING


@pytest.mark.parametrize(("adapter", "decoder"), GRID)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_backward_generate(encoder, adapter, decoder):
    torch.manual_seed(0)
    model = build(encoder, adapter, decoder).train()
    ids = torch.tensor([[5, IMAGE_ID, 6, 7], [IMAGE_ID, 8, 9, 10]])
    pixels = example_pixels(model, 2)
    out = model(pixels, ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    conditioning = [*model.adapter.parameters()] + [
        p for m in model.adapter.decoder_modules(model.decoder) for p in m.parameters()
    ]
    assert any(p.grad is not None for p in conditioning)
    model.eval()
    generated = model.generate(pixels, ids, max_new_tokens=3)
    assert generated.shape == (2, 3)
