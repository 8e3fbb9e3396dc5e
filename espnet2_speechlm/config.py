"""Typed configuration: nested dataclasses read from YAML with strict keys.

An unknown key is an error that names the key, where it was found, and the
keys that do exist, so a typo never silently falls back to a default.
Command-line overrides use dotted keys: ``model.num_layers=12``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclasses recurse."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "") + f"; valid keys: {sorted(types_)}")
    kwargs = {}
    for k, v in data.items():
        tp = _unwrap_optional(types_[k])
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            kwargs[k] = from_dict(tp, v, f"{where}.{k}")
        else:
            kwargs[k] = _coerce(v, tp, f"{where}.{k}")
    return cls(**kwargs)


def _coerce(v, tp, where):
    if v is None:
        return None
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp is float and isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {v!r}") from None
    if tp is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if tp in (int, bool, str) and not isinstance(v, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {v!r}")
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(v, (list, tuple)):
        return tuple(v)
    return v


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(e, 'problem', e)}") from None
    return data or {}


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> nested updates, values parsed as YAML scalars."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, val = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = yaml.safe_load(val)
    return data


def load(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    data = load_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides), str(path or "config"))


def save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    os.replace(tmp, path)
