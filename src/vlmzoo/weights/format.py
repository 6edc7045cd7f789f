"""vlmzoo's own weights format: ``config.json`` + safetensors, saved atomically as a whole.

A checkpoint directory holds

- ``config.json``: the module class (``architecture``), its config, the name of the weights
  entry point, and what the save recorded to check the files against: ``config_sha256`` (the
  SHA-256 of the config), ``weights_sha256`` (per weights file, the SHA-256 of its tensors, see
  :func:`tensors_sha256`) and ``float_dtypes`` (the float dtype of the stored tensors: ``"*"``
  for most of them, and the name of each tensor saved in another dtype). The module is rebuilt
  from the registry of architectures; nothing from the file is ever evaluated or unpickled.
- ``model.safetensors``, or above ``max_shard_size`` the Hugging Face sharded layout:
  ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json`` (``metadata.total_size``
  and ``weight_map``, the index transformers and the Hub read). Every safetensors file carries
  the architecture, the config digest and its own tensors' digest in its metadata, so weights
  paired with the config of another save are detected on load. Tensors that share storage
  (tied weights) are stored once.

Loading checks, in this order, before the weights are read: the JSON (bounded, see
:func:`vlmzoo.weights.files.read_json`), the config's fields, that every file belongs to this
save; then the model is built on the meta device (no memory; a config asking for more
parameters than the files hold is stopped while it builds) and every shape and dtype is
compared with the file headers (a float weight stored as an integer or bool, or a float dtype
the save did not record, is refused, never cast); then the config's digest, and the memory the
weights need against what the device has free. Only then is the model built, its parameters
still on the meta device (:mod:`vlmzoo.weights.materialize`), and each file is read tensor by tensor
and, unless ``verify=False`` (or the environment variable ``VLMZOO_VERIFY_WEIGHTS=0``), its
tensors are hashed and compared with the recorded digest, and scanned for NaN and inf (loaded
with one warning naming the tensors); its tensors then become the model's parameters without a
copy (or cast one at a time to the requested dtype). These two are
the checks that read every byte (measured in ``benchmarks/integrity.py``); all others read
headers only and always run.

The digests detect corrupted files and files edited or swapped after a save; they are not
signatures: whoever can write the directory can write matching digests.

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
import threading
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlmzoo.config import Config
from vlmzoo.errors import CheckpointError, ConfigError, VlmzooError
from vlmzoo.registry import get_architecture
from vlmzoo.version import __version__
from vlmzoo.weights.files import read_json
from vlmzoo.weights.materialize import (
    adopt,
    allocations_below,
    check_dtype,
    check_memory,
    meta_tensors,
    parameters_placed,
    retie,
    tied_names,
)
from vlmzoo.weights.peft import base_model, is_peft_model, peft_document
from vlmzoo.weights.peft import wrap as wrap_peft
from vlmzoo.weights.swap import check_target, replace_directory

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Glob patterns of every file a save writes (Hub downloads and uploads are restricted to them).
CHECKPOINT_PATTERNS = [CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME, "model-*-of-*.safetensors"]
DEFAULT_MAX_SHARD_SIZE = "5GB"  # as transformers and huggingface_hub
# 3: config.json records weights_sha256 and float_dtypes, each file its tensors' digest.
# 2: config.json names its weights entry point and shards may be used. 1 and 2 files still load
# (without the checks that need the records).
FORMAT_VERSION = 3
VERIFY_ENV = "VLMZOO_VERIFY_WEIGHTS"  # "0" (or false/no/off): load skips the checks that read every byte

# safetensors' dtype codes (the header's "dtype") of torch's types.
_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FLOAT_DTYPES = {code: dtype for dtype, code in _CODES.items() if dtype.is_floating_point}
_DTYPES_BY_CODE = {code: dtype for dtype, code in _CODES.items()}


class NonFiniteWeightsWarning(RuntimeWarning):
    """A loaded checkpoint holds NaN or inf weights (the tensors are named in the message)."""


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
                parts.append(f"  {len(items)} {title}: {_shown(items, 10)}")
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


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The content digest of one weights file, as ``weights_sha256`` records it.

    SHA-256 over the tensors in name order, each as one JSON line ``[name, dtype, shape]``
    followed by the SHA-256 digests (32 bytes each) of its bytes (little-endian, as safetensors
    stores them) in chunks of 64 MiB. Independent of the file's layout and header, so it can be
    written into the header itself and recomputed from the loaded tensors without reading the
    file twice; the chunks are hashed on several threads (hashlib releases the GIL).
    """
    names = sorted(tensors)
    data = {name: _bytes_of(tensors[name]) for name in names}
    chunks = [data[n][i : i + _HASH_CHUNK] for n in names for i in range(0, len(data[n]), _HASH_CHUNK)]
    threads = min(8, os.cpu_count() or 1, len(chunks))
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            digests = iter(list(pool.map(_chunk_digest, chunks)))
    else:
        digests = map(_chunk_digest, chunks)
    outer = hashlib.sha256()
    for name in names:
        tensor = tensors[name]
        outer.update(
            json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode()
        )
        outer.update(b"\n")
        for _ in range(0, len(data[name]), _HASH_CHUNK):
            outer.update(next(digests))
    return outer.hexdigest()


_HASH_CHUNK = 2**26


def _chunk_digest(chunk: Any) -> bytes:
    return hashlib.sha256(chunk).digest()


def _bytes_of(tensor: torch.Tensor) -> Any:
    """The tensor's bytes as a flat uint8 array (a view where the tensor is on the CPU already)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# --- saving ------------------------------------------------------------------------------------


def save(
    model: nn.Module, directory: str | os.PathLike, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
) -> Path:
    """Save ``model`` to ``directory``; returns the directory.

    One ``model.safetensors`` up to ``max_shard_size`` (bytes, or a string such as ``"5GB"``,
    ``"200MB"``), shards and an index above it. The directory is replaced as a whole, so an
    interrupted save leaves the previous checkpoint intact; files that are not part of a
    checkpoint (a tokenizer, a README) are kept. Refused before anything is written: a module
    without a vlmzoo config, a model on the meta device, and targets a whole-directory swap
    cannot replace (see :func:`vlmzoo.weights.swap.check_target`).
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    document = _config_document(model)
    state = _stored_tensors(model)
    _refuse_meta_tensors(model, state)
    check_target(directory)
    digest = _digest(document)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    # A module without tensors (the "identity" projector) still gets its (empty) weights file.
    layout = split.filename_to_tensors or {WEIGHTS_NAME: []}
    weights_sha256 = {}
    with replace_directory(directory, managed=is_checkpoint_file) as staging:
        for filename, keys in layout.items():
            tensors = {k: state[k].cpu() for k in keys}  # one file's tensors on the CPU at a time
            weights_sha256[filename] = tensors_sha256(tensors)
            metadata = {
                "format": "pt",
                "vlmzoo_architecture": document["architecture"],
                "vlmzoo_config_sha256": digest,
                "vlmzoo_tensors_sha256": weights_sha256[filename],
            }
            save_file(tensors, staging / filename, metadata=metadata)
            del tensors
        if split.is_sharded:
            index = {
                "metadata": {**split.metadata, "vlmzoo_config_sha256": digest},
                "weight_map": dict(sorted(split.tensor_to_filename.items())),
            }
            _write_json(staging / INDEX_NAME, index)
        document = {
            **document,
            "config_sha256": digest,
            "weights": INDEX_NAME if split.is_sharded else WEIGHTS_NAME,
            "weights_sha256": dict(sorted(weights_sha256.items())),
            "float_dtypes": _float_dtypes(state),
        }
        _write_json(staging / CONFIG_NAME, document)
    return Path(directory)


def _write_json(path: Path, document: dict) -> None:
    # Inside the staging directory, which is swapped in as a whole: no atomic write needed here.
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _config_document(module: nn.Module) -> dict:
    base = base_model(module)  # a PeftModel is saved as its vlmzoo model plus its peft configs
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise CheckpointError(
            f"{type(module).__name__} has no vlmzoo config; only vlmzoo models can be saved"
        )
    document = {
        "format": "vlmzoo",
        "format_version": FORMAT_VERSION,
        "vlmzoo_version": __version__,
        "architecture": type(base).__name__,
        "config": config.to_dict(),
    }
    return {**document, "peft": peft_document(module)} if is_peft_model(module) else document


def _digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document["config"], sort_keys=True).encode()).hexdigest()


def _refuse_meta_tensors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    meta = [name for name, tensor in state.items() if tensor.device.type == "meta"]
    if meta:
        raise CheckpointError(
            f"cannot save {type(model).__name__}: {len(meta)} of its tensors are on the meta device "
            f"({_shown(meta, 3)}), which holds shapes but no values; build the model on a real "
            "device (or load weights into it with model.to_empty(device=...) and load_weights) first"
        )


def _float_dtypes(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{"*": the commonest float dtype code, name: code for each float tensor in another}``."""
    codes = {k: _code(v.dtype) for k, v in state.items() if v.is_floating_point()}
    if not codes:
        return {}
    values = list(codes.values())
    common = max(sorted(set(values)), key=values.count)
    return {"*": common, **{k: c for k, c in sorted(codes.items()) if c != common}}


def _code(dtype: torch.dtype) -> str:
    return _CODES.get(dtype, str(dtype).removeprefix("torch."))


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


# --- reading a checkpoint's files --------------------------------------------------------------


def config_document(model: nn.Module) -> dict:
    """The ``config.json`` fields that describe ``model`` (architecture, config, digest), e.g. for
    checkpoints whose weights are stored elsewhere (the sharded run checkpoints of
    :mod:`vlmzoo.train.run_checkpoint`)."""
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
    document = read_json(path, "vlmzoo checkpoint config")
    if not isinstance(document, dict) or document.get("format") != "vlmzoo":
        raise CheckpointError(f'{path} is not a vlmzoo config (missing "format": "vlmzoo")')
    version = document.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this vlmzoo reads versions 1 to {FORMAT_VERSION} "
            "(upgrade vlmzoo for newer ones)"
        )
    if not isinstance(document.get("architecture"), str) or not isinstance(document.get("config"), dict):
        raise CheckpointError(f'{path} lacks "architecture" (a class name) or "config" (an object)')
    return document


@dataclass
class _Header:
    metadata: dict[str, str]
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]


@dataclass
class _Checkpoint:
    """A checkpoint directory's config document and the headers of its weight files, checked to
    belong together; no tensor data read yet."""

    directory: Path
    document: dict
    headers: dict[Path, _Header]

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: s for h in self.headers.values() for k, s in h.shapes.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {k: d for h in self.headers.values() for k, d in h.dtypes.items()}

    def where(self, key: str) -> str:
        return next(p.name for p, h in self.headers.items() if key in h.shapes)

    def describe(self) -> str:
        """How errors name the weights: the file (or the index of the shards), flagged if foreign."""
        files = list(self.headers)
        name = str(files[0]) if len(files) == 1 else str(self.directory / INDEX_NAME)
        if any("vlmzoo_config_sha256" not in h.metadata for h in self.headers.values()):
            name += " (not written by vlmzoo)"
        return name


def _open_checkpoint(directory: Path, document: dict) -> _Checkpoint:
    """The headers of the checkpoint's weight files, checked to belong to ``document`` and its index."""
    files = _weight_files(directory, document)
    checkpoint = _Checkpoint(directory, document, {path: _read_header(path) for path in files})
    _check_headers(checkpoint)
    return checkpoint


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
        if Path(name).name != name or name.startswith("."):
            raise CheckpointError(f"{path} names the shard {name!r}; shards must be plain file names")
        if not (directory / name).is_file():
            raise CheckpointError(f"{path} lists the shard {name}, which is missing from {directory}")
    return [directory / name for name in names]


def _read_index(path: Path) -> dict:
    index = read_json(path, "shard index")
    if (
        not isinstance(index, dict)
        or not isinstance(index.get("weight_map"), dict)
        or not index["weight_map"]
        or not all(isinstance(shard, str) for shard in index["weight_map"].values())
    ):
        raise CheckpointError(f'{path} has no "weight_map" (tensor name -> shard file name)')
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


def _check_headers(checkpoint: _Checkpoint) -> None:
    """Every weights file belongs to this config, and shards hold exactly what the index says."""
    directory, document = checkpoint.directory, checkpoint.document
    for path, header in checkpoint.headers.items():
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
    files = list(checkpoint.headers)
    if len(files) > 1 or files[0].name != WEIGHTS_NAME:
        index_path = directory / INDEX_NAME
        weight_map = _read_index(index_path)["weight_map"]
        for path, header in checkpoint.headers.items():
            listed = {k for k, shard in weight_map.items() if shard == path.name}
            if set(header.shapes) != listed:
                extra, absent = sorted(set(header.shapes) - listed), sorted(listed - set(header.shapes))
                raise CheckpointError(
                    f"{path.name} does not hold what {index_path} lists for it: "
                    f"not listed {extra[:5]}, absent {absent[:5]} (a shard from another save?)"
                )
    # A file of another save of the same config (an earlier training step) has the same keys and
    # config digest; the digest of its tensors, recorded in the file and in config.json, differs.
    recorded = document.get("weights_sha256")
    recorded = recorded if isinstance(recorded, dict) else {}
    for path, header in checkpoint.headers.items():
        own = header.metadata.get("vlmzoo_tensors_sha256")
        if own is not None and recorded.get(path.name, own) != own:
            raise CheckpointError(
                f"{CONFIG_NAME} and {path.name} in {directory} come from different saves (the file's "
                f"tensor digest {own[:12]}... is not the {str(recorded[path.name])[:12]}... this save "
                "recorded for it); restore the file from the same save"
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


# --- checks before anything is allocated -------------------------------------------------------


def _build_checked(cls: type[nn.Module], config: Any, checkpoint: _Checkpoint) -> nn.Module:
    """``cls(config)`` with its parameters on the meta device (:func:`parameters_placed`; buffers
    are real, non-persistent ones are not stored), stopped before it allocates more than the files
    hold: a config.json asking for a width of 8192 and a depth of 4096 is refused within its first
    blocks, not after minutes of building, and a single tensor (a position table, a buffer) asked
    bigger than that is refused before it is made. Smaller mismatches are left to the comparison
    of every shape, whose error lists the keys.

    Why not build everything under ``torch.device("meta")``: meta kernels of scalar arithmetic
    import torch._dynamo on first use, about 2 s of every fresh process's first load.
    """
    held = sum(_numel(s) for s in checkpoint.shapes.values())
    # Parameters registered while building are counted once each; a few are replaced before the
    # build ends (transformers ties its output layer to the embeddings after making both), hence
    # the margin of twice what the files hold.
    limit, counted, seen, thread = 2 * held + 2**20, [0], set(), threading.get_ident()

    def count(module: nn.Module, name: str, param: torch.Tensor | None) -> None:
        if param is None or id(param) in seen or threading.get_ident() != thread:
            return
        seen.add(id(param))
        counted[0] += param.numel()
        if counted[0] > limit:
            raise _TooBig(f"of more than {counted[0]:,} parameters")

    def one_tensor(numel: int) -> _TooBig:
        return _TooBig(f"asking for a tensor of {numel:,} values")

    hook = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        with parameters_placed("meta"), allocations_below(limit, one_tensor):
            return cls(config)
    except _TooBig as stop:
        raise CheckpointError(
            f"{checkpoint.directory / CONFIG_NAME} describes a {cls.__name__} {stop.args[0]}, but its "
            f"weight files hold {held:,} values in all: the config does not belong to these weights "
            "(edited?); refused before allocating anything"
        ) from None
    except VlmzooError:
        raise
    except (RuntimeError, ValueError, OverflowError, TypeError) as e:  # sizes torch cannot represent
        raise CheckpointError(
            f"{checkpoint.directory / CONFIG_NAME}: the config describes a {cls.__name__} that cannot be "
            f"built: {type(e).__name__}: {e}"
        ) from e
    finally:
        hook.remove()


class _TooBig(Exception):
    """Raised inside a parameter registration hook to stop a meta build (never escapes)."""


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _check_fit(model: nn.Module, checkpoint: _Checkpoint) -> None:
    """Every key and shape of ``model`` (real or meta) is in the files, with a dtype it may take."""
    tensors = model.state_dict(keep_vars=True)
    shapes = checkpoint.shapes
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    # Tied tensors are stored once: accept any key whose storage twin is present.
    twins: dict[str, str] = {}
    for names in _tied_groups(tensors):
        present = [n for n in names if n in fake]
        for n in names:
            if present and n not in fake:
                fake[n], twins[n] = fake[present[0]], present[0]
    check_state_dict(model, fake, checkpoint.describe())
    dtypes = checkpoint.dtypes
    refused = []
    for name, tensor in tensors.items():
        code = dtypes[twins.get(name, name)]
        if tensor.is_floating_point() != (code in _FLOAT_DTYPES) or (
            not tensor.is_floating_point() and code != _code(tensor.dtype)
        ):
            refused.append(
                f"{name} ({checkpoint.where(twins.get(name, name))}: {code}, model: {_code(tensor.dtype)})"
            )
    if refused:
        raise CheckpointError(
            f"{checkpoint.describe()}: {len(refused)} tensors are stored in a dtype of another kind than "
            f"{type(model).__name__} holds them in: {_shown(refused, 5)}; vlmzoo does not cast integer or "
            "bool data into float weights (or back). The file was altered or written by another tool: "
            "re-save it from the model"
        )
    _check_recorded_float_dtypes(checkpoint)


def _tied_groups(tensors: Mapping[str, torch.Tensor]) -> Iterator[list[str]]:
    """Names that share one tensor (tied weights): by storage for real tensors; for meta tensors
    (no storage), by object (``state_dict(keep_vars=True)`` gives a tied Parameter twice)."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else 0
        key = (
            (tensor.device, ptr, tensor.storage_offset(), tuple(tensor.shape)) if ptr else ("id", id(tensor))
        )
        groups.setdefault(key, []).append(name)
    return iter(groups.values())


def _check_recorded_float_dtypes(checkpoint: _Checkpoint) -> None:
    """Each float tensor is in the dtype the save recorded (one F16 tensor among F32 would load
    and fail later in forward)."""
    recorded = checkpoint.document.get("float_dtypes")
    if not isinstance(recorded, dict) or not recorded:
        return  # format_version < 3 (checked for presence later), or a model without floats
    wrong = [
        f"{name} ({checkpoint.where(name)}: {code}, recorded: {recorded.get(name, recorded.get('*'))})"
        for name, code in sorted(checkpoint.dtypes.items())
        if code in _FLOAT_DTYPES and code != recorded.get(name, recorded.get("*"))
    ]
    if wrong:
        raise CheckpointError(
            f"{checkpoint.describe()}: {len(wrong)} tensors are not in the float dtype the save recorded "
            f"in {CONFIG_NAME}: {_shown(wrong, 5)}. The weights were converted after saving; cast the "
            "model with model.to(dtype) and save it again instead of editing the files"
        )


def _check_records(checkpoint: _Checkpoint, cls_name: str) -> None:
    """The config in ``config.json`` is the one the save digested, and a format-3 config holds
    every record the save writes (a missing one means the file was edited)."""
    document, path = checkpoint.document, checkpoint.directory / CONFIG_NAME
    if document["format_version"] >= 3:
        weights = document.get("weights_sha256")
        lacking = [
            k
            for k, kind in (("config_sha256", str), ("float_dtypes", dict))
            if not isinstance(document.get(k), kind)
        ]
        if not isinstance(weights, dict) or any(
            not isinstance(weights.get(p.name), str) for p in checkpoint.headers
        ):
            lacking.append("weights_sha256 (for every weights file)")
        if lacking:
            raise CheckpointError(
                f"{path} lacks {', '.join(lacking)}, which every format_version 3 save records: the "
                "file was edited; restore it from the save"
            )
    stored = document.get("config_sha256")
    if stored is None:  # a hand-written or older config: the weight files' record, if any
        stored = next(
            (
                h.metadata["vlmzoo_config_sha256"]
                for h in checkpoint.headers.values()
                if "vlmzoo_config_sha256" in h.metadata
            ),
            None,
        )
    actual = _digest(document)
    if stored is not None and stored != actual:
        raise CheckpointError(
            f"{path} was edited after the save: its config's SHA-256 is {actual[:12]}..., the save "
            f"recorded {str(stored)[:12]}.... The shapes still fit, so the edit would change what the "
            f"{cls_name} computes without an error; restore the saved {CONFIG_NAME}, or, to use the new "
            "config on purpose, build the model from it, load_weights(model, directory) and save it again"
        )


# --- loading -----------------------------------------------------------------------------------


def load_directory(
    directory: str | os.PathLike,
    device: str | torch.device | None = None,
    expected: type | None = None,
    *,
    dtype: torch.dtype | None = None,
    verify: bool | None = None,
) -> nn.Module:
    """Rebuild the model saved in the local ``directory`` (see the module docstring for the checks).

    Lean: the model is built with its parameters on the meta device and each stored tensor becomes
    its parameter as read from the file (cast to ``dtype`` and moved to ``device``
    one tensor at a time when asked), so loading never holds a random initialisation or a second
    copy of the weights; the memory the model needs is compared with what ``device`` has free
    before anything is allocated (:class:`InsufficientMemoryError`). ``dtype=None`` keeps the
    stored float dtypes; a ``dtype`` gives what ``load(...).to(dtype)`` would (float parameters
    and buffers). ``device=None`` is the CPU.

    ``expected``, a class, refuses a checkpoint of any other architecture (subclasses pass) before
    anything is built. ``verify=False`` skips the two checks that read every byte, the tensors'
    digests and the scan for NaN and inf (``None``: on unless the environment sets
    ``VLMZOO_VERIFY_WEIGHTS=0``); every other check always runs.
    """
    directory = Path(directory)
    target = torch.device("cpu" if device is None else device)
    check_dtype(dtype)
    document = read_config(directory)
    architecture = document["architecture"]
    cls, config = architecture_and_config(directory, document, expected)
    checkpoint = _open_checkpoint(directory, document)  # bad files are refused before anything is built
    model = _build_checked(cls, config, checkpoint)  # parameters on meta: no memory yet
    if "peft" in document:
        with parameters_placed("meta"):  # the adapter layers hold no memory either
            model = wrap_peft(model, document["peft"], str(directory / CONFIG_NAME))
    _check_fit(model, checkpoint)
    _check_records(checkpoint, architecture)
    check_memory(_stored_bytes(checkpoint, dtype), target, f"{architecture} from {directory}", dtype)
    # A group the config ties but the file stores twice was untied when it was saved (save keeps
    # an alias once): a head trained apart from the embeddings must come back apart.
    ties = [names for names in tied_names(model) if sum(n in checkpoint.shapes for n in names) < 2]
    _load_files(model, checkpoint, verify_enabled(verify), adopt_as=(dtype, target))
    retie(model, ties)
    left = meta_tensors(model)
    if left:  # _check_fit compared every key, so this is a bug in a module, not in the files
        raise CheckpointError(
            f"{architecture}: {_shown(left, 5)} were not filled from {checkpoint.describe()}"
        )
    return model.to(device=target, dtype=dtype)


def _stored_bytes(checkpoint: _Checkpoint, dtype: torch.dtype | None) -> int:
    """Bytes the checkpoint's tensors take once loaded, floats counted in ``dtype`` when given."""
    cast = None if dtype is None else torch.empty((), dtype=dtype).element_size()
    total = 0
    for name, shape in checkpoint.shapes.items():
        code = checkpoint.dtypes[name]
        stored = _FLOAT_DTYPES.get(code)
        size = (
            cast
            if stored is not None and cast is not None
            else torch.empty((), dtype=stored or _DTYPES_BY_CODE.get(code, torch.uint8)).element_size()
        )
        total += _numel(shape) * size
    return total


def architecture_and_config(
    directory: Path, document: dict, expected: type | None = None
) -> tuple[type[nn.Module], Config]:
    """The module class and the parsed config that a checked ``config.json`` document describes.

    ``expected``, a class, refuses a checkpoint of any other architecture (subclasses pass); a
    config that does not parse for its class is a :class:`CheckpointError` naming the file.
    """
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
    return cls, config


def load_weights(model: nn.Module, directory: str | os.PathLike, *, verify: bool | None = None) -> None:
    """Load the weights of the checkpoint in ``directory`` into an existing ``model`` (either layout).

    The files are checked as by :func:`load_directory`, except that the config is the model's own
    (``config.json`` is not compared with it), and float weights take the model's dtype.
    """
    directory = Path(directory)
    checkpoint = _open_checkpoint(directory, read_config(directory))
    _check_fit(model, checkpoint)
    _load_files(model, checkpoint, verify_enabled(verify))


def verify_enabled(verify: bool | None) -> bool:
    """Whether the checks that read every byte run: ``verify`` if given, else the environment
    (``VLMZOO_VERIFY_WEIGHTS=0``, ``false``, ``no`` or ``off`` turns them off)."""
    if verify is not None:
        return bool(verify)
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _load_files(
    model: nn.Module,
    checkpoint: _Checkpoint,
    verify: bool,
    adopt_as: tuple[torch.dtype | None, torch.device] | None = None,
) -> None:
    """Load the files one at a time; with ``verify``, each is checked against its recorded digest
    and scanned for non-finite values (one warning for all) before any of its tensors is used, so
    a bad file leaves ``model`` as it was.

    Each tensor is read straight from the file into its own aligned tensor (:func:`_read_file`).
    With ``adopt_as=(dtype, device)`` each becomes the model's own tensor (:func:`adopt`), cast or
    moved one at a time; otherwise they are copied into the existing tensors (and their dtypes).
    """
    recorded = checkpoint.document.get("weights_sha256")
    recorded = recorded if isinstance(recorded, dict) else {}
    non_finite: list[str] = []
    for path, header in checkpoint.headers.items():
        tensors = _read_file(path)
        expected = recorded.get(path.name, header.metadata.get("vlmzoo_tensors_sha256"))
        if verify and expected is not None:  # (files saved before format 3 have no digest)
            actual = tensors_sha256(tensors)
            if actual != expected:
                raise CheckpointError(
                    f"{path} is corrupted: its tensors' SHA-256 is {actual[:12]}..., the save recorded "
                    f"{str(expected)[:12]}... (a flipped bit on disk, a truncated copy or an edit of the "
                    "data); restore the file from a good copy or save the model again"
                )
        if verify:
            non_finite += _non_finite(tensors)
        if adopt_as is None:
            model.load_state_dict(tensors, strict=False)
        else:
            for name in list(tensors):  # popped one by one: a cast copy replaces its source
                adopt(model, name, tensors.pop(name), dtype=adopt_as[0], device=adopt_as[1])
        del tensors
    if non_finite:
        warnings.warn(
            f"{checkpoint.describe()}: {len(non_finite)} tensors hold non-finite values: "
            f"{_shown(non_finite, 10)}; outputs computed with them will be NaN or inf",
            NonFiniteWeightsWarning,
            stacklevel=3,
        )


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (its header already checked by :func:`_read_header`),
    each read from the file into a fresh tensor.

    Not memory-mapped: safetensors packs tensors back to back, so a mapped tensor starts wherever
    the previous one ended, and CPU kernels choose their vector paths by alignment — an unaligned
    weight can round differently from the saved model's, and copying it to align it would hold
    the mapped pages and the copy at once. Read into torch's own (aligned) allocation, each byte is
    held once, and the file's pages stay in the page cache, not in the process.
    """
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        base = 8 + length
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensor = torch.empty(info["shape"], dtype=_DTYPES_BY_CODE[info["dtype"]])
            start, end = info["data_offsets"]
            if tensor.numel():
                view = tensor.reshape(-1).view(torch.uint8).numpy()
                f.seek(base + start)
                if end - start != view.nbytes or f.readinto(view) != view.nbytes:
                    raise CheckpointError(f"{path}: {name} is truncated (file shorter than its header says)")
            tensors[name] = tensor
    return tensors


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """``"name (n NaN, m inf)"`` for each float tensor holding non-finite values."""
    found = []
    for name, tensor in sorted(tensors.items()):
        if tensor.is_floating_point() and not _all_finite(tensor):
            nan = int(torch.isnan(tensor).sum())
            found.append(f"{name} ({nan} NaN, {int(torch.isinf(tensor).sum())} inf)")
    return found


def _all_finite(tensor: torch.Tensor) -> bool:
    # min and max are finite only if every value is (NaN propagates through both); this costs
    # about a twentieth of torch.isfinite(t).all(), which writes a bool per value first.
    if tensor.numel() == 0:
        return True
    if tensor.element_size() == 1:  # float8: no reductions
        tensor = tensor.float()
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _shown(items: list[str], n: int) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
