"""The built-in synthetic data (no downloads): shapes, rendered text and bar charts."""

from vlmzoo.data.shapes import ATTRIBUTE_QUESTIONS, COLORS, SHAPES, Sample, SyntheticDataset, scene_split

__all__ = ["ATTRIBUTE_QUESTIONS", "COLORS", "SHAPES", "Sample", "SyntheticDataset", "scene_split"]
