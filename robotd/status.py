"""The status channel: every process publishes its counters; ``robotd train`` shows them.

Publishers connect a PUB socket to the collector's bound SUB socket, so processes can start in
any order. Messages are ``wire.Kind.STATUS`` with ``process`` and a flat ``counters`` mapping.
"""
from __future__ import annotations

import math
import time

import zmq

from robotd import wire


class StatusPublisher:
    """Rate-limited publisher of one process's counters (a no-op when no address is set)."""

    def __init__(self, context: zmq.Context, address: str, process: str, *, interval_s: float = 0.5):
        self.process = process
        self.interval_s = interval_s
        self._last = 0.0
        self._socket = None
        if address:
            self._socket = context.socket(zmq.PUB)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.SNDHWM, 10)
            self._socket.connect(address)

    def due(self) -> bool:
        """True when the next publish would go out (lets callers skip gathering counters)."""
        return self._socket is not None and time.monotonic() - self._last >= self.interval_s

    def publish(self, counters: dict, *, force: bool = False) -> None:
        """Sends the counters if the interval has passed (or ``force``); never blocks."""
        if self._socket is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        try:
            wire.send(self._socket, wire.Kind.STATUS, {"process": self.process, "counters": counters},
                      flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        """Closes the socket."""
        if self._socket is not None:
            self._socket.close(0)


class StatusCollector:
    """Binds the SUB side and keeps the newest counters of every process."""

    def __init__(self, context: zmq.Context, address: str):
        self._socket = context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.bind(address)
        self._receiver = wire.Receiver("status")
        self.latest: dict[str, dict] = {}
        self.received_at: dict[str, float] = {}

    def poll(self, timeout_ms: int = 0) -> None:
        """Takes every waiting status message."""
        while self._socket.poll(timeout_ms):
            timeout_ms = 0
            message = self._receiver.decode(self._socket.recv_multipart(copy=False), expect=[wire.Kind.STATUS])
            if message is not None and isinstance(message.meta.get("counters"), dict):
                self.latest[message.meta["process"]] = message.meta["counters"]
                self.received_at[message.meta["process"]] = time.monotonic()

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)


LINE_WIDTH = 80


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> str:
    """A count in at most 5 characters: 1234, 12.3k, 123k, 1.00M ('?' when not a number)."""
    if not _is_number(value):
        return "?"
    if abs(value) < 10_000:
        return f"{value:.0f}"
    for suffix, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        scaled = value / scale
        if abs(scaled) < 999.5 or suffix == "T":
            digits = 2 if abs(scaled) < 9.995 else 1 if abs(scaled) < 99.95 else 0
            return f"{scaled:.{digits}f}{suffix}"
    return "?"


def _value(value) -> str:
    """A signed value such as a return in at most 6 characters: -1.50, -12.3, -123.5, -1235, -12.3k."""
    if not _is_number(value):
        return "?"
    size = abs(value)
    if size < 9.995:
        return f"{value:.2f}"
    if size < 999.95:
        return f"{value:.1f}"
    return _count(value)


def _rate(value, small: str = ".1f") -> str:
    """A rate: one decimal below 100, a count from there on."""
    if not _is_number(value):
        return "?"
    return format(value, small) if abs(value) < 99.95 else _count(value)


def format_line(latest: dict[str, dict], now_s: float | None = None, width: int = LINE_WIDTH) -> str:
    """The live status line of a session from the newest counters of each process, at most ``width`` columns.

    ``25.0Hz late 3 | st 1200 ep 12 ret -12.3 ok 40% v7 | rb 1200 2.5u/s``: control rate and late
    steps (daemon); env steps, episodes, mean return and success rate of the last 20 finished
    episodes ('-' before the first) and the policy version at the robot (actor); replay size and
    updates per second (learner). Where room is left, the period error p99, the policy's age, the
    unacknowledged chunks, the train ratio and the published version follow. A counter that is not
    a number shows as '?'."""
    daemon, actor, learner = (latest.get(name) for name in ("daemon", "actor", "learner"))
    daemon, actor, learner = (part if isinstance(part, dict) else {} for part in (daemon, actor, learner))
    # Each group is a list of (text, priority): priority None is always shown, the others in increasing
    # order as long as the line stays within width.
    groups: list[list[tuple[str, int | None]]] = []
    if daemon:
        p99 = daemon.get("error_p99_ms")
        groups.append([(f"{_rate(daemon.get('rate_hz'))}Hz", None), (f"late {_count(daemon.get('late_steps', 0))}", None),
                       (f"p99 {_rate(p99, '.2f')}ms", 1)])
    if actor:
        finished = actor.get("finished_episodes")
        none_yet = _is_number(finished) and finished <= 0
        ret = "-" if none_yet else _value(actor.get("return_mean20"))
        success = actor.get("success_rate")
        ok = "-" if none_yet else f"{success * 100:.0f}%" if _is_number(success) else "?"
        age = actor.get("policy_age_s")
        unacked = actor.get("unacked_chunks")
        group = [(f"st {_count(actor.get('env_steps', 0))}", None), (f"ep {_count(actor.get('episodes', 0))}", None),
                 (f"ret {ret}", None), (f"ok {ok}", None), (f"v{_count(actor.get('policy_version', 0))}", None)]
        if _is_number(age) and age >= 0:
            group.append((f"age {age:.0f}s" if age < 9999.5 else f"age {_count(age)}s", 2))
        if _is_number(unacked) and unacked > 0:
            group.append((f"unacked {_count(unacked)}", 3))
        groups.append(group)
    if learner:
        ratio = learner.get("train_ratio")
        group = [(f"rb {_count(learner.get('replay_steps', 0))}", None),
                 (f"{_rate(learner.get('updates_per_s', 0))}u/s", None)]
        if _is_number(ratio) and ratio > 0:
            group.append((f"ratio {_count(ratio)}", 4))
        group.append((f"pub v{_count(learner.get('published_version', 0))}", 5))
        groups.append(group)
    if not groups:
        return "waiting for processes..."

    def render(shown: set[int], separator: str = " | ") -> str:
        return separator.join(" ".join(text for text, priority in group if priority is None or priority in shown)
                              for group in groups)

    shown: set[int] = set()
    for priority in sorted({priority for group in groups for _, priority in group if priority is not None}):
        if len(render(shown | {priority})) <= width:
            shown.add(priority)
    line = render(shown)
    # Only extreme figures come this far: the groups close up, and what still does not fit is cut.
    return line if len(line) <= width else render(shown, "|")[:width]
