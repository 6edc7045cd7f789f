"""Shikra-7B / 13B as vlmzoo compositions: real parameter counts, built on the meta device.

shikras/shikra's config/_base_/model/shikra.py: CLIP ViT-L/14 (openai/clip-vit-large-patch14, 224 px),
``mm_vision_select_layer=-2``, 256 patch tokens (mllm/models/shikra/shikra.py drops the CLS token),
``mm_projector = nn.Linear(1024, hidden)``; LLaMA-7B / 13B (Vicuna) with ``<im_patch>``,
``<im_start>``, ``<im_end>`` added to the 32000-token vocabulary (``initialize_vision_tokenizer``).
Counts: CLIPVisionModel-L/14-224 303,179,776 + Linear + LLaMA with a 32003-row embedding and head.
"""

from __future__ import annotations

import pytest
import torch

from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.decoders.hf import llama_config
from vlmzoo.encoders.vit import CLIP_VISION_PRESETS
from vlmzoo.models.presets import llava_features
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry, list_models

SIZES = {  # hidden, layers, heads, MLP of LLaMA-7B / 13B
    "shikra-7b": (4096, 32, 32, 11008),
    "shikra-13b": (5120, 40, 40, 13824),
}


def shikra_config(name: str) -> VLMConfig:
    """The composition proposed for models/presets.py (see the report of this change)."""
    hidden, layers, heads, mlp = SIZES[name]
    return VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=hidden, depth=1),
        decoder=llama_config(
            hidden, layers, heads, mlp, vocab=32003, max_position_embeddings=2048, rms_norm_eps=1e-6
        ),
        image_token_id=32000,
    )


def _counts(config: VLMConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    parts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("encoder", "adapter", "decoder")
    }
    return parts | {
        "total": sum(p.numel() for p in model.parameters()),
        "tokens": int(model.tokens_per_image),
    }


@pytest.mark.parametrize(
    "name, adapter, decoder, total",
    [
        # 1024 * 4096 + 4096; LLaMA-7B 6,738,415,616 + 3 * 4096 * 2 (new rows of embedding and head)
        ("shikra-7b", 4_198_400, 6_738_440_192, 7_045_818_368),
        # 1024 * 5120 + 5120; LLaMA-13B 13,015,864,320 + 3 * 5120 * 2
        ("shikra-13b", 5_248_000, 13_015_895_040, 13_324_322_816),
    ],
)
def test_shikra_composition_has_the_original_parameter_count(name, adapter, decoder, total):
    counts = _counts(shikra_config(name))
    assert counts["encoder"] == 303_179_776  # transformers' CLIPVisionModel, ViT-L/14 at 224
    assert (counts["adapter"], counts["decoder"], counts["total"]) == (adapter, decoder, total)
    assert counts["tokens"] == 256  # (224 / 14) ** 2 patch tokens, CLS dropped


@pytest.mark.parametrize("name", sorted(SIZES))
def test_registered_shikra_preset_is_the_composition(name):
    if name not in list_models(name, kind="model"):
        pytest.skip(f"{name} is not registered yet (models/presets.py)")
    assert get_entry(name, "model").config.to_dict() == shikra_config(name).to_dict()
