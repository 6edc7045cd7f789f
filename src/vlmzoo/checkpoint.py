"""vlmzoo's own weights format: ``config.json`` + ``model.safetensors``, saved atomically.

``config.json`` names the module class (``architecture``) and holds its config; the module is
rebuilt from the registry of architectures — nothing from the file is ever evaluated. Each file
is written to a temporary name in the same directory, flushed to disk, then renamed over the old
one, so a crash mid-save leaves the previous checkpoint intact. Both files carry the SHA-256 of
the config, so a pair from two different saves is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from vlmzoo.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, if any."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: {source} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit {type(module).__name__}:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        raise CheckpointError("\n".join(parts))


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """``module.load_state_dict`` after :func:`check_state_dict` (clear errors instead of torch's)."""
    check_state_dict(module, state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _config_document(module: nn.Module) -> dict:
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise CheckpointError(
            f"{type(module).__name__} has no vlmzoo config; only vlmzoo models can be saved"
        )
    from vlmzoo import __version__

    return {
        "format": "vlmzoo",
        "format_version": FORMAT_VERSION,
        "vlmzoo_version": __version__,
        "architecture": type(module).__name__,
        "config": config.to_dict(),
    }


def _digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document["config"], sort_keys=True).encode()).hexdigest()


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save ``model`` to ``directory`` as ``config.json`` + ``model.safetensors``; returns the path.

    Tensors that share storage (tied weights) are stored once. Other files in the directory
    are left alone.
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = _config_document(model)
    digest = _digest(document)
    metadata = {
        "format": "pt",
        "vlmzoo_architecture": document["architecture"],
        "vlmzoo_config_sha256": digest,
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(model, tmp, metadata=metadata))
    text = json.dumps({**document, "config_sha256": digest}, indent=2, sort_keys=True)
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a vlmzoo checkpoint directory (checked for the format)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a vlmzoo checkpoint directory")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(document, dict) or document.get("format") != "vlmzoo":
        raise CheckpointError(f'{path} is not a vlmzoo config (missing "format": "vlmzoo")')
    return document


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved with :func:`save`; outputs are bit-identical to the saved model's."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    from vlmzoo.registry import get_architecture

    directory = Path(directory)
    document = read_config(directory)
    cls = get_architecture(document["architecture"])
    config = cls.config_class.from_dict(document["config"])
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found next to {CONFIG_NAME}")
    try:
        with safe_open(weights, framework="pt") as f:
            metadata = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            shapes = {k: s.get_shape() for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights} is not a readable safetensors file (truncated or corrupted?): {e}"
        ) from e
    stored = metadata.get("vlmzoo_config_sha256")
    if stored is not None and stored != document.get("config_sha256", stored):
        raise CheckpointError(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {directory} come from different saves")
    model = cls(config)
    _check_shapes(model, shapes, weights)
    _match_float_dtypes(model, dtypes)
    missing, unexpected = load_model(model, weights, strict=False, device=str(device))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: missing keys {missing}, unexpected keys {unexpected}")
    return model.to(device)


_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _match_float_dtypes(model: nn.Module, dtypes: dict[str, str]) -> None:
    """Give each floating tensor the stored dtype, so a bf16 save loads as bf16 (not upcast)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, code in dtypes.items():
        tensor, dtype = tensors.get(name), _FLOAT_DTYPES.get(code)
        if tensor is not None and dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def _check_shapes(model: nn.Module, shapes: dict[str, list[int]], source: Path) -> None:
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    # Tied tensors are stored once by safetensors: accept any key whose storage twin is present.
    expected = model.state_dict()
    by_storage: dict[int, list[str]] = {}
    for k, v in expected.items():
        ptr = v.untyped_storage().data_ptr()
        by_storage.setdefault(ptr if ptr else id(v), []).append(k)
    for names in by_storage.values():
        present = [n for n in names if n in fake]
        if present:
            for n in names:
                fake.setdefault(n, fake[present[0]])
    check_state_dict(model, fake, str(source))
