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


def plot_ablation(
    curves: dict[str, list[tuple[list[int], list[float]]]],
    scores: dict[str, dict[str, tuple[float, float]]],
    baseline: dict[str, float],
    path: Path,
    title: str,
) -> None:
    """Left: training loss per cell (label -> one (steps, losses) per seed), the mean over seeds
    with a band of ± one standard deviation. Right: held-out scores per cell (label -> metric ->
    (mean, std); NaN std for one seed) as bars with error bars, and ``baseline`` (metric -> score of
    a model that ignores the image) as dashed lines. Saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = list(next(iter(scores.values()))) if scores else []
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(3, 2))
    try:
        for label, runs in curves.items():
            length = min(len(losses) for _, losses in runs)  # a seed resumed later may be shorter
            steps = np.asarray(runs[0][0][:length])
            losses = np.asarray([losses[:length] for _, losses in runs])
            mean = losses.mean(axis=0)
            (line,) = loss_ax.plot(steps, mean, label=label)
            if len(runs) > 1:
                std = losses.std(axis=0, ddof=1)
                # The band of a log-scale plot must stay positive.
                low = np.clip(mean - std, mean * 0.05, None)
                loss_ax.fill_between(steps, low, mean + std, color=line.get_color(), alpha=0.2)
        loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss (mean ± std)")
        loss_ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=7)

        labels = list(scores)
        width = 0.8 / max(1, len(metrics))
        y = np.arange(len(labels))
        for i, metric in enumerate(metrics):
            means = [scores[label][metric][0] for label in labels]
            stds = [
                0.0 if np.isnan(scores[label][metric][1]) else scores[label][metric][1] for label in labels
            ]
            bars = score_ax.barh(y + i * width, means, width, xerr=stds, capsize=3, label=metric)
            if metric in baseline:
                score_ax.axvline(
                    baseline[metric],
                    color=bars.patches[0].get_facecolor(),
                    linestyle="--",
                    linewidth=1,
                    label=f"{metric}, no image",
                )
        score_ax.set_yticks(y + width * (len(metrics) - 1) / 2, labels, fontsize=7)
        score_ax.invert_yaxis()
        score_ax.set(xlabel="held-out exact match", xlim=(0, 1), title="held-out scores (mean ± std)")
        score_ax.grid(alpha=0.3, axis="x")
        score_ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
