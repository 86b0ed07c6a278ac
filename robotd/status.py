"""The status channel: every process publishes its counters; ``robotd train`` shows them.

Publishers connect a PUB socket to the collector's bound SUB socket, so processes can start in
any order. Messages are ``wire.Kind.STATUS`` with ``process`` and a flat ``counters`` mapping.
"""
from __future__ import annotations

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


def format_line(latest: dict[str, dict], now_s: float | None = None) -> str:
    """The live status line of a session from the newest counters of each process."""
    daemon, actor, learner = (latest.get(name, {}) for name in ("daemon", "actor", "learner"))
    parts = []
    if daemon:
        parts.append(f"ctrl {daemon.get('rate_hz', 0):.1f}Hz "
                     f"jit p99 {daemon.get('error_p99_ms', 0):.2f}ms late {daemon.get('late_steps', 0)}")
    if actor:
        age = actor.get("policy_age_s")
        age_text = f" age {age:.0f}s" if isinstance(age, (int, float)) and age >= 0 else ""
        parts.append(f"steps {actor.get('env_steps', 0)} eps {actor.get('episodes', 0)} "
                     f"ret {actor.get('last_return', 0):.2f} policy v{actor.get('policy_version', 0)}{age_text} "
                     f"unacked {actor.get('unacked_chunks', 0)}")
    if learner:
        ratio = learner.get("train_ratio")
        ratio_text = f" ratio {ratio:.0f}" if isinstance(ratio, (int, float)) and ratio > 0 else ""
        parts.append(f"replay {learner.get('replay_steps', 0)} "
                     f"upd {learner.get('updates', 0)} ({learner.get('updates_per_s', 0):.1f}/s){ratio_text} "
                     f"pub v{learner.get('published_version', 0)}")
    return " | ".join(parts) if parts else "waiting for processes..."
