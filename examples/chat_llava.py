"""LLaVA-1.5 from name to answer: the published pipeline around a converted transformers model.

A real run loads ``llava-hf/llava-1.5-7b-hf`` (``LlavaForConditionalGeneration.from_pretrained``)
and its tokenizer; here both are tiny and random, written on the spot, so the example runs
offline in a second. What it shows is the same at any size:

1. the weights: a transformers LLaVA converted with ``vlmzoo.convert.from_transformers``;
2. the pipeline: ``vlmzoo.create_processor`` — LLaVA's pad-to-square with the CLIP mean colour,
   the CLIP recipe, the ``vicuna_v1`` conversation with ``<image>`` before the first question;
3. one call from image to answer, streamed token by token, then a second turn with history;
4. the model and its processor saved side by side, and the ``vlmzoo chat`` job run on them.

Run: ``python examples/chat_llava.py`` (``--smoke``: 2 new tokens, for CI).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlmzoo
from vlmzoo.recipes.chat import run_chat


def tiny_tokenizer():
    """A Llama tokenizer over single characters (byte fallback), with ``<image>`` as id 3."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3}
    vocab |= {f"<0x{b:02X}>": 4 + b for b in range(256)}
    for piece in ["▁", *string.ascii_letters, *string.digits, *".,:?!'"]:
        vocab.setdefault(piece, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def tiny_llava(image_token_id: int, vocab_size: int):
    """A random ``LlavaForConditionalGeneration``: CLIP 32 px / patch 8 (16 image tokens), 2-layer Llama."""
    import transformers

    config = transformers.LlavaConfig(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=512,
        ),
        image_token_id=image_token_id,
        image_seq_length=16,
    )
    return transformers.LlavaForConditionalGeneration(config).eval()


def main(out: str = "chat_llava", max_new_tokens: int = 8) -> dict:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    hf = tiny_llava(tokenizer.convert_tokens_to_ids("<image>"), vocab_size=len(tokenizer))
    model = vlmzoo.convert.from_transformers(hf).eval()  # same weights, same logits

    # "llava-1.5-7b" at 336 px for the real model; "tiny-llava" is the same recipe at 32 px.
    processor = vlmzoo.create_processor("tiny-llava", tokenizer=tokenizer)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    print(processor.prompt("What is in the picture?", num_images=1))

    pieces: list[str] = []
    answer = vlmzoo.chat(
        model,
        processor,
        image,
        "What is in the picture?",
        stream=pieces.append,
        max_new_tokens=max_new_tokens,
    )
    history = [("user", "What is in the picture?"), ("assistant", answer)]
    follow_up = vlmzoo.chat(model, processor, image, "And its colour?", history=history, max_new_tokens=4)

    # Save the model first: vlmzoo.save replaces the whole directory, then the processor beside it.
    vlmzoo.save(model, out)
    processor.save_pretrained(out)
    image_path = Path(out).parent / "picture.png"
    image.save(image_path)
    again = run_chat(out, [str(image_path)], "What is in the picture?", max_new_tokens=max_new_tokens)
    return {"answer": answer, "streamed": "".join(pieces), "follow_up": follow_up, "reloaded": again[0]}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="chat_llava", help="where the model and its processor are saved")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 new tokens")
    args = parser.parse_args()
    print(main(args.out, 2 if args.smoke else args.max_new_tokens))
