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
import inspect
import os
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.convert.state_dict import unwrap
from vlmzoo.errors import CheckpointError, ConversionError, UnknownModelError, VlmzooError
from vlmzoo.weights.materialize import check_dtype

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
    """Tensors of a checkpoint file: safetensors, a TorchScript archive, or a pickle opened with
    ``weights_only=True``.

    A TorchScript archive (OpenAI's ``ViT-*.pt`` releases) is read without running its code
    (:func:`vlmzoo.convert.torchscript.read_torchscript`: the same tensors as
    ``torch.jit.load(path).state_dict()``). Pickles that need arbitrary code (custom classes) are
    refused. Training checkpoints that wrap the weights in a dict (``state_dict``,
    ``model_state_dict``, ``model``, ``module``) are unwrapped.
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
    from vlmzoo.convert.torchscript import is_torchscript_archive, read_torchscript

    if is_torchscript_archive(path):
        return read_torchscript(path)
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


def _takes_path(convert: Callable[..., nn.Module]) -> bool:
    """Whether a layout's converter reads files beside the weights (a ``path`` keyword)."""
    try:
        return "path" in inspect.signature(convert).parameters
    except (TypeError, ValueError):
        return False


def from_original(
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> nn.Module:
    """Convert a checkpoint in an original release's key layout; ``name`` picks the layout.

    The converted module adopts the checkpoint's tensors (no random initialisation, no second
    copy); ``dtype`` and ``device`` then cast and move it one tensor at a time (``None``: as the
    checkpoint holds them, on the CPU).

    ``state_dict`` is a mapping of tensors or a path (see :func:`read_state_dict`). ``options``
    go to the layout's converter, e.g. the parts a partial release leaves out
    (``encoder=``, ``decoder=`` for ``"llava"``, ``"openflamingo"``, ``"lavis-blip2"``). A
    converter that reads files beside the weights (``"open_clip"``'s ``open_clip_config.json``)
    takes a ``path`` keyword, which is given the file's path when ``state_dict`` is one.

    Training checkpoints are recognised for every layout: DDP's ``module.`` prefix on every key is
    removed; a ``model.`` prefix on every key is removed when the keys as they are do not fit the
    layout (a layout may have a top-level ``model`` of its own, e.g. LLaVA's projector-only files).
    Raises :class:`UnknownModelError` listing the known layouts for an unknown ``name``.
    """
    check_dtype(dtype)
    model = _from_original(state_dict, name, options)
    return model if dtype is None and device is None else model.to(device=device, dtype=dtype)


def _from_original(
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike, name: str, options: dict[str, Any]
) -> nn.Module:
    convert = converter("original", name)
    if not isinstance(state_dict, Mapping):
        if "path" in options:
            raise ConversionError("pass the weights file as the first argument, not as path=")
        if _takes_path(convert):
            options = {**options, "path": Path(state_dict)}
        state_dict = read_state_dict(state_dict)
    sd = unwrap(state_dict, ("module.",))
    try:
        return _convert(convert, sd, name, options)
    except (ConversionError, CheckpointError) as first:
        if not sd or not all(k.startswith("model.") for k in sd):
            raise
        try:
            return _convert(convert, unwrap(sd, ("model.",)), name, options)
        except (ConversionError, CheckpointError) as second:
            raise type(first)(
                f"{first} (every key starts with 'model.'; without that prefix: {second})"
            ) from first


def _convert(
    convert: Callable[..., nn.Module], sd: dict[str, torch.Tensor], name: str, options: dict[str, Any]
) -> nn.Module:
    try:
        return convert(dict(sd), **options)
    except VlmzooError:
        raise
    except (KeyError, ValueError, IndexError) as e:  # the converter looked for a tensor that is not there
        raise ConversionError(
            f"the state dict ({len(sd)} tensors) is not in the {name!r} layout: {type(e).__name__}: {e}"
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
