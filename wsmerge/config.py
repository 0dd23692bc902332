"""Typed configs from YAML: read a mapping, build a dataclass, name what is wrong and where."""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

__all__ = ["check_int", "check_number", "from_dict", "from_dict_with_base", "read_yaml"]

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


def check_int(value: Any, name: str, minimum: int) -> int:
    """`value` as an int >= minimum, or an error naming `name` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value}")
    return int(value)


def _yaml_number_hint(value: Any) -> str:
    # YAML 1.1 (PyYAML) reads an exponent without a dot, `1e-4`, as a string.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (a string: YAML reads {value} as text; write it with a dot, e.g. 1.0e-4)"
    return ""


def check_number(
    value: Any, name: str, low: float, high: float = math.inf, *, open_low: bool = False
) -> float:
    """`value` as a finite float in [low, high) ((low, high) if open_low), or an error naming
    `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}{_yaml_number_hint(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or (open_low and value == low) or value >= high:
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{low}, {high}), got {value}")
    return float(value)
