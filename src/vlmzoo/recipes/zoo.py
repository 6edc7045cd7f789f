"""The zoo in words: one model's size facts (``vlmzoo info``) and the table of every name (``vlmzoo zoo``).

Sizes come from :func:`vlmzoo.models.summary.summarize` (the meta device: no weights allocated).
"""

from __future__ import annotations

from vlmzoo.errors import VlmzooError
from vlmzoo.models.summary import ModelSummary, summarize
from vlmzoo.registry import KINDS, get_entry, list_models

ZOO_HEADER = (
    "# Model zoo\n\n"
    "Generated from the registry by `vlmzoo zoo` (sizes computed on the meta device; "
    "GFLOPs count 2 per multiply-add, for one image at the native size).\n"
)


def format_count(n: int) -> str:
    """``86_192_640 -> '86.19M'``: a count with a B/M/K suffix and two decimals."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _size(size: int | tuple[int, int] | None) -> str:
    """``336`` or ``(2560, 1920) -> '2560x1920'`` (height x width)."""
    return f"{size[0]}x{size[1]}" if isinstance(size, tuple | list) else str(size)


def summary_text(s: ModelSummary) -> str:
    """The lines ``vlmzoo info`` prints for one model."""
    lines = [
        f"{s.name}  ({s.kind}, {s.architecture})  {s.description}",
        f"  parameters        {s.parameters:,} ({format_count(s.parameters)})",
    ]
    if s.tokens_per_image is not None:
        lines += [
            f"  image size        {_size(s.image_size)} px",
            f"  tokens per image  {s.tokens_per_image}",
            f"  GFLOPs per image  {s.gflops_per_image:.2f}  (2 FLOPs per multiply-add)",
        ]
    return "\n".join(lines)


def zoo_markdown() -> tuple[str, dict[str, str]]:
    """The markdown table of every registered name, by kind; and the names without a size of their own.

    An adapter without fixed widths (the VLM fills them in) cannot be sized alone: its row shows
    ``-`` and the second value maps its name to the reason.
    """
    lines = [ZOO_HEADER]
    unsized: dict[str, str] = {}
    for kind in KINDS:
        names = list_models(kind=kind)
        if not names:
            continue
        lines += [
            f"## {kind.capitalize()}s",
            "",
            "| name | architecture | parameters | tokens / image | GFLOPs / image |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            try:
                s = summarize(name, kind=kind)
            except VlmzooError as e:
                unsized[name] = str(e)
                lines.append(f"| `{name}` | {get_entry(name, kind).builder.__name__} | - | - | - |")
                continue
            tokens = "-" if s.tokens_per_image is None else str(s.tokens_per_image)
            flops = "-" if s.gflops_per_image is None else f"{s.gflops_per_image:.3g}"
            lines.append(
                f"| `{name}` | {s.architecture} | {format_count(s.parameters)} | {tokens} | {flops} |"
            )
        lines.append("")
    return "\n".join(lines), unsized
