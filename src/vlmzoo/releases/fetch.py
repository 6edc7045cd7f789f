"""Download a release, convert it, and cache the converted vlmzoo checkpoint.

:func:`fetch` makes sure a converted checkpoint of a preset's release is in the cache and returns
its folder; :func:`obtain` also loads it. The steps:

1. **Plan**: the release's revision is resolved to a commit (a pinned commit hash needs no
   network; a branch or tag is one metadata request, which also lists the repo's files), and so
   is every :class:`~vlmzoo.releases.source.Part`'s release. Offline (``local_files_only=True``,
   ``HF_HUB_OFFLINE=1``, or no connection) the commit comes from huggingface_hub's cache
   (``refs/<revision>``) or from an earlier conversion's manifest, and a conversion still to be
   made reads huggingface_hub's snapshot folder of that commit.
2. **Cache check**: the conversion lives in ``<cache>/<preset>/<commit>/<kind>-<dtype>/`` (cache:
   ``cache_dir=``, else ``$VLMZOO_CACHE``, else ``~/.cache/vlmzoo/pretrained``) beside a manifest,
   ``vlmzoo_release.json``, naming the vlmzoo version, the dtype, the declaration and the resolved
   commit of every repo it was made from. It is used only when the manifest equals the one this
   call would write: a conversion made by another vlmzoo version, from another commit of any of
   its repos, or from another declaration is made again.
3. **Download**: ``huggingface_hub.snapshot_download(repo, revision=<commit>, allow_patterns=...)``
   with only the files the release needs (where a repo holds both safetensors and pickled
   weights, only the safetensors). huggingface_hub writes each file under a temporary name and
   resumes a transfer cut in the middle; nothing is converted before every file is complete.
4. **Convert and save**: the converter the release names, then ``vlmzoo.save`` (the directory is
   swapped in as a whole) and, last, the manifest (written atomically). The manifest is removed
   before a stale conversion is replaced, so an interrupted conversion leaves no manifest and is
   never used; a cached checkpoint that fails to load (a truncated file) is converted again.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmzoo.errors import CheckpointError, ConfigError, ConversionError, VlmzooError
from vlmzoo.registry import Kind
from vlmzoo.releases import choose
from vlmzoo.releases.source import Part, Release
from vlmzoo.version import __version__
from vlmzoo.weights.files import atomic_write_json, read_json

if TYPE_CHECKING:
    import torch.nn as nn

logger = logging.getLogger(__name__)

MANIFEST_NAME = "vlmzoo_release.json"
MANIFEST_FORMAT = 1
CACHE_ENV = "VLMZOO_CACHE"
DEFAULT_CACHE = "~/.cache/vlmzoo/pretrained"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HINT = (
    "check the connection and the repo id (a gated repo needs token=); offline, "
    "local_files_only=True uses what huggingface_hub or vlmzoo already cached"
)


def dtype_of(dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` as a torch float dtype (None: float32, what a preset is built in)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ConfigError(
        f"dtype={dtype!r}: expected torch.float32, torch.bfloat16, torch.float16 or one of {list(DTYPES)}"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of converted checkpoints: ``cache_dir``, else ``$VLMZOO_CACHE``, else the default."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


# --- 1. plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """A release with its revision resolved: what a conversion is made from."""

    kind: Kind
    name: str
    release: Release
    revision: str  # as asked (branch, tag or commit)
    commit: str
    files: (
        tuple[str, ...] | None
    )  # to download: exact names when listed, the patterns offline, None: list later
    parts: tuple[tuple[Part, Plan], ...] = ()

    def describe(self) -> dict[str, Any]:
        """The release, its commit and its parts' plans, as plain JSON values (the manifest's)."""
        return {
            **self.release.describe(),
            "revision": self.revision,
            "commit": self.commit,
            "parts": [
                {"argument": part.argument, **plan.describe(), "preset": plan.name, "kind": plan.kind}
                for part, plan in self.parts
            ],
        }

    def cache_dir(self, root: Path, dtype: torch.dtype) -> Path:
        return root / self.name / self.commit / f"{self.kind}-{dtype_name(dtype)}"


def plan(
    kind: Kind,
    name: str,
    release: Release,
    root: Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Plan:
    """Resolve ``release`` (at ``revision``, default its own) and its parts to commits."""
    revision = revision or release.revision
    commit, files = _resolve(kind, name, release, revision, root, token, local_files_only)
    parts = tuple(
        (
            part,
            plan(
                part.kind,
                part.preset,
                choose(part.kind, part.preset),
                root,
                token=token,
                local_files_only=local_files_only,
            ),
        )
        for part in release.parts
    )
    return Plan(kind, name, release, revision, commit, files, parts)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve(
    kind: Kind,
    name: str,
    release: Release,
    revision: str,
    root: Path,
    token: str | bool | None,
    local_files_only: bool,
) -> tuple[str, tuple[str, ...] | None]:
    """(commit, files to download; None: to be listed when downloading) of ``release`` at ``revision``."""
    if _COMMIT.match(revision):  # pinned: nothing to resolve, no request unless a download is needed
        return revision, None
    if local_files_only or _offline():
        commit = _offline_commit(kind, name, release, revision, root)
        if commit is None:
            raise CheckpointError(
                f"{release.repo_id}@{revision} is not in the cache and downloads are off "
                "(local_files_only=True or HF_HUB_OFFLINE=1): run once online, e.g. `vlmzoo download "
                f"{name}`"
            )
        return commit, release.files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(token=token, library_name="vlmzoo", library_version=__version__).model_info(
            release.repo_id, revision=revision
        )
    except HfHubHTTPError as e:  # the Hub answered: no such repo or revision, gated, server error
        raise CheckpointError(
            f"cannot download {release.repo_id}@{revision} from the Hugging Face Hub "
            f"({type(e).__name__}: {_first_line(e)}); {_HINT}"
        ) from e
    except (
        Exception
    ) as e:  # no answer (connection, timeout): fall back to the caches, as huggingface_hub does
        commit = _offline_commit(kind, name, release, revision, root)
        if commit is None:
            raise CheckpointError(
                f"cannot reach the Hugging Face Hub for {release.repo_id}@{revision} "
                f"({type(e).__name__}: {_first_line(e)}) and it is not cached; {_HINT}"
            ) from e
        logger.warning("Hub unreachable (%s); using the cached %s@%s", e, release.repo_id, commit)
        return commit, release.files
    if not info.sha:
        raise CheckpointError(f"the Hub gave no commit for {release.repo_id}@{revision}")
    return info.sha, _select([s.rfilename for s in info.siblings or []], release)


def _listed(release: Release, commit: str, token: str | bool | None) -> tuple[str, ...]:
    """The files of ``release`` at a pinned ``commit`` (one metadata request)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(token=token, library_name="vlmzoo", library_version=__version__).model_info(
            release.repo_id, revision=commit
        )
    except Exception as e:  # the download below reports it, with the cache as fallback
        logger.warning("cannot list %s@%s (%s); asking for every declared file", release.repo_id, commit, e)
        return release.files
    return _select([s.rfilename for s in info.siblings or []], release)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _select(available: list[str], release: Release) -> tuple[str, ...]:
    """The repo files ``release`` needs: those its patterns match, only the safetensors weights
    where the repo also holds pickled ones (transformers reads the safetensors first)."""
    chosen = [f for f in available if any(fnmatch.fnmatchcase(f, p) for p in release.files)]
    if any(f.endswith(".safetensors") for f in chosen):
        chosen = [f for f in chosen if not (f.endswith(".bin") or f == "pytorch_model.bin.index.json")]
    if not any(not f.endswith(".json") for f in chosen):
        raise CheckpointError(
            f"{release.repo_id} holds no weights matching {list(release.files)} (it holds "
            f"{sorted(available)[:12]}): the release's declaration does not fit the repo"
        )
    return tuple(sorted(chosen))


def _offline_commit(kind: Kind, name: str, release: Release, revision: str, root: Path) -> str | None:
    """The commit of ``revision`` known without the network: a commit hash itself, huggingface_hub's
    ``refs/<revision>``, or the newest manifest of a conversion of this release at that revision."""
    if _COMMIT.match(revision):
        return revision
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=release.repo_id, repo_type="model")
    ref = ref / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if _COMMIT.match(commit):
            return commit
    found = []
    for manifest in (root / name).glob(f"*/{kind}-*/{MANIFEST_NAME}"):
        try:
            document = read_json(manifest, "pretrained manifest")
        except CheckpointError:
            continue
        described = document.get("release", {}) if isinstance(document, dict) else {}
        if (
            document.get("vlmzoo_version") == __version__
            and described.get("repo_id") == release.repo_id
            and described.get("revision") == revision
            and isinstance(described.get("commit"), str)
        ):
            found.append((manifest.stat().st_mtime, described["commit"]))
    return max(found)[1] if found else None


# --- 2. cache -----------------------------------------------------------------------------------
def manifest(plan: Plan, dtype: torch.dtype) -> dict[str, Any]:
    """What the cache folder's manifest says of a conversion made now from ``plan``."""
    return {
        "format": MANIFEST_FORMAT,
        "vlmzoo_version": __version__,
        "kind": plan.kind,
        "preset": plan.name,
        "dtype": dtype_name(dtype),
        "release": plan.describe(),
    }


def _stale_reason(target: Path, expected: dict[str, Any]) -> str | None:
    """Why the conversion in ``target`` cannot be used (None: it can)."""
    path = target / MANIFEST_NAME
    if not path.exists():
        return "not converted yet"
    try:
        found = read_json(path, "pretrained manifest")
    except CheckpointError as e:
        return f"unreadable manifest ({e})"
    if not isinstance(found, dict):
        return "unreadable manifest"
    if found.get("vlmzoo_version") != expected["vlmzoo_version"]:
        return f"converted by vlmzoo {found.get('vlmzoo_version')}, this is {__version__}"
    if _comparable(found) != _comparable(expected):
        return "converted from another commit or declaration of the release"
    return None


def _comparable(document: Any) -> Any:
    """``document`` without the revisions as asked: a branch and its commit hash name the same files."""
    if isinstance(document, dict):
        return {k: _comparable(v) for k, v in document.items() if k != "revision"}
    if isinstance(document, list):
        return [_comparable(v) for v in document]
    return document


# --- 3. download --------------------------------------------------------------------------------
def download(plan: Plan, *, token: str | bool | None, force_download: bool, local_files_only: bool) -> Path:
    """The local folder of ``plan``'s files (huggingface_hub's cache), downloaded if needed."""
    from huggingface_hub import snapshot_download

    release = plan.release
    offline = local_files_only or _offline()
    if offline:
        # huggingface_hub's own offline check compares the folder with the repo's whole listing and
        # calls it incomplete when only the safetensors of a repo that also holds pickles were
        # fetched; its snapshot folder holds only whole files (each is moved in once complete).
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        snapshot = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=release.repo_id, repo_type="model")
        snapshot = snapshot / "snapshots" / plan.commit
        if snapshot.is_dir() and _present(snapshot, release.files):
            return snapshot
        raise CheckpointError(
            f"{release.repo_id}@{plan.commit[:12]} is not in huggingface_hub's cache and downloads are off "
            "(local_files_only=True or HF_HUB_OFFLINE=1): run once online"
        )
    files = plan.files
    if files is None:
        files = _listed(release, plan.commit, token)
    try:
        folder = snapshot_download(
            release.repo_id,
            revision=plan.commit,
            allow_patterns=list(files),
            token=token,
            force_download=force_download,
            local_files_only=False,
            library_name="vlmzoo",
            library_version=__version__,
        )
    except Exception as e:  # network, auth, a file gone, a transfer that failed after its retries
        raise CheckpointError(
            f"downloading {release.repo_id}@{plan.commit[:12]} ({', '.join(files)}) failed: "
            f"{type(e).__name__}: {_first_line(e)}; {_HINT}"
        ) from e
    return Path(folder)


def _present(folder: Path, patterns: tuple[str, ...]) -> list[str]:
    """Files in ``folder`` (relative names) matching ``patterns``, safetensors preferred over pickles."""
    names = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if any(n.endswith(".safetensors") for n in chosen):
        chosen = [n for n in chosen if not (n.endswith(".bin") or n == "pytorch_model.bin.index.json")]
    return chosen


# --- 4. convert ---------------------------------------------------------------------------------
def convert(
    plan: Plan,
    folder: Path,
    dtype: torch.dtype,
    load_part: Any,
) -> nn.Module:
    """The vlmzoo module of ``plan``'s release from its downloaded ``folder``, in ``dtype``.

    ``load_part(plan)`` gives the module of a part's plan. A converter's error (a layout that does not
    fit: the keys it looked for) is raised again with the repo and commit in front.
    """
    release = plan.release
    where = f"{release.repo_id}@{plan.commit[:12]} ({release.converter})"
    try:
        if release.source == "vlmzoo":
            from vlmzoo.weights.format import load_directory

            module = load_directory(folder)
        elif release.source == "transformers":
            module = _from_transformers(release, folder, dtype)
        else:
            module = _from_original(plan, folder, load_part)
    except VlmzooError as e:
        raise type(e)(f"{where}: {e}") from e
    if release.submodule is not None:
        part = getattr(module, release.submodule, None)
        if not isinstance(part, torch.nn.Module):
            raise ConversionError(
                f"{where}: the converted {type(module).__name__} has no .{release.submodule}"
            )
        module = part
    return module.to(dtype)


def _from_transformers(release: Release, folder: Path, dtype: torch.dtype) -> nn.Module:
    import transformers

    from vlmzoo.convert import from_transformers

    cls = getattr(transformers, release.name, None)
    if cls is None:
        raise ConversionError(f"transformers {transformers.__version__} has no class {release.name}")
    try:
        peer, info = cls.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"transformers cannot load {release.name} from the files: {_first_line(e)}"
        ) from e
    # transformers fills missing weights with random ones and only logs it: refused here.
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(
        str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or []
    )
    if missing or mismatched:
        shown = ", ".join((missing + mismatched)[:8])
        raise CheckpointError(
            f"the files do not fit {release.name}: {len(missing)} missing and {len(mismatched)} mis-shaped "
            f"weights ({shown}); transformers would fill them with random values"
        )
    return from_transformers(peer.eval())


def _from_original(plan: Plan, folder: Path, load_part: Any) -> nn.Module:
    from vlmzoo.convert import from_original

    release = plan.release
    state = read_weights(folder, release.files)
    options = dict(release.options)
    if release.config_options:
        config = read_json(folder / "config.json", "release config")
        if not isinstance(config, dict):
            raise CheckpointError("config.json does not hold a JSON object")
        for option, key in release.config_options.items():
            if key not in config:
                raise CheckpointError(f"config.json has no {key!r} (the converter's {option}=)")
            options[option] = config[key]
    for part, part_plan in plan.parts:
        if part.unless_prefix is not None and any(k.startswith(part.unless_prefix) for k in state):
            continue  # the checkpoint carries this part itself
        options[part.argument] = load_part(part_plan)
    return from_original(state, release.name, **options)


def read_weights(folder: Path, patterns: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files in ``folder`` matching ``patterns`` (shards via their index).

    Pickles are opened with ``weights_only=True`` (:func:`vlmzoo.convert.read_state_dict`). A shard
    the index names but the folder lacks, or a key in two files, is a :class:`CheckpointError`.
    """
    from vlmzoo.convert import read_state_dict

    present = _present(folder, patterns)
    indexes = [n for n in present if n.endswith(".index.json")]
    files = [n for n in present if not n.endswith(".json")]
    if indexes:
        index = read_json(folder / indexes[0], "shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{indexes[0]} has no weight_map")
        files = sorted(set(map(str, weight_map.values())))
        absent = [f for f in files if not (folder / f).is_file()]
        if absent:
            raise CheckpointError(f"{indexes[0]} names shards that are not in the repo: {absent[:4]}")
    if not files:
        raise CheckpointError(f"no weight files matching {list(patterns)}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        shard = read_state_dict(folder / name)
        twice = sorted(set(shard) & set(state))
        if twice:
            raise CheckpointError(f"{name} holds keys another file holds too: {twice[:4]}")
        state.update(shard)
    return state


# --- the whole job ------------------------------------------------------------------------------
def fetch(
    kind: Kind,
    name: str,
    *,
    source: str | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """The folder of the cached, converted checkpoint of ``name``'s release (made if needed).

    ``source``: the repo id of an alternative release (default: the preset's first).
    ``revision`` overrides the release's own (its parts keep theirs). ``force_download`` downloads
    and converts again. The folder opens with ``vlmzoo.load``.
    """
    the_plan, dtype, root = _start(kind, name, source, dtype, revision, cache_dir, token, local_files_only)
    return _ensure(
        the_plan, dtype, root, token=token, force=force_download, local_files_only=local_files_only
    )


def obtain(
    kind: Kind,
    name: str,
    *,
    source: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> nn.Module:
    """:func:`fetch`, then the loaded module (in ``dtype``, on ``device``).

    A cached checkpoint that does not load (a file truncated or edited since) is converted again.
    """
    the_plan, dtype, root = _start(kind, name, source, dtype, revision, cache_dir, token, local_files_only)
    return _obtain(
        the_plan, dtype, root, device, token=token, force=force_download, local_files_only=local_files_only
    )


def _start(
    kind: Kind,
    name: str,
    source: str | None,
    dtype: torch.dtype | str | None,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    local_files_only: bool,
) -> tuple[Plan, torch.dtype, Path]:
    dtype = dtype_of(dtype)
    release = choose(kind, name, source)  # before any network: a preset without weights fails here
    root = cache_root(cache_dir)
    the_plan = plan(
        kind, name, release, root, revision=revision, token=token, local_files_only=local_files_only
    )
    return the_plan, dtype, root


def _obtain(
    the_plan: Plan,
    dtype: torch.dtype,
    root: Path,
    device: str | torch.device | None,
    *,
    token: str | bool | None,
    force: bool,
    local_files_only: bool,
) -> nn.Module:
    target = _ensure(the_plan, dtype, root, token=token, force=force, local_files_only=local_files_only)
    try:
        return load_converted(target, dtype, device)
    except CheckpointError as e:
        logger.warning("the cached conversion in %s does not load (%s); converting again", target, e)
        (target / MANIFEST_NAME).unlink(missing_ok=True)
        target = _ensure(the_plan, dtype, root, token=token, force=False, local_files_only=local_files_only)
        return load_converted(target, dtype, device)


def load_converted(target: Path, dtype: torch.dtype, device: str | torch.device | None) -> nn.Module:
    """``vlmzoo.load`` of a cached conversion, in ``dtype`` on ``device``."""
    import inspect

    from vlmzoo.weights.hub import load

    if "dtype" in inspect.signature(load).parameters:
        return load(target, device or "cpu", dtype=dtype)
    # vlmzoo.load before it took dtype=: the checkpoint is stored in `dtype` and loads in it.
    return load(target, device or "cpu").to(dtype)


def _ensure(
    the_plan: Plan,
    dtype: torch.dtype,
    root: Path,
    *,
    token: str | bool | None,
    force: bool,
    local_files_only: bool,
) -> Path:
    """The cache folder of ``the_plan`` in ``dtype``, converted now unless a valid one is there."""
    from vlmzoo.weights.format import save

    target = the_plan.cache_dir(root, dtype)
    expected = manifest(the_plan, dtype)
    reason = "force_download=True" if force else _stale_reason(target, expected)
    if reason is None:
        return target
    logger.info(
        "converting %s %s from %s (%s)", the_plan.kind, the_plan.name, the_plan.release.repo_id, reason
    )
    folder = download(the_plan, token=token, force_download=force, local_files_only=local_files_only)

    def load_part(part_plan: Plan) -> nn.Module:
        return _obtain(
            part_plan, dtype, root, None, token=token, force=False, local_files_only=local_files_only
        )

    module = convert(the_plan, folder, dtype, load_part)
    (target / MANIFEST_NAME).unlink(missing_ok=True)  # from here until the new manifest, never trusted
    target.parent.mkdir(parents=True, exist_ok=True)
    save(module, target)
    atomic_write_json(target / MANIFEST_NAME, expected)
    return target
