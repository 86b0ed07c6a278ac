"""The status channel: every process publishes its counters; ``robotd train`` (or ``robotd watch``) shows them.

Publishers connect a PUB socket to the collector's bound SUB socket, so processes can start in
any order. Messages are ``wire.Kind.STATUS`` with ``process`` and a flat ``counters`` mapping.

Anything on the loopback interface can publish, so the collector checks every field of every
message before using it (``status_problem``): the meta holds only ``process`` and ``counters``
and no arrays; ``process`` is one of ``PROCESSES``; ``counters`` holds at most that process's
names in ``COUNTERS``, each of its type and within its range (bool is never a number, NaN and
infinities are refused, counts are whole numbers from 0 to 2**53); and the actor's counters agree
with each other (finished episodes <= episodes <= env steps). A message that fails is dropped and
counted per sender (``malformed``: a known process name, or ``"unknown"`` when the name is missing
or not accepted), and logged once per sender. The collector keeps its own copy of the checked
counters, never the received objects.

Whether the channel uses CurveZMQ is decided alike at both ends by robotd.security (``secures``: the
experience channel's rule): publishers get ``client_securer``, collectors ``status_server``.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

import zmq

from robotd import wire
from robotd.netutil import bind_or_explain
from robotd.security import may_publish_as

log = logging.getLogger("robotd.status")

PROCESSES = ("daemon", "actor", "learner")
"""The process names a status message may carry (what robotd/daemon/loop.py, actor/loop.py and learner/loop.py publish)."""
ROBOT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""A robot's name in a fleet: its daemon and actor publish as ``daemon.NAME`` and ``actor.NAME``."""
UNKNOWN = "unknown"
"""The sender a malformed message is counted under when it names no accepted process."""
MAX_COUNT = 2**53
"""The largest count accepted (every integer up to it is exact as a float)."""
MAX_MESSAGE_BYTES = 64 * 1024
"""The largest status message decoded; the process counters take a few hundred bytes."""
MAX_FRAME_BYTES = 1024 * 1024
"""ZeroMQ drops a peer that sends a larger frame before it is held in memory (ZMQ_MAXMSGSIZE)."""
MAX_MESSAGES_PER_POLL = 1000
"""A flood of messages cannot keep ``poll`` from returning."""


@dataclass(frozen=True)
class Counter:
    """The type and range of one counter: ``count`` (a whole number), ``real`` (int or float) or ``flag`` (bool)."""

    kind: str
    low: float = 0
    high: float = MAX_COUNT

    def problem(self, value) -> str | None:
        """Why ``value`` is not such a counter, or None."""
        if self.kind == "flag":
            return None if isinstance(value, bool) else f"is {wire.shown(value)}, expected true or false"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"is {wire.shown(value)} ({type(value).__name__}), expected a number"
        if self.kind == "count" and not isinstance(value, int):
            return f"is {wire.shown(value)}, expected a whole number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"is {value}, expected a finite number"
        if not self.low <= value <= self.high:
            return f"is {wire.shown(value)}, expected {self.low:g} to {self.high:g}"
        return None


_COUNT = Counter("count")
_FLAG = Counter("flag")
_RATE = Counter("real", 0, 1e9)
_RETURN = Counter("real", -1e12, 1e12)

COUNTERS: dict[str, dict[str, Counter]] = {
    "daemon": {"rate_hz": _RATE, "error_p99_ms": Counter("real", -1e9, 1e9), "late_steps": _COUNT, "ticks": _COUNT,
               "stale_readings": _COUNT, "actor_connected": _FLAG},
    "actor": {"env_steps": _COUNT, "episodes": _COUNT, "policy_version": _COUNT,
              "policy_age_s": Counter("real", -1e9, 1e9), "last_return": _RETURN, "last_success": Counter("count", 0, 1),
              "finished_episodes": _COUNT, "return_mean20": _RETURN, "success_rate": Counter("real", 0, 1),
              "unacked_chunks": _COUNT, "learner_connected": _FLAG},
    "learner": {"replay_steps": _COUNT, "updates": _COUNT, "updates_per_s": _RATE, "published_version": _COUNT,
                "train_ratio": _RATE},
}
"""Every counter each process may send (all optional), with its type and range. The actor's policy_age_s is
-1 before its first weights, and below 0 when the learner's clock is ahead of the actor's."""


def process_kind(name: object) -> str | None:
    """The kind of process a status sender name stands for: ``daemon``, ``actor`` or ``learner`` for those names,
    ``daemon`` or ``actor`` for a fleet robot's ``daemon.NAME`` / ``actor.NAME``; None for anything else."""
    if not isinstance(name, str):
        return None
    if name in PROCESSES:
        return name
    kind, dot, robot = name.partition(".")
    return kind if dot and kind in ("daemon", "actor") and ROBOT_NAME.fullmatch(robot) else None


def process_name(kind: str, robot: str | None) -> str:
    """The name a process publishes status and writes its stats under: ``kind`` alone, or ``kind.ROBOT`` for one
    robot of a fleet."""
    return f"{kind}.{robot}" if robot else kind


def status_problem(meta, arrays=None) -> tuple[str, str | None]:
    """Checks a decoded status message: returns (sender, None) when it may be used, else (sender, why not).

    The sender is the message's process name when it is one of ``PROCESSES`` or a fleet robot's
    ``daemon.NAME`` / ``actor.NAME``, else ``UNKNOWN``."""
    if not isinstance(meta, dict):
        return UNKNOWN, f"meta is a {type(meta).__name__}, expected an object"
    process = meta.get("process")
    kind = process_kind(process)
    if kind is None:
        return UNKNOWN, (f"process {wire.shown(process)} is not one of {', '.join(PROCESSES)} (or daemon.ROBOT, "
                         f"actor.ROBOT)")
    extra = sorted(str(key) for key in meta if key not in ("process", "counters"))
    if extra:
        return process, f"meta has unexpected field(s) {wire.shown(extra)}; only process and counters are sent"
    if arrays:
        return process, f"carries array(s) {wire.shown(sorted(arrays))}; status messages have none"
    counters = meta.get("counters")
    if not isinstance(counters, dict):
        return process, f"counters is {wire.shown(counters)}, expected an object of counters"
    schema = COUNTERS[kind]
    for name, value in counters.items():
        if name not in schema:
            return process, f"counter {wire.shown(name)} is not one {kind} sends (known: {', '.join(schema)})"
        problem = schema[name].problem(value)
        if problem is not None:
            return process, f"counter {name!r} {problem}"
    if kind == "actor":
        steps, episodes, finished = (counters.get(name) for name in ("env_steps", "episodes", "finished_episodes"))
        if episodes is not None and finished is not None and finished > episodes:
            return process, f"finished_episodes {finished} is more than episodes {episodes}"
        if steps is not None and episodes is not None and episodes > steps:
            return process, f"episodes {episodes} is more than env_steps {steps} (every episode has a step)"
    return process, None


class StatusPublisher:
    """Rate-limited publisher of one process's counters (a no-op when no address is set)."""

    def __init__(self, context: zmq.Context, address: str, process: str, *, interval_s: float = 0.5, secure=None):
        """``secure`` (e.g. robotd.security.client_securer) makes the socket a CURVE client before it connects."""
        self.process = process
        self.interval_s = interval_s
        self._last = 0.0
        self._socket = None
        if address:
            self._socket = context.socket(zmq.PUB)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.SNDHWM, 10)
            if secure is not None:
                secure(self._socket)
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


def _user_id(frame) -> str | None:
    """The user id the CURVE handshake gave the frame's sender (its key's name), None when there is none."""
    try:
        return frame.get("User-Id") or None
    except (AttributeError, zmq.ZMQError):
        return None


class StatusCollector:
    """Binds the SUB side and keeps the newest checked counters of every process.

    ``latest`` maps a process name to a copy of its newest accepted counters and ``received_at`` to when they
    came (time.monotonic()); ``malformed`` counts the dropped messages per sender (see the module docstring);
    ``address`` is the address bound."""

    def __init__(self, context: zmq.Context, address: str, *, secure=None,
                 what: str = "status collector (network.status)", fix: str = "with --set"):
        """``secure`` (e.g. a started CurveServer's configure) makes the socket a CURVE server before it binds. An
        address that cannot be bound raises netutil.AddressError, one line naming ``what`` and ``fix``."""
        self._socket = context.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
            if secure is not None:
                secure(self._socket)
            self.address = bind_or_explain(self._socket, address, what, fix=fix)
        except BaseException:
            self._socket.close(0)           # an open socket would keep context.term() waiting
            raise
        self.latest: dict[str, dict] = {}
        self.received_at: dict[str, float] = {}
        self.malformed: dict[str, int] = {}
        # Behind CURVE, a message's sender name must fit the key it was sent with (robotd.security.may_publish_as).
        self.keyed = secure is not None

    def poll(self, timeout_ms: int = 0) -> None:
        """Takes every waiting status message (at most MAX_MESSAGES_PER_POLL in one call)."""
        for _ in range(MAX_MESSAGES_PER_POLL):
            if not self._socket.poll(timeout_ms):
                return
            timeout_ms = 0
            self.take(self._socket.recv_multipart(copy=False))

    def take(self, frames: list) -> bool:
        """Checks one received message and keeps its counters; False (counted, logged once per sender) when
        it is malformed."""
        try:
            message = wire.decode(frames, max_bytes=MAX_MESSAGE_BYTES, expect=[wire.Kind.STATUS])
        except ValueError as exc:
            self._drop(UNKNOWN, str(exc))
            return False
        sender, problem = status_problem(message.meta, message.arrays)
        if problem is None and self.keyed:
            key = _user_id(frames[0])
            if key is not None and not may_publish_as(key, sender):
                sender, problem = f"{sender} (key {key})", f"the pair {key!r} may not publish as {sender!r}"
        if problem is not None:
            self._drop(sender, problem)
            return False
        self.latest[sender] = dict(message.meta["counters"])
        self.received_at[sender] = time.monotonic()
        return True

    def _drop(self, sender: str, problem: str) -> None:
        self.malformed[sender] = self.malformed.get(sender, 0) + 1
        if self.malformed[sender] == 1:
            log.warning("status: dropped a malformed message from %s: %s; fix the sender (further ones from %s "
                        "are counted, not logged: summary.json's malformed_status, robotd watch's report)", sender,
                        problem, sender)

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)


LINE_WIDTH = 80


def _fleet_daemon(daemons: list[dict]) -> dict:
    """One robot's daemon counters as they are; a fleet's as one: the slowest control rate, the worst p99, the
    late steps and stale readings summed."""
    if len(daemons) <= 1:
        return daemons[0] if daemons else {}
    rates = [d.get("rate_hz") for d in daemons if _is_number(d.get("rate_hz"))]
    p99s = [d.get("error_p99_ms") for d in daemons if _is_number(d.get("error_p99_ms"))]
    fleet = {"rate_hz": min(rates) if rates else None, "late_steps": _sum(daemons, "late_steps")}
    if p99s:
        fleet["error_p99_ms"] = max(p99s)
    return fleet


def _fleet_actor(actors: list[dict]) -> dict:
    """One robot's actor counters as they are; a fleet's as one: steps, episodes and unacknowledged chunks summed,
    the returns and success rates averaged over the robots with finished episodes, the oldest policy version."""
    if len(actors) <= 1:
        return actors[0] if actors else {}
    finished = [a for a in actors if _is_number(a.get("finished_episodes")) and a["finished_episodes"] > 0]

    def mean(key):
        values = [a.get(key) for a in finished if _is_number(a.get(key))]
        return sum(values) / len(values) if values else None
    versions = [a.get("policy_version") for a in actors if _is_number(a.get("policy_version"))]
    return {"env_steps": _sum(actors, "env_steps"), "episodes": _sum(actors, "episodes"),
            "finished_episodes": _sum(actors, "finished_episodes"), "return_mean20": mean("return_mean20"),
            "success_rate": mean("success_rate"), "policy_version": min(versions) if versions else None,
            "unacked_chunks": _sum(actors, "unacked_chunks")}


def _sum(parts: list[dict], key: str):
    values = [part.get(key, 0) for part in parts]
    return sum(values) if all(_is_number(value) for value in values) else None


def _is_number(value) -> bool:
    """True for an int or float (not bool) that is finite and small enough to show (below 1e18 in size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -1e18 < value < 1e18


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


Group = list[tuple[str, int | None]]
"""One group of the status line: (text, priority) items; priority None is always shown, the others in increasing
order as long as the line stays within its width (0 would come before the p99, 1; each robot's steps are 6)."""


def format_line(latest: dict[str, dict], now_s: float | None = None, width: int = LINE_WIDTH) -> str:
    """The live status line of a session from the newest counters of each process, at most ``width`` columns.

    ``25.0Hz late 3 | st 1200 ep 12 ret -12.3 ok 40% v7 | rb 1200 2.5u/s``: control rate and late
    steps (daemon); env steps, episodes, mean return and success rate of the last 20 finished
    episodes ('-' before the first) and the policy version at the robot (actor); replay size and
    updates per second (learner). Where room is left, the period error p99, the policy's age, the
    unacknowledged chunks, the train ratio and the published version follow. A counter that is not
    a number (or is 1e18 or more in size) shows as '?'."""
    groups = status_groups(latest)
    if not groups:
        return "waiting for processes..."
    line = fit_groups(groups, width)
    # Only extreme figures fail to fit: the groups close up, and what still does not fit is cut.
    return line if line is not None else _render(groups, set(), "|")[:width]


def status_groups(latest: dict[str, dict]) -> list[Group]:
    """The groups of the status line (format_line) for the newest counters of each process: the daemon's (a
    fleet's summed), the actor's (likewise, with each robot's steps) and the learner's; [] when none is known."""
    latest = latest if isinstance(latest, dict) else {}
    learner = latest.get("learner")
    learner = learner if isinstance(learner, dict) else {}
    daemons = [part for name, part in latest.items() if process_kind(name) == "daemon" and isinstance(part, dict)]
    actors = [part for name, part in latest.items() if process_kind(name) == "actor" and isinstance(part, dict)]
    daemon, actor = _fleet_daemon(daemons), _fleet_actor(actors)
    robots = max(len(daemons), len(actors))
    groups: list[Group] = []
    if daemon:
        p99 = daemon.get("error_p99_ms")
        fleet = [(f"{robots} robots", None)] if robots > 1 else []
        group = [*fleet, (f"{_rate(daemon.get('rate_hz'))}Hz", None), (f"late {_count(daemon.get('late_steps', 0))}", None)]
        if p99 is not None or not fleet:
            group.append((f"p99 {_rate(p99, '.2f')}ms", 1))
        groups.append(group)
    if actor:
        finished = actor.get("finished_episodes")
        none_yet = _is_number(finished) and finished <= 0
        ret = "-" if none_yet else _value(actor.get("return_mean20"))
        success = actor.get("success_rate")
        ok = "-" if none_yet else f"{success * 100:.0f}%" if _is_number(success) else "?"
        age = actor.get("policy_age_s")
        unacked = actor.get("unacked_chunks")
        group = [(f"st {_count(actor.get('env_steps', 0))}", None)]
        if len(actors) > 1:             # a fleet: each robot's steps, in robot order, where room is left
            by_robot = sorted(((name, part) for name, part in latest.items()
                               if process_kind(name) == "actor" and isinstance(part, dict)),
                              key=lambda item: (len(item[0]), item[0]))        # robot2 before robot10
            group.append((f"({'/'.join(_count(part.get('env_steps', 0)) for _, part in by_robot)})", 6))
        group += [(f"ep {_count(actor.get('episodes', 0))}", None), (f"ret {ret}", None), (f"ok {ok}", None),
                  (f"v{_count(actor.get('policy_version', 0))}", None)]
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
    return groups


def _render(groups: list[Group], shown: set[int], separator: str = " | ") -> str:
    return separator.join(" ".join(text for text, priority in group if priority is None or priority in shown)
                          for group in groups)


def fit_groups(groups: list[Group], width: int) -> str | None:
    """``groups`` as one line of at most ``width`` columns, with as many of the optional items as fit (in order of
    priority); None when the items always shown do not fit."""
    shown: set[int] = set()
    for priority in sorted({priority for group in groups for _, priority in group if priority is not None}):
        if len(_render(groups, shown | {priority})) <= width:
            shown.add(priority)
    line = _render(groups, shown)
    return line if len(line) <= width else None
