"""Names -> builders for encoders, adapters, decoders and whole models.

A registry entry pairs a name (``"clip-vit-b16"``) with a config (the published sizes) and the
module class that builds from it. ``create_encoder(name, **overrides)`` is then just
``cls(config.replace(**overrides))``. The module classes are also recorded by their class name so
that :func:`vlmzoo.load` can rebuild a saved model from ``config.json`` without evaluating
anything.

Presets live beside the model they describe (``encoders/vit.py`` registers the CLIP towers);
the registry imports those modules on first use so ``import vlmzoo`` stays light. The same walk
is what :mod:`vlmzoo.config` calls when a ``"_type"`` tag names a config class whose module is
not imported yet (the registry hands it over with ``register_class_loader``; config never
imports the registry).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn as nn

from vlmzoo.config import Config, register_class_loader
from vlmzoo.errors import ConfigError, UnknownModelError

Kind = Literal["encoder", "adapter", "decoder", "model"]
KINDS: tuple[Kind, ...] = ("encoder", "adapter", "decoder", "model")

# Packages whose modules register presets when imported (each model file registers its own).
# Imported on first use of the registry, so `import vlmzoo` stays light.
_PRESET_PACKAGES = ("vlmzoo.encoders", "vlmzoo.adapters", "vlmzoo.decoders", "vlmzoo.models")


@dataclass(frozen=True)
class Entry:
    """One registered preset."""

    name: str
    kind: Kind
    config: Config
    builder: type[nn.Module]
    description: str = ""

    def build(self, **overrides: Any) -> nn.Module:
        config = self.config.replace(**overrides) if overrides else self.config
        return self.builder(config)


_ENTRIES: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}
_ARCHITECTURES: dict[str, type[nn.Module]] = {}
_loaded = False


def register_architecture(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` rebuildable by name from a saved ``config.json``.

    The class must have a ``config_class`` attribute and take its config as first argument.
    """
    if not hasattr(cls, "config_class"):
        raise TypeError(f"{cls.__name__} needs a `config_class` attribute to be registered")
    _ARCHITECTURES[cls.__name__] = cls
    return cls


def register(name: str, kind: Kind, config: Config, builder: type[nn.Module], description: str = "") -> None:
    """Register the preset ``name`` of ``kind``. Re-registering a name replaces it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _ENTRIES[kind][name] = Entry(name, kind, config, builder, description)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for package_name in _PRESET_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as e:
            if e.name == package_name:  # a family not written yet
                continue
            raise
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")
    _loaded = True


register_class_loader(_ensure_loaded)  # config classes live in the modules the walk imports


def list_models(pattern: str = "*", kind: Kind | None = None) -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (e.g. ``"clip-*"``).

    ``kind`` restricts the search to ``"encoder"``, ``"adapter"``, ``"decoder"`` or ``"model"``.
    A name registered under several kinds is listed once.
    """
    _ensure_loaded()
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS} or None, got {kind!r}")
    kinds = KINDS if kind is None else (kind,)
    names = {n for k in kinds for n in _ENTRIES[k] if fnmatch.fnmatchcase(n, pattern)}
    return sorted(names)


def get_entry(name: str, kind: Kind) -> Entry:
    """The registry entry for ``name``; an unknown name raises with the closest matches."""
    _ensure_loaded()
    entries = _ENTRIES[kind]
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    elsewhere = [k for k in KINDS if name in _ENTRIES[k]]
    if elsewhere:
        hint += f" ({name!r} is registered as a {' and '.join(elsewhere)}.)"
    raise UnknownModelError(
        f"unknown {kind} {name!r}.{hint} See vlmzoo.list_models(kind={kind!r}) for all {len(entries)} names."
    )


def get_architecture(class_name: str) -> type[nn.Module]:
    """The module class registered under ``class_name`` (used by :func:`vlmzoo.load`)."""
    _ensure_loaded()
    if class_name not in _ARCHITECTURES:
        raise UnknownModelError(f"unknown architecture {class_name!r}; known: {sorted(_ARCHITECTURES)}")
    return _ARCHITECTURES[class_name]


def architecture_for(config: Config) -> type[nn.Module]:
    """The module class whose ``config_class`` is ``type(config)``."""
    _ensure_loaded()
    for cls in _ARCHITECTURES.values():
        if cls.config_class is type(config):
            return cls
    raise UnknownModelError(f"no registered architecture takes a {type(config).__name__}")


def build(config: Config) -> nn.Module:
    """Build the module a config describes (a config fully determines its module class)."""
    return architecture_for(config)(config)


def _creator(kind: Kind) -> Callable[..., nn.Module]:
    def create(name: str, **overrides: Any) -> nn.Module:
        return get_entry(name, kind).build(**overrides)

    create.__name__ = f"create_{kind}"
    create.__doc__ = (
        f"Build the registered {kind} ``name`` (random init), with config fields overridden by "
        f"``overrides``. Unknown names raise :class:`UnknownModelError` listing the closest names; "
        f"invalid overrides raise :class:`ConfigError`."
    )
    return create


create_encoder = _creator("encoder")
create_adapter = _creator("adapter")
create_decoder = _creator("decoder")
create_model = _creator("model")
