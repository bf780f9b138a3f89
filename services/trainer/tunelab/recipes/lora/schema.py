"""Typed sections from YAML mappings: dataclass fields give the types, unknown keys get a suggestion.

Values are converted where YAML 1.1 (PyYAML) reads them loosely: `5e-5` arrives as a string, a bare
`no` as false. Errors say where (`file: section.key`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from tunelab.recipes.lora.errors import ConfigError


def unknown_key(where: str, key: object, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return f"{where}: unknown key {key!r}{hint}"


def build_section(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(unknown_key(where, key, names))
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check and convert one value; PyYAML reads `5e-5` as a string, so numbers in strings are parsed."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} must be set (got null)")
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(value, option)
        except (TypeError, ValueError) as e:
            errors.append(str(e))
    expected = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise ConfigError(f"{where} must be {expected}, got {value!r}")


def _coerce_one(value: Any, option: Any) -> Any:
    origin = typing.get_origin(option)
    if option is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError("not a bool")
    if option is int:
        if isinstance(value, bool):
            raise TypeError("bool is not an int")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value)
        raise TypeError("not an int")
    if option is float:
        if isinstance(value, bool):
            raise TypeError("bool is not a float")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise TypeError("not a float")
    if option is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` (eval_strategy: no) as false
            return "yes" if value else "no"
        if isinstance(value, str):
            return value
        raise TypeError("not a string")
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError("not a list of strings")
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError("not a mapping")
    raise TypeError(f"unsupported type {option}")


def _type_name(option: Any) -> str:
    origin = typing.get_origin(option)
    if origin is list:
        return "a list of strings"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        option, str(option)
    )
