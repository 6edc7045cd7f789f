"""Converters from peer implementations and original releases to vlmzoo modules.

- ``from_transformers(model)`` / ``from_timm(model)``: given a peer model *object*, infer the
  vlmzoo config from it and return the equivalent vlmzoo module carrying the same weights.
- ``from_original(state_dict_or_path, name)``: a state dict in an original repository's key
  layout (OpenAI CLIP, segment-anything, ...) -> vlmzoo module.

Each family's converter module in this package declares what it handles in three dicts,
``TRANSFORMERS`` and ``TIMM`` (peer class name -> function) and ``ORIGINAL`` (layout name ->
function); they are collected on first use. Dispatch is by class name, so this package never
imports transformers or timm itself.
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

_TABLES: dict[str, dict[str, Callable[..., nn.Module]]] | None = None


def _tables() -> dict[str, dict[str, Callable[..., nn.Module]]]:
    global _TABLES
    if _TABLES is None:
        tables: dict[str, dict[str, Callable[..., nn.Module]]] = {
            "TRANSFORMERS": {},
            "TIMM": {},
            "ORIGINAL": {},
        }
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for table, entries in tables.items():
                for name, fn in getattr(module, table, {}).items():
                    if name in entries and entries[name] is not fn:
                        raise RuntimeError(
                            f"{table} converter for {name!r} is declared twice "
                            f"({entries[name].__module__} and {module.__name__})"
                        )
                    entries[name] = fn
        _TABLES = tables
    return _TABLES


def from_transformers(model: Any) -> nn.Module:
    """Convert a transformers model object to the equivalent vlmzoo module (same weights)."""
    table = _tables()["TRANSFORMERS"]
    name = type(model).__name__
    if name not in table:
        raise ConversionError(f"no vlmzoo converter for transformers {name}; supported: {sorted(table)}")
    return table[name](model)


def from_timm(model: Any) -> nn.Module:
    """Convert a timm model object to the equivalent vlmzoo module (same weights)."""
    table = _tables()["TIMM"]
    name = type(model).__name__
    if name not in table:
        raise ConversionError(f"no vlmzoo converter for timm {name}; supported: {sorted(table)}")
    return table[name](model)


def original_layouts() -> list[str]:
    """Names accepted by :func:`from_original`."""
    return sorted(_tables()["ORIGINAL"])


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
    table = _tables()["ORIGINAL"]
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise UnknownModelError(f"unknown original layout {name!r}{hint}; known: {sorted(table)}")
    if not isinstance(state_dict, Mapping):
        state_dict = read_state_dict(state_dict)
    try:
        return table[name](dict(state_dict), **options)
    except VlmzooError:
        raise
    except (KeyError, ValueError, IndexError) as e:  # the converter looked for a tensor that is not there
        raise ConversionError(
            f"the state dict ({len(state_dict)} tensors) is not in the {name!r} layout: "
            f"{type(e).__name__}: {e}"
        ) from e


__all__ = ["from_original", "from_timm", "from_transformers", "original_layouts", "read_state_dict"]
