"""Peak memory and time of loading a checkpoint: ``vlmzoo.load`` against transformers' ``from_pretrained``.

Two models in bf16, each written once in both formats with the same weights: the CLIP
ViT-L/14-336 vision tower (304M parameters, 0.61 GB) and a LLaVA-style VLM of 1.9B parameters
(that tower, the two-layer MLP projector and a Qwen2-1.5B-sized decoder; 3.8 GB). transformers'
copy is ``save_pretrained`` of ``CLIPVisionModelWithProjection`` / ``LlavaForConditionalGeneration``,
vlmzoo's is ``vlmzoo.save`` of ``vlmzoo.convert.from_transformers`` of it.

Every load runs in a fresh process (``--rounds`` times per case, the cases interleaved so that
machine noise hits them alike; the files are read once beforehand, so they come from the page
cache, not the disk). The child measures, after its imports: the wall time of the load call, and
the peak resident memory above what it held before the call (the kernel's high-water mark,
reset through ``/proc/self/clear_refs``), once right after loading and once after every weight
has been read (a sum over all parameters: safetensors maps files lazily, so a load that has not
touched its pages would look free). Resident memory counts the file pages the weights are mapped
from, so 1.0x the checkpoint's bytes is what holding the weights costs.

    python benchmarks/load_memory.py                  # both models, 3 rounds
    python benchmarks/load_memory.py --models encoder --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/tmp/vlmzoo-bench-load")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _age() -> float:
    """Seconds since this process started (the kernel's start time, in clock ticks since boot)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def child(library: str, model: str, threads: int) -> None:
    """One load in this process; prints a JSON line."""
    import torch

    torch.set_num_threads(threads)
    directory = ROOT / model / library.split("-")[0]
    if library.startswith("vlmzoo"):
        import vlmzoo

        vlmzoo.list_models()  # the registry's walk imports the model modules (transformers' import of
        if model == "vlm":  # the decoder class is on the other side too)
            import transformers

            _ = transformers.Qwen2ForCausalLM

        def load() -> torch.nn.Module:
            return vlmzoo.load(directory, verify=library != "vlmzoo-noverify")
    else:
        import transformers

        cls = getattr(
            transformers,
            "CLIPVisionModelWithProjection" if model == "encoder" else "LlavaForConditionalGeneration",
        )

        def load() -> torch.nn.Module:
            return cls.from_pretrained(directory, dtype=torch.bfloat16)

    before = _rss()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    start = time.perf_counter()
    module = load()
    seconds = time.perf_counter() - start
    loaded = _hwm() - before
    with torch.no_grad():
        total = sum(float(p.sum(dtype=torch.float32)) for p in module.parameters())
    touched = _hwm() - before
    process = _age() - (time.perf_counter() - start - seconds)  # up to the end of the load call
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    print(
        json.dumps(
            {
                "process": process,
                "seconds": seconds,
                "loaded": loaded,
                "touched": touched,
                "bytes": nbytes,
                "sum": total,
            }
        )
    )


def prepare(model: str) -> None:
    """Write both formats of ``model`` once (random weights, bf16)."""
    import torch
    import transformers

    import vlmzoo

    out = ROOT / model
    if (out / "vlmzoo" / "config.json").is_file() and (out / "transformers" / "config.json").is_file():
        return
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    if model == "encoder":
        config, cls = vision, transformers.CLIPVisionModelWithProjection
    else:
        text = transformers.Qwen2Config(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
        config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=151646)
        cls = transformers.LlavaForConditionalGeneration
    hf = cls._from_config(config, dtype=torch.bfloat16).eval()
    hf.save_pretrained(out / "transformers")
    vlmzoo.save(vlmzoo.convert.from_transformers(hf), out / "vlmzoo")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["encoder", "vlm"], choices=["encoder", "vlm"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return

    import torch
    from machine import cpu_name

    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads")
    libraries = ["vlmzoo", "vlmzoo-noverify", "transformers"]
    for model in args.models:
        prepare(model)
        for library in ("vlmzoo", "transformers"):  # into the page cache
            for path in (ROOT / model / library).iterdir():
                path.read_bytes()
        results: dict[str, list[dict]] = {lib: [] for lib in libraries}
        for _ in range(args.rounds):
            for library in libraries:
                line = (
                    subprocess.run(
                        [sys.executable, __file__, "--child", library, model, "--threads", str(args.threads)],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                results[library].append(json.loads(line))
        sums = {lib: runs[0]["sum"] for lib, runs in results.items()}
        assert len({round(s, 1) for s in sums.values()}) == 1, f"the loads differ: {sums}"
        nbytes = results["vlmzoo"][0]["bytes"]
        print(f"\n{model}: {nbytes / 1e9:.2f} GB of bf16 parameters; median of {args.rounds} fresh processes")
        print(
            "| load | load call (s) | process start to loaded (s) | peak extra, loaded | "
            "peak extra, every weight read | x checkpoint |"
        )
        print("|---|---|---|---|---|---|")
        for library, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            process = statistics.median(r["process"] for r in runs)
            loaded = statistics.median(r["loaded"] for r in runs)
            touched = statistics.median(r["touched"] for r in runs)
            print(
                f"| {library} | {seconds:.2f} | {process:.2f} | {loaded / 1e9:.2f} GB | {touched / 1e9:.2f} GB | "
                f"{touched / nbytes:.2f} |"
            )
        ratio = statistics.median(r["seconds"] for r in results["vlmzoo"]) / statistics.median(
            r["seconds"] for r in results["transformers"]
        )
        print(f"time vlmzoo / transformers: {ratio:.2f}")


if __name__ == "__main__":
    main()
