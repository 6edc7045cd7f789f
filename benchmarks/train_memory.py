"""Training-step memory and time: full fine-tuning vs gradient checkpointing vs LoRA (peft).

A small LLaVA-shaped VLM (ViT at 224 px + MLP projector + Llama) trains with AdamW on random
images and text, every part trainable. Four cases, each in a fresh process so that one case's
allocations cannot hide in another's peak:

- ``full``: every parameter trains;
- ``full+ckpt``: the same with per-block gradient checkpointing (encoder, adapter, decoder);
- ``lora``: LoRA r=16 on the attention and MLP projections of the ViT and the LM, projector
  fully trained (``modules_to_save``), the rest frozen;
- ``lora+ckpt``: LoRA with gradient checkpointing.

Memory is the peak resident memory that training steps add: ``ru_maxrss`` after two steps minus
the resident size before the first (model built, optimizer created); the optimizer states, a real
cost that LoRA mostly avoids, are included. It is measured in a process of its own with glibc's
mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): every tensor then gets pages of its
own that go back to the system when it is freed, so resident memory follows the live tensors
(with glibc's default, adaptive threshold, freed activations stay resident and the peak reads
~25% high for some cases and not others). Time is measured in another process with the default
allocator: the median of ``--steps`` steps after one warm-up step. Cases run in turn for
``--rounds`` rounds (order alternating) so machine noise hits all alike; the table reports
medians over rounds and ratios to ``full`` measured in the same run.

    python benchmarks/train_memory.py                 # batch 8, 2 threads, 2 rounds
    python benchmarks/train_memory.py --case lora     # one case, one process (what the runner calls)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CASES = ("full", "full+ckpt", "lora", "lora+ckpt")
IMAGE_TOKEN = -200


def build(args: argparse.Namespace) -> torch.nn.Module:
    from vlmzoo.decoders.hf import DecoderConfig
    from vlmzoo.models.vlm import VisionLanguageModel, VLMConfig
    from vlmzoo.registry import get_entry

    encoder = get_entry("clip-vit-b16", "encoder").config.replace(
        width=args.width, depth=args.layers, num_heads=args.width // 64, embed_dim=None, pool="none"
    )
    decoder = DecoderConfig(
        "llama",
        dict(
            hidden_size=args.width,
            intermediate_size=4 * args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=args.width // 64,
            num_key_value_heads=args.width // 64,
            vocab_size=8000,
        ),
    )
    config = VLMConfig(
        encoder=encoder,
        adapter=get_entry("mlp2x_gelu", "adapter").config,
        decoder=decoder,
        image_token_id=IMAGE_TOKEN,
        train_encoder="full",
        train_decoder="full",
    )
    torch.manual_seed(0)
    return VisionLanguageModel(config)


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Build, then run one case: two steps for ``--measure memory``, a warm-up and ``args.steps``
    timed steps for ``--measure time``; returns its measurements."""
    torch.set_num_threads(args.threads)
    model = build(args)
    if case.endswith("+ckpt"):
        model.set_grad_checkpointing(True)
    if case.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        targets = ["qkv", "proj", "fc1", "fc2", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]
        targets += ["up_proj", "down_proj"]
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, modules_to_save=["adapter"])
        model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.batch, 3, 224, 224, generator=g)
    ids = torch.randint(0, 8000, (args.batch, args.text_tokens), generator=g)
    ids[:, 1] = IMAGE_TOKEN
    labels = ids.clamp(min=0)

    def step() -> float:
        start = time.perf_counter()
        loss = model(pixels, ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    result = {
        "case": case,
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in model.parameters()),
    }
    if args.measure == "memory":
        before = _rss_bytes()
        step()  # allocates the optimizer states, which are live during the second step
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {**result, "peak_mib": (peak - before) / 2**20}
    step()  # warm-up
    return {**result, "step_s": statistics.median(step() for _ in range(args.steps))}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample (+196 image)")
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print JSON")
    parser.add_argument("--measure", choices=["memory", "time"], default="time", help="with --case")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return

    from machine import cpu_name

    skip = ("case", "rounds", "measure")
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip]
    mmap_every_tensor = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results: dict[str, list[dict]] = {c: [] for c in CASES}
    for r in range(args.rounds):
        for case in CASES if r % 2 == 0 else reversed(CASES):
            measured = {}
            for measure, env in (("memory", mmap_every_tensor), ("time", os.environ)):
                out = subprocess.run(
                    [sys.executable, str(Path(__file__)), "--case", case, "--measure", measure, *forwarded],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                measured.update(json.loads(out.stdout.strip().splitlines()[-1]))
            results[case].append(measured)
            print(
                f"round {r + 1}: {case:<10} {measured['peak_mib']:.0f} MiB, {measured['step_s']:.2f} s/step",
                file=sys.stderr,
            )

    def median(case: str, key: str) -> float:
        return statistics.median(m[key] for m in results[case])

    print(
        f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; batch {args.batch}, "
        f"{196 + args.text_tokens} tokens, width {args.width}, {args.layers}+{args.layers} layers; "
        f"median of {args.rounds} rounds"
    )
    print(f"{'case':<11}{'trainable':>12}{'peak MiB':>10}{'x full':>8}{'s/step':>8}{'x full':>8}")
    base_mem, base_time = median("full", "peak_mib"), median("full", "step_s")
    for case in CASES:
        mem, step = median(case, "peak_mib"), median(case, "step_s")
        trainable = results[case][0]["trainable"] / results[case][0]["total"]
        print(
            f"{case:<11}{trainable:>11.1%}{mem:>10.0f}{mem / base_mem:>8.2f}{step:>8.2f}{step / base_time:>8.2f}"
        )


if __name__ == "__main__":
    main()
