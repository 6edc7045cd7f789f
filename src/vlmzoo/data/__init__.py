"""The built-in synthetic data (no downloads): shapes, rendered text and bar charts."""

from vlmzoo.data.shapes import COLORS, SHAPES, Sample, SyntheticDataset, scene_split

__all__ = ["COLORS", "SHAPES", "Sample", "SyntheticDataset", "scene_split"]
