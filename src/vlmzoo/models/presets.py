"""Named VLMs with their published sizes (SPEC §8 LLaVA-1.5), plus tiny variants for tests and CPU.

Each preset is a :class:`VLMConfig` composed from the component presets, so ``vlmzoo info
llava-1.5-7b`` can build it on the meta device and count its parameters exactly.
"""

from __future__ import annotations

from vlmzoo.adapters.mlp import MLPProjectorConfig
from vlmzoo.decoders.hf import DECODER_PRESETS
from vlmzoo.encoders.vit import CLIP_VISION_PRESETS, ViTConfig
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import register


def llava_features(config: ViTConfig) -> ViTConfig:
    """LLaVA's visual features: penultimate block, CLS dropped, no post-norm, no pooling (SPEC §8)."""
    return config.replace(
        feature_layer=-2, feature_tokens="patch", feature_norm=False, pool="none", embed_dim=None
    )


VLM_PRESETS: dict[str, VLMConfig] = {
    "llava-1.5-7b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14-336"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=4096, depth=2),
        decoder=DECODER_PRESETS["vicuna-7b"],
    ),
    "llava-1.5-13b": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-l14-336"]),
        adapter=MLPProjectorConfig(in_dim=1024, out_dim=5120, depth=2),
        decoder=DECODER_PRESETS["vicuna-13b"],
    ),
    "tiny-llava": VLMConfig(
        encoder=llava_features(CLIP_VISION_PRESETS["clip-vit-tiny"]),
        adapter=MLPProjectorConfig(depth=2),
        decoder=DECODER_PRESETS["tiny-llama"],
    ),
}

for _name, _cfg in VLM_PRESETS.items():
    register(_name, "model", _cfg, VisionLanguageModel, "VisionLanguageModel (encoder x adapter x decoder)")
