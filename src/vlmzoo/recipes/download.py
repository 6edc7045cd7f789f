"""``vlmzoo download NAME`` and ``vlmzoo list --pretrained``: presets with published weights.

:func:`download` makes the converted, cached checkpoint of a preset's release
(:func:`vlmzoo.releases.fetch.fetch`: download only the needed files, convert, save with a
manifest) and returns its folder, which ``vlmzoo.load`` opens; later
``create_model(NAME, pretrained=True)`` calls load it without downloading or converting.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmzoo.errors import ConfigError
from vlmzoo.registry import KINDS, Kind
from vlmzoo.releases import published, releases
from vlmzoo.releases.fetch import fetch


def kind_of(name: str, kind: Kind | None = None) -> Kind:
    """``kind``, or the kind under which ``name`` has published weights (``model`` first when it has
    them under several, as ``clip-vit-b16`` has as an encoder and a model)."""
    if kind is not None:
        return kind
    kinds = [k for k in KINDS if any(n == name for _, n, _ in published(name, k))]
    if not kinds:
        releases("model", name)  # raises: unknown name, or the presets that have weights
    return "model" if "model" in kinds else kinds[0]


def download(
    name: str,
    *,
    kind: Kind | None = None,
    source: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """The folder of ``name``'s converted checkpoint in the cache (made now unless it is current)."""
    return fetch(
        kind_of(name, kind),
        name,
        source=source,
        dtype=dtype,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        local_files_only=local_files_only,
    )


def pretrained_text(pattern: str = "*", kind: Kind | None = None) -> str:
    """The presets with published weights as ``vlmzoo list --pretrained`` prints them: per kind, each
    name with its repos (default first; ``+`` the repos its parts come from)."""
    lines: list[str] = []
    for k in [kind] if kind else KINDS:
        rows = published(pattern, k)
        if not rows:
            continue
        lines.append(f"{k}s ({len(rows)}):")
        width = max(len(name) for _, name, _ in rows)
        for _, name, entries in rows:
            sources = []
            for release in entries:
                parts = [releases(p.kind, p.preset)[0].repo_id for p in release.parts]
                sources.append(release.repo_id + "".join(f" + {repo}" for repo in parts))
            lines.append(f"  {name:<{width}}  {' | '.join(sources)}")
    if not lines:
        raise ConfigError(f"no preset with published weights matches {pattern!r}")
    return "\n".join(lines)
