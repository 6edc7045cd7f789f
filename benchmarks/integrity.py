"""What checkpoint integrity checking costs: save and load of a large checkpoint, verify on vs off.

A CLIP ViT-L/14 vision tower (304M parameters, 1.22 GB in float32 at the default ``--depth 24``;
``--depth 12`` is about 0.6 GB, ``--depth 48`` about 2.4 GB) is saved once, then loaded
``--rounds`` times with ``verify=True`` and ``verify=False`` alternately (so machine noise hits
both alike; the files stay in the page cache, so the times are CPU and memory, not disk). The
parts are timed on their own too, on the weights in memory: the SHA-256 of the tensors and the
scan for non-finite weights (the two checks ``verify=False`` skips), building the model on the
meta device and comparing every shape and dtype with the file headers (always on), and
building the model for real (its random initialisation, overwritten by the weights; not part of
the checks).

    python benchmarks/integrity.py                 # 1.22 GB, 3 rounds, 2 threads
    python benchmarks/integrity.py --depth 48      # 2.4 GB
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import vlmzoo
from vlmzoo.registry import get_architecture
from vlmzoo.weights import format as fmt


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=24, help="blocks of the ViT-L/14 (24: 1.22 GB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from machine import cpu_name

    model = vlmzoo.create_encoder("clip-vit-l14", depth=args.depth).eval()
    state = model.state_dict()
    gb = sum(v.numel() * v.element_size() for v in state.values()) / 1e9
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads")
    print(
        f"clip-vit-l14 depth {args.depth}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{gb:.2f} GB"
    )

    with tempfile.TemporaryDirectory(prefix="vlmzoo-integrity-") as tmp:
        directory = Path(tmp) / "ckpt"
        save_s = timed(lambda: vlmzoo.save(model, directory))
        times: dict[str, list[float]] = {"sha256": [], "non-finite scan": [], "meta checks": []}
        times["build for real"] = []
        times |= {"load, verify=True": [], "load, verify=False": []}
        document = fmt.read_config(directory)
        cls = get_architecture(document["architecture"])
        config = cls.config_class.from_dict(document["config"])
        for k in range(args.rounds):
            order = (True, False) if k % 2 == 0 else (False, True)
            for verify in order:
                times[f"load, verify={verify}"].append(
                    timed(lambda verify=verify: vlmzoo.load(directory, verify=verify))
                )
            times["sha256"].append(timed(lambda: fmt.tensors_sha256(state)))
            times["non-finite scan"].append(timed(lambda: fmt._non_finite(state)))

            def meta_checks() -> None:
                checkpoint = fmt._open_checkpoint(directory, document)
                fmt._check_fit(fmt._build_on_meta(cls, config, checkpoint), checkpoint)
                fmt._check_records(checkpoint, cls.__name__)

            times["meta checks"].append(timed(meta_checks))
            times["build for real"].append(timed(lambda: cls(config)))

    print(f"\nsave (includes one SHA-256 pass): {save_s:.2f} s ({save_s / gb:.2f} s/GB)")
    print(f"\n{'median of ' + str(args.rounds):<24}{'s':>8}{'s/GB':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24}{med:>8.2f}{med / gb:>8.2f}")
    on, off = statistics.median(times["load, verify=True"]), statistics.median(times["load, verify=False"])
    print(
        f"\nverify=True / verify=False load time: {on / off:.2f}x "
        f"(+{on - off:.2f} s, {(on - off) / gb:.2f} s/GB)"
    )


if __name__ == "__main__":
    main()
