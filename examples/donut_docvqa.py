"""Donut on a document question: fine-tune, then answer as JSON.

A real run starts from ``vlmzoo.create_model("donut-base", pretrained=True)`` (naver-clova-ix/donut-base,
202M parameters, a 2560x1920 canvas) and its tokenizer (``create_processor("donut-base")``); here
the model is ``tiny-donut`` (a 192x128 canvas, random weights) and the tokenizer a tiny byte-level
one written on the spot, so the example runs offline in seconds. What it shows is the same at any
size:

1. the pipeline: ``vlmzoo.create_processor`` — Donut's page recipe (resize, thumbnail into the
   canvas, pad), the DocVQA prompt ``<s_docvqa><s_question>...</s_question><s_answer>``;
2. teacher-forced fine-tuning on ``{"question": ..., "answer": ...}`` targets, the loss starting
   after ``<s_answer>`` as in clovaai/donut's ``train.py``;
3. generation with the page read once through the decoder's cross-attention, and the tokens turned
   back into JSON.

Run: ``python examples/donut_docvqa.py`` (200 steps, about 15 s on 2 CPU cores: the loss falls to
about 0.005 and both pages are answered right, ``12`` and ``7``); ``--smoke`` runs 2 steps, for CI.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

import vlmzoo

TASK_TOKENS = ["<sep/>", "<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>", "</s_answer>"]


def tiny_tokenizer():
    """mBART's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3) over byte-level BPE + Donut's DocVQA tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    vocab = {s: i for i, s in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for c in sorted(ByteLevel.alphabet()):
        vocab.setdefault(c, len(vocab))
    tok = GPT2Tokenizer(
        vocab=vocab, merges=[], bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tok.add_special_tokens({"additional_special_tokens": TASK_TOKENS})
    return tok


def page(total: str) -> Image.Image:
    """A page with its total in large type (legible on the tiny 192x128 canvas)."""
    image = Image.new("RGB", (400, 600), "white")
    ImageDraw.Draw(image).text((40, 200), total, fill="black", font=ImageFont.load_default(size=220))
    return image


def main(steps: int = 200) -> dict:
    torch.manual_seed(0)
    model = vlmzoo.create_model("tiny-donut")  # donut-base at real size
    processor = vlmzoo.create_processor("tiny-donut", tokenizer=tiny_tokenizer())
    pages = [page("12"), page("7")]
    targets = [{"question": "total?", "answer": "12"}, {"question": "total?", "answer": "7"}]

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = processor.training_batch(pages, targets, task="docvqa", generator=generator)
        loss = model(
            batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    batch = processor(pages, task="docvqa", question="total?")
    generated = model.generate(
        batch["pixel_values"], batch["input_ids"], batch["attention_mask"], max_new_tokens=8
    )
    answers = processor.batch_postprocess(generated, batch["input_ids"])
    for answer in answers:
        print(answer)
    return {"loss": float(loss.detach()), "answers": answers}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 steps (the answers are then random)")
    args = parser.parse_args()
    main(2 if args.smoke else args.steps)
