"""Boxes and points as plain text: referential dialogue in the format a grounding model was trained on.

Shikra (Chen et al., 2023, arXiv 2306.15195) writes regions in the text with no new vocabulary.
What its code does (shikras/shikra):

* the image is first padded to a square, centred on a ``max(w, h)`` side
  (mllm/dataset/utils/transform.py ``expand2square``, white fill), and every box or point moves by
  the padding offset ``(long - short) // 2`` (``box_xyxy_expand2square``);
* coordinates are divided by the padded image's width and height (the square's side:
  mllm/dataset/single_image_convsation.py sets the target's size *after* the transform), clamped to
  [0, 1]; boxes are also rounded to 3 decimals (``norm_box_xyxy``), points are not
  (``norm_point_xyxy``);
* ``PlainBoxFormatter`` (mllm/dataset/process_function/box_process_function.py, precision 3)
  writes a box as ``[x1,y1,x2,y2]`` and a point as ``[x,y]``, each value with 3 decimals, no
  spaces; several regions of one mention share one bracket, joined by ``;``:
  ``[0.120,0.345,0.678,0.900;0.010,0.020,0.300,0.400]``. A REC answer is
  ``"Answer: [x1,y1,x2,y2] ."`` (mllm/dataset/single_image_dataset/rec.py).

ChatSpot (Zhao et al., 2023, arXiv 2307.09474) also refers to regions by points and boxes, but
neither its code nor its weights are public (Ahnsun/ChatSpot holds a README only) and its exact
syntax (brackets, scale, precision) could not be read, so no ChatSpot format is defined here;
:class:`PlainFormat` writes any bracketed variant, and Shikra's is the one the grounding models
here use.

:meth:`PlainFormat.parse` reads regions back from generated text. It is lenient in what it reads
(blanks around numbers and separators, doubled brackets, a bracket left open at the end of the
text, values slightly outside [0, 1]) and strict in what it returns: values clipped to [0, 1],
boxes ordered ``x1 <= x2`` and ``y1 <= y2``, or an :class:`~vlmzoo.errors.InputError` naming the
group that cannot be a box or a point (3 numbers, a value far out of range, ``0.1.2``).

Coordinates in and out of the pixel-level functions are pixels of the *original* image, with its
``width`` and ``height``; the normalised ones are fractions of the (padded) image the model sees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vlmzoo.errors import InputError

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2)
Point = tuple[float, float]  # (x, y)

# A bracketed group of numbers: one or more opening brackets, then only numbers, signs, dots,
# commas, semicolons and blanks, closed by brackets or left open at the end of the text (a
# generation cut by its token budget). A group holding anything else is prose, not a region.
_GROUP = re.compile(r"\[+([-+0-9.,;\s]*?)(?:\]+|\s*$)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


@dataclass(frozen=True)
class PlainFormat:
    """Regions written as bracketed decimal numbers (Shikra's ``PlainBoxFormatter``).

    ``precision``: decimals of every value; ``expand_to_square``: coordinates are fractions of
    the image padded to a square (Shikra's ``Expand2square``) rather than of the image itself;
    ``slack``: how far outside [0, 1] a parsed value may be before it is refused instead of
    clipped (a model's ``1.002`` is a box touching the edge; ``7.5`` is not a fraction).
    """

    name: str
    precision: int = 3
    expand_to_square: bool = True
    slack: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.precision, int) or isinstance(self.precision, bool) or self.precision < 1:
            raise InputError(f"PlainFormat.precision={self.precision!r}: must be an integer >= 1")
        if not (isinstance(self.slack, int | float) and 0 <= self.slack < 1):
            raise InputError(f"PlainFormat.slack={self.slack!r}: must be a number in [0, 1)")

    # --- pixels <-> fractions -------------------------------------------------------------------
    def _frame(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x offset, y offset, frame width, frame height) of the original image in the frame
        coordinates are fractions of (the padded square, or the image itself)."""
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}={value!r}: the image size is a positive whole number of pixels")
        if not self.expand_to_square or width == height:
            return 0.0, 0.0, float(width), float(height)
        side = max(width, height)
        return float((side - width) // 2), float((side - height) // 2), float(side), float(side)

    def normalize_box(self, box: Sequence[float], *, width: int, height: int) -> Box:
        """A pixel box ``(x1, y1, x2, y2)`` of a ``width`` x ``height`` image -> fractions of the
        frame, clamped to [0, 1] and rounded to ``precision`` (Shikra's ``box_xyxy_expand2square``
        then ``norm_box_xyxy``)."""
        x1, y1, x2, y2 = _values(box, 4, "box")
        dx, dy, fw, fh = self._frame(width, height)
        fractions = ((x1 + dx) / fw, (y1 + dy) / fh, (x2 + dx) / fw, (y2 + dy) / fh)
        a, b, c, d = (round(min(max(v, 0.0), 1.0), self.precision) for v in fractions)
        return a, b, c, d

    def normalize_point(self, point: Sequence[float], *, width: int, height: int) -> Point:
        """A pixel point ``(x, y)`` -> fractions of the frame, clamped to [0, 1] (Shikra's
        ``point_xy_expand2square`` then ``norm_point_xyxy``; the text rounds it)."""
        x, y = _values(point, 2, "point")
        dx, dy, fw, fh = self._frame(width, height)
        return min(max((x + dx) / fw, 0.0), 1.0), min(max((y + dy) / fh, 0.0), 1.0)

    def denormalize_box(self, box: Sequence[float], *, width: int, height: int) -> Box:
        """Fractions of the frame -> a pixel box of the original image (the padding removed;
        Shikra's ``de_norm_box_xyxy`` on the square, then the offset taken back)."""
        x1, y1, x2, y2 = _values(box, 4, "box")
        dx, dy, fw, fh = self._frame(width, height)
        return x1 * fw - dx, y1 * fh - dy, x2 * fw - dx, y2 * fh - dy

    def denormalize_point(self, point: Sequence[float], *, width: int, height: int) -> Point:
        """Fractions of the frame -> a pixel point of the original image."""
        x, y = _values(point, 2, "point")
        dx, dy, fw, fh = self._frame(width, height)
        return x * fw - dx, y * fh - dy

    # --- writing ------------------------------------------------------------------------------
    def format(self, regions: Sequence[Sequence[float]]) -> str:
        """Already-normalised boxes (4 values) or points (2 values) of one mention as one bracket:
        ``[x1,y1,x2,y2;...]`` (``PlainBoxFormatter.format_box``)."""
        if not regions:
            raise InputError("no region to write: pass at least one box or point")
        sizes = {len(r) for r in regions}
        if len(sizes) != 1 or sizes - {2, 4}:
            raise InputError(
                f"one mention holds boxes (4 values) or points (2 values), not a mix; got sizes {sorted(sizes)}"
            )
        body = ";".join(",".join(f"{float(v):.{self.precision}f}" for v in r) for r in regions)
        return f"[{body}]"

    def box_to_text(
        self, boxes: Sequence[float] | Sequence[Sequence[float]], *, width: int, height: int
    ) -> str:
        """Pixel box(es) ``(x1, y1, x2, y2)`` of one mention in a ``width`` x ``height`` image -> its
        text, e.g. ``[0.120,0.345,0.678,0.900]``."""
        items = _as_regions(boxes, 4, "box")
        return self.format([self.normalize_box(b, width=width, height=height) for b in items])

    def point_to_text(
        self, points: Sequence[float] | Sequence[Sequence[float]], *, width: int, height: int
    ) -> str:
        """Pixel point(s) ``(x, y)`` of one mention -> its text, e.g. ``[0.500,0.250]``."""
        items = _as_regions(points, 2, "point")
        return self.format([self.normalize_point(p, width=width, height=height) for p in items])

    # --- reading ------------------------------------------------------------------------------
    def parse(self, text: str) -> list[list[Box] | list[Point]]:
        """Every region group in ``text``, in order: a list of boxes or a list of points each
        (normalised, clipped to [0, 1], boxes ordered). Raises :class:`InputError` for a group that
        is neither (see the module docstring)."""
        groups: list[list[Box] | list[Point]] = []
        for match in _GROUP.finditer(text):
            body = match.group(1).strip().rstrip(".").strip()
            if not body or not any(ch.isdigit() for ch in body):
                continue  # "[]" or "[ ; ]": nothing that could be coordinates
            groups.append(self._group(body, match.group(0)))
        return groups

    def parse_boxes(self, text: str) -> list[list[Box]]:
        """The box groups of ``text`` (point groups skipped): one list of boxes per mention."""
        return [g for g in self.parse(text) if g and len(g[0]) == 4]  # type: ignore[misc]

    def parse_points(self, text: str) -> list[list[Point]]:
        """The point groups of ``text`` (box groups skipped): one list of points per mention."""
        return [g for g in self.parse(text) if g and len(g[0]) == 2]  # type: ignore[misc]

    def text_to_boxes(self, text: str, *, width: int, height: int) -> list[list[Box]]:
        """The box groups of generated ``text`` as pixel boxes of the original image."""
        return [
            [self.denormalize_box(b, width=width, height=height) for b in g] for g in self.parse_boxes(text)
        ]

    def text_to_points(self, text: str, *, width: int, height: int) -> list[list[Point]]:
        """The point groups of generated ``text`` as pixel points of the original image."""
        return [
            [self.denormalize_point(p, width=width, height=height) for p in g]
            for g in self.parse_points(text)
        ]

    def _group(self, body: str, raw: str) -> list[Box] | list[Point]:
        items = [item.strip() for item in body.split(";") if item.strip()]  # a trailing ";" is harmless
        regions: list[tuple[float, ...]] = []
        for item in items:
            parts = [p.strip() for p in item.split(",")]
            if any(not _NUMBER.fullmatch(p) for p in parts):
                raise InputError(f"{raw.strip()!r}: {item!r} is not a list of numbers separated by commas")
            values = [float(p) for p in parts]
            if len(values) not in (2, 4):
                raise InputError(
                    f"{raw.strip()!r}: {len(values)} values in {item!r}; a box has 4 (x1,y1,x2,y2), a point 2 (x,y)"
                )
            regions.append(tuple(self._clip(v, raw) for v in values))
        if len({len(r) for r in regions}) != 1:
            raise InputError(f"{raw.strip()!r} mixes boxes and points in one bracket")
        if len(regions[0]) == 2:
            return [(x, y) for x, y in regions]
        return [(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)) for x1, y1, x2, y2 in regions]

    def _clip(self, value: float, raw: str) -> float:
        if not math.isfinite(value) or not -self.slack <= value <= 1 + self.slack:
            raise InputError(
                f"{raw.strip()!r}: {value} is not a fraction of the image (coordinates are in [0, 1], "
                f"up to {self.slack} outside is clipped)"
            )
        return min(max(value, 0.0), 1.0)


def _values(region: Sequence[float], n: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in region)
    except (TypeError, ValueError):
        raise InputError(f"a {what} is {n} numbers, got {region!r:.60}") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InputError(f"a {what} is {n} finite numbers, got {region!r:.60}")
    return values


def _as_regions(
    regions: Sequence[float] | Sequence[Sequence[float]], n: int, what: str
) -> list[Sequence[float]]:
    """One region (n numbers) or a list of them -> a list."""
    if isinstance(regions, Sequence) and regions and all(isinstance(v, int | float) for v in regions):
        return [regions]  # type: ignore[list-item]
    if isinstance(regions, Sequence) and regions:
        return list(regions)  # type: ignore[arg-type]
    raise InputError(f"pass a {what} ({n} numbers) or a non-empty list of them, got {regions!r:.60}")


SHIKRA = PlainFormat("shikra")  # shikras/shikra: PlainBoxFormatter(precision=3) after Expand2square

FORMATS: dict[str, PlainFormat] = {"shikra": SHIKRA}


def get_format(format: str | PlainFormat) -> PlainFormat:
    """A format by name (``"shikra"``) or the format itself."""
    if isinstance(format, PlainFormat):
        return format
    if format not in FORMATS:
        raise InputError(f"unknown referring format {format!r}; known: {sorted(FORMATS)}")
    return FORMATS[format]
