"""Building blocks for the simulated drivers' realism knobs: command latency and sensor latency.

A simulated driver advances its physics on its host clock. ``DelayLine`` holds commands until
they are due (sent time + latency + jitter), in the order they were sent, as a network and a
controller's input queue would; the driver steps the physics up to each due time and applies the
command there. ``History`` keeps recent snapshots of the simulated state so a reading can report
the world as it was ``sensor_latency`` ago, with the capture time as its hardware timestamp.

Both are plain data structures over integer nanosecond times; they know nothing of MuJoCo.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.settings import setting

_NS_PER_S = 1_000_000_000


def check_loopback(owner: str, host: object) -> str:
    """host as an IPv4 loopback address string (a fake peer serves this machine only), or a one-line ValueError."""
    try:
        address = ipaddress.ip_address(host)  # type: ignore[arg-type]
        loopback = address.version == 4 and address.is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{owner}: host {host!r} is not an IPv4 loopback address: a fake peer serves this machine "
                         f"only; use 127.0.0.1, 127.0.0.2, ...")
    return str(host)


@dataclass
class DeviceArgs:
    """Settings every software device takes: its randomness, its sensor noise and its clock against the host's."""
    seed: int = setting(0, range=(0, 2**63 - 1), help="all of the device's randomness (a session gives its own)")
    noise_std: float = setting(0.0, range=(0.0, 1e6), help="Gaussian noise on every value read, in its own units")
    clock_offset_s: float = setting(0.0, range=(-1e9, 1e9), help="device clock minus host clock at start")
    clock_drift_ppm: float = setting(0.0, range=(-1e4, 1e4), help="device clock rate error, parts per million")


@dataclass
class LatencyArgs(DeviceArgs):
    """A simulated robot's transport: commands wait command_latency_s plus up to latency_jitter_s, readings show the
    world of sensor_latency_s ago, and a command_loss share of commands never arrives."""
    command_latency_s: float = setting(0.0, range=(0.0, 10.0), help="command to actuator delay")
    sensor_latency_s: float = setting(0.0, range=(0.0, 10.0), help="capture to receipt delay of a reading")
    latency_jitter_s: float = setting(0.0, range=(0.0, 10.0), help="uniform extra command delay, at most this")
    command_loss: float = setting(0.0, range=(0.0, 0.999), help="probability that a command is lost")


def check_seconds(owner: str, what: str, value: object) -> float:
    """``value`` as a finite number of seconds >= 0, or a one-line ValueError naming owner and what."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {what} must be a number of seconds >= 0, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds >= 0.0):
        raise ValueError(f"{owner}: {what} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


class DelayLine:
    """Items that become due ``latency_s`` plus a uniform ``[0, jitter_s]`` after they are pushed.

    Items never overtake each other: an item is due no earlier than the one pushed before it.
    With zero latency and jitter an item is due the moment it is pushed.
    """

    def __init__(self, latency_s: float = 0.0, jitter_s: float = 0.0, rng: np.random.Generator | None = None,
                 owner: str = "DelayLine") -> None:
        self.latency_ns = round(check_seconds(owner, "latency_s", latency_s) * _NS_PER_S)
        self.jitter_ns = round(check_seconds(owner, "jitter_s", jitter_s) * _NS_PER_S)
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._items: deque[tuple[int, Any]] = deque()
        self._last_due_ns: int | None = None

    @property
    def delays(self) -> bool:
        """True when items are held at all (latency or jitter configured)."""
        return self.latency_ns > 0 or self.jitter_ns > 0

    def push(self, sent_ns: int, item: Any) -> int:
        """Queue ``item`` sent at ``sent_ns``; returns the time it becomes due."""
        jitter = int(self._rng.integers(0, self.jitter_ns + 1)) if self.jitter_ns > 0 else 0
        due_ns = int(sent_ns) + self.latency_ns + jitter
        if self._last_due_ns is not None and due_ns < self._last_due_ns:
            due_ns = self._last_due_ns
        self._last_due_ns = due_ns
        self._items.append((due_ns, item))
        return due_ns

    def next_due_ns(self) -> int | None:
        """When the oldest queued item becomes due (None when the line is empty)."""
        return self._items[0][0] if self._items else None

    def pop_due(self, until_ns: int) -> list[tuple[int, Any]]:
        """Remove and return, oldest first, every (due_ns, item) due at or before ``until_ns``."""
        out = []
        while self._items and self._items[0][0] <= until_ns:
            out.append(self._items.popleft())
        return out

    def clear(self) -> None:
        """Drop every queued item (a reset or a stop discards commands in flight)."""
        self._items.clear()
        self._last_due_ns = None

    def __len__(self) -> int:
        return len(self._items)


class History:
    """Snapshots of a simulated state over the last ``horizon_s`` seconds, for delayed readings."""

    def __init__(self, horizon_s: float, owner: str = "History") -> None:
        self.horizon_ns = round(check_seconds(owner, "horizon_s", horizon_s) * _NS_PER_S)
        self._times: list[int] = []
        self._values: list[Any] = []

    def record(self, t_ns: int, values: Any) -> None:
        """Add the state at ``t_ns`` (times must not go backwards; an equal time replaces the last one)."""
        t_ns = int(t_ns)
        if self._times and t_ns < self._times[-1]:
            raise ValueError(f"History.record: time {t_ns} ns is before the last one {self._times[-1]} ns; "
                             f"record states in time order")
        if self._times and t_ns == self._times[-1]:
            self._values[-1] = values
            return
        self._times.append(t_ns)
        self._values.append(values)
        # Keep one snapshot older than the horizon so a lookup at (newest - horizon) always finds one.
        drop = bisect.bisect_right(self._times, t_ns - self.horizon_ns) - 1
        if drop > 0:
            del self._times[:drop]
            del self._values[:drop]

    def at(self, t_ns: int) -> tuple[int, Any]:
        """(capture time, state) of the newest snapshot taken at or before ``t_ns`` (the oldest if none is)."""
        if not self._times:
            raise LookupError("History.at: nothing recorded yet; record a state first")
        index = bisect.bisect_right(self._times, int(t_ns)) - 1
        index = max(index, 0)
        return self._times[index], self._values[index]

    def clear(self) -> None:
        """Forget every snapshot (after a reset the old states are no longer the world's past)."""
        self._times.clear()
        self._values.clear()

    def __len__(self) -> int:
        return len(self._times)
