"""Where a preset's published weights live, and how they become a vlmzoo module: :class:`Release`.

A :class:`Release` names one Hugging Face Hub repository (``repo_id`` at ``revision``), the files
of it that are needed (``files``, glob patterns: only those are downloaded), and how they are
converted:

- ``source="vlmzoo"``: the repo already holds a vlmzoo checkpoint (``vlmzoo.save``);
- ``source="transformers"``: ``name`` is a transformers class, loaded with its
  ``from_pretrained(local_dir, dtype=...)`` and converted with :func:`vlmzoo.convert.from_transformers`;
- ``source="original"``: ``name`` is an original layout of :func:`vlmzoo.convert.from_original`,
  called on the repo's weight files with ``options``, the converter options read from the repo's
  ``config.json`` (``config_options``: option -> config key) and the :class:`Part` s that come
  from other releases (LLaVA's CLIP tower, passed as ``encoder=``).

``submodule`` takes one attribute of the converted module (the ``visual`` tower of a converted
``CLIPModel`` is the encoder preset). Every release is checked when it is declared, the
converter included: a release that no converter can read cannot be declared.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmzoo.errors import ConfigError, VlmzooError
from vlmzoo.registry import KINDS, Kind

Source = Literal["vlmzoo", "transformers", "original"]
SOURCES: tuple[Source, ...] = ("vlmzoo", "transformers", "original")

# The files transformers' from_pretrained reads: the config and the weights in any of the layouts
# it writes (one file or shards + index; safetensors or pickles). Where a repo holds both
# safetensors and pickles, only the safetensors are downloaded (vlmzoo.releases.fetch).
TRANSFORMERS_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
)
# Hub repo ids: "owner/name" (huggingface_hub's validate_repo_id, without importing it here).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Part:
    """A part of a release that comes from another preset's release (its default one).

    ``argument`` is the converter's keyword (``"encoder"``), ``kind`` and ``preset`` name the
    preset whose pretrained module is passed. ``unless_prefix``: the part is not passed when the
    release's checkpoint holds keys under this prefix (it then carries the part itself).
    """

    argument: str
    preset: str
    kind: Kind = "encoder"
    unless_prefix: str | None = None

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.argument):
            raise ConfigError(
                f"Part.argument={self.argument!r}: must be a converter keyword such as 'encoder'"
            )
        if not self.preset:
            raise ConfigError("Part.preset must name a preset with published weights")
        if self.kind not in KINDS:
            raise ConfigError(f"Part.kind={self.kind!r}: must be one of {KINDS}")


@dataclass(frozen=True)
class Release:
    """One published source of a preset's weights (see the module docstring)."""

    repo_id: str
    files: tuple[str, ...]
    source: Source
    name: str = ""
    revision: str = "main"
    options: Mapping[str, Any] = field(default_factory=dict)
    config_options: Mapping[str, str] = field(default_factory=dict)
    parts: tuple[Part, ...] = ()
    submodule: str | None = None
    licence: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        where = f"Release({self.repo_id!r})"
        if not isinstance(self.repo_id, str) or not _REPO_ID.match(self.repo_id) or ".." in self.repo_id:
            raise ConfigError(f"{where}: repo_id must be a Hub repo id 'owner/name'")
        if (
            not isinstance(self.revision, str)
            or not self.revision.strip()
            or any(c.isspace() for c in self.revision)
        ):
            raise ConfigError(f"{where}: revision={self.revision!r} must be a branch, tag or commit hash")
        files = tuple(self.files) if not isinstance(self.files, str) else ()
        if not files or not all(isinstance(f, str) and f.strip() for f in files):
            raise ConfigError(f"{where}: files must be a non-empty tuple of file names or glob patterns")
        object.__setattr__(self, "files", files)
        if self.source not in SOURCES:
            raise ConfigError(f"{where}: source={self.source!r} must be one of {SOURCES}")
        if self.source == "vlmzoo":
            if self.name:
                raise ConfigError(f"{where}: a vlmzoo checkpoint needs no converter name, got {self.name!r}")
        else:
            self._check_converter(where)
        if self.source != "original" and (self.options or self.config_options or self.parts):
            raise ConfigError(
                f"{where}: options, config_options and parts are converter arguments of an original layout"
            )
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        object.__setattr__(self, "config_options", types.MappingProxyType(dict(self.config_options)))
        parts = tuple(self.parts)
        if not all(isinstance(p, Part) for p in parts):
            raise ConfigError(f"{where}: parts must be Part(...) entries")
        arguments = [p.argument for p in parts]
        taken = set(arguments) & (set(self.options) | set(self.config_options))
        if len(set(arguments)) != len(arguments) or taken:
            raise ConfigError(f"{where}: converter argument(s) given twice: {sorted(taken) or arguments}")
        object.__setattr__(self, "parts", parts)
        if self.submodule is not None and not _IDENTIFIER.match(self.submodule):
            raise ConfigError(f"{where}: submodule={self.submodule!r} must be an attribute name")

    def _check_converter(self, where: str) -> None:
        """Refuse a release no converter of :mod:`vlmzoo.convert` reads."""
        from vlmzoo.convert import converter

        if not isinstance(self.name, str) or not _IDENTIFIER.match(self.name.replace("-", "_")):
            raise ConfigError(f"{where}: name must be the transformers class or the original layout")
        try:
            converter(self.source, self.name)
        except VlmzooError as e:
            raise ConfigError(f"{where}: {e}") from e

    @property
    def converter(self) -> str:
        """How the files are converted, in words: ``transformers CLIPModel``, ``original llava``."""
        return "vlmzoo checkpoint" if self.source == "vlmzoo" else f"{self.source} {self.name}"

    def describe(self) -> dict[str, Any]:
        """The declaration as plain JSON values (recorded in a cached conversion's manifest)."""
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "files": list(self.files),
            "source": self.source,
            "name": self.name,
            "options": dict(self.options),
            "config_options": dict(self.config_options),
            "parts": [
                {"argument": p.argument, "kind": p.kind, "preset": p.preset, "unless_prefix": p.unless_prefix}
                for p in self.parts
            ],
            "submodule": self.submodule,
        }
