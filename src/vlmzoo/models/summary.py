"""Size facts of a registered model, computed on the meta device (real sizes cost no memory).

``summarize("clip-vit-l14")`` builds the model with meta tensors, counts parameters, and runs one
forward pass of a single image under torch's ``FlopCounterMode`` — no weights are allocated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vlmzoo.adapters.base import Adapter
from vlmzoo.registry import KINDS, Kind, get_entry, list_models


@dataclass
class ModelSummary:
    """``gflops`` counts 2 FLOPs per multiply-add (half of it is the GMACs papers often quote)."""

    name: str
    kind: str
    architecture: str
    parameters: int
    image_size: int | tuple[int, int] | None
    tokens_per_image: int | None
    gflops_per_image: float | None
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve_kind(name: str, kind: Kind | None) -> Kind:
    if kind is not None:
        return kind
    for k in KINDS:  # encoders first: a CLIP name is both an encoder and a model
        if name in list_models(name, kind=k):
            return k
    get_entry(name, "encoder")  # raises with the closest names
    raise AssertionError("unreachable")


def _vision_tower(model: nn.Module) -> nn.Module | None:
    """The image encoder of a model: itself (an encoder), ``visual`` (CLIP) or ``encoder`` (VLM)."""
    if hasattr(model, "num_tokens") and hasattr(model, "config") and hasattr(model.config, "image_size"):
        return model
    for name in ("visual", "encoder", "visual_encoder"):
        tower = getattr(model, name, None)
        if tower is not None and hasattr(tower, "num_tokens"):
            return tower
    return None


def summarize(
    name: str, kind: Kind | None = None, image_size: int | tuple[int, int] | None = None
) -> ModelSummary:
    """Parameters, tokens per image and GFLOPs per image of the registered ``name``."""
    kind = _resolve_kind(name, kind)
    entry = get_entry(name, kind)
    with torch.device("meta"):
        model = entry.build().eval()
    parameters = sum(p.numel() for p in model.parameters())
    tower = _vision_tower(model)
    tokens = gflops = size = None
    if tower is not None:
        size = image_size or tower.config.image_size
        h, w = (size, size) if isinstance(size, int) else size  # (H, W) canvases: Donut, Nougat
        tokens = tower.num_tokens(size)
        image_fn = tower
        adapter = getattr(model, "adapter", None)
        if isinstance(adapter, Adapter):  # a VLM: its adapter says what an image costs before the decoder
            image_fn = model.image_features
            tokens = adapter.tokens_per_image(tokens)  # positions one image takes in the text
        counter = FlopCounterMode(display=False)
        with counter:  # grad mode on: the flop counter's module tracker needs it (meta tensors cost nothing)
            image_fn(torch.empty(1, tower.config.in_channels, h, w, device="meta"))
        gflops = counter.get_total_flops() / 1e9
    return ModelSummary(
        name=name,
        kind=kind,
        architecture=type(model).__name__,
        parameters=parameters,
        image_size=size,
        tokens_per_image=tokens,
        gflops_per_image=gflops,
        description=entry.description,
    )
