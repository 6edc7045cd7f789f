"""Published weights of the presets: where they live, and ``create_*(name, pretrained=True)``.

Each family module of this package declares its releases in dicts named after the kind of
preset, ``ENCODERS``, ``ADAPTERS``, ``DECODERS`` and ``MODELS`` (preset name -> a
:class:`~vlmzoo.releases.source.Release`, or a tuple of them: the first is the default, the
others alternative sources). Kinds are separate because a name may be registered under two
(``clip-vit-b16`` is an encoder and a model). On first use they are collected into one table
keyed by (kind, name), as :mod:`vlmzoo.convert` collects its converters.

- :mod:`~vlmzoo.releases.source`: :class:`Release`, :class:`Part`;
- :mod:`~vlmzoo.releases.fetch`: download (huggingface_hub, only the files needed), convert,
  cache the converted vlmzoo checkpoint with a manifest;
- :mod:`~vlmzoo.releases.create`: ``create_encoder / create_adapter / create_decoder /
  create_model(name, *, pretrained=False, ...)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil

from vlmzoo.errors import ConfigError
from vlmzoo.registry import KINDS, Kind, list_models
from vlmzoo.releases.source import Part, Release

# kind -> the name of the dict a family module declares that kind's releases in
DECLARED: dict[Kind, str] = {
    "encoder": "ENCODERS",
    "adapter": "ADAPTERS",
    "decoder": "DECODERS",
    "model": "MODELS",
}
_TABLE: dict[tuple[Kind, str], tuple[Release, ...]] | None = None


def _table() -> dict[tuple[Kind, str], tuple[Release, ...]]:
    """(kind, preset) -> its releases, default first, collected from this package's modules."""
    global _TABLE
    if _TABLE is None:
        table: dict[tuple[Kind, str], tuple[Release, ...]] = {}
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for kind, declared in DECLARED.items():
                for name, value in getattr(module, declared, {}).items():
                    entries = (value,) if isinstance(value, Release) else tuple(value)
                    if not entries or not all(isinstance(r, Release) for r in entries):
                        raise RuntimeError(f"{module.__name__}.{declared}[{name!r}] must be Release(s)")
                    if (kind, name) in table:
                        raise RuntimeError(
                            f"releases of {kind} {name!r} are declared twice ({module.__name__})"
                        )
                    table[(kind, name)] = entries
        _TABLE = table
    return _TABLE


def published(pattern: str = "*", kind: Kind | None = None) -> list[tuple[Kind, str, tuple[Release, ...]]]:
    """(kind, preset, releases) of every preset with published weights matching ``pattern``, sorted."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return sorted(
        (k, name, entries)
        for (k, name), entries in _table().items()
        if (kind is None or k == kind) and fnmatch.fnmatchcase(name, pattern)
    )


def releases(kind: Kind, name: str) -> tuple[Release, ...]:
    """The releases of the registered ``kind`` preset ``name``, default first.

    An unregistered name raises :class:`UnknownModelError` (closest names); a registered preset
    without published weights (random-init tiny presets, or a release no converter reads) a
    :class:`ConfigError` listing the presets of that kind that have them.
    """
    entries = _table().get((kind, name))
    if entries is not None:
        return entries
    if name not in list_models(kind=kind):
        from vlmzoo.registry import get_entry

        get_entry(name, kind)  # raises UnknownModelError with the closest names
    have = sorted(n for k, n in _table() if k == kind)
    close = difflib.get_close_matches(name, have, n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise ConfigError(
        f"{kind} {name!r} has no published weights{hint}: pretrained=True works for the {kind}s "
        f"{', '.join(have) or '(none)'}; create_{kind}({name!r}) builds it with random weights "
        "(`vlmzoo list --pretrained` lists every preset with weights)"
    )


def choose(kind: Kind, name: str, source: str | None = None) -> Release:
    """The release of ``name`` from the repo ``source`` (a repo id), or the default one."""
    entries = releases(kind, name)
    if source is None:
        return entries[0]
    for release in entries:
        if release.repo_id == source:
            return release
    raise ConfigError(
        f"{kind} {name!r} has no release from {source!r}; its sources: {[r.repo_id for r in entries]}"
    )


__all__ = ["DECLARED", "Part", "Release", "choose", "published", "releases"]
