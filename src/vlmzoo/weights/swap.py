"""Replace a directory as a whole: build the new one beside it, then swap the two.

A checkpoint is several files (config, one or more safetensors shards, an index) with fixed
names, so replacing them one by one can never be atomic: a crash between two renames leaves
an old config beside new weights, or stale shards from a bigger save beside new ones.
Instead :func:`replace_directory` hands out an empty *staging* directory next to the target
(same parent, hence same file system), and once everything is written and flushed it swaps
the staging directory in:

- on Linux with one ``renameat2(RENAME_EXCHANGE)`` system call, which exchanges the two
  names atomically (ext4, xfs, btrfs, tmpfs, overlayfs...);
- elsewhere (or where the file system refuses the exchange) with two renames, undoing the
  first if the second fails; only a hard crash in the microseconds between the two leaves the
  target missing, and then the old directory is intact under its hidden ``.old`` name.

Up to the swap the target is never touched, so an exception or a crash at any earlier point
leaves it byte-identical. Targets that a swap cannot or must not replace are refused before
anything is written (:func:`check_target`): the file system root, the working directory or a
directory holding it, a mount point or a directory with one inside, a file, a path under a
file. Files in the target that the caller does not manage (a tokenizer, a README, a trainer's
state) are carried over into the new directory as hard links (copies where links are
refused), so they survive the swap. A hard crash can leave a hidden
``.<name>.*.saving`` or ``.old`` sibling behind; nothing reads those.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from vlmzoo.errors import CheckpointError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def replace_directory(target: str | os.PathLike, managed: Callable[[str], bool]) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``target`` when the ``with`` block ends.

    ``managed(name)`` tells which top-level entries of the old ``target`` belong to the caller
    (they are dropped); every other entry is carried over. If the block raises, the staging
    directory is removed and ``target`` is left as it was.
    """
    target = check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".saving", dir=target.parent))
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise CheckpointError(
            f"cannot save into {target}: {target.parent} is not writable ({e.strerror}); choose a "
            "folder you can write to"
        ) from e
    try:
        yield staging
        _fsync_files(staging)  # the new files are on disk before any name points at them
        if target.exists():
            _carry_over(target, staging, managed)
            _fsync(staging)
            old = _swap(staging, target)
            _fsync(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _fsync(staging)
            os.rename(staging, target)
            _fsync(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap this is the *old* directory
        raise


def check_target(target: str | os.PathLike) -> Path:
    """``target`` resolved, or a :class:`CheckpointError` if a whole-directory swap must not
    replace it; call it before any long job that ends by saving there.

    Refused: the file system root; the working directory or any directory holding it (a save
    into ``.``); an existing file; a path under a file; a mount point (it cannot be renamed);
    a directory with a mount point inside (carrying it over would copy the mounted file system,
    and removing the old directory would delete its files).
    """
    # Swap the real directory, not a symlink to it (renaming would replace the link itself).
    target = Path(target).resolve()
    if target.parent == target:
        raise CheckpointError(f"cannot save into {target}: it is the file system root; save into a folder")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise CheckpointError(
            f"cannot save into {target}: it holds the current working directory, and a checkpoint "
            "directory is replaced as a whole; save into a directory of its own"
        )
    for ancestor in target.parents:  # nearest first: the first one that exists must be a directory
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CheckpointError(
                    f"cannot save into {target}: {ancestor} is a file, so no directory can be made under it"
                )
            break
    if target.exists() and not target.is_dir():
        raise CheckpointError(
            f"cannot save into {target}: it is a file, not a directory; pass the path of a directory "
            "(a checkpoint is several files)"
        )
    if target.is_dir():
        for directory in _directories(target):
            if os.path.ismount(directory):
                where = "is a mount point" if directory == target else f"holds the mount point {directory}"
                raise CheckpointError(
                    f"cannot save into {target}: it {where}, and a checkpoint directory is replaced as a "
                    "whole by renaming; save into a folder of its own"
                )
    return target


def _directories(root: Path) -> Iterator[Path]:
    """``root`` and every directory under it (symlinks are not followed)."""
    yield root
    for parent, names, _ in os.walk(root, followlinks=False):
        for name in names:
            yield Path(parent) / name


def _carry_over(old: Path, new: Path, managed: Callable[[str], bool]) -> None:
    for entry in os.scandir(old):
        if managed(entry.name):
            continue
        source, dest = Path(entry.path), new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(source), dest)
        elif entry.is_dir():
            shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, dest)


def _link_or_copy(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    try:
        os.link(source, dest)
    except OSError:  # no hard links on this file system
        shutil.copy2(source, dest)


def _swap(staging: Path, target: Path) -> Path:
    """Put ``staging`` at ``target``; return where the old target now lives (to delete)."""
    if _exchange(staging, target):
        return staging
    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2``); False where that is unavailable."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):  # kernel or fs without it
        return False
    raise OSError(code, f"exchanging {a} and {b}: {os.strerror(code)}")


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running process's libc
        function = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _fsync_files(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    """Make renames and new names in ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
