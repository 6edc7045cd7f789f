"""Converters from peer implementations and original releases to vlmzoo modules.

- ``from_transformers(model)`` / ``from_timm(model)``: given a peer model *object*, infer the
  vlmzoo config from it and return the equivalent vlmzoo module carrying the same weights.
- ``from_original(state_dict_or_path, name)``: a state dict in an original repository's key
  layout (OpenAI CLIP, segment-anything, ...) -> vlmzoo module.

Each family's converter module in this package declares what it handles in three dicts,
``TRANSFORMERS`` and ``TIMM`` (peer class name -> function) and ``ORIGINAL`` (layout name ->
function). On first use they are collected into one table keyed by (source, name), and every
entry point is one lookup in it (:func:`converter`). Dispatch is by class name, so this package
never imports transformers or timm itself. Shared key work (prefixes, fused projections, checked
block counts, loading checked on the meta device) is in :mod:`vlmzoo.convert.state_dict`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.errors import CheckpointError, ConversionError, UnknownModelError, VlmzooError

# source -> the name of the dict a converter module declares its entries for that source in
SOURCES: dict[str, str] = {"transformers": "TRANSFORMERS", "timm": "TIMM", "original": "ORIGINAL"}
_TABLE: dict[tuple[str, str], Callable[..., nn.Module]] | None = None


def _table() -> dict[tuple[str, str], Callable[..., nn.Module]]:
    """(source, peer class or layout name) -> converter, collected from this package's modules."""
    global _TABLE
    if _TABLE is None:
        table: dict[tuple[str, str], Callable[..., nn.Module]] = {}
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for source, declared in SOURCES.items():
                for name, fn in getattr(module, declared, {}).items():
                    known = table.setdefault((source, name), fn)
                    if known is not fn:
                        raise RuntimeError(
                            f"{declared} converter for {name!r} is declared twice "
                            f"({known.__module__} and {module.__name__})"
                        )
        _TABLE = table
    return _TABLE


def supported(source: str) -> list[str]:
    """The names ``source`` ("transformers", "timm" or "original") has converters for."""
    return sorted(name for s, name in _table() if s == source)


def converter(source: str, name: str) -> Callable[..., nn.Module]:
    """The converter of ``name`` (a peer class name, or an original layout) from ``source``."""
    fn = _table().get((source, name))
    if fn is not None:
        return fn
    known = supported(source)
    if source == "original":
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise UnknownModelError(f"unknown original layout {name!r}{hint}; known: {known}")
    raise ConversionError(f"no vlmzoo converter for {source} {name}; supported: {known}")


def from_transformers(model: Any) -> nn.Module:
    """Convert a transformers model object to the equivalent vlmzoo module (same weights)."""
    return converter("transformers", type(model).__name__)(model)


def from_timm(model: Any) -> nn.Module:
    """Convert a timm model object to the equivalent vlmzoo module (same weights)."""
    return converter("timm", type(model).__name__)(model)


def original_layouts() -> list[str]:
    """Names accepted by :func:`from_original`."""
    return supported("original")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a pickle opened with ``weights_only=True``.

    Pickles that need arbitrary code (custom classes, TorchScript archives) are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupted?): {e}"
            ) from e
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist()):
                raise CheckpointError(
                    f"{path} is a TorchScript archive; vlmzoo does not run its code. Load it yourself "
                    "(torch.jit.load(path).state_dict()) and pass the state dict."
                )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: the file wants to run code
        raise CheckpointError(
            f"{path} cannot be opened with weights_only=True (refused, it may carry code): {e}"
        ) from e
    # Training checkpoints wrap the weights (OpenFlamingo's: "model_state_dict").
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def from_original(
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike, name: str, **options: Any
) -> nn.Module:
    """Convert a checkpoint in an original release's key layout; ``name`` picks the layout.

    ``state_dict`` is a mapping of tensors or a path (see :func:`read_state_dict`). ``options``
    go to the layout's converter, e.g. the parts a partial release leaves out
    (``encoder=``, ``decoder=`` for ``"llava"``, ``"openflamingo"``, ``"lavis-blip2"``).
    Raises :class:`UnknownModelError` listing the known layouts for an unknown ``name``.
    """
    convert = converter("original", name)
    if not isinstance(state_dict, Mapping):
        state_dict = read_state_dict(state_dict)
    try:
        return convert(dict(state_dict), **options)
    except VlmzooError:
        raise
    except (KeyError, ValueError, IndexError) as e:  # the converter looked for a tensor that is not there
        raise ConversionError(
            f"the state dict ({len(state_dict)} tensors) is not in the {name!r} layout: "
            f"{type(e).__name__}: {e}"
        ) from e


__all__ = [
    "converter",
    "from_original",
    "from_timm",
    "from_transformers",
    "original_layouts",
    "read_state_dict",
    "supported",
]
