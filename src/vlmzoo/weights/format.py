"""vlmzoo's own weights format: ``config.json`` + safetensors, saved atomically as a whole.

A checkpoint directory holds

- ``config.json``: the module class (``architecture``), its config, the name of the weights
  entry point and the SHA-256 of the config. The module is rebuilt from the registry of
  architectures; nothing from the file is ever evaluated or unpickled.
- ``model.safetensors``, or above ``max_shard_size`` the Hugging Face sharded layout:
  ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json`` (``metadata.total_size``
  and ``weight_map``, the index transformers and the Hub read). Every safetensors file carries
  the architecture and config digest in its metadata, so weights paired with the config of
  another save are detected on load. Tensors that share storage (tied weights) are stored once.

Saving writes the whole directory beside the target and swaps it in
(:mod:`vlmzoo.weights.swap`): a crash or an exception at any point leaves the previous
checkpoint byte-identical, and stale shards of an earlier, bigger save never survive next to
new ones. Other files in the directory are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vlmzoo.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Glob patterns of every file a save writes (Hub downloads and uploads are restricted to them).
CHECKPOINT_PATTERNS = [CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME, "model-*-of-*.safetensors"]
DEFAULT_MAX_SHARD_SIZE = "5GB"  # as transformers and huggingface_hub
# 2: config.json names its weights entry point and shards may be used; 1 files still load.
FORMAT_VERSION = 2


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


def is_checkpoint_file(name: str) -> bool:
    """Whether a file name in a checkpoint directory belongs to the checkpoint (vs. a user's file)."""
    return name in (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME) or SHARD_NAME.fullmatch(name) is not None


# --- saving ------------------------------------------------------------------------------------


def save(
    model: nn.Module, directory: str | os.PathLike, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
) -> Path:
    """Save ``model`` to ``directory``; returns the directory.

    One ``model.safetensors`` up to ``max_shard_size`` (bytes, or a string such as ``"5GB"``,
    ``"200MB"``), shards and an index above it. The directory is replaced as a whole, so an
    interrupted save leaves the previous checkpoint intact; files that are not part of a
    checkpoint (a tokenizer, a README) are kept.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from vlmzoo.weights.swap import replace_directory

    document = _config_document(model)
    digest = _digest(document)
    metadata = {
        "format": "pt",
        "vlmzoo_architecture": document["architecture"],
        "vlmzoo_config_sha256": digest,
    }
    state = _stored_tensors(model)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    document = {
        **document,
        "config_sha256": digest,
        "weights": INDEX_NAME if split.is_sharded else WEIGHTS_NAME,
    }
    with replace_directory(directory, managed=is_checkpoint_file) as staging:
        # A module without tensors (the "identity" projector) still gets its (empty) weights file.
        for filename, keys in (split.filename_to_tensors or {WEIGHTS_NAME: []}).items():
            save_file({k: state[k] for k in keys}, staging / filename, metadata=metadata)
        if split.is_sharded:
            index = {
                "metadata": {**split.metadata, "vlmzoo_config_sha256": digest},
                "weight_map": dict(sorted(split.tensor_to_filename.items())),
            }
            _write_json(staging / INDEX_NAME, index)
        _write_json(staging / CONFIG_NAME, document)
    return Path(directory)


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _config_document(module: nn.Module) -> dict:
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise CheckpointError(
            f"{type(module).__name__} has no vlmzoo config; only vlmzoo models can be saved"
        )
    from vlmzoo.version import __version__

    return {
        "format": "vlmzoo",
        "format_version": FORMAT_VERSION,
        "vlmzoo_version": __version__,
        "architecture": type(module).__name__,
        "config": config.to_dict(),
    }


def _digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document["config"], sort_keys=True).encode()).hexdigest()


def _stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor kept once (first name wins), others made contiguous.

    safetensors refuses tensors that share memory; a tensor that is an exact alias of an earlier
    one (a tied embedding) is dropped and restored on load through the model's own tying,
    while one that only overlaps another's storage is stored as a copy.
    """
    kept: dict[str, torch.Tensor] = {}
    views: set[tuple] = set()
    storages: set[tuple] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else 0
        if ptr == 0 or tensor.numel() == 0:
            kept[name] = tensor.contiguous()
            continue
        storage = (tensor.device, ptr)
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if view in views:
            continue
        views.add(view)
        kept[name] = tensor.clone() if storage in storages else tensor.contiguous()
        storages.add(storage)
    return kept


# --- loading -----------------------------------------------------------------------------------


def config_document(model: nn.Module) -> dict:
    """The ``config.json`` fields that describe ``model`` (architecture, config, digest), e.g. for
    checkpoints whose weights are stored elsewhere (the sharded run checkpoints of :mod:`vlmzoo.train.run_checkpoint`)."""
    document = _config_document(model)
    return {**document, "config_sha256": _digest(document)}


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a vlmzoo checkpoint directory (checked for the format)."""
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(_not_a_directory(directory))
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a vlmzoo checkpoint directory")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(document, dict) or document.get("format") != "vlmzoo":
        raise CheckpointError(f'{path} is not a vlmzoo config (missing "format": "vlmzoo")')
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this vlmzoo reads versions up to {FORMAT_VERSION} "
            "(upgrade vlmzoo)"
        )
    if not isinstance(document.get("architecture"), str) or not isinstance(document.get("config"), dict):
        raise CheckpointError(f'{path} lacks "architecture" (a class name) or "config" (an object)')
    return document


def load(
    path_or_hub_id: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> nn.Module:
    """Rebuild a saved model; outputs are bit-identical to the saved model's.

    ``path_or_hub_id`` is a checkpoint directory, or else a Hugging Face Hub repo id
    (``"owner/name"``) whose checkpoint files are downloaded (``revision``, ``cache_dir``,
    ``token``, ``force_download`` and ``local_files_only`` go to ``snapshot_download``).
    """
    from vlmzoo.weights.hub import resolve

    directory = resolve(
        path_or_hub_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        force_download=force_download,
        local_files_only=local_files_only,
    )
    return load_directory(directory, device)


def load_directory(
    directory: str | os.PathLike, device: str | torch.device = "cpu", expected: type | None = None
) -> nn.Module:
    """Rebuild the model saved in the local ``directory``.

    ``expected``, a class, refuses a checkpoint of any other architecture (subclasses pass) before
    anything is built.
    """
    from vlmzoo.registry import get_architecture

    directory = Path(directory)
    document = read_config(directory)
    architecture = document["architecture"]
    cls = get_architecture(architecture)
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(
            f"{directory} holds a {architecture} checkpoint, not a {expected.__name__}; "
            f"load it with vlmzoo.load or {architecture}.from_pretrained"
        )
    try:
        config = cls.config_class.from_dict(document["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: config does not fit {architecture}: {e}") from e
    headers = _checked_headers(directory, document)  # bad files are refused before anything is built
    model = cls(config)
    _load_checked(model, headers, match_dtypes=True)
    return model.to(device)


def load_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load the weights of the checkpoint in ``directory`` into an existing ``model`` (either layout)."""
    directory = Path(directory)
    _load_checked(model, _checked_headers(directory, read_config(directory)), match_dtypes=False)


def _checked_headers(directory: Path, document: dict) -> dict[Path, _Header]:
    """The headers of the checkpoint's weight files, checked to belong to ``document`` and its index."""
    files = _weight_files(directory, document)
    headers = {path: _read_header(path) for path in files}
    _check_headers(directory, document, files, headers)
    return headers


def _load_checked(model: nn.Module, headers: dict[Path, _Header], match_dtypes: bool) -> None:
    """Check every shape against ``model``, optionally take the stored float dtypes, then load the
    files one at a time (one shard in memory at a time)."""
    from safetensors.torch import load_file

    files = list(headers)
    _check_shapes(
        model, {k: s for h in headers.values() for k, s in h.shapes.items()}, _describe(files, headers)
    )
    if match_dtypes:
        _match_float_dtypes(model, {k: d for h in headers.values() for k, d in h.dtypes.items()})
    for path in files:
        model.load_state_dict(load_file(path), strict=False)


@dataclass
class _Header:
    metadata: dict[str, str]
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]


def _weight_files(directory: Path, document: dict) -> list[Path]:
    """The safetensors files of the checkpoint, checked to exist (single file or shards of an index)."""
    entry = document.get("weights")
    if entry is None:  # format_version 1
        entry = INDEX_NAME if (directory / INDEX_NAME).is_file() else WEIGHTS_NAME
    if entry not in (WEIGHTS_NAME, INDEX_NAME):
        raise CheckpointError(
            f'{directory / CONFIG_NAME}: "weights" must be {WEIGHTS_NAME} or {INDEX_NAME}, got {entry!r}'
        )
    path = directory / entry
    if not path.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (
            f"; found {', '.join(pickles)}: pickle files are never loaded as checkpoints "
            "(convert original releases with vlmzoo.convert.from_original)"
            if pickles
            else ""
        )
        raise CheckpointError(f"{path} not found next to {CONFIG_NAME}{hint}")
    if entry == WEIGHTS_NAME:
        return [path]
    index = _read_index(path)
    names = sorted(set(index["weight_map"].values()))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise CheckpointError(f"{path} names the shard {name!r}; shards must be plain file names")
        if not (directory / name).is_file():
            raise CheckpointError(f"{path} lists the shard {name}, which is missing from {directory}")
    return [directory / name for name in names]


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if (
        not isinstance(index, dict)
        or not isinstance(index.get("weight_map"), dict)
        or not index["weight_map"]
    ):
        raise CheckpointError(f'{path} has no "weight_map" (tensor name -> shard file)')
    return index


def _read_header(path: Path) -> _Header:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            return _Header(
                metadata=f.metadata() or {},
                shapes={k: s.get_shape() for k, s in slices.items()},
                dtypes={k: s.get_dtype() for k, s in slices.items()},
            )
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_guess_kind(path) or 'truncated or corrupted?'}): {e}"
        ) from e


def _check_headers(directory: Path, document: dict, files: list[Path], headers: dict[Path, _Header]) -> None:
    """Every weights file belongs to this config, and shards hold exactly what the index says."""
    for path, header in headers.items():
        stored = header.metadata.get("vlmzoo_config_sha256")
        if stored is not None and stored != document.get("config_sha256", stored):
            raise CheckpointError(
                f"{CONFIG_NAME} and {path.name} in {directory} come from different saves "
                "(their config digests differ)"
            )
        arch = header.metadata.get("vlmzoo_architecture")
        if arch is not None and arch != document["architecture"]:
            raise CheckpointError(
                f"{path} holds {arch} weights but {CONFIG_NAME} names {document['architecture']}"
            )
    if len(files) == 1 and files[0].name == WEIGHTS_NAME:
        return
    index_path = directory / INDEX_NAME
    weight_map = _read_index(index_path)["weight_map"]
    for path, header in headers.items():
        listed = {k for k, shard in weight_map.items() if shard == path.name}
        if set(header.shapes) != listed:
            extra, absent = sorted(set(header.shapes) - listed), sorted(listed - set(header.shapes))
            raise CheckpointError(
                f"{path.name} does not hold what {index_path} lists for it: "
                f"not listed {extra[:5]}, absent {absent[:5]} (a shard from another save?)"
            )


def _guess_kind(path: Path) -> str | None:
    """A hint for files that are not safetensors: pickles are named so (and never opened)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive, as torch.save writes: vlmzoo never unpickles checkpoints"
    if head[:1] == b"\x80":
        return "it is a pickle: vlmzoo never unpickles checkpoints"
    return None


def _not_a_directory(path: Path) -> str:
    kind = _guess_kind(path)
    if kind is not None:
        return (
            f"{path} is a file, not a vlmzoo checkpoint directory ({kind}; convert an original "
            "release's weights with vlmzoo.convert.from_original)"
        )
    return f"{path} is a file; pass the checkpoint directory (holding {CONFIG_NAME}) instead"


_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _match_float_dtypes(model: nn.Module, dtypes: dict[str, str]) -> None:
    """Give each floating tensor the stored dtype, so a bf16 save loads as bf16 (not upcast)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, code in dtypes.items():
        tensor, dtype = tensors.get(name), _FLOAT_DTYPES.get(code)
        if tensor is not None and dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def _check_shapes(model: nn.Module, shapes: dict[str, list[int]], source: str) -> None:
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    # Tied tensors are stored once: accept any key whose storage twin is present.
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
    check_state_dict(model, fake, source)


def _describe(files: list[Path], headers: dict[Path, _Header]) -> str:
    """How errors name the weights: the file (or the index of the shards), flagged if foreign."""
    name = str(files[0]) if len(files) == 1 else str(files[0].parent / INDEX_NAME)
    if any("vlmzoo_config_sha256" not in h.metadata for h in headers.values()):
        name += " (not written by vlmzoo)"
    return name
