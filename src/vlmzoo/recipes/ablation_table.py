"""The results of an ablation grid: runs grouped into cells, mean and spread over seeds, tables.

A *run* is one combination of parts trained with one seed (its ``result.json``); a *cell* is one
combination over all its seeds. Per cell the table gives the sizes (trainable and total
parameters, visual tokens per image, forward GFLOPs per sample: the same for every seed), the
costs (median step time, peak extra memory of one step: means over seeds) and the outcomes (final
training loss and held-out exact match: mean ± sample standard deviation over seeds, ddof 1;
one seed has no spread). The same table is written as Markdown, CSV (mean and std in columns of
their own) and a LaTeX ``tabular`` (booktabs rules).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# What a finished run's result holds beside its identity, and how a cell combines it.
SIZES = ("params", "trainable_params", "visual_tokens", "gflops_per_sample")
COSTS = ("step_ms", "peak_memory_mib")
OUTCOMES = ("final_loss", "val_exact_match", "val_attribute_match")
PARTS = ("encoder", "adapter", "decoder")

HEADINGS = {
    "encoder": "encoder",
    "adapter": "adapter",
    "decoder": "decoder",
    "seeds": "seeds",
    "params": "trainable / total params",
    "visual_tokens": "visual tokens",
    "gflops_per_sample": "GFLOPs / sample",
    "step_ms": "step (ms)",
    "peak_memory_mib": "peak memory (MiB)",
    "final_loss": "final loss",
    "val_exact_match": "val_exact_match",
    "val_attribute_match": "val_attribute_match",
}


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one outcome over seeds (``std`` NaN for one seed)."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values]
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std)

    def text(self, digits: int = 4, plus_minus: str = " ± ") -> str:
        if math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f}{plus_minus}{self.std:.{digits}f}"


def cell_rows(results: Iterable[dict]) -> list[dict]:
    """One row per cell (in the order cells first appear) from finished runs' results.

    A row holds the parts, ``seeds`` (how many finished), the sizes, the costs (means) and per
    outcome its mean under the outcome's name and its standard deviation under ``NAME_std``.
    """
    cells: dict[tuple[str, ...], list[dict]] = {}
    for result in results:
        cells.setdefault(tuple(result[p] for p in PARTS), []).append(result)
    rows = []
    for parts, runs in cells.items():
        row: dict = dict(zip(PARTS, parts, strict=True))
        row["seeds"] = len(runs)
        row.update({name: runs[0][name] for name in SIZES})
        for name in COSTS:
            known = [r[name] for r in runs if r.get(name) is not None]
            row[name] = round(statistics.fmean(known), 3) if known else None
        for name in OUTCOMES:
            spread = Spread.of([r[name] for r in runs])
            row[name] = round(spread.mean, 4)
            row[f"{name}_std"] = None if math.isnan(spread.std) else round(spread.std, 4)
        rows.append(row)
    return rows


def _cells(row: dict, plus_minus: str) -> list[str]:
    """The table's cells for one row, as text."""
    out = [row["encoder"], row["adapter"], row["decoder"], str(row["seeds"])]
    out.append(f"{_millions(row['trainable_params'])} / {_millions(row['params'])}")
    out.append(str(row["visual_tokens"]))
    out.append(f"{row['gflops_per_sample']:.3f}")
    out += ["n/a" if row[name] is None else f"{row[name]:.1f}" for name in COSTS]
    for name in OUTCOMES:
        std = row[f"{name}_std"]
        out.append(Spread(row[name], math.nan if std is None else std).text(plus_minus=plus_minus))
    return out


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def markdown_table(rows: Sequence[dict], notes: Sequence[str] = ()) -> str:
    """The cells as a Markdown table, then ``notes`` (one paragraph each)."""
    lines = ["| " + " | ".join(HEADINGS.values()) + " |", "|" + "---|" * len(HEADINGS)]
    lines += ["| " + " | ".join(_cells(row, " ± ")) + " |" for row in rows]
    return "\n".join(lines) + "".join(f"\n\n{note}" for note in notes) + "\n"


def csv_table(rows: Sequence[dict]) -> str:
    """The cells as CSV: one column per field, outcome spreads in ``NAME_std`` columns."""
    text = io.StringIO(newline="")
    fields = list(rows[0]) if rows else [*PARTS, "seeds", *SIZES, *COSTS, *OUTCOMES]
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def runs_csv(results: Sequence[dict], fields: Sequence[str]) -> str:
    """One CSV row per run (a cell and a seed) with ``fields`` of its result."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    return text.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (names like ``mlp2x_gelu`` hold ``_``)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def latex_table(rows: Sequence[dict], caption: str) -> str:
    """The cells as a LaTeX ``table`` with a booktabs ``tabular`` (``\\usepackage{booktabs}``)."""
    headings = [latex_escape(h) for h in HEADINGS.values()]
    body = []
    for row in rows:
        cells = _cells(row, r" \pm ")
        parts = [latex_escape(c) for c in cells[: len(PARTS)]]
        rest = [f"${c}$" if r"\pm" in c else latex_escape(c) for c in cells[len(PARTS) :]]
        body.append(" & ".join(parts + rest) + r" \\")
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            r"\begin{tabular}{lll" + "r" * (len(HEADINGS) - len(PARTS)) + "}",
            r"\toprule",
            " & ".join(headings) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{latex_escape(caption)}}}",
            r"\end{table}",
            "",
        ]
    )
