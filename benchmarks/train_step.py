"""One training step of a small LLaVA-style VLM: vlmzoo vs transformers' LlavaForConditionalGeneration.

A random ``LlavaForConditionalGeneration`` (CLIP vision tower + 2-layer GELU projector + Llama)
is built in transformers and converted with ``vlmzoo.convert.from_transformers``, then deep-copied
so that the two models hold equal but separate weights. Both train the way LLaVA-1.5's second
stage does (vision tower frozen; projector and LM trained; llava/train/train.py). The script first
checks that the losses agree (max abs diff <= 1e-4, fp32), then times one optimizer step
(``zero_grad``, forward with labels, ``backward``, ``AdamW.step``) of each, interleaved with the
starting implementation rotating every round, and reports medians, the paired ratio, and the
peak of extra memory during one step (the running-sum peak of the CPU allocator records of
``torch.profiler``: ``peak_extra_bytes`` of benchmarks/focused_linear_attention.py).

    python benchmarks/train_step.py --threads 1            # tiny and ~100M, eager
    python benchmarks/train_step.py --sizes tiny --compile  # torch.compile too
    python benchmarks/train_step.py --quick                 # smoke test (tiny, 2 rounds)
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time

import torch
import transformers
from focused_linear_attention import peak_extra_bytes
from machine import cpu_name

import vlmzoo

TOLERANCE = 1e-4
IMAGE_TOKEN = 1000  # the last row of the vocabulary (transformers' processors put placeholders there)

# name -> (vision width, vision layers, image size, patch, text width, text layers, intermediate, vocab)
SIZES: dict[str, tuple[int, int, int, int, int, int, int, int]] = {
    "tiny": (64, 2, 32, 8, 64, 2, 172, 1001),
    "100m": (384, 6, 224, 16, 768, 6, 2048, 32001),
}


def build(size: str) -> tuple[torch.nn.Module, torch.nn.Module, int, int]:
    """(transformers LLaVA, vlmzoo copy, image tokens per image, vocab) with equal weights."""
    vw, vl, image, patch, tw, tl, inter, vocab = SIZES[size]
    vision = dict(
        hidden_size=vw,
        intermediate_size=4 * vw,
        num_hidden_layers=vl,
        num_attention_heads=max(vw // 64, 1),
        image_size=image,
        patch_size=patch,
    )
    text = dict(
        model_type="llama",
        hidden_size=tw,
        intermediate_size=inter,
        num_hidden_layers=tl,
        num_attention_heads=max(tw // 64, 1),
        num_key_value_heads=max(tw // 64, 1),
        vocab_size=vocab,
    )
    tokens = (image // patch) ** 2
    image_id = vocab - 1
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_id, image_seq_length=tokens
    )
    hf = transformers.LlavaForConditionalGeneration(config)
    ours = copy.deepcopy(vlmzoo.convert.from_transformers(hf))
    for p in hf.model.vision_tower.parameters():
        p.requires_grad_(False)
    ours.set_trainable(encoder="frozen", adapter="full", decoder="full")
    return hf.train(), ours.train(), tokens, image_id


def batch(b: int, text: int, tokens: int, image_id: int, vocab: int) -> dict[str, torch.Tensor]:
    """[image placeholders x tokens][text] per sample; labels score the text only."""
    ids = torch.randint(0, vocab - 1, (b, tokens + text))
    ids[:, :tokens] = image_id
    labels = ids.masked_fill(ids == image_id, -100)
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids))


class Step:
    """One optimizer step of one model on fixed inputs (``prepare`` drops the gradients)."""

    def __init__(self, model: torch.nn.Module, forward, inputs: dict[str, torch.Tensor]):
        self.model, self.forward, self.inputs = model, forward, inputs
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def prepare(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        self.prepare()
        self.forward(**self.inputs).loss.backward()
        self.opt.step()


def run_size(size: str, compile_: bool, args: argparse.Namespace) -> bool:
    torch.manual_seed(args.seed)
    hf, ours, tokens, image_id = build(size)
    vocab = SIZES[size][-1]
    x = batch(args.batch, args.text, tokens, image_id, vocab)
    pixels = torch.randn(args.batch, 3, SIZES[size][2], SIZES[size][2])
    params = sum(p.numel() for p in hf.parameters())
    trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    mode = "torch.compile" if compile_ else "eager"
    print(
        f"\n== {size}: {params / 1e6:.1f}M parameters ({trainable / 1e6:.1f}M trained), {mode}, "
        f"batch {args.batch}, sequence {tokens} image + {args.text} text tokens"
    )
    fwd_hf = torch.compile(hf) if compile_ else hf
    fwd_ours = torch.compile(ours) if compile_ else ours
    loss_hf = fwd_hf(pixel_values=pixels, **x).loss
    loss_ours = fwd_ours(pixel_values=pixels, **x).loss
    diff = (loss_hf - loss_ours).abs().item()
    ok = diff <= TOLERANCE
    print(
        f"  loss transformers {loss_hf.item():.6f}, vlmzoo {loss_ours.item():.6f}: max abs diff "
        f"{diff:.2e} (tol {TOLERANCE:.0e})  {'ok' if ok else 'FAIL'}"
    )
    if not ok:
        return False
    inputs = dict(pixel_values=pixels, **x)
    steps = {"transformers": Step(hf, fwd_hf, inputs), "vlmzoo": Step(ours, fwd_ours, inputs)}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    times: dict[str, list[float]] = {n: [] for n in steps}
    names = list(steps)
    gc.collect()
    for r in range(args.rounds):
        for i in range(len(names)):
            n = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    peak = {n: peak_extra_bytes(s) for n, s in steps.items()}
    med = {n: statistics.median(t) for n, t in times.items()}
    for n in names:
        print(
            f"  {n:<13} median {1e3 * med[n]:9.1f} ms  min {1e3 * min(times[n]):9.1f} ms  "
            f"peak extra {peak[n] / 2**20:8.1f} MiB"
        )
    paired = statistics.median(a / b for a, b in zip(times["vlmzoo"], times["transformers"], strict=True))
    print(
        f"  vlmzoo / transformers: time {med['vlmzoo'] / med['transformers']:.3f}x of medians, "
        f"{paired:.3f}x paired (goal <= 1.0x); peak memory "
        f"{peak['vlmzoo'] / peak['transformers']:.3f}x (goal <= 1.0x)"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,100m", help="comma-separated, of " + ", ".join(SIZES))
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--text", type=int, default=64, help="text tokens per sample")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny, eager, 2 rounds, 1 warmup")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup = "tiny", 1
    args.rounds = args.rounds or (2 if args.quick else 10)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}; cpu: {cpu_name()}; "
        f"threads {args.threads}; fp32; AdamW; vision tower frozen"
    )
    ok = True
    for size in args.sizes.split(","):
        for compile_ in (False, True) if args.compile else (False,):
            ok &= run_size(size, compile_, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
