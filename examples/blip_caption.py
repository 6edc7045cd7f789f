"""BLIP end to end on a CPU: train the three objectives, caption, match, retrieve.

A real run starts from published weights and BLIP's own pipeline::

    model = vlmzoo.create_model("blip-base-caption", pretrained=True)  # Salesforce/blip-image-captioning-base
    processor = vlmzoo.create_processor("blip-base-caption")  # bert-base-uncased + [DEC]/[ENC], 384 px
    ids = model.caption(processor.pixel_values("photo.jpg"), processor.prompt_ids, num_beams=3)
    print(processor.batch_decode(ids))

or from a salesforce/BLIP file: ``vlmzoo.convert.from_original("model_base_capfilt_large.pth", "blip")``.
Here everything is tiny and offline: the ``tiny-blip`` pretraining model (ITC + ITM + LM, its
decoder tied to the text encoder as in blip_pretrain.py), a BERT tokenizer over the synthetic
shapes' words (laid out like bert-base-uncased + ``[DEC]`` / ``[ENC]``), and BLIP's processor at
32 px. After a few hundred steps on "a large red circle"-style captions it

1. captions unseen scenes (greedy and beam search, decoded as BLIP does);
2. scores image-text pairs with the ITM head, true captions against swapped ones;
3. retrieves both ways as BLIP evaluates it: ITC ranking, ITM re-ranking of the top k, recall@k.

Run: ``python examples/blip_caption.py --steps 300`` (``--smoke``: 2 steps, for CI).
"""

from __future__ import annotations

import argparse
import random
import tempfile

import torch

import vlmzoo
from vlmzoo.data import SyntheticDataset
from vlmzoo.eval.blip import evaluate_retrieval, itm_scores
from vlmzoo.processing.blip_processor import BLIPProcessor, tiny_bert_tokenizer


def main(steps: int = 300, batch_size: int = 16) -> dict:
    torch.manual_seed(0)
    train = SyntheticDataset("shapes", "train", 1000, image_size=32)
    val = SyntheticDataset("shapes", "validation", 12, image_size=32, unique=True)
    words = sorted({w for i in range(len(train)) for w in train[i].caption.split()})
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = tiny_bert_tokenizer(words, folder)  # [DEC] 126, [ENC] 127: tiny-blip's ids
    processor = BLIPProcessor.for_model("tiny-blip", tokenizer)  # its 32 px, [DEC] / [ENC] ids
    model = vlmzoo.create_model("tiny-blip")

    pixels = processor.pixel_values([train[i].image for i in range(len(train))])
    captions = [train[i].caption for i in range(len(train))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        picks, seen = [], set()
        while len(picks) < batch_size:  # one caption per scene: duplicates would be ITC false negatives
            i = rng.randrange(len(train))
            if captions[i] not in seen:
                seen.add(captions[i])
                picks.append(i)
        text = processor.text([captions[i] for i in picks])
        out = model(pixels[picks], text["input_ids"], text["attention_mask"], generator=generator)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: ITC {out.itc.item():.3f}  ITM {out.itm.item():.3f}  LM {out.lm.item():.3f}")

    model.eval()
    images = processor.pixel_values([val[i].image for i in range(len(val))])
    truth = [val[i].caption for i in range(len(val))]
    with torch.no_grad():
        greedy = processor.batch_decode(model.caption(images, processor.prompt_ids, max_length=12))
        beam = processor.batch_decode(model.caption(images, processor.prompt_ids, max_length=12, num_beams=3))
    for t, g, b in list(zip(truth, greedy, beam, strict=True))[:4]:
        print(f"true: {t!r:28} greedy: {g!r:28} beam: {b!r}")

    text = processor.text(truth)
    swapped = processor.text(truth[1:] + truth[:1])
    itm_true = itm_scores(model, images, text["input_ids"], text["attention_mask"]).mean().item()
    itm_swapped = itm_scores(model, images, swapped["input_ids"], swapped["attention_mask"]).mean().item()
    print(f"ITM match probability: true captions {itm_true:.2f}, swapped captions {itm_swapped:.2f}")

    result = evaluate_retrieval(
        model, images, text["input_ids"], text["attention_mask"], torch.arange(len(val)), k_test=6, ks=(1, 5)
    )
    print("retrieval: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in result.metrics.items()))
    return {
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "captions": greedy,
        "itm_true": itm_true,
        "itm_swapped": itm_swapped,
        **result.metrics,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 steps of 8 captions")
    args = parser.parse_args()
    main(2, 8) if args.smoke else main(args.steps, args.batch_size)
