"""Converters from peer implementations and original releases to vlmzoo modules.

``from_transformers(model)`` and ``from_timm(model)`` take a peer model object, infer the vlmzoo
config from it, and return the equivalent vlmzoo module carrying the same weights. Dispatch is by
class name, so this package never imports transformers or timm itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from vlmzoo.errors import ConversionError

_TRANSFORMERS: dict[str, Callable[[Any], nn.Module]] = {}
_TIMM: dict[str, Callable[[Any], nn.Module]] = {}


def _hf_clip(model: Any) -> nn.Module:
    from vlmzoo.convert.clip import from_hf_clip

    return from_hf_clip(model)


def _timm_vit(model: Any) -> nn.Module:
    from vlmzoo.convert.timm_vit import from_timm_vit

    return from_timm_vit(model)


for _name in (
    "CLIPModel",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
):
    _TRANSFORMERS[_name] = _hf_clip
_TIMM["VisionTransformer"] = _timm_vit


def from_transformers(model: Any) -> nn.Module:
    """Convert a transformers model object to the equivalent vlmzoo module (same weights).

    Supported: ``CLIPModel``, ``CLIPVisionModel[WithProjection]``, ``CLIPTextModel[WithProjection]``.
    """
    name = type(model).__name__
    if name not in _TRANSFORMERS:
        raise ConversionError(
            f"no vlmzoo converter for transformers {name}; supported: {sorted(_TRANSFORMERS)}"
        )
    return _TRANSFORMERS[name](model)


def from_timm(model: Any) -> nn.Module:
    """Convert a timm model object to the equivalent vlmzoo module (same weights).

    Supported: ``VisionTransformer`` (the ``vit_*`` family, including ``vit_*_clip_*``).
    """
    name = type(model).__name__
    if name not in _TIMM:
        raise ConversionError(f"no vlmzoo converter for timm {name}; supported: {sorted(_TIMM)}")
    return _TIMM[name](model)


__all__ = ["from_timm", "from_transformers"]
