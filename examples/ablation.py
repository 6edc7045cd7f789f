"""Architecture ablation: the same data, budget and seed over adapters x decoders.

python examples/ablation.py --steps 300
"""

from __future__ import annotations

import argparse

from vlmzoo.recipes.ablation import run_ablation


def main(steps: int = 300, out: str = "runs/ablation_example") -> list[dict]:
    # overwrite=True replaces the example's own earlier grid (vlmzoo deletes only files it wrote);
    # without it, running the example again continues the grid in `out`.
    return run_ablation(
        ["clip-vit-tiny"],
        ["linear", "mlp2x_gelu"],
        ["tiny-llama", "tiny-qwen2"],
        out=out,
        steps=steps,
        overwrite=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
