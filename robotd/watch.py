"""``robotd watch``: the live status line of a session whose processes run on other machines.

``robotd train`` binds the status collector itself. When the daemon and the actor run on a robot PC and the
learner on a GPU box, ``robotd watch`` binds it instead (at ``network.status`` or ``--status``) and shows the
line ``robotd train`` shows (robotd.status.format_line: a fleet's ``daemon.NAME`` / ``actor.NAME`` summed, each
robot's steps where room is left), about once a second, plus the processes that went silent (nothing heard for
``silent_after_s``: a robot PC that dropped off the network) and the handshakes it refused. It stops on Ctrl-C,
SIGTERM or after ``seconds``, then prints (and writes as JSON) the last checked counters of every process heard,
when each was last heard from, the malformed messages dropped per sender and the refused handshakes.

The channel is CurveZMQ by the experience channel's rule (robotd.security.secures), as every publisher decides:
the collector serves with ``keys_dir/learner.key_secret`` and admits ``actors/*.key`` and ``learner.key``.
Nothing here imports torch, Ray or MuJoCo.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import zmq

from robotd import security
from robotd.config import Config
from robotd.status import (LINE_WIDTH, PROCESSES, Group, StatusCollector, fit_groups, format_line, process_kind,
                           status_groups)

REFRESH_S = 1.0
"""How often the line is shown."""
SILENT_AFTER_S = 5.0
"""A process heard from before but not for this long is shown as silent (ten of its 0.5 s status periods)."""
POLL_MS = 100
"""The longest single wait for a message, so a stop request or the deadline is seen within this."""


def check_arguments(*, address: str, seconds: float | None, silent_after_s: float, json_path: str | None,
                    config_path: str) -> None:
    """One-line ValueErrors for arguments ``robotd watch`` cannot use, each naming the value and the fix."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--seconds {seconds:g}: give a positive number of seconds to watch, e.g. --seconds 60, "
                         f"or leave it out to watch until Ctrl-C")
    if not (silent_after_s > 0 and math.isfinite(silent_after_s)):
        raise ValueError(f"--silent-after {silent_after_s:g}: give a positive number of seconds, e.g. "
                         f"--silent-after {SILENT_AFTER_S:g}")
    if not address:
        raise ValueError(f"network.status is empty in {config_path}: give the address the processes publish to "
                         f"(their network.status, an address of this machine), e.g. --status tcp://0.0.0.0:5570")
    if json_path is not None:
        folder = Path(json_path).parent
        if Path(json_path).is_dir():
            raise ValueError(f"--json {json_path!r} is a directory: give a file name, e.g. --json {folder / 'watch.json'}")
        if not folder.is_dir():
            raise ValueError(f"--json {json_path!r}: directory {str(folder)!r} does not exist: make it first or "
                             f"choose another place")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"--json {json_path!r}: directory {str(folder)!r} is not writable: choose another place")


def _order(name: str) -> tuple:
    """Processes in the order daemon, actor, learner; robots in their natural order (robot2 before robot10)."""
    kind = process_kind(name)
    return (PROCESSES.index(kind) if kind in PROCESSES else len(PROCESSES), len(name), name)


def silent_processes(received_at: dict[str, float], now: float, silent_after_s: float) -> dict[str, float]:
    """{process: seconds since it was last heard} for those heard from before but not for ``silent_after_s``."""
    return {name: now - when for name, when in sorted(received_at.items(), key=lambda item: _order(item[0]))
            if now - when > silent_after_s}


def watch_line(latest: dict[str, dict], received_at: dict[str, float], now: float, *,
               silent_after_s: float = SILENT_AFTER_S, refused: int = 0, address: str = "",
               width: int = LINE_WIDTH) -> str:
    """The status line of ``robotd train`` (format_line) for the processes heard, then how many of them went
    silent (their names and silences where room is left: ``1 silent (actor.robot1 12s)``) and the refused
    handshakes, within ``width`` columns where they fit; where they do not, they follow the status line at its
    full width, since a silent robot matters more than the width. A silent process's figures are its last ones."""
    extra: list[Group] = []
    silent = silent_processes(received_at, now, silent_after_s)
    if silent:
        names = ", ".join(f"{name} {quiet:.0f}s" for name, quiet in silent.items())
        extra.append([(f"{len(silent)} silent", None), (f"({names})", 0)])
    if refused:
        extra.append([(f"refused {refused}", None)])
    required = [" ".join(text for text, priority in group if priority is None) for group in extra]
    if not latest:
        waiting = f"waiting for status on {address}..." if address else "waiting for processes..."
        return " | ".join([waiting, *required])
    line = fit_groups(status_groups(latest) + extra, width) if extra else None
    return line if line is not None else " | ".join([format_line(latest, width=width), *required])


def _wall(monotonic_at: float, now_monotonic: float, now_wall: float) -> float:
    return now_wall - (now_monotonic - monotonic_at)


def report(collector: StatusCollector, *, now: float, now_wall: float, silent_after_s: float, watched_s: float,
           ended: str, curve: security.CurveServer | None) -> dict:
    """What ``robotd watch`` knows at its end, as written by --json."""
    processes = {}
    for name in sorted(collector.latest, key=_order):
        heard = collector.received_at[name]
        wall = _wall(heard, now, now_wall)
        processes[name] = {
            "counters": dict(collector.latest[name]),
            "last_heard": datetime.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="milliseconds"),
            "last_heard_s_ago": round(now - heard, 3),
            "silent": now - heard > silent_after_s}
    return {"address": collector.address, "security": "CurveZMQ" if curve is not None else "plaintext",
            "watched_s": round(watched_s, 3), "ended": ended, "silent_after_s": silent_after_s,
            "processes": processes,
            "malformed": {sender: count for sender, count in sorted(collector.malformed.items())},
            "refused_connections": curve.rejected if curve is not None else None,
            "refused_without_keys": curve.rejected_unkeyed if curve is not None else None}


def format_report(data: dict) -> list[str]:
    """The exit report as lines: one for the whole watch, one per process (when it was last heard from and its
    last counters), one for the malformed messages per sender and one for the refused handshakes."""
    processes = data["processes"]
    malformed = sum(data["malformed"].values())
    lines = [f"robotd watch: {data['watched_s']:.1f} s on {data['address']} ({data['security']}), {data['ended']}: "
             f"{len(processes)} process{'es' if len(processes) != 1 else ''} heard, "
             f"{malformed} malformed message{'s' if malformed != 1 else ''} dropped"]
    width = max((len(name) for name in processes), default=0)
    for name, entry in processes.items():
        clock = entry["last_heard"][11:23]
        silent = ", silent" if entry["silent"] else ""
        counters = " ".join(f"{key}={_shown(value)}" for key, value in entry["counters"].items())
        lines.append(f"  {name:<{width}}  last heard {entry['last_heard_s_ago']:.1f} s ago ({clock}){silent}: "
                     f"{counters or '(no counters)'}")
    if data["malformed"]:
        lines.append("  malformed messages dropped: " + ", ".join(f"{sender} {count}" for sender, count
                                                                  in data["malformed"].items()))
    if data["refused_connections"] is not None:
        lines.append(f"  refused handshakes: {data['refused_connections']} ({data['refused_without_keys']} without "
                     f"keys)")
    return lines


def _shown(value) -> str:
    """A counter in the report: true/false, a whole number, a real number to 6 significant digits (the JSON file
    has it exactly)."""
    if isinstance(value, float):
        return format(value, ".6g")
    return json.dumps(value)


def write_json(path: str | Path, data: dict) -> None:
    """Writes ``data`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def run(config: Config, *, address: str | None = None, seconds: float | None = None, json_path: str | None = None,
        silent_after_s: float = SILENT_AFTER_S, config_path: str = "the config", out=None, err=None) -> int:
    """Binds the status collector at ``address`` (default ``config.network.status``) and shows the status line
    until Ctrl-C, SIGTERM or ``seconds``; then the report (and ``json_path``). Returns the exit code: 0, or 1 when
    the JSON file could not be written. Bad arguments, keys or addresses raise a one-line ValueError,
    RuntimeError (security.SecurityError, netutil.AddressError) before anything is bound."""
    out = out or sys.stdout
    err = err or sys.stderr
    address = config.network.status if address is None else address
    check_arguments(address=address, seconds=seconds, silent_after_s=silent_after_s, json_path=json_path,
                    config_path=config_path)
    network = dataclasses.replace(config.network, status=address)
    context = zmq.Context()
    curve = collector = None
    try:
        curve = security.status_server(network, context, address)
        collector = StatusCollector(context, address, secure=curve.configure if curve is not None else None,
                                    what="status collector (--status / network.status)",
                                    fix="with --status (and the same network.status for every process)")
        how = f"CurveZMQ, admitting {', '.join(curve.actors)}" if curve is not None else "plaintext"
        print(f"robotd watch: status on {collector.address} ({how}); Ctrl-C stops", file=err, flush=True)
        return _watch(collector, curve, seconds=seconds, json_path=json_path, silent_after_s=silent_after_s,
                      out=out, err=err)
    finally:
        if collector is not None:
            collector.close()
        if curve is not None:
            curve.stop()
        context.term()


def _watch(collector: StatusCollector, curve, *, seconds, json_path, silent_after_s, out, err) -> int:
    stop: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[number] = signal.signal(number, lambda signum, frame: stop.append(signum))
        except ValueError:                  # not the main thread: the caller stops it with seconds
            pass
    tty = out.isatty()
    started = time.monotonic()
    deadline = started + seconds if seconds is not None else math.inf
    next_refresh = started + REFRESH_S

    def show(now: float) -> None:
        line = watch_line(collector.latest, collector.received_at, now, silent_after_s=silent_after_s,
                          refused=curve.rejected if curve is not None else 0, address=collector.address)
        if tty:                             # rewritten in place, never wrapped
            columns = max(1, shutil.get_terminal_size((LINE_WIDTH + 1, 20)).columns - 1)
            print(f"\r{line[:columns]:<{columns}}", end="", file=out, flush=True)
        else:
            print(line, file=out, flush=True)

    ended = "time up"
    try:
        while True:
            now = time.monotonic()
            if stop:
                ended = "stopped by " + signal.Signals(stop[0]).name
                break
            if now >= deadline:
                break
            wait_s = min(next_refresh, deadline) - now
            collector.poll(max(0, min(POLL_MS, int(wait_s * 1000))))
            now = time.monotonic()
            if now >= next_refresh:
                show(now)
                next_refresh = max(next_refresh + REFRESH_S, now + REFRESH_S / 2)
        collector.poll(0)
        now = time.monotonic()
        show(now)
        if tty:
            print(file=out)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    data = report(collector, now=now, now_wall=time.time(), silent_after_s=silent_after_s, watched_s=now - started,
                  ended=ended, curve=curve)
    for line in format_report(data):
        print(line, file=out, flush=True)
    if json_path is not None:
        try:
            write_json(json_path, data)
        except OSError as exc:
            print(f"robotd watch: error: cannot write --json {json_path!r} ({exc.strerror}): choose another place",
                  file=err)
            return 1
    return 0
