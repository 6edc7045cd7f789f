"""Contrastive (CLIP) training on the synthetic shapes, then zero-shot classification and retrieval.

Captions such as "a large red circle" are the text side; after training, the class weights of a
zero-shot classifier are built from shape names x prompt templates, as in CLIP's recipe.

    python examples/clip_zero_shot.py --steps 300
    python examples/clip_zero_shot.py --smoke    # CI: 2 steps
"""

from __future__ import annotations

import argparse
import random

import torch

import vlmzoo
from vlmzoo.data import SHAPES, SyntheticDataset
from vlmzoo.eval import retrieval_recall, zero_shot_accuracy
from vlmzoo.processing.image import ImageProcessor, ImageProcessorConfig
from vlmzoo.processing.tokenizer import train_sentencepiece


def main(steps: int = 300, batch_size: int = 64) -> dict:
    torch.manual_seed(0)
    train = SyntheticDataset("shapes", "train", 2000, image_size=32)
    val = SyntheticDataset("shapes", "validation", 60, image_size=32, unique=True)
    tok = train_sentencepiece(
        [train[i].caption for i in range(len(train))] + [f"a photo of a {s}." for s in SHAPES], vocab_size=64
    )
    context = 16

    def tokenize(texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), context, dtype=torch.long)
        for i, t in enumerate(texts):
            row = [tok.bos_id, *tok.encode(t)[: context - 2], tok.eos_id]
            ids[i, : len(row)] = torch.tensor(row)
        return ids

    model = vlmzoo.create_model(
        "clip-tiny",
        text=vlmzoo.create_model("clip-tiny").config.text.replace(
            vocab_size=tok.vocab_size, context_length=context, pooling="eos_token", eos_token_id=tok.eos_id
        ),
    )
    processor = ImageProcessor(ImageProcessorConfig.clip(32))
    pixels = processor([train[i].image for i in range(len(train))])
    captions = [train[i].caption for i in range(len(train))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    rng = random.Random(0)
    for step in range(steps):
        # one caption per scene in a batch: duplicates would be false negatives for InfoNCE
        picks, seen = [], set()
        while len(picks) < batch_size:
            i = rng.randrange(len(train))
            if captions[i] not in seen:
                seen.add(captions[i])
                picks.append(i)
        out = model(pixels[picks], tokenize([captions[i] for i in picks]), return_loss=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: contrastive loss {out.loss.item():.3f}")
    val_pixels = processor([val[i].image for i in range(len(val))])
    labels = torch.tensor([SHAPES.index(val[i].scene[1].shape) for i in range(len(val))])
    accuracy = zero_shot_accuracy(model, tokenize, val_pixels, labels, SHAPES, ["a photo of a {}."])
    with torch.no_grad():
        recall = retrieval_recall(
            model.encode_image(val_pixels),
            model.encode_text(tokenize([val[i].caption for i in range(len(val))])),
        )
    print(
        f"zero-shot shape accuracy on unseen scenes: {100 * accuracy:.1f}% (chance {100 / len(SHAPES):.0f}%)"
    )
    print("retrieval: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in recall.items()))
    return {"zero_shot_accuracy": accuracy, **recall}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 steps of 8 pairs")
    args = parser.parse_args()
    main(2, 8) if args.smoke else main(args.steps, args.batch_size)
