"""A run folder and its manifest: vlmzoo deletes and overwrites only files it wrote itself.

A run folder receives a checkpoint, a history, and whatever the recipe adds (the final model,
plots, samples, summaries). Before vlmzoo writes a name into the folder it lists it in the
folder's manifest, ``vlmzoo-run.json`` (``files`` and ``directories``, relative POSIX paths), so

- ``--overwrite`` removes exactly the listed names (and the hidden leftovers a crash can leave
  beside them: ``.NAME.*.tmp`` of an atomic write, ``.NAME.*.saving`` / ``.NAME.*.old`` of a
  directory swap) and refuses, naming the file, if the folder holds anything else: a thesis or a
  data folder next to a ``metrics.json`` is never deleted;
- a folder that holds files but no manifest is not vlmzoo's, and is refused as a run folder
  unless it is empty;
- a name that exists but is not listed is never overwritten (:meth:`RunDir.record` refuses it);
- the working directory, a folder holding it, the home directory and the file system root are
  refused before anything runs, since a run folder is also where the final model is saved.

A listed directory holding a manifest of its own (one run of an ablation grid) is judged by that
manifest. Symbolic links are never followed: a link is removed only if its own name is listed.
Recipes list what they write with :meth:`RunDir.record` (or write through :meth:`RunDir.write_text`,
:meth:`RunDir.write_json`, :meth:`RunDir.save_model`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch.nn as nn

from vlmzoo.errors import CheckpointError
from vlmzoo.weights.files import atomic_write_json, atomic_write_text, read_json
from vlmzoo.weights.format import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, is_checkpoint_file, save
from vlmzoo.weights.swap import check_target

MANIFEST_NAME = "vlmzoo-run.json"
MANIFEST_FORMAT = "vlmzoo-run-folder"
MANIFEST_VERSION = 1
CHECKPOINT_DIR = "checkpoint"  # the run checkpoint inside a run folder
HISTORY_NAME = "metrics.json"  # the training history inside a run folder
# What a crash can leave beside a name: files.atomic_write's temporary file, swap's staging and
# set-aside directories (the hidden prefix is ".NAME.", a nested staging adds one more dot).
_LEFTOVER_SUFFIXES = (".tmp", ".saving", ".old")


@dataclass
class Manifest:
    """The names vlmzoo wrote into a run folder (relative POSIX paths)."""

    files: set[str] = field(default_factory=set)
    directories: set[str] = field(default_factory=set)

    def names(self) -> set[str]:
        return self.files | self.directories


@dataclass
class _Removal:
    """What clearing a run folder would remove, and what it must not touch."""

    files: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)  # deepest first
    foreign: list[str] = field(default_factory=list)


class RunDir:
    """A run folder whose manifest lists every name vlmzoo wrote into it.

    ``writer=False`` (every rank but rank 0 of a distributed run) reads but never writes.
    """

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> Manifest:
        """The manifest (empty if the folder has none); :class:`CheckpointError` if it is damaged."""
        if not self.has_manifest():
            return Manifest()
        document = read_json(self.manifest_path, "run folder manifest")
        entries = [document.get(k) for k in ("files", "directories")] if isinstance(document, dict) else []
        if (
            not isinstance(document, dict)
            or document.get("format") != MANIFEST_FORMAT
            or not all(isinstance(e, list) and all(isinstance(n, str) for n in e) for e in entries)
        ):
            raise CheckpointError(
                f'{self.manifest_path} is not a vlmzoo run folder manifest (expected "format": '
                f'"{MANIFEST_FORMAT}" and lists of "files" and "directories"); restore it, or move the '
                "files you want to keep out of the folder and delete it yourself"
            )
        return Manifest(set(document["files"]), set(document["directories"]))

    # --- writing ---------------------------------------------------------------------------------
    def record(self, *names: str) -> None:
        """List ``names`` (relative POSIX paths; a trailing ``/`` marks a directory) in the manifest
        before they are written. Parent directories are listed too.

        Raises :class:`CheckpointError` if a name already exists in the folder without being
        listed: vlmzoo would overwrite a file it did not write.
        """
        if not self.writer:
            return
        manifest = self.manifest()
        files, directories = set(manifest.files), set(manifest.directories)
        for name in names:
            parts = _relative_parts(name)
            for depth in range(1, len(parts)):
                directories.add("/".join(parts[:depth]))
            (directories if name.endswith("/") else files).add("/".join(parts))
        new = (files - manifest.files) | (directories - manifest.directories)
        if not new:
            return
        self._check_free(new, manifest)
        self.path.mkdir(parents=True, exist_ok=True)
        document = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "files": sorted(files),
            "directories": sorted(directories),
        }
        atomic_write_json(self.manifest_path, document)

    def check_free(self, *names: str) -> None:
        """:class:`CheckpointError` if one of ``names`` exists without being listed (vlmzoo would
        overwrite a file it did not write); call it before a long job that writes them."""
        self._check_free({"/".join(_relative_parts(n)) for n in names}, self.manifest())

    def _check_free(self, names: set[str], manifest: Manifest) -> None:
        for name in sorted(names - manifest.names()):
            path = self.path / name
            if path.exists() or path.is_symlink():
                raise CheckpointError(
                    f"{path} exists but vlmzoo did not write it (it is not listed in {self.manifest_path}); "
                    "vlmzoo never overwrites files it did not write: move it away or choose another run folder"
                )

    def path_for(self, name: str) -> Path:
        """``name`` inside the folder, listed first: for writers that take a path (plots, CSV)."""
        self.record(name)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` to ``name`` (listed, atomically)."""
        self.record(name)
        return atomic_write_text(self.path / name, text)

    def write_json(self, name: str, document: Any) -> Path:
        """Write ``document`` as JSON to ``name`` (listed, atomically)."""
        self.record(name)
        return atomic_write_json(self.path / name, document)

    def save_model(self, model: nn.Module, **save_options: Any) -> Path:
        """:func:`vlmzoo.save` the model into the folder itself (``config.json`` + safetensors),
        listed; the folder then opens with :func:`vlmzoo.load`."""
        self.record(CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME)
        save(model, self.path, **save_options)
        # Shards are named by their count, known only now (a crash in between leaves them
        # unlisted: --overwrite then refuses, naming them, rather than deleting them).
        self.record(*(p.name for p in self.path.iterdir() if is_checkpoint_file(p.name)))
        return self.path

    # --- overwriting -------------------------------------------------------------------------------
    def foreign(self) -> list[str]:
        """Names in the folder that vlmzoo did not write (sorted; directories end with ``/``)."""
        return self._plan().foreign

    def clear(self) -> None:
        """Remove everything the manifest lists, and the manifest; refuse if anything else is there."""
        plan = self._plan()
        if plan.foreign:
            more = f" (and {len(plan.foreign) - 1} more)" if len(plan.foreign) > 1 else ""
            raise CheckpointError(
                f"--overwrite refused: {self.path}{os.sep}{plan.foreign[0]}{more} was not written by vlmzoo (it is "
                f"not listed in {self.manifest_path}), and vlmzoo deletes only what it wrote; move it out "
                "of the run folder, or choose another run folder"
            )
        if not self.writer:
            return
        for path in plan.files:
            path.unlink(missing_ok=True)
        for path in plan.directories:
            path.rmdir()
        self.manifest_path.unlink(missing_ok=True)

    def _plan(self) -> _Removal:
        plan = _Removal()
        if not self.path.is_dir():
            return plan
        if not self.has_manifest():
            plan.foreign = sorted(_shown_name(e) for e in os.scandir(self.path))
            return plan
        self._visit(self.path, "", self.manifest(), plan, top=True)
        plan.foreign.sort()
        return plan

    def _visit(self, directory: Path, prefix: str, manifest: Manifest, plan: _Removal, top: bool) -> None:
        """Sort the entries of ``directory`` (whose names are listed under ``prefix``) into plan."""
        listed_here = {n[len(prefix) :] for n in manifest.names() if n.startswith(prefix)}
        siblings = {n for n in listed_here if "/" not in n}
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            name, rel = entry.name, prefix + entry.name
            if top and name == MANIFEST_NAME:
                continue
            if entry.is_dir(follow_symlinks=False):
                # A listed directory, or a swap's leftover of one (judged by the same names).
                base = rel if rel in manifest.directories else _leftover_of(name, siblings, prefix)
                if base is None or base not in manifest.directories:
                    plan.foreign.append(rel + "/")
                    continue
                sub = RunDir(entry.path, writer=self.writer)
                if sub.has_manifest():  # a run of its own: judged by its own manifest
                    nested = sub._plan()
                    plan.files += nested.files
                    plan.directories += nested.directories
                    plan.foreign += [f"{rel}/{n}" for n in nested.foreign]
                    plan.files.append(sub.manifest_path)
                else:
                    self._visit(Path(entry.path), base + "/", manifest, plan, top=False)
                plan.directories.append(Path(entry.path))
            elif rel in manifest.files or _leftover_of(name, siblings, prefix) is not None:
                plan.files.append(Path(entry.path))
            else:
                plan.foreign.append(rel)


def _relative_parts(name: str) -> list[str]:
    parts = PurePosixPath(name.rstrip("/")).parts
    if not parts or name.startswith("/") or any(p in ("..", ".") for p in parts) or "\\" in name:
        raise ValueError(f"run folder entries are relative paths inside the folder, got {name!r}")
    return list(parts)


def _leftover_of(name: str, siblings: set[str], prefix: str) -> str | None:
    """The listed name (with ``prefix``) that a hidden crash leftover ``name`` belongs to, if any."""
    if not name.startswith(".") or not name.endswith(_LEFTOVER_SUFFIXES):
        return None
    bare = name.lstrip(".")
    return next(
        (prefix + s for s in sorted(siblings, key=len, reverse=True) if bare.startswith(s + ".")), None
    )


def _shown_name(entry: os.DirEntry) -> str:
    return entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")


def check_location(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a path, or :class:`CheckpointError` if it must not be a run folder: the home
    directory or a folder holding it, and whatever :func:`vlmzoo.weights.swap.check_target`
    refuses (the working directory or a folder holding it, the file system root, a file, a mount
    point), since the final model is saved into the run folder as a whole."""
    path = Path(run_dir)
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home directory in this environment
        home = None
    resolved = path.resolve()
    if home is not None and (resolved == home or resolved in home.parents):
        where = "is your home directory" if resolved == home else "holds your home directory"
        raise CheckpointError(
            f"cannot use {path} as a run folder: it {where}; a run folder holds vlmzoo's own files (its "
            "checkpoint, history and final model): pass a folder of its own such as runs/NAME"
        )
    check_target(path)
    return path


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Check a run folder before training starts; with ``overwrite``, clear vlmzoo's files from it.

    Refused (:class:`CheckpointError`): the working directory (``.``), a folder holding it, the home
    directory, the file system root and anything :func:`vlmzoo.weights.swap.check_target` refuses
    (a run folder is also where the final model is saved); a folder that already holds a run,
    unless ``resume`` or ``overwrite``; ``resume`` without a checkpoint; a non-empty folder without
    vlmzoo's manifest; with ``overwrite``, a folder holding anything vlmzoo did not write (named).

    Every rank of a distributed run checks; only ``is_main`` (rank 0) removes an overwritten run and
    creates the folder, and the caller should then wait at a barrier.
    """
    run = RunDir(check_location(run_dir), writer=is_main)
    holds_checkpoint = (run.path / CHECKPOINT_DIR).is_dir()
    if resume:
        if not holds_checkpoint:
            raise CheckpointError(f"--resume given but {run.path} holds no checkpoint")
        return
    entries = sorted(_shown_name(e) for e in os.scandir(run.path)) if run.path.is_dir() else []
    if entries:
        if not run.has_manifest():
            raise CheckpointError(
                f"{run.path} is not empty and was not written by vlmzoo (it has no {MANIFEST_NAME}; first "
                f"entry: {entries[0]}); vlmzoo writes runs only into an empty folder or its own run folder, "
                "and deletes only what it wrote: choose another folder"
            )
        if not overwrite:
            raise CheckpointError(
                f"{run.path} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        run.clear()
    if is_main:
        run.path.mkdir(parents=True, exist_ok=True)


def record(run_dir: str | os.PathLike, names: Iterable[str]) -> None:
    """List ``names`` in ``run_dir``'s manifest before writing them (see :meth:`RunDir.record`)."""
    RunDir(run_dir).record(*names)
