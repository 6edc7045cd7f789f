"""Build a VLM from parts: any encoder x any adapter x any Hugging Face causal LM, by config.

By default a DINOv2 encoder (registers, penultimate layer) feeds a 3-layer MLP projector into a
tiny Qwen2 — no subclass, no code change; swap any name for another from ``vlmzoo list``. The
encoder is any ViT-family preset: ``--encoder clip-vit-tiny`` builds the same VLM on CLIP.

    python examples/custom_vlm.py
    python examples/custom_vlm.py --encoder clip-vit-tiny
    python examples/custom_vlm.py --encoder siglip-vit-tiny --smoke   # CI (already tiny: the same run)
"""

from __future__ import annotations

import argparse

import torch

import vlmzoo
from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
from vlmzoo.registry import get_entry


def main(encoder_name: str = "dinov2-vit-tiny-reg4", folder: str = "runs/custom_vlm") -> dict:
    torch.manual_seed(0)
    # An encoder preset is a whole image model. CLIP's pools the [CLS] token and projects it into
    # the joint image-text space (its embed_dim); a VLM reads every patch token instead (pool="none"),
    # and with no pooled vector there is nothing for that projection head to map: embed_dim=None
    # removes it (the adapter maps the patch tokens into the LM). DINOv2 and SigLIP presets have no
    # head already, so the same line fits every ViT-family encoder.
    encoder = get_entry(encoder_name, "encoder").config.replace(feature_layer=-2, pool="none", embed_dim=None)
    adapter = get_entry("mlp3x_gelu", "adapter").config  # in/out widths are filled in from the parts
    decoder = get_entry("tiny-qwen2", "decoder").config
    config = VLMConfig(encoder=encoder, adapter=adapter, decoder=decoder, image_token_id=-200)
    model = VisionLanguageModel(config).eval()
    size = encoder.image_size
    out = model(torch.randn(2, 3, size, size), torch.tensor([[-200, 5, 6], [7, -200, 8]]))
    print(
        f"{encoder_name}: {type(model.encoder).__name__} -> {type(model.adapter).__name__} -> "
        f"{type(model.decoder.lm).__name__}"
    )
    print(f"logits {tuple(out.logits.shape)}; {model.tokens_per_image} tokens per image")
    vlmzoo.save(model, folder)
    again = vlmzoo.load(folder).eval()
    print(f"saved and reloaded: {type(again).__name__}, same config: {again.config == model.config}")
    return {"tokens_per_image": model.tokens_per_image, "same_config": again.config == model.config}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="dinov2-vit-tiny-reg4", help="a ViT-family encoder preset")
    parser.add_argument("--out", default="runs/custom_vlm")
    parser.add_argument("--smoke", action="store_true", help="CI size (this example is already tiny)")
    args = parser.parse_args()
    main(args.encoder, args.out)
