"""Typed, validated configs with a JSON round trip.

Every component is described by a frozen-free dataclass deriving from :class:`Config`.
Validation runs on construction (``__post_init__``), so an invalid config can never reach a
model. ``to_dict``/``from_dict`` round-trip through plain JSON types; nested configs, tuples
and ``Literal`` fields are restored from the type hints, never by evaluating strings.

A field typed as the base ``Config`` (a VLM's encoder: any component) is written with a
``"_type"`` tag, the class name, and read back through this module's table of config classes,
which every subclass joins when it is defined. The classes live in the component modules; the
registry, which imports those modules, hands this module a loader
(:func:`register_class_loader`) to call when a tag names a class not imported yet, so this
module never imports the registry. :func:`parse_json` is the one checked JSON parser of vlmzoo
(bounded integers and nesting, no duplicate keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from vlmzoo.errors import ConfigError

C = TypeVar("C", bound="Config")

# Integers in vlmzoo's JSON and configs are sizes, ids, counts and seeds: 64 bits hold them all.
# Bounding them turns "width": 10**30 into a clear error instead of an overflow deep in torch.
INT_LIMIT = 2**64
# JSON integer literals longer than this are refused before Python converts them (conversion
# is quadratic in the digit count; Python itself refuses more than 4300 digits with a bare
# ValueError). 40 digits hold any 128-bit value.
MAX_JSON_INT_DIGITS = 40
# vlmzoo's own documents nest a handful of levels (a VLM config holds an encoder that holds
# towers); 100 is far beyond any of them and far below Python's recursion limit.
MAX_JSON_DEPTH = 100

_CLASSES: dict[str, type[Config]] = {}  # class name -> Config subclass (filled by __init_subclass__)
_CLASS_LOADERS: list[Callable[[], object]] = []


class Config:
    """Base for all vlmzoo configs. Subclasses are ``@dataclass`` and override :meth:`validate`."""

    kind: ClassVar[str] = "config"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # By name, as "_type" tags spell it; a class defined again (a re-run notebook cell)
        # replaces the earlier one, as the walk of __subclasses__ it replaces did.
        _CLASSES[cls.__name__] = cls

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
            data = parse_json(text)
        except ValueError as e:
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
        if not -INT_LIMIT < value < INT_LIMIT:  # (printing a huge int can itself fail: its bit count)
            raise ConfigError(f"{where}: a {value.bit_length()}-bit integer; expected at most 64 bits")
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}={value!r}: expected {hint.__name__}")
        return value
    return value


def register_class_loader(load: Callable[[], object]) -> None:
    """Have :func:`config_class` call ``load()`` when a name is not in the table yet.

    ``load`` imports the modules that define config classes (the registry passes its walk of
    the component packages); it is called at most once per lookup of an unknown name.
    """
    if load not in _CLASS_LOADERS:
        _CLASS_LOADERS.append(load)


def config_class(name: str) -> type[Config]:
    """The Config subclass called ``name`` (for ``"_type"`` tags); never evaluates anything."""
    if name not in _CLASSES:
        for load in _CLASS_LOADERS:
            load()
    cls = _CLASSES.get(name)
    if cls is None:
        raise ConfigError(f"unknown config class {name!r}")
    return cls


# --- JSON ------------------------------------------------------------------------------------


def parse_json(text: str) -> Any:
    """``json.loads`` with bounds: a ``ValueError`` naming the problem for malformed JSON, an
    integer literal of more than ``MAX_JSON_INT_DIGITS`` digits, nesting deeper than
    ``MAX_JSON_DEPTH``, or a key given twice in one object (parsers disagree on which one wins).

    ``NaN`` and ``Infinity`` are read as Python's ``json`` writes them (a loss history may hold
    them); config fields refuse non-finite numbers themselves.
    """
    try:
        document = json.loads(text, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _depth(document) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return document


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_JSON_INT_DIGITS:
        raise ValueError(
            f"an integer of {digits} digits ({literal[:12]}...), more than {MAX_JSON_INT_DIGITS}"
        )
    return int(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return document


def _depth(document: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest
