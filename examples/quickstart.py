"""Quickstart: build a VLM by name, run a forward pass with a loss, and generate.

python examples/quickstart.py            # 8 new tokens
python examples/quickstart.py --smoke    # CI: 2 new tokens
"""

from __future__ import annotations

import argparse

import torch

import vlmzoo


def main(max_new_tokens: int = 8) -> dict:
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-llava").eval()  # CLIP ViT + MLP projector + Llama, random init
    print(
        f"tiny-llava: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{model.tokens_per_image} visual tokens per image"
    )

    image_id = model.config.image_token_id  # one placeholder per image; the model expands it
    input_ids = torch.tensor([[1, image_id, 10, 11, 12]])
    pixel_values = torch.randn(1, 3, 32, 32)
    out = model(pixel_values, input_ids, labels=input_ids.clamp(min=0))
    print(
        f"logits {tuple(out.logits.shape)} (text + {model.tokens_per_image} image positions), "
        f"loss {out.loss.item():.3f}"
    )

    new_tokens = model.generate(pixel_values, input_ids, max_new_tokens=max_new_tokens)
    print(f"generated token ids: {new_tokens.tolist()}")
    return {"loss": out.loss.item(), "generated": new_tokens.shape[1]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 new tokens")
    args = parser.parse_args()
    main(2 if args.smoke else args.max_new_tokens)
