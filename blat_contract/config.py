"""One config mechanism for the project: typed dataclasses read from dicts, JSON files and env vars.

`from_dict` is strict (an unknown key is an error that lists the known ones) and recurses
into nested dataclass fields, so a config file is checked as soon as it is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict does not match its dataclass."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(tp: Any, value: Any, where: str) -> Any:
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: convert each element
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if origin is dict and isinstance(value, dict):
        value_type = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {k: _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses; unknown keys fail."""
    where = where or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = _field_types(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """The inverse of `from_dict` (tuples become lists, so the result is JSON-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def load_json(cls: type[T], path: str | Path) -> T:
    with open(path) as f:
        return from_dict(cls, json.load(f), where=str(path))


def apply_env(data: dict[str, Any], prefix: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Override `data` with env vars: PREFIX_KEY=value and PREFIX_SECTION__KEY=value (JSON-decoded if possible)."""
    environ = os.environ if environ is None else environ
    out = json.loads(json.dumps(data))
    for name, raw in environ.items():
        if not name.startswith(prefix):
            continue
        path = name[len(prefix) :].lower().split("__")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out
