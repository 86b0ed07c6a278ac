"""``robotd train``: daemon, actor and learner as separate processes on one machine.

It picks free loopback ports, saves the resolved config, starts the three processes (each in
its own process group, with its log in LOGDIR/logs/, and each told to stop when robotd train dies, SIGKILL
included), shows a live status line, and on exit
(end of --steps, Ctrl-C, or a process dying) stops them in the safe order: the daemon first
(the robot stops), then the actor (it closes its episode and drains its chunks), then the
learner (final checkpoint). Whatever is still alive after that is killed, group and all.
Finally it writes summary.json.
"""
from __future__ import annotations

import ctypes
import dataclasses
import glob
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from robotd import curves, security, session
from robotd.config import Config, save
from robotd.episodes import count_steps, episode_files, read_episode
from robotd.netutil import free_tcp_ports
from robotd.status import LINE_WIDTH, StatusCollector, process_kind, process_name
from robotd.watch import watch_line

log = logging.getLogger("robotd.train")

STOP_ORDER = ("daemon", "actor", "learner")
WINDOW_EPISODES = 20
"""summary.json's first20 and last20: the first and last this many finished episodes."""
LEARNER_RESTARTS = 3

# Linux's prctl(PR_SET_PDEATHSIG): a child asks for SIGTERM when robotd train dies, even by SIGKILL, so that no
# daemon keeps a robot or learner keeps training for a session nobody runs any more.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _term_when_parent_dies(parent_pid: int):
    """A Popen preexec_fn: the child gets SIGTERM (a clean stop: the robot stopped, the learner checkpointed) when
    the process that started it dies; if that already happened between fork and here, at once."""
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


class Child:
    """One process of the session; ``started_at`` is its wall-clock start (time.time()), so a stats file older
    than that was not written by this process."""

    def __init__(self, name: str, argv: list[str], logdir: Path):
        self.name = name
        self.log_path = logdir / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.started_at = time.time()
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env=env,
                                        preexec_fn=_term_when_parent_dies(os.getpid()))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """Kills the process group (the child and anything it started, such as Ray's processes)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(5.0)
        self._log.close()

    def how_it_ended(self, code: int | None = None) -> str:
        """How the process ended, from its exit status (``code``, default the process's own; None while it runs):
        "exited with code 3", "killed by signal 9 (SIGKILL)", "exited normally" or "is still running"."""
        code = self.process.returncode if code is None else code
        if code is None:
            return "is still running"
        if code == 0:
            return "exited normally"
        if code > 0:
            return f"exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by signal {-code} ({name})"

    def last_error(self) -> str:
        """The most telling line at the end of the child's log: the later of its last ERROR or CRITICAL record
        (or a "robotd <process>: error:" line) and the last line of its last traceback; else its last line;
        "" without a log. Prefixed "last error: " or "last log line: " to say which it is."""
        line, is_error = last_log_line(self.log_path)
        if not line:
            return ""
        return f"{'last error' if is_error else 'last log line'}: {line}"

    def exit_message(self, code: int | None = None, *, how: str | None = None) -> str:
        """One line: the process's name, how it ended (``how``, else from ``code`` as in how_it_ended), then its
        last error or log line and where its log is."""
        detail = self.last_error()
        return (f"{self.name} {how or self.how_it_ended(code)}" + (f"; {detail}" if detail else "")
                + f" (log: {self.log_path})")


LOG_TAIL_BYTES = 64 * 1024
"""How much of the end of a log last_log_line reads."""
MAX_QUOTED_CHARS = 300
"""A quoted log line is cut to this many characters."""
_ERROR_LEVELS = ("ERROR", "CRITICAL", "ERROR:", "CRITICAL:")


def _is_error_record(line: str) -> bool:
    """A logging record at ERROR or CRITICAL level (the level among the first four words, as in
    robotd.cli.setup_logging's format), or the one-line error robotd.cli.fail prints."""
    if line.startswith("robotd ") and ": error: " in line:
        return True
    return any(word in _ERROR_LEVELS for word in line.split(maxsplit=4)[:4])


def last_log_line(path: Path) -> tuple[str, bool]:
    """(line, is_error): the later of the last error record and the last line of the last traceback in the log
    at ``path``, with is_error True; else its last non-empty line with is_error False; ("", False) without one."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "", False
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    best = -1
    for index, line in enumerate(lines):
        if _is_error_record(line):
            best = max(best, index)
        elif line.startswith("Traceback (most recent call last)"):
            # The exception's own line is the first one after the frames that is not indented.
            end = next((i for i in range(index + 1, len(lines)) if not lines[i][:1].isspace()), None)
            if end is not None:
                best = max(best, end)
    if best >= 0:
        return _quoted(lines[best]), True
    return (_quoted(lines[-1]), False) if lines else ("", False)


def _quoted(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_QUOTED_CHARS else line[:MAX_QUOTED_CHARS] + "..."


ACTOR_ID = "actor0"
KEYS = "keys"


def robot_names(robots: int) -> list[str | None]:
    """The robots of a session: [None] for one robot (its processes are plain ``daemon`` and ``actor``), else
    robot0, robot1, ..."""
    return [None] if robots == 1 else [f"robot{i}" for i in range(robots)]


def steps_share(steps: int | None, robots: int, index: int) -> int | None:
    """Robot ``index``'s part of a session's ``steps`` (the fleet's total): an even split, the first robots taking
    one more step each while the remainder lasts."""
    if steps is None:
        return None
    return steps // robots + (1 if index < steps % robots else 0)


def _local_network(config: Config, root: Path, robots: int = 1) -> tuple[Config, list[str]]:
    """Loopback ports for the four channels, every one of them behind CurveZMQ with keys made for this session
    (owner-only files in LOGDIR/keys): a process without them gets nothing from, and puts nothing into, any
    channel, on loopback too. Each robot gets its own control port (the config holds the first); returns the
    config and every robot's control address."""
    control, experience, weights, status, *more = free_tcp_ports(3 + robots)
    controls = [f"tcp://127.0.0.1:{port}" for port in (control, *more)]
    if config.network.keys_dir:
        log.info("network.keys_dir %s is for sessions split over machines: robotd train makes its own keys in %s",
                 config.network.keys_dir, root / KEYS)
    keys_dir = security.session_keys(root / KEYS, ACTOR_ID)
    network = dataclasses.replace(config.network, control=f"tcp://127.0.0.1:{control}",
                                  experience=f"tcp://127.0.0.1:{experience}",
                                  weights=f"tcp://127.0.0.1:{weights}", status=f"tcp://127.0.0.1:{status}",
                                  auth="always", keys_dir=str(keys_dir), actor_key=ACTOR_ID)
    return dataclasses.replace(config, network=network), controls


COMPLETE = ("steps done", "time limit reached")
"""Reasons a session ends having done what it was asked (exit code 0)."""
CHECKPOINT_FILE = "latest.pt"
"""The learner's newest checkpoint in LOGDIR/checkpoints/ (learner.trainer.CHECKPOINT_FILE)."""


def first_update_steps(config: Config) -> tuple[int, str, str]:
    """How many environment steps a session collects before its learner can make its first update:
    ``learner.min_replay_steps`` in replay, and at least one whole training sequence of ``learner.batch_length``
    consecutive steps to sample. The random prefill (``actor.prefill_steps``) goes into replay like every other
    step, so it adds nothing. Returns (steps, the keys behind the figure, the key to lower for fewer)."""
    learner = config.learner
    if learner.batch_length > learner.min_replay_steps:
        return (learner.batch_length, f"learner.batch_length {learner.batch_length}, one whole training sequence; "
                                      f"learner.min_replay_steps {learner.min_replay_steps}", "learner.batch_length")
    return (learner.min_replay_steps, f"learner.min_replay_steps {learner.min_replay_steps} in replay",
            "learner.min_replay_steps")


def refused_logdir_message(logdir: str | Path) -> str:
    """One line for a log directory that already holds a session: what to do instead, and how to go on from its
    newest checkpoint (``--init``) when it has one."""
    checkpoint = Path(logdir) / session.CHECKPOINTS / CHECKPOINT_FILE
    kept = "its episodes and checkpoints are kept as they are"
    if checkpoint.is_file():
        return (f"log directory {str(logdir)!r} already holds a session: to continue from it, give a new --logdir "
                f"and --init {checkpoint} (its newest checkpoint); to start afresh, just a new --logdir ({kept})")
    return (f"log directory {str(logdir)!r} already holds a session, with no checkpoint yet: choose a new --logdir "
            f"({kept}); to continue from its episodes, train a checkpoint with `robotd replay {logdir} --updates N` "
            f"and start from it with --init")


def _learner_counter(summary: dict, status: dict, stats_key: str, status_key: str) -> int | None:
    """A learner figure from its final stats (in summary.json), else from its last status message, else None."""
    value = _count(summary.get(stats_key))
    if value is None:
        last = status.get("learner") if isinstance(status, dict) else None
        value = _count(last.get(status_key)) if isinstance(last, dict) else None
    return value


def learner_never_trained(root: Path, summary: dict, status: dict) -> bool:
    """True when no learner of the session made an update: its stats or status say 0 (or it sent neither) and
    the session has no checkpoint of its own (one is written only after updates)."""
    if (Path(root) / session.CHECKPOINTS / CHECKPOINT_FILE).exists():
        return False
    return not _learner_counter(summary, status, "learner_updates", "updates")


def before_first_update_message(summary: dict, status: dict, config: Config) -> str:
    """The plain sentence for a session that ended before its learner's first update."""
    needed, _, _ = first_update_steps(config)
    had = _learner_counter(summary, status, "ingested_steps", "replay_steps")
    env = _figure(summary.get("env_steps"))
    if had is None:
        state = "it was still starting up"
    elif had < needed:
        state = f"it had {had}"
    else:
        state = f"it had {had} but had not made an update yet"
    return (f"robotd train: the session ended after {env} steps, before the learner's first update (it needs "
            f"{needed} steps in replay; {state}), so no checkpoint was written: run longer with --steps or --minutes")


def train(config: Config, *, logdir: str, steps: int | None, minutes: float | None = None, robots: int = 1) -> int:
    """Runs a whole session until ``steps`` environment steps or ``minutes`` of wall time (whichever comes first),
    Ctrl-C or a process failing; returns the exit code (0 when it ran to its limit).

    With ``robots`` > 1 a fleet of simulated robots feeds the one learner: a daemon and an actor per robot
    (robot0, robot1, ...; each its own seed, control port, actor id, episodes and stream), ``steps`` split
    between them. A robot that fails or ends is stopped alone; the others go on, and the session ends when
    every robot has ended (exit code 1 when any of them failed)."""
    if session.holds_session(logdir):
        raise session.LogdirError(refused_logdir_message(logdir))
    root = session.prepare(logdir)
    if not config.session:
        config = dataclasses.replace(config, session=root.name)
    config, controls = _local_network(config, root, robots)
    resolved = root / session.CONFIG
    save(config, resolved)
    python = sys.executable
    common = [str(resolved), "--logdir", str(root)]
    context = zmq.Context()
    # The status channel's rule (robotd.security.secures) is the one every publisher follows; robotd train runs
    # with network.auth=always, so it is CurveZMQ with the session's keys.
    status_curve = None
    try:
        status_curve = security.status_server(config.network, context)
        collector = StatusCollector(context, config.network.status,
                                    secure=status_curve.configure if status_curve else None)
    except BaseException:
        if status_curve is not None:
            status_curve.stop()
        context.term()                      # nothing is left open: the collector closes its socket when it fails
        raise
    started = time.monotonic()
    interrupted: list[float] = []           # handlers first, so a Ctrl-C while starting still stops everything
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(time.monotonic()))
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(time.monotonic()))
    children = {"learner": Child("learner", [python, "-m", "learner", *common], root)}
    fleet = robot_names(robots)
    pairs: dict[str | None, tuple[str, str]] = {}          # robot -> (its daemon's name, its actor's name)
    for index, robot in enumerate(fleet):
        own = [] if robot is None else ["--robot-id", robot, "--set", f"network.control={controls[index]}",
                                        "--set", f"seed={config.seed + index}"]
        daemon, actor = process_name("daemon", robot), process_name("actor", robot)
        children[daemon] = Child(daemon, [python, "-m", "robotd.daemon", *common, *own], root)
        actor_argv = [python, "-m", "actor", *common, *own, "--actor-id", robot or ACTOR_ID]
        share = steps_share(steps, robots, index)
        if share is not None:
            actor_argv += ["--steps", str(share)]
        children[actor] = Child(actor, actor_argv, root)
        pairs[robot] = (daemon, actor)
    ended: dict[str | None, str] = {}                     # robot -> how it ended
    retired: list[Child] = []
    print(f"robotd train: session {root} ({config.robot.driver}, task {config.task.name}, "
          f"{config.control.rate_hz:g} Hz{f', {robots} robots' if robots > 1 else ''}); Ctrl-C stops the "
          f"robot{'s' if robots > 1 else ''} and ends the session", file=sys.stderr)
    reason = "steps done"
    tty = sys.stderr.isatty()
    last_print = 0.0
    try:
        while True:
            collector.poll(100)
            now = time.monotonic()
            if now - last_print >= (0.5 if tty else 10.0):
                width = shutil.get_terminal_size((120, 20)).columns - 1 if tty else LINE_WIDTH
                line = status_line(collector, {name for name, child in children.items() if child.alive}, now, width)
                if tty:
                    print(f"\r{line[:width]:<{width}}", end="", file=sys.stderr, flush=True)
                else:
                    print(line, file=sys.stderr, flush=True)
                last_print = now
            if interrupted:
                reason = "interrupted"
                break
            if minutes is not None and now - started >= minutes * 60.0:
                reason = "time limit reached"
                print(f"\nrobotd train: {minutes:g} minutes are up: stopping the session", file=sys.stderr)
                break
            for robot, (daemon, actor) in pairs.items():
                if robot in ended:
                    continue
                if not children[actor].alive:
                    code = children[actor].process.returncode
                    ended[robot] = "steps done" if code == 0 else f"{actor} {children[actor].how_it_ended()}"
                elif not children[daemon].alive:
                    ended[robot] = f"{daemon} {children[daemon].how_it_ended()}"
                else:
                    continue
                if len(pairs) > 1:                      # a fleet: this robot stops alone, the others go on
                    for name in (daemon, actor):
                        children[name].signal(signal.SIGTERM)
                    if ended[robot] != "steps done":
                        print(f"\nrobotd train: {robot} stopped ({ended[robot]}); the other robots go on",
                              file=sys.stderr)
            actors_alive = any(children[actor].alive for _, actor in pairs.values())
            dead = [c for c in children.values() if not c.alive and process_kind(c.name) == "learner"]
            if children["learner"] in dead and len(retired) < LEARNER_RESTARTS and actors_alive:
                # The robot keeps going; a new learner resumes from the checkpoint and refills replay
                # from the episode files, and the actor resends whatever was not acknowledged.
                print(f"\nrobotd train: learner exited unexpectedly: {children['learner'].exit_message()}; "
                      f"restarting it", file=sys.stderr)
                children["learner"].kill_group()           # what it left behind (Ray's processes)
                retired.append(children["learner"])
                children["learner"] = Child("learner", [python, "-m", "learner", *common], root)
                continue
            if len(ended) == len(pairs):
                failures = [how for how in ended.values() if how != "steps done"]
                reason = failures[0] if failures else "steps done"
                break
            if dead:
                reason = f"{dead[0].name} {dead[0].how_it_ended()}"
                break
    finally:
        if tty:
            print(file=sys.stderr)
        learner_stopped = children["learner"].alive       # still running at the end: robotd train stops it
        codes = _shutdown(children, collector, interrupted, config)
        collector.close()
        if status_curve is not None:
            status_curve.stop()
        context.term()
    summary = summarize(root, reason=reason, wall_s=time.monotonic() - started, exit_codes=codes,
                        started_at={name: child.started_at for name, child in children.items()},
                        status=collector.latest, malformed_status=collector.malformed, robots=fleet,
                        robot_ends={robot or ACTOR_ID: how for robot, how in ended.items()})
    lines, failed = ending_report(children, codes, reason, learner_stopped=learner_stopped, root=root, summary=summary,
                                  status=collector.latest, config=config)
    for line in lines:
        print(line, file=sys.stderr)
    summary["learner_restarts"] = len(retired)
    # Handshakes with keys that are not the session's, per channel owner (each refused peer is logged once there).
    summary["refused_connections"] = {
        "status": status_curve.rejected if status_curve is not None else 0,
        **{name: session.read_stats(root, name).get("refused_connections")
           for name in (*(daemon for daemon, _ in pairs.values()), "learner")}}
    session.write_json(root / session.SUMMARY, summary)
    print(format_summary(summary, root), file=sys.stderr)
    return 130 if reason == "interrupted" else (1 if failed or reason not in COMPLETE else 0)


STOPPED_AS_ASKED = (0, -signal.SIGTERM)
"""Exit statuses of a process that stopped as robotd train asked: a clean exit, or death by its SIGTERM (when the
signal came before the process's handler was set, or after it had begun to exit)."""


def status_line(collector: StatusCollector, alive: set[str], now: float, width: int) -> str:
    """robotd train's status line, as robotd watch shows it: a running process not heard for a while is named
    silent (a hung actor, a learner stuck in a step); one that ended is not (robotd train says how it ended)."""
    heard = {name: at for name, at in collector.received_at.items() if name in alive}
    return watch_line(collector.latest, heard, now, width=width)


def ending_report(children: dict, codes: dict, reason: str, *, learner_stopped: bool, root: Path, summary: dict,
                  status: dict, config: Config) -> tuple[list[str], bool]:
    """What ``robotd train`` says about how its processes ended, and whether any of them failed.

    ``children`` maps each process name to its Child, ``codes`` to its exit status after the shutdown (None: it
    had to be killed), ``learner_stopped`` says whether the learner was still running when the session ended.
    A process that exited normally or on robotd train's SIGTERM gets no line; any other gets one with its last
    error (none after a Ctrl-C). A learner stopped before its first update was still starting or filling its
    replay: however it ended (Ray's start cut short, say), the session was too short, and it is said so in one
    plain sentence instead of as a failure."""
    too_short = learner_stopped and learner_never_trained(root, summary, status)
    lines = []
    for name, child in children.items():
        code = codes.get(name)
        if reason == "interrupted" or code in STOPPED_AS_ASKED or (name == "learner" and too_short):
            continue
        how = None if code is not None else "did not stop in time and was killed by robotd train (SIGKILL)"
        lines.append(f"robotd train: {child.exit_message(code, how=how)}")
    if too_short:
        lines.append(before_first_update_message(summary, status, config))
    failed = any(code not in (*STOPPED_AS_ASKED, None) for name, code in codes.items()
                 if not (name == "learner" and too_short))
    return lines, failed


def _shutdown(children: dict[str, Child], collector: StatusCollector, interrupted: list, config: Config) -> dict:
    """Stops the processes in the safe order; a further Ctrl-C meanwhile kills everything at once."""
    budgets = {"daemon": 5.0, "actor": config.actor.drain_timeout_s + 10.0, "learner": 60.0}
    interrupts_before = len(interrupted)
    for kind in STOP_ORDER:                 # every robot's daemon first (the robots stop), then actors, then learner
        group = [child for name, child in children.items() if process_kind(name) == kind]
        for child in group:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + budgets[kind]
        while any(child.alive for child in group) and time.monotonic() < deadline and \
                len(interrupted) == interrupts_before:
            collector.poll(100)
        if len(interrupted) > interrupts_before:
            print("robotd train: interrupted again: killing every process now", file=sys.stderr)
            break
    codes = {}
    for name, child in children.items():
        codes[name] = child.process.poll()
        child.kill_group()
    return codes


MAX_COUNT = 2**53
"""The largest count taken from a stats file or status message into summary.json."""
PROCESSES = ("daemon", "actor", "learner")


def read_process_stats(root: Path, name: str, started_at: float | None = None) -> tuple[dict, str]:
    """A process's stats file (stats/<name>.json, written when the process exits) and what it is worth:
    ``"final"`` (a JSON object written after ``started_at``, the process's wall-clock start, when that is
    given), ``"stale"`` (older than ``started_at``: left by an earlier process of that name, such as a learner
    that was restarted; not used), ``"missing"`` (the process never got to write it: killed, or still
    starting) or ``"unreadable"`` (not a JSON object; not used). Only final stats come back non-empty."""
    path = Path(root) / session.STATS / f"{name}.json"
    try:
        modified = path.stat().st_mtime
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError, RecursionError):
        return {}, "unreadable"
    if not isinstance(data, dict):
        return {}, "unreadable"
    if started_at is not None and modified < started_at:
        return {}, "stale"
    return data, "final"


def _count(value) -> int | None:
    """``value`` when it is a whole number from 0 to MAX_COUNT (not bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _real(value) -> float | None:
    """``value`` as a float when it is a finite int or float (not bool) below 1e15 in size, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and -1e15 < value < 1e15:
        return float(value)
    return None


class _Stats:
    """One process's stats for summary.json: each figure checked, None when the file is not final."""

    def __init__(self, data: dict, state: str):
        self.data, self.state = data, state

    @property
    def usable(self) -> bool:
        return self.state == "final"

    def count(self, key: str, default: int | None = 0) -> int | None:
        """A count: ``default`` when the final stats lack it, None when it is malformed or the stats not final."""
        if not self.usable:
            return None
        return default if key not in self.data else _count(self.data[key])

    def real(self, key: str, default: float | None = 0.0) -> float | None:
        if not self.usable:
            return None
        return default if key not in self.data else _real(self.data[key])

    def text(self, key: str, default: str) -> str | None:
        if not self.usable:
            return None
        value = self.data.get(key, default)
        return value[:200] if isinstance(value, str) else None

    def period(self, key: str) -> dict:
        """A period-error summary: p50, p99 and max in ms (None where not known); {} when not final."""
        value = self.data.get(key) if self.usable else None
        if not isinstance(value, dict):
            return {}
        return {name: _real(value.get(name)) for name in ("p50", "p99", "max")}


def episode_counts(root: Path, actor_id: str | None = None) -> tuple[int, int, list[str]]:
    """(logged steps, episodes with at least one step, unreadable files) over the session's episode files (those
    of ``actor_id`` alone when it is given): the closed ones, and the steps in the journal of one whose writer
    died (an actor killed mid-episode)."""
    folder = Path(root) / session.EPISODES
    names = {path.name for path in episode_files(folder)
             if actor_id is None or path.name.startswith(f"{actor_id}-")}
    logged, episodes, unreadable = 0, 0, []
    for name in sorted(names):
        try:
            steps = count_steps(folder / name)
        except Exception as exc:        # a damaged file of any kind is reported here, never fatal
            unreadable.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        logged += steps
        episodes += steps > 0
    return logged, episodes, unreadable


def summarize(root: Path, *, reason: str, wall_s: float, exit_codes: dict, started_at: dict | None = None,
              status: dict | None = None, malformed_status: dict | None = None, robots=(None,),
              robot_ends: dict | None = None) -> dict:
    """summary.json: the session's counters from each process's stats file and the episode files.

    Each figure comes from where it is known (``sources`` says where; ``stats_files`` holds each stats file's
    state, see read_process_stats; ``started_at`` maps a process name to its wall-clock start):

    * ``logged_steps`` and ``episodes``: the episode files (every step the actor takes is in its episode
      file before it is counted; ``episodes`` counts the files with at least one step).
    * ``env_steps``: the actor's final stats; without them (the actor was killed) the larger of the logged
      steps and the actor's last status message (``status``, the collector's checked counters).
    * ``ingested_steps``: the learner's final stats (unique steps its replay stored); None without them.
    * ``lost_steps``: ``logged_steps - ingested_steps`` (0 at least): every logged step that never reached
      replay. It needs the learner's final stats, written when the learner ran to the end (after the actor
      had stopped sending), and is None without them. ``stream_gap_steps`` is the learner's own count of
      gaps in the chunk streams, a part of it.
    * Every other figure of a process whose stats file is not final is None (unknown), as is a malformed one.
    * ``daemon_actor_ticks``: observations the daemon served to the actor (the env steps, plus at most the
      one in flight and the ticks a stopped robot waited for its reset): a cross-check from the robot's side.
    * ``malformed_status``: status messages dropped as malformed, per sender (robotd.status).
    * A fleet (``robots``: robot0, robot1, ...; [None] for one robot) sums the counts over its robots (the control
      rate is the slowest robot's, the period error the worst one's), and ``robots`` breaks every figure down per
      robot: its env, logged, ingested and lost steps (from the learner's count per actor), episodes, outcomes,
      control figures and how it ended (``robot_ends``).
    """
    started_at = started_at if isinstance(started_at, dict) else {}
    robots = list(robots) if robots else [None]
    fleet = len(robots) > 1
    names = [*(process_name(kind, robot) for kind in ("daemon", "actor") for robot in robots), "learner"]
    stats = {name: _Stats(*read_process_stats(root, name, started_at.get(name))) for name in names}
    learner = stats["learner"]
    ingested = learner.count("ingested_steps", None)
    by_actor = learner.data.get("ingested_steps_by_actor") if learner.usable else None
    per_robot, sources = {}, {"logged_steps": "episode files", "episodes": "episode files (those with steps)"}
    for robot in robots:
        actor_name = process_name("actor", robot)
        actor = stats[actor_name]
        logged, episodes, _ = episode_counts(root, robot if fleet else None)
        env_steps = actor.count("env_steps", None)
        if env_steps is not None:
            source = "actor stats"
        else:
            last = status.get(actor_name) if isinstance(status, dict) else None
            reported = _count(last.get("env_steps")) if isinstance(last, dict) else None
            if reported is not None and reported > logged:
                env_steps, source = reported, f"actor's last status message (actor stats {actor.state})"
            else:
                env_steps, source = logged, f"episode files (actor stats {actor.state})"
        sources["env_steps" if not fleet else f"env_steps.{robot}"] = source
        own = _count(by_actor.get(robot)) if fleet and isinstance(by_actor, dict) else None
        robot_ingested = own if fleet else ingested
        if fleet and ingested is not None and robot_ingested is None:
            robot_ingested = 0                          # the learner has none of this robot's steps
        per_robot[robot] = {"env_steps": env_steps, "logged_steps": logged, "episodes": episodes,
                            "ingested_steps": robot_ingested,
                            "lost_steps": None if robot_ingested is None else max(0, logged - robot_ingested)}
    logged, episodes, unreadable = episode_counts(root)
    env_steps = _sum_known(figures["env_steps"] for figures in per_robot.values())
    if ingested is not None:
        sources["ingested_steps"], sources["lost_steps"] = "learner stats", "logged_steps - ingested_steps"
        lost = _sum_known(figures["lost_steps"] for figures in per_robot.values()) if fleet else max(0, logged - ingested)
    else:
        sources["ingested_steps"] = sources["lost_steps"] = f"unknown (learner stats {learner.state})"
        lost = None
    daemons = [stats[process_name("daemon", robot)] for robot in robots]
    actors = [stats[process_name("actor", robot)] for robot in robots]
    daemon, actor = daemons[0], actors[0]
    malformed = [stats[name].count("malformed") for name in names]
    dropped = {str(sender)[:40]: count for sender, count in (malformed_status or {}).items()
               if _count(count) is not None and count > 0} if isinstance(malformed_status, dict) else {}

    def counted(group: list[_Stats], key: str, default: int | None = 0) -> int | None:
        return _sum_known(part.count(key, default) for part in group)
    slowest = min(daemons, key=lambda part: part.real("control_rate_hz") if part.real("control_rate_hz") is not None
                  else math.inf)
    worst = max(daemons, key=lambda part: part.period("period_error_ms").get("p99") or -math.inf)
    summary = {**episode_outcomes(root),
        "env_steps": env_steps, "episodes": episodes, "logged_steps": logged,
        "ingested_steps": ingested, "lost_steps": lost, "stream_gap_steps": learner.count("lost_steps"),
        "duplicate_chunks": learner.count("duplicate_chunks"), "learner_updates": learner.count("learner_updates"),
        "replayed_steps": learner.count("replayed_steps"),
        "policy_version_max": _max_known(part.count("policy_version_max") for part in actors),
        "published_version": learner.count("published_version"),
        "control_rate_hz": slowest.real("control_rate_hz"), "target_rate_hz": daemon.real("target_rate_hz"),
        "period_error_ms": worst.period("period_error_ms"),
        "period_error_ms_while_training": worst.period("period_error_ms_while_training"),
        "late_steps": counted(actors, "late_steps"), "stale_readings": counted(daemons, "stale_readings"),
        "daemon_late_ticks": counted(daemons, "late_steps"), "daemon_actor_ticks": counted(daemons, "actor_ticks", None),
        "watchdog_stops": counted(daemons, "watchdog_stops"),
        "protective_stops": counted(daemons, "protective_stops"), "safety_clipped": counted(daemons, "safety_clipped"),
        "scheduling": daemon.text("scheduling", ""), "pacing": daemon.text("pacing", "realtime"),
        "unacked_chunks": counted(actors, "unacked_chunks"),
        "resent_chunks": counted(actors, "resent_chunks"),
        "malformed_messages": sum(count for count in malformed if count is not None),
        "malformed_status": dropped, "sources": sources,
        "stats_files": {name: stats[name].state for name in names},
        "unreadable_episodes": unreadable, "exit_reason": reason, "exit_codes": exit_codes, "wall_s": round(wall_s, 2),
    }
    if fleet:
        ends = robot_ends if isinstance(robot_ends, dict) else {}
        summary["robots"] = {robot: {
            **per_robot[robot], **episode_outcomes(root, robot), "ended": ends.get(robot),
            "control_rate_hz": daemons[i].real("control_rate_hz"), "late_steps": actors[i].count("late_steps"),
            "stale_readings": daemons[i].count("stale_readings"), "watchdog_stops": daemons[i].count("watchdog_stops"),
            "protective_stops": daemons[i].count("protective_stops"),
            "policy_version_max": actors[i].count("policy_version_max")} for i, robot in enumerate(robots)}
    return summary


def _sum_known(values) -> int | None:
    """The sum of counts, None when any of them is unknown."""
    values = list(values)
    return None if any(value is None for value in values) else sum(values)


def _max_known(values) -> int | None:
    values = [value for value in values if value is not None]
    return max(values) if values else None


def episode_outcomes(root: Path, actor_id: str | None = None) -> dict:
    """Return and success of the session's finished episodes (robotd/curves.py), for summary.json.

    ``first20`` and ``last20`` hold ``episodes``, ``return_mean`` and ``success_rate`` of the first and last
    20 finished episodes (fewer when there are fewer; the means None when there are none); ``success_rate``
    and ``episodes_succeeded`` count every finished episode. An episode succeeded when the task reported
    ``is_success`` at its last step; an unreadable file is left out (``unreadable_episodes`` names it)."""
    entries = []
    for path in sorted(glob.glob(str(root / session.EPISODES / (f"{actor_id}-*.h5" if actor_id else "*.h5")))):
        try:
            entry = curves.finished_entry(read_episode(path), curves.last_step_success)
        except (ValueError, OSError, KeyError):
            continue
        if entry is not None:
            entries.append(entry)
    entries = curves.sort_played(entries)
    succeeded = sum(entry["success"] for entry in entries)
    return {"finished_episodes": len(entries), "episodes_succeeded": succeeded,
            "success_rate": succeeded / len(entries) if entries else None,
            "first20": curves.window_summary(entries[:WINDOW_EPISODES]),
            "last20": curves.window_summary(entries[-WINDOW_EPISODES:])}



def _ms(value) -> str:
    return f"{value:.3f}" if _real(value) is not None else "n/a"


def _figure(value) -> str:
    """A count for the end-of-session report: the number, or 'unknown' for anything else."""
    return str(value) if _count(value) is not None else "unknown"


def _window_text(window) -> str:
    if not isinstance(window, dict) or not window.get("episodes"):
        return "-"
    ret, rate = _real(window.get("return_mean")), _real(window.get("success_rate"))
    ret_text = f"{ret:.2f}" if ret is not None else "-"
    rate_text = f"{rate:.0%}" if rate is not None else "-"
    return f"return {ret_text}, success {rate_text} ({_figure(window.get('episodes'))} episodes)"


def _outcome_line(summary: dict) -> str:
    """The finished episodes' success and return, first 20 against last 20."""
    rate = _real(summary.get("success_rate"))
    rate_text = f" ({rate:.0%})" if rate is not None else ""
    return (f"  episodes: {_figure(summary.get('finished_episodes', 0))} finished, "
            f"{_figure(summary.get('episodes_succeeded', 0))} succeeded{rate_text}; "
            f"first 20: {_window_text(summary.get('first20'))}; last 20: {_window_text(summary.get('last20'))}")


def format_summary(summary: dict, root: Path) -> str:
    """A few readable lines for the end of a session ('unknown' or 'n/a' for a figure that is not known)."""
    period = summary.get("period_error_ms")
    period = period if isinstance(period, dict) else {}
    training = summary.get("period_error_ms_while_training")
    training = training if isinstance(training, dict) else {}
    wall = _real(summary.get("wall_s"))
    rate = _real(summary.get("control_rate_hz"))
    scheduling = summary.get("scheduling")
    lines = [
        f"session {root}: {summary.get('exit_reason')} after {wall or 0:.0f} s",
        f"  steps: env {_figure(summary.get('env_steps'))}, logged {_figure(summary.get('logged_steps'))}, "
        f"ingested {_figure(summary.get('ingested_steps'))}, lost {_figure(summary.get('lost_steps'))}, "
        f"duplicate chunks {_figure(summary.get('duplicate_chunks'))}, episodes {_figure(summary.get('episodes'))}",
        f"  control: {'unknown' if rate is None else f'{rate:.2f}'} Hz, period error p50/p99/max "
        f"{_ms(period.get('p50'))}/{_ms(period.get('p99'))}/{_ms(period.get('max'))} ms "
        f"(while training p99 {_ms(training.get('p99'))} ms), late steps {_figure(summary.get('late_steps'))}, "
        f"stale readings {_figure(summary.get('stale_readings'))}, "
        f"{scheduling if isinstance(scheduling, str) else 'scheduling unknown'}",
        f"  learner: {_figure(summary.get('learner_updates'))} updates, newest policy used "
        f"v{_figure(summary.get('policy_version_max'))}",
        _outcome_line(summary),
    ]
    robots = summary.get("robots")
    for name, figures in (robots.items() if isinstance(robots, dict) else ()):
        figures = figures if isinstance(figures, dict) else {}
        rate = _real(figures.get("control_rate_hz"))
        lines.append(f"  {str(name)[:40]}: env {_figure(figures.get('env_steps'))}, logged "
                     f"{_figure(figures.get('logged_steps'))}, ingested {_figure(figures.get('ingested_steps'))}, lost "
                     f"{_figure(figures.get('lost_steps'))}, episodes {_figure(figures.get('episodes'))}, "
                     f"{'unknown' if rate is None else f'{rate:.2f}'} Hz; {str(figures.get('ended'))[:200]}")
    states = summary.get("stats_files")
    if isinstance(states, dict) and any(state != "final" for state in states.values()):
        sources = summary.get("sources") if isinstance(summary.get("sources"), dict) else {}
        lines.append(f"  stats files: {', '.join(f'{name} {state}' for name, state in states.items())}; "
                     f"env steps from {sources.get('env_steps', 'unknown')}")
    dropped = summary.get("malformed_status")
    if isinstance(dropped, dict) and dropped:
        counts = [f"{sender} {count}" for sender, count in dropped.items() if _count(count) is not None]
        total = sum(count for count in dropped.values() if _count(count) is not None)
        lines.append(f"  status channel: {total} malformed messages dropped ({', '.join(counts)})")
    lines.append(f"  summary: {root / session.SUMMARY}")
    return "\n".join(lines)
