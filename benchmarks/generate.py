"""Greedy generation speed: vlmzoo's VisionLanguageModel vs transformers' LLaVA, same weights.

A small random LLaVA (CLIP tower + MLP projector + Llama) is built in transformers, converted
with ``vlmzoo.convert.from_transformers``, checked to produce the same tokens, then both
generate ``--new-tokens`` tokens greedily for a batch of ``--batch`` prompts (one image each),
KV cache on. Runs alternate between the two implementations so machine noise hits both alike;
the table reports median tokens/s and the ratio vlmzoo / transformers (> 1 = vlmzoo faster).

    python benchmarks/generate.py            # batch 4, 64 new tokens, 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

import vlmzoo


def build(width: int, layers: int) -> tuple[torch.nn.Module, torch.nn.Module, int, int]:
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        image_size=224,
        patch_size=16,
    )
    text = dict(
        model_type="llama",
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        num_key_value_heads=width // 64,
        vocab_size=32064,
    )
    image_id, tokens = 32000, (224 // 16) ** 2
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_id, image_seq_length=tokens
    )
    hf = transformers.LlavaForConditionalGeneration(config).eval()
    return hf, vlmzoo.convert.from_transformers(hf).eval(), image_id, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hf, ours, image_id, m = build(args.width, args.layers)
    ids = torch.randint(3, 32000, (args.batch, args.prompt_tokens + m))
    ids[:, 1 : 1 + m] = image_id
    pixels = torch.randn(args.batch, 3, 224, 224)
    kwargs = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0
    )

    def run_hf() -> torch.Tensor:
        return hf.generate(pixel_values=pixels, input_ids=ids, **kwargs)[:, ids.shape[1] :]

    def run_ours() -> torch.Tensor:
        return ours.generate(pixels, ids, **kwargs)

    with torch.inference_mode():
        same = torch.equal(run_hf(), run_ours())
        print(f"same greedy tokens: {same}")
        times: dict[str, list[float]] = {"transformers": [], "vlmzoo": []}
        for _ in range(args.repeats):
            for name, fn in (("transformers", run_hf), ("vlmzoo", run_ours)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    generated = args.batch * args.new_tokens
    print(
        f"\nLLaVA width {args.width}, {args.layers}+{args.layers} layers, batch {args.batch}, "
        f"{args.new_tokens} new tokens, {m} image tokens, {args.threads} threads, {args.repeats} runs"
    )
    print(f"{'implementation':<16}{'median s':>10}{'tokens/s':>12}")
    rate = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rate[name] = generated / med
        print(f"{name:<16}{med:>10.3f}{rate[name]:>12.1f}")
    print(
        f"\nratio vlmzoo / transformers (tokens/s): {rate['vlmzoo'] / rate['transformers']:.3f}  (target >= 1.0)"
    )


if __name__ == "__main__":
    main()
