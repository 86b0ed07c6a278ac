"""Name -> driver class registry, so a config can say `driver: mock_arm`."""

from __future__ import annotations

from collections.abc import Callable

from drivers.base import Device
from drivers.settings import build

_DRIVERS: dict[str, type[Device]] = {}


def register(name: str) -> Callable[[type[Device]], type[Device]]:
    """Class decorator that makes a Device subclass constructible by make(name)."""

    def decorate(cls: type[Device]) -> type[Device]:
        if not (isinstance(cls, type) and issubclass(cls, Device)):
            raise TypeError(f"driver {name!r}: {cls!r} is not a Device subclass; register only Device classes")
        if name in _DRIVERS:
            raise ValueError(
                f"driver name {name!r} is already registered to {_DRIVERS[name].__qualname__}; pick another name"
            )
        _DRIVERS[name] = cls
        return cls

    return decorate


def names() -> list[str]:
    """Return the registered driver names, sorted."""
    return sorted(_DRIVERS)


def driver_class(name: str) -> type[Device] | None:
    """The class registered under name, or None."""
    return _DRIVERS.get(name)


def is_simulated(name: str) -> bool:
    """True when the driver registered under name declares itself simulated (False if unknown)."""
    cls = _DRIVERS.get(name)
    return bool(cls is not None and getattr(cls, "simulated", False))


def unknown_driver(name: object) -> str | None:
    """None when a driver is registered under name, else the end of a one-line error naming it and the known
    drivers: "'foo' is not a known driver: choose one of a1, gym, ..."."""
    if isinstance(name, str) and name in _DRIVERS:
        return None
    return f"{name!r} is not a known driver: choose one of {', '.join(names())}"


def check_args(name: str, args: dict, where: str, error: type[ValueError] = ValueError):
    """The settings of the driver registered under ``name`` built from a config's ``args`` (at ``where``, e.g.
    "robot.args"): unknown keys, wrong types and values out of range fail in one line naming them."""
    return build(_DRIVERS[name].Args, args, prefix=where, owner="config", error=error)


def make(name: str, **kwargs: object) -> Device:
    """Construct the driver registered under name with the given constructor kwargs."""
    problem = unknown_driver(name)
    if problem is not None:
        raise ValueError(f"driver {problem}")
    return _DRIVERS[name](**kwargs)
