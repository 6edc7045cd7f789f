"""Loss curves of the recipes' runs, as PNG files (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path


def plot_losses(curves: dict[str, tuple[list[int], list[float]]], path: Path, title: str) -> None:
    """One line per run (label -> (steps, training losses)) on a log scale, saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the recipes run on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for label, (steps, losses) in curves.items():
            ax.plot(steps, losses, label=label)
        ax.set(xlabel="step", ylabel="training loss", title=title, yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
