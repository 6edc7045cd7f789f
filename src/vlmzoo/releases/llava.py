"""LLaVA-1.5 7B / 13B: the original release (default) and the transformers ports.

- ``liuhaotian/llava-v1.5-{7b,13b}`` (haotian-liu/LLaVA's ``LlavaLlamaForCausalLM``): ``config.json``
  (``mm_vision_tower``: ``openai/clip-vit-large-patch14-336``, ``mm_vision_select_layer`` -2,
  ``mm_vision_select_feature`` ``"patch"``, ``mm_projector_type`` ``"mlp2x_gelu"``) and the
  weights as ``pytorch_model-0000k-of-0000n.bin`` shards with ``pytorch_model.bin.index.json``.
  The CLIP tower is loaded by LLaVA from ``mm_vision_tower``, so it comes from the
  ``clip-vit-l14-336`` encoder release, unless the shards hold it (``model.vision_tower.*``).
  Converted with LLaVA's own image token: one ``-200`` per image, expanded to its 576 features.
- ``llava-hf/llava-1.5-{7b,13b}-hf``: transformers' ``LlavaForConditionalGeneration`` port
  (``<image>`` is token 32000, written once per feature by transformers' processor).
"""

from __future__ import annotations

from vlmzoo.releases.source import TRANSFORMERS_FILES, Part, Release

# The files LlavaLlamaForCausalLM's checkpoints are saved as (transformers' save_pretrained of the
# time: pickled shards and their index; a single file for small models).
ORIGINAL_FILES = (
    "config.json",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin",
)
_LICENCE = "Llama 2 Community License (the base LLM's)"


def _original(size: str) -> Release:
    return Release(
        f"liuhaotian/llava-v1.5-{size}",
        ORIGINAL_FILES,
        "original",
        "llava",
        config_options={
            "vision_select_layer": "mm_vision_select_layer",
            "vision_select_feature": "mm_vision_select_feature",
        },
        parts=(Part("encoder", "clip-vit-l14-336", "encoder", unless_prefix="model.vision_tower."),),
        licence=_LICENCE,
        description="original LLaVA-1.5 + the OpenAI CLIP-L/14-336 tower",
    )


def _port(size: str) -> Release:
    return Release(
        f"llava-hf/llava-1.5-{size}-hf",
        TRANSFORMERS_FILES,
        "transformers",
        "LlavaForConditionalGeneration",
        licence=_LICENCE,
        description="transformers port of LLaVA-1.5",
    )


MODELS = {f"llava-1.5-{size}": (_original(size), _port(size)) for size in ("7b", "13b")}
