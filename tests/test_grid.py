"""Every encoder family x every adapter x four decoder families, at tiny sizes.

The grid is read from the registry, so a new tiny encoder or adapter joins it automatically:
forward with a loss, backward reaching exactly the trainable parameters, and generation.

Pixel-shuffle connectors (Idefics3's, InternVL's) read a square grid of patch tokens: with them,
encoders that keep prefix tokens select their patch tokens (``feature_tokens="patch"``, as LLaVA and
InternVL do), and an encoder whose grid cannot be shuffled (non-square, or a side the scale factor
does not divide) is refused by name before anything runs.
"""

from __future__ import annotations

import pytest
import torch

import vlmzoo
from vlmzoo.errors import ConfigError
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry

ENCODERS = vlmzoo.list_models("*tiny*", kind="encoder")
ADAPTERS = ["mlp2x_gelu", "tiny-qformer", "tiny-flamingo"]
DECODERS = ["tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2"]
PIXEL_SHUFFLE = ["pixel-shuffle-linear", "pixel-shuffle-mlp"]
# The encoder-decoder kind needs a decoder with cross-attention layers: its own column.
CROSS_ATTENDING = [("encoder-decoder", d) for d in ("tiny-mbart", "tiny-bert-xattn", "tiny-gpt2-xattn")]
IMAGE_ID = 3  # a real token id: cross-attention keeps the placeholder in the text


def build(encoder: str, adapter: str, decoder: str) -> VisionLanguageModel:
    enc = get_entry(encoder, "encoder").config
    # No pooling head: a VLM consumes tokens only (an unused head would get no gradient).
    enc = enc.replace(**{k: v for k, v in dict(pool="none", embed_dim=None).items() if hasattr(enc, k)})
    if adapter in PIXEL_SHUFFLE and hasattr(enc, "feature_tokens"):
        enc = enc.replace(feature_tokens="patch")  # a shuffle reads the patch grid alone
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


def shuffle_refusal(encoder: str, adapter: str) -> str | None:
    """The ConfigError message a pixel-shuffle adapter gives for ``encoder``'s tokens, or None if it
    reads them (checked on the meta device: no weights)."""
    with torch.device("meta"):
        model = build(encoder, adapter, DECODERS[0])
    try:
        model.tokens_per_image  # noqa: B018
    except ConfigError as e:
        return str(e)
    return None


REFUSED = {(e, a): shuffle_refusal(e, a) for e in ENCODERS for a in PIXEL_SHUFFLE}


def test_grid_covers_at_least_the_core_encoder_families():
    assert {"clip-vit-tiny", "dinov2-vit-tiny", "eva-vit-tiny", "siglip-vit-tiny"} <= set(ENCODERS)


def test_pixel_shuffle_reads_every_square_encoder_grid():
    shuffled = {e for (e, _), refusal in REFUSED.items() if refusal is None}
    assert {"clip-vit-tiny", "eva-vit-tiny", "siglip-vit-tiny", "sam-vit-tiny", "swin-tiny"} <= shuffled


@pytest.mark.parametrize(("encoder", "adapter"), [k for k, v in REFUSED.items() if v is not None])
def test_pixel_shuffle_refuses_a_grid_it_cannot_shuffle_by_its_sizes(encoder, adapter):
    assert "square grid" in REFUSED[encoder, adapter] or "not divisible" in REFUSED[encoder, adapter]


GRID = [(e, a, d) for e in ENCODERS for a in ADAPTERS for d in DECODERS]
GRID += [(e, *pair) for e in ENCODERS for pair in CROSS_ATTENDING]
GRID += [(e, a, d) for e in ENCODERS for a in PIXEL_SHUFFLE for d in DECODERS if REFUSED[e, a] is None]


@pytest.mark.parametrize(("encoder", "adapter", "decoder"), GRID)
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
