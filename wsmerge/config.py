"""Typed configs from YAML: read a mapping, build a dataclass, name what is wrong and where."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

__all__ = ["from_dict", "from_dict_with_base", "read_yaml"]

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold one mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: malformed YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], d: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error, not ignored, so a
    misspelt setting never silently falls back to its default."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def from_dict_with_base(cls: type[T], d: Any, where: str, key: str, named: Callable[[str], T]) -> T:
    """Like `from_dict`, but `{key: name, ...}` starts from the named config `named(name)`
    (a preset, a scenario) and overrides only the keys given."""
    if isinstance(d, dict) and key in d:
        d = dict(d)
        try:
            base = named(d.pop(key))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        d = {**base.to_dict(), **d}
    return from_dict(cls, d, where)
