"""Architecture ablation: the same data, budget and seed over adapters x decoders.

python examples/ablation.py --steps 300
"""

from __future__ import annotations

import argparse
import shutil

from vlmzoo.recipes.ablation import run_ablation


def main(steps: int = 300, out: str = "runs/ablation_example") -> list[dict]:
    shutil.rmtree(out, ignore_errors=True)
    return run_ablation(
        ["clip-vit-tiny"], ["linear", "mlp2x_gelu"], ["tiny-llama", "tiny-qwen2"], out=out, steps=steps
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
