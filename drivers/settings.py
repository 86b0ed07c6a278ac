"""Typed settings: dataclasses whose fields declare a type and, where it matters, a range or choices, built
from plain dicts (a YAML file, keyword arguments) with one-line errors naming the key, the value and the fix.

The session config (``robotd.config``) is made of them, and so is every driver's and task's ``Args``: a driver
declares what it takes once, config loading checks ``robot.args`` against it before any process starts, and
the same check runs when the driver is built directly with keyword arguments.

Units are part of a setting's name, one unit per family: seconds for every time and latency (``*_s``),
radians (``*_rad``), metres (``*_m``), hertz (``*_hz``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming key, value and fix."""


def setting(default=dataclasses.MISSING, *, range=None, choices=None, help="", default_factory=dataclasses.MISSING):
    """A dataclass field with validation metadata: ``range=(lo, hi)`` inclusive, or ``choices``."""
    meta = {"range": range, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp, key: str, meta: dict, owner: str = "config", error: type[ValueError] = SettingsError) -> Any:
    """Checks ``value`` against type ``tp`` and the field's range/choices; returns the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        tp, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise error(f"{owner}: {key} = {value!r} is not a mapping: write it as a YAML mapping of {tp.__name__} "
                        f"fields")
        return build(tp, value, prefix=key, owner=owner, error=error)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1):
            value = list(value)                   # a tuple or a numpy array from code that builds a driver directly
        if not isinstance(value, list):
            raise error(f"{owner}: {key} = {value!r} is not a list: write it as a YAML list")
        items = [convert(v, item_tp, f"{key}[{i}]", {"range": meta.get("range")}, owner, error)
                 for i, v in enumerate(value)]
        length = meta.get("length")
        if length is not None and len(items) != length:
            raise error(f"{owner}: {key} = {value!r} has {len(items)} values, not {length}: give {length}")
        return items
    if tp is Any:
        return value
    if tp is float:
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()                    # a numpy scalar from code that builds a driver directly
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{owner}: {key} = {value!r} is not a number: give a number")
        value = float(value)
    elif tp is int:
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{owner}: {key} = {value!r} is not an integer: give a whole number")
    elif tp is bool:
        if not isinstance(value, bool):
            raise error(f"{owner}: {key} = {value!r} is not a boolean: give true or false")
    elif tp is str:
        if isinstance(value, bool) and {"on", "off"} <= set(meta.get("choices") or ()):
            value = "on" if value else "off"          # YAML 1.1 reads a bare on/off as a boolean
        if not isinstance(value, str):
            raise error(f"{owner}: {key} = {value!r} is not a string: quote it")
    elif tp in (dict, list):
        if not isinstance(value, tp):
            raise error(f"{owner}: {key} = {value!r} is not a {_type_name(tp)}: write it as a YAML "
                        f"{'mapping' if tp is dict else 'list'}")
    lo_hi = meta.get("range")
    if lo_hi is not None and tp in (int, float) and not (lo_hi[0] <= value <= lo_hi[1]):
        raise error(f"{owner}: {key} = {value!r} is out of range: allowed {lo_hi[0]} to {lo_hi[1]}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise error(f"{owner}: {key} = {value!r} is not allowed: choose one of {', '.join(map(str, choices))}")
    return value


def build(cls, data: dict, *, prefix: str = "", owner: str = "config", error: type[ValueError] = SettingsError):
    """An instance of the settings dataclass ``cls`` from the plain dict ``data``: unknown keys, wrong types and
    values out of range fail with one line ``"{owner}: {prefix}.{key} ..."``; a ValueError from the class's own
    ``__post_init__`` (checks across fields) is raised as one line too."""
    if not isinstance(data, dict):
        where = prefix or "settings"
        raise error(f"{owner}: {where} = {data!r} is not a mapping: write it as a YAML mapping of {cls.__name__} "
                    f"fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            known = ", ".join(sorted(fields)) or "none"
            raise error(f"{owner}: unknown key {where!r}: known keys here are {known}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            where = f"{prefix}.{name}" if prefix else name
            kwargs[name] = convert(data[name], hints[name], where, dict(f.metadata), owner, error)
    try:
        return cls(**kwargs)
    except ValueError as exc:                   # the class's own rules across fields (__post_init__)
        where = f" {prefix}:" if prefix else ""
        raise error(f"{owner}:{where} {exc}") from None


def check_box(lower_name: str, lower: list, upper_name: str, upper: list, unit: str = "metres") -> None:
    """For a settings class's ``__post_init__``: ``lower`` and ``upper`` are the [x, y, z] corners of a box, each
    three values and lower <= upper on every axis; else a one-line ValueError naming the two settings."""
    for name, value in ((lower_name, lower), (upper_name, upper)):
        if len(value) != 3:
            raise ValueError(f"{name} = {list(value)!r} has {len(value)} values, not 3: give [x, y, z] in {unit}")
    if any(low > high for low, high in zip(lower, upper)):
        raise ValueError(f"{lower_name} = {list(lower)!r} must be <= {upper_name} = {list(upper)!r} on every axis: "
                         f"swap or fix them")


def as_dict(settings) -> dict:
    """The fields of a settings instance as a plain dict (nested dataclasses too)."""
    return dataclasses.asdict(settings)
