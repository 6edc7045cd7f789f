"""Procedural image-text data: seeded, file-free, with a held-out split that never shares a scene.

Three variants, all drawn with PIL on demand:

- ``"shapes"``: one to ``max_objects`` coloured shapes (circle, square, triangle, cross) of two
  sizes at positions on a 3x3 grid of the canvas, with a caption and question/answer pairs
  (colour, shape, position, count, "is there a ..."), and referring questions ("where is the red
  square?") with the pixel box of the shape they name (``Sample.grounding``).
- ``"text"``: a short word drawn in a colour (OCR-style, as in Vary / Donut); answers are the word.
- ``"chart"``: a bar chart of 3-5 bars whose answers are the numbers (OneChart-style).

A *scene* is the tuple of its objects' attributes. The split of a scene is a hash of its
canonical form, so train and validation can never contain the same image, whatever the seed or
size (the data set keeps drawing candidates from its seeded stream until it has enough scenes of
its split). Item ``i`` of a data set is a pure function of ``(variant, split, seed, i)``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageDraw

Variant = Literal["shapes", "text", "chart"]
Split = Literal["train", "validation"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
WORDS = ("cat", "dog", "sun", "map", "box", "key", "cup", "pen", "hat", "car", "bus", "toy", "sea", "sky")
BACKGROUND = (30, 30, 30)
# The questions of a single-object scene whose answer is one attribute of the object: no answer
# fixed in advance gets more than a fraction of them right (the count of a single-object scene is
# always "1", and "is there a ...?" is mostly "no"), so they measure whether a model looks.
ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "color": "what color is the shape?",
    "shape": "what shape is it?",
    "position": "where is the shape?",
    "size": "what size is the shape?",
}


@dataclass(frozen=True)
class Obj:
    """One shape: its kind, colour name, size name and grid cell (row, col)."""

    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return "center" if (self.row, self.col) == (1, 1) else f"{ROWS[self.row]} {COLS[self.col]}"


Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the canvas


@dataclass
class Sample:
    """An image with its caption and question/answer pairs (``qa``: list of (question, answer)).

    ``grounding`` (shapes only): referring questions with the pixel box ``(x1, y1, x2, y2)`` of
    the shape they name, one per shape whose colour and shape no other shape in the scene shares
    (``("where is the red square?", (2.0, 2.0, 14.0, 14.0))``); the text of the answer is the
    model's format (:mod:`vlmzoo.processing.referring`), not the data set's.
    """

    image: Image.Image
    caption: str
    qa: list[tuple[str, str]] = field(default_factory=list)
    scene: tuple = ()
    grounding: list[tuple[str, Box]] = field(default_factory=list)


def scene_split(scene: tuple, validation_fraction: float) -> Split:
    """The split a scene belongs to: a stable hash of its canonical form (not Python's ``hash``)."""
    digest = hashlib.sha256(repr(scene).encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


def shape_box(obj: Obj, canvas: int) -> Box:
    """The pixel box ``(x1, y1, x2, y2)`` a shape is drawn in on a ``canvas`` x ``canvas`` image:
    centred in its grid cell, half-side 0.42 (large) or 0.24 (small) of the cell. Every kind
    (circle, square, triangle, cross) touches all four sides of it."""
    cell = canvas / 3
    cx, cy = (obj.col + 0.5) * cell, (obj.row + 0.5) * cell
    r = cell * (0.42 if obj.size == "large" else 0.24)
    return (cx - r, cy - r, cx + r, cy + r)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: Obj, canvas: int) -> None:
    cell = canvas / 3
    cx, cy = (obj.col + 0.5) * cell, (obj.row + 0.5) * cell
    r = cell * (0.42 if obj.size == "large" else 0.24)
    box = shape_box(obj, canvas)  # the same numbers: (cx - r, cy - r, cx + r, cy + r)
    color = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse(box, fill=color)
    elif obj.shape == "square":
        draw.rectangle(box, fill=color)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:  # cross
        w = r / 2.5
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)


def _describe(obj: Obj) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


class SyntheticDataset:
    """``len(ds)`` samples of one variant and split; ``ds[i]`` is a :class:`Sample`.

    ``image_size`` is the canvas side in pixels; ``max_objects`` bounds the shapes per image.
    """

    def __init__(
        self,
        variant: Variant = "shapes",
        split: Split = "train",
        size: int = 1000,
        seed: int = 0,
        image_size: int = 32,
        max_objects: int = 1,
        validation_fraction: float = 0.2,
        unique: bool = False,
    ):
        if variant not in ("shapes", "text", "chart"):
            raise ValueError(f"variant must be 'shapes', 'text' or 'chart', got {variant!r}")
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if size <= 0 or image_size < 16 or max_objects < 1 or not 0 < validation_fraction < 1:
            raise ValueError(
                f"need size > 0, image_size >= 16, max_objects >= 1 and 0 < validation_fraction < 1; got "
                f"size={size}, image_size={image_size}, max_objects={max_objects}, "
                f"validation_fraction={validation_fraction}"
            )
        self.variant, self.split, self.seed = variant, split, seed
        self.image_size, self.max_objects = image_size, max_objects
        self.validation_fraction = validation_fraction
        self.scenes = self._collect_scenes(size, unique)

    def _random_scene(self, rng: random.Random) -> tuple:
        if self.variant == "text":
            return ("text", rng.choice(WORDS), rng.choice(list(COLORS)[:5]))
        if self.variant == "chart":
            return ("chart", tuple(rng.randint(1, 9) for _ in range(rng.randint(3, 5))))
        cells = rng.sample(range(9), rng.randint(1, self.max_objects))
        objs = tuple(
            Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), c // 3, c % 3)
            for c in sorted(cells)
        )
        return ("shapes", *objs)

    def _collect_scenes(self, size: int, unique: bool) -> list[tuple]:
        """Draw scenes of this split from the seeded stream; ``unique`` skips repeats."""
        rng = random.Random(f"{self.variant}-{self.seed}")
        scenes: list[tuple] = []
        seen: set[tuple] = set()
        attempts = 0
        while len(scenes) < size:
            attempts += 1
            if attempts > 200 * size + 10_000:
                raise ValueError(
                    f"cannot draw {size} {'distinct ' if unique else ''}{self.split} scenes of variant "
                    f"{self.variant!r} (found {len(scenes)}): the scene space is too small; lower size, "
                    "raise max_objects or allow repeats (unique=False)"
                )
            scene = self._random_scene(rng)
            if scene_split(scene, self.validation_fraction) != self.split or (unique and scene in seen):
                continue
            seen.add(scene)
            scenes.append(scene)
        return scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        scene = self.scenes[index]
        return {"shapes": self._shapes, "text": self._text, "chart": self._chart}[self.variant](scene)

    def _shapes(self, scene: tuple) -> Sample:
        objs: tuple[Obj, ...] = scene[1:]
        image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for obj in objs:
            _draw_shape(draw, obj, self.image_size)
        caption = " and ".join(_describe(o) for o in objs)
        qa = [("how many shapes are there?", str(len(objs)))]
        if len(objs) == 1:
            (o,) = objs
            answers = {"color": o.color, "shape": o.shape, "position": o.position, "size": o.size}
            qa += [(question, answers[kind]) for kind, question in ATTRIBUTE_QUESTIONS.items()]
        present = {o.shape for o in objs}
        asked = sorted(SHAPES)[(len(caption)) % len(SHAPES)]
        qa.append((f"is there a {asked}?", "yes" if asked in present else "no"))
        kinds = [(o.color, o.shape) for o in objs]
        grounding = [
            (f"where is the {o.color} {o.shape}?", shape_box(o, self.image_size))
            for o, kind in zip(objs, kinds, strict=True)
            if kinds.count(kind) == 1
        ]
        return Sample(image, caption, qa, scene, grounding)

    def _text(self, scene: tuple) -> Sample:
        _, word, color = scene
        image = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        # PIL's built-in bitmap font: no font files needed, the same pixels on every machine.
        draw.text((2, self.image_size // 2 - 6), word, fill=COLORS[color])
        return Sample(
            image,
            f"the word {word} in {color}",
            [("what does it say?", word), ("what color is the text?", color)],
            scene,
        )

    def _chart(self, scene: tuple) -> Sample:
        values = scene[1]
        image = Image.new("RGB", (self.image_size, self.image_size), (250, 250, 250))
        draw = ImageDraw.Draw(image)
        n, s = len(values), self.image_size
        width = s / (n + 1)
        for i, v in enumerate(values):
            x0 = width * (i + 0.5)
            draw.rectangle((x0, s - 2 - (s - 4) * v / 9, x0 + width * 0.8, s - 2), fill=COLORS["blue"])
        numbers = " ".join(map(str, values))
        qa = [
            ("what are the values?", numbers),
            ("how many bars are there?", str(n)),
            ("what is the largest value?", str(max(values))),
        ]
        return Sample(image, f"a bar chart with values {numbers}", qa, scene)
