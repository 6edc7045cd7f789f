"""Typed, validated configs with a JSON round trip.

Every component is described by a frozen-free dataclass deriving from :class:`Config`.
Validation runs on construction (``__post_init__``), so an invalid config can never reach a
model. ``to_dict``/``from_dict`` round-trip through plain JSON types; nested configs, tuples
and ``Literal`` fields are restored from the type hints, never by evaluating strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from vlmzoo.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config:
    """Base for all vlmzoo configs. Subclasses are ``@dataclass`` and override :meth:`validate`."""

    kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        self._coerce_fields()
        self.validate()

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` when a field is out of range. Subclasses extend this."""

    def _fail(self, field: str, message: str) -> typing.NoReturn:
        value = getattr(self, field, None)
        raise ConfigError(f"{type(self).__name__}.{field}={value!r}: {message}")

    def _check_positive(self, *fields: str) -> None:
        for f in fields:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                self._fail(f, "must be a positive number")

    def _check_non_negative(self, *fields: str) -> None:
        for f in fields:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                self._fail(f, "must be >= 0")

    def _check_divisible(self, field: str, divisor_field: str) -> None:
        v, d = getattr(self, field), getattr(self, divisor_field)
        if v % d != 0:
            self._fail(field, f"must be divisible by {divisor_field}={d}")

    def _coerce_fields(self) -> None:
        """Check types and turn JSON shapes (lists, dicts) back into tuples and nested configs."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            setattr(self, f.name, _coerce(value, hints[f.name], f"{type(self).__name__}.{f.name}"))

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (nested configs become dicts, tuples become lists).

        A field typed as the base ``Config`` (any component, e.g. a VLM's encoder) records the
        concrete class under ``"_type"`` so that :meth:`from_dict` can rebuild it.
        """
        hints = typing.get_type_hints(type(self))
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = _to_json(value)
            if hints[f.name] is Config and isinstance(value, Config):
                out[f.name] = {"_type": type(value).__name__, **out[f.name]}
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build and validate a config from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.from_dict expects a dict of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}.from_json: not valid JSON ({e})") from e
        return cls.from_dict(data)

    def replace(self: C, **overrides: Any) -> C:
        """A validated copy with some fields changed; unknown field names are an error."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"{type(self).__name__} has no field(s) {unknown}; valid fields: {sorted(names)}"
            )
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


def _to_json(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}={value!r} matches none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r}: must be one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, Iterable) or isinstance(value, str | bytes):
            raise ConfigError(f"{where}={value!r}: expected a sequence")
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{where}={value!r}: expected {len(args)} items")
        return tuple(_coerce(v, a, where) for v, a in zip(items, args, strict=True))
    if hint is Config:  # polymorphic field: any registered component config
        if isinstance(value, Config):
            return value
        if isinstance(value, dict) and isinstance(value.get("_type"), str):
            data = dict(value)
            return config_class(data.pop("_type")).from_dict(data)
        raise ConfigError(
            f"{where}: expected a component config or a dict with a '_type' key, got {value!r:.80}"
        )
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value)
        raise ConfigError(f"{where}: expected {hint.__name__} or a dict, got {type(value).__name__}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}={value!r}: expected a number")
        if not math.isfinite(value):  # NaN passes every `<= 0` range check; inf overflows sizes
            raise ConfigError(f"{where}={value!r}: expected a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r}: expected an integer")
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}={value!r}: expected {hint.__name__}")
        return value
    return value


def config_class(name: str) -> type[Config]:
    """The Config subclass called ``name`` (for polymorphic fields); never evaluates anything."""

    def walk(cls: type[Config]) -> list[type[Config]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    for _ in range(2):
        found = {c.__name__: c for c in walk(Config)}
        if name in found:
            return found[name]
        from vlmzoo.registry import _ensure_loaded  # config classes live in the model modules

        _ensure_loaded()
    raise ConfigError(f"unknown config class {name!r}")
