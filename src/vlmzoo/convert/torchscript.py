"""The tensors of a TorchScript archive (``torch.jit.save``), read without running its code.

The official OpenAI CLIP releases (``ViT-B-32.pt`` ... ``ViT-L-14-336px.pt``) are TorchScript
archives. ``torch.jit.load`` compiles the archive's ``code/`` and runs it; this reader only
*reads*: it equals ``torch.jit.load(path).state_dict()`` (same keys, same values) with no code
executed and no pickle that can call anything but the tensor builders.

The layout, as torch writes it (``torch/csrc/jit/serialization/export_module.cpp``,
``pickler.cpp``, ``python_print.cpp``; read back by ``import.cpp``, ``unpickler.cpp`` and
``import_source.cpp``):

- one top folder ``<archive>/`` (its name is free) in a zip file;
- ``<archive>/data.pkl``: the module tree pickled (protocol 2). Every module is an object of its
  TorchScript class (``__torch__.<qualified name>``) built with ``NEWOBJ`` and given a dict of its
  attributes (submodules, tensors, plain values) with ``BUILD``; tensors are
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` whose
  storage is a persistent id ``("storage", torch.<Type>Storage, key, location, numel)``, the
  bytes of ``<archive>/data/<key>`` (stored uncompressed, ``numel`` elements);
- ``<archive>/code/__torch__/<a>/<b>.py``: the source of the classes of module ``__torch__.a.b``
  (``code/__torch__.py`` for ``__torch__`` itself). A module class (``class Name(Module):``)
  lists which of its attributes are parameters and buffers in ``__parameters__ = [...]`` and
  ``__buffers__ = [...]``; ``import_source.cpp`` marks exactly those, and a script module's
  ``state_dict()`` holds exactly the parameters and buffers (non-persistent buffers too; plain
  tensor attributes never). That is the rule this reader applies: it reads those two list
  literals from the class bodies (as text, never executed) and walks the module tree.
- ``constants.pkl`` / ``constants/`` (tensors the code uses), ``version``, ``byteorder``, debug
  files: not part of the state dict, not read (a big-endian archive is refused).

The unpickler is restricted (:class:`_ArchiveUnpickler`): its ``find_class`` gives the tensor
builder, the storage types and ``collections.OrderedDict`` (the empty backward-hook dict every
tensor carries), TorchScript's own typed-container builders (``torch.jit._pickle``, identity
functions here), and, for ``__torch__.*``, inert attribute holders; anything else is a
:class:`CheckpointError`. Storages are checked before they are read: a known dtype, ``numel`` a
non-negative integer whose bytes are exactly the size of the uncompressed ``data/<key>`` entry,
and every tensor view inside its storage.
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from vlmzoo.errors import CheckpointError

StateDict = dict[str, torch.Tensor]

# The storage classes torch's pickler names (``torch.<Type>Storage``) -> element dtype.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}

# data.pkl of CLIP ViT-L/14 is a few hundred kB; a class source file a few kB.
MAX_PICKLE_BYTES = 64 * 2**20
MAX_CODE_BYTES = 16 * 2**20
MAX_TENSOR_DIMS = 64
MAX_MODULE_DEPTH = 256


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip file laid out as a TorchScript archive (``<archive>/code/`` or
    ``<archive>/constants.pkl`` next to ``<archive>/data.pkl``), not a ``torch.save`` zip file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


class _StorageType:
    """What ``find_class("torch", "<Type>Storage")`` gives: the element dtype, nothing callable."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


class ScriptObject:
    """An inert stand-in for an object of a TorchScript class (``__torch__.*``).

    Created by ``NEWOBJ`` without running anything; ``BUILD`` hands it the object's state (a dict
    of attributes for modules), which is only recorded.
    """

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def attributes(self) -> dict[str, Any]:
        state = getattr(self, "state", None)
        return state if isinstance(state, dict) else {}


def _identity(value: Any, *_: Any) -> Any:
    """TorchScript's typed-container builders (``torch.jit._pickle.build_intlist`` ...,
    ``restore_type_tag``) only tag a value with its static type: the value is what counts."""
    return value


_JIT_PICKLE_BUILDERS = {
    "build_intlist",
    "build_tensorlist",
    "build_doublelist",
    "build_boollist",
    "build_complexlist",
    "restore_type_tag",
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with only the globals a tensor tree needs (see the module docstring)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_BUILDERS:
            return _identity
        if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        raise CheckpointError(
            f"{self.path}: the TorchScript archive's data.pkl asks for {module}.{name}, which a tree "
            "of modules and tensors never needs; refused (vlmzoo does not run an archive's code)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unknown persistent id in data.pkl: {str(pid)[:100]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: storage of an unsupported type {storage_type!r}")
        if not isinstance(key, str) or not re.fullmatch(r"\d{1,12}", key):
            raise CheckpointError(f"{self.path}: storage key {str(key)[:40]!r} is not a record number")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path}: storage {key} has an invalid size {str(numel)[:40]!r}")
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, storage_type, numel)
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype or storage.numel() != numel:
            raise CheckpointError(
                f"{self.path}: storage {key} is referenced as {numel} x {storage_type.name} and as "
                f"{storage.numel()} x {storage.dtype}"
            )
        return storage

    def _read_storage(self, key: str, storage_type: _StorageType, numel: int) -> torch.Tensor:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(
                f"{self.path}: data.pkl refers to {name}, which the archive lacks"
            ) from None
        itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
        nbytes = numel * itemsize
        # torch writes every record uncompressed and exactly as long as its storage: a size that
        # differs, or a compressed record (whose stated size nothing bounds), is not torch's.
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
            raise CheckpointError(
                f"{self.path}: {name} holds {info.file_size} bytes "
                f"({'compressed' if info.compress_type != zipfile.ZIP_STORED else 'stored'}), but "
                f"data.pkl declares {numel} x {storage_type.name} = {nbytes} bytes (truncated or altered)"
            )
        raw = torch.empty(nbytes, dtype=torch.uint8)
        with self.archive.open(info) as f:
            got = f.readinto(memoryview(raw.numpy()))
        if got != nbytes:
            raise CheckpointError(f"{self.path}: {name} is truncated ({got} of {nbytes} bytes)")
        return raw.view(storage_type.dtype)

    def _rebuild_tensor(
        self,
        storage: torch.Tensor,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        hooks: Any = None,
        metadata: Any = None,
    ) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor):
            raise CheckpointError(f"{self.path}: a tensor in data.pkl has no storage record")
        ints = (offset, *tuple(size), *tuple(stride))
        if (
            not isinstance(size, tuple)
            or not isinstance(stride, tuple)
            or len(size) != len(stride)
            or len(size) > MAX_TENSOR_DIMS
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints)
        ):
            raise CheckpointError(
                f"{self.path}: a tensor with invalid geometry (offset {offset!r}, size {str(size)[:80]}, "
                f"stride {str(stride)[:80]})"
            )
        if hooks:
            raise CheckpointError(f"{self.path}: a tensor in data.pkl carries backward hooks")
        if all(s > 0 for s in size):
            last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
            if last >= storage.numel():
                raise CheckpointError(
                    f"{self.path}: a tensor of size {list(size)} at offset {offset} reaches element "
                    f"{last} of a storage of {storage.numel()}"
                )
        return storage.as_strided(size, stride, offset)

    @staticmethod
    def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Any:
        return data


def _class_lists(text: str, source: str) -> dict[str, tuple[bool, list[str], list[str]]]:
    """``{class name: (is_module, __parameters__, __buffers__)}`` of one code file, read as text.

    Only the two list literals are parsed (``ast.literal_eval``: strings, nothing callable).
    """
    classes: dict[str, tuple[bool, list[str], list[str]]] = {}
    for block in re.split(r"^(?=class )", text, flags=re.MULTILINE):
        head = re.match(r"class (\w+)(?:\((\w+)\))?:", block)
        if head is None:
            continue
        lists: list[list[str]] = []
        for field in ("__parameters__", "__buffers__"):
            found = re.search(rf"^[ \t]+{field} = (\[.*\])[ \t]*$", block, flags=re.MULTILINE)
            names: Any = []
            if found is not None:
                try:
                    names = ast.literal_eval(found.group(1))
                except (ValueError, SyntaxError):
                    names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CheckpointError(f"{source}: class {head.group(1)}'s {field} is not a list of names")
            lists.append(names)
        classes[head.group(1)] = (head.group(2) == "Module", lists[0], lists[1])
    return classes


class _Code:
    """The parameter and buffer lists of the archive's classes, read from ``code/`` on demand."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        self.archive, self.prefix, self.path = archive, prefix, path
        self.files: dict[str, dict[str, tuple[bool, list[str], list[str]]]] = {}

    def lists(self, qualified: str) -> tuple[bool, list[str], list[str]]:
        module, _, name = qualified.rpartition(".")
        file = f"{self.prefix}code/{module.replace('.', '/')}.py"
        if file not in self.files:
            try:
                info = self.archive.getinfo(file)
            except KeyError:
                raise CheckpointError(
                    f"{self.path}: no {file} declares class {qualified} (not a TorchScript archive torch "
                    "can load either)"
                ) from None
            if info.file_size > MAX_CODE_BYTES:
                raise CheckpointError(f"{self.path}: {file} is {info.file_size} bytes, too large for source")
            text = self.archive.read(info).decode("utf-8", errors="replace")
            self.files[file] = _class_lists(text, f"{self.path}:{file}")
        if name not in self.files[file]:
            raise CheckpointError(f"{self.path}: {file} does not define class {name} ({qualified})")
        return self.files[file][name]


def _walk(obj: ScriptObject, prefix: str, code: _Code, out: StateDict, depth: int, path: Path) -> None:
    """Parameters, then buffers, then submodules, in attribute order (``Module.state_dict``'s)."""
    if depth > MAX_MODULE_DEPTH:
        raise CheckpointError(f"{path}: modules nested more than {MAX_MODULE_DEPTH} deep at {prefix!r}")
    is_module, params, buffers = code.lists(obj.qualified_name)
    if not is_module:
        raise CheckpointError(f"{path}: {prefix or 'the root'} is a {obj.qualified_name}, not a module")
    if not isinstance(getattr(obj, "state", None), dict):
        raise CheckpointError(
            f"{path}: module {obj.qualified_name} at {prefix or 'the root'} keeps a custom state "
            "(__getstate__), whose tensors only its code can place; refused"
        )
    attributes = obj.attributes()
    for names in (params, buffers):
        for name in names:
            value = attributes.get(name)
            if value is None:  # an optional parameter left unset (Linear without bias)
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: {prefix}{name} is declared a tensor but holds {type(value)}")
            out[f"{prefix}{name}"] = value
    for name, value in attributes.items():
        if isinstance(value, ScriptObject) and code.lists(value.qualified_name)[0]:
            _walk(value, f"{prefix}{name}.", code, out, depth + 1, path)


def read_torchscript(path: str | os.PathLike) -> StateDict:
    """``{dotted name: tensor}`` of a TorchScript archive, equal to ``torch.jit.load(path).state_dict()``.

    Nothing of the archive is executed (see the module docstring for what is read and checked).
    Tensors are CPU views of one buffer per storage record, as ``torch.jit.load(path,
    map_location="cpu")`` would give; anything that is not a plain archive of modules and tensors
    is a :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable zip archive: {e}") from e
    with archive:
        pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{path}: a TorchScript archive has one <archive>/data.pkl, found {len(pickles)}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in archive.namelist() and archive.read(order).strip() not in (b"", b"little"):
            raise CheckpointError(f"{path} was written on a big-endian machine; not supported")
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: data.pkl is {info.file_size} bytes, beyond any module tree")
        unpickler = _ArchiveUnpickler(archive.read(info), archive, prefix, path)
        try:
            root = unpickler.load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle streams raise anything from EOFError to TypeError
            raise CheckpointError(f"{path}: data.pkl cannot be read: {type(e).__name__}: {e}") from e
        if not isinstance(root, ScriptObject):
            raise CheckpointError(f"{path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
        out: StateDict = {}
        _walk(root, "", _Code(archive, prefix, path), out, 0, path)
    return out
