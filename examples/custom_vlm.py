"""Build a VLM from parts: any encoder x any adapter x any Hugging Face causal LM, by config.

Here a DINOv2 encoder (registers, penultimate layer) feeds a 3-layer MLP projector into a tiny
Qwen2 — no subclass, no code change; swap any name for another from ``vlmzoo list``.

    python examples/custom_vlm.py
"""

from __future__ import annotations

import torch

import vlmzoo
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry


def main(steps: int = 0) -> dict:
    torch.manual_seed(0)
    encoder = get_entry("dinov2-vit-tiny-reg4", "encoder").config.replace(feature_layer=-2, pool="none")
    adapter = get_entry("mlp3x_gelu", "adapter").config  # in/out widths are filled in from the parts
    decoder = get_entry("tiny-qwen2", "decoder").config
    config = VLMConfig(encoder=encoder, adapter=adapter, decoder=decoder, image_token_id=-200)
    model = VisionLanguageModel(config).eval()
    size = encoder.image_size
    out = model(torch.randn(2, 3, size, size), torch.tensor([[-200, 5, 6], [7, -200, 8]]))
    print(
        f"{type(model.encoder).__name__} -> {type(model.adapter).__name__} -> {type(model.decoder.lm).__name__}"
    )
    print(f"logits {tuple(out.logits.shape)}; {model.tokens_per_image} tokens per image")
    vlmzoo.save(model, "runs/custom_vlm")
    again = vlmzoo.load("runs/custom_vlm").eval()
    print(f"saved and reloaded: {type(again).__name__}, same config: {again.config == model.config}")
    return {"tokens_per_image": model.tokens_per_image}


if __name__ == "__main__":
    main()
