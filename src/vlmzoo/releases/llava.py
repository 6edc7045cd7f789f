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

LLaVA-NeXT (v1.6) vicuna-7b / vicuna-13b / mistral-7b: the original ``liuhaotian/llava-v1.6-*``
(``config.json``: ``image_aspect_ratio`` ``"anyres"``, ``mm_patch_merge_type`` ``"spatial_unpad"``,
``image_grid_pinpoints`` as (width, height) pairs; the tower is trained in v1.6 and saved with the
weights) and the ``llava-hf/llava-v1.6-*-hf`` ports (``LlavaNextForConditionalGeneration``). The
Mistral LM's rope and context are not in its tensors: its decoder config comes from the
``mistral-7b`` decoder preset. LLaVA-OneVision qwen2-0.5b / 7b: the
``llava-hf/llava-onevision-qwen2-*-ov-hf`` ports only (``LlavaOnevisionForConditionalGeneration``);
the original ``lmms-lab`` LlavaQwen checkpoints are not converted.
"""

from __future__ import annotations

from vlmzoo.decoders.hf import DECODER_PRESETS
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


def _next_original(name: str) -> Release:
    options = {"decoder": DECODER_PRESETS["mistral-7b"]} if "mistral" in name else {}
    return Release(
        f"liuhaotian/llava-v1.6-{name}",
        TRANSFORMERS_FILES,
        "original",
        "llava",
        options=options,
        config_options={
            "vision_select_layer": "mm_vision_select_layer",
            "vision_select_feature": "mm_vision_select_feature",
            "image_grid_pinpoints": "image_grid_pinpoints",
            "image_aspect_ratio": "image_aspect_ratio",
            "mm_patch_merge_type": "mm_patch_merge_type",
        },
        parts=(Part("encoder", "clip-vit-l14-336", "encoder", unless_prefix="model.vision_tower."),),
        licence=_LICENCE if "vicuna" in name else "Apache 2.0 (Mistral-7B-Instruct-v0.2's)",
        description="original LLaVA-NeXT (v1.6), any-resolution tiling",
    )


def _port_of(repo: str, architecture: str, licence: str, description: str) -> Release:
    return Release(
        repo, TRANSFORMERS_FILES, "transformers", architecture, licence=licence, description=description
    )


# The transformers ports of the any-resolution models, by preset.
ANYRES_PORTS: dict[str, Release] = {
    **{
        f"llava-v1.6-{name}": _port_of(
            f"llava-hf/llava-v1.6-{name}-hf",
            "LlavaNextForConditionalGeneration",
            _LICENCE if "vicuna" in name else "Apache 2.0 (Mistral-7B-Instruct-v0.2's)",
            "transformers port of LLaVA-NeXT (v1.6)",
        )
        for name in ("vicuna-7b", "vicuna-13b", "mistral-7b")
    },
    **{
        f"llava-onevision-qwen2-{size}": _port_of(
            f"llava-hf/llava-onevision-qwen2-{size}-ov-hf",
            "LlavaOnevisionForConditionalGeneration",
            "Apache 2.0 (the Qwen2 LLM's)",
            "transformers port of LLaVA-OneVision (ov stage)",
        )
        for size in ("0.5b", "7b")
    },
}
MODELS |= {
    f"llava-v1.6-{name}": (_next_original(name), ANYRES_PORTS[f"llava-v1.6-{name}"])
    for name in ("vicuna-7b", "vicuna-13b", "mistral-7b")
}
MODELS |= {
    f"llava-onevision-qwen2-{s}": (ANYRES_PORTS[f"llava-onevision-qwen2-{s}"],) for s in ("0.5b", "7b")
}
