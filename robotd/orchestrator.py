"""``robotd train``: daemon, actor and learner as separate processes on one machine.

It picks free loopback ports, saves the resolved config, starts the three processes (each in
its own process group, with its log in LOGDIR/logs/), shows a live status line, and on exit
(end of --steps, Ctrl-C, or a process dying) stops them in the safe order: the daemon first
(the robot stops), then the actor (it closes its episode and drains its chunks), then the
learner (final checkpoint). Whatever is still alive after that is killed, group and all.
Finally it writes summary.json.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from robotd import curves, session
from robotd.config import Config, save
from robotd.episodes import count_steps, read_episode
from robotd.netutil import free_tcp_ports
from robotd.status import StatusCollector, format_line

log = logging.getLogger("robotd.train")

STOP_ORDER = ("daemon", "actor", "learner")
WINDOW_EPISODES = 20
"""summary.json's first20 and last20: the first and last this many finished episodes."""
LEARNER_RESTARTS = 3


class Child:
    """One process of the session."""

    def __init__(self, name: str, argv: list[str], logdir: Path):
        self.name = name
        self.log_path = logdir / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env=env)

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

    def last_error(self) -> str:
        """The last error line of the child's log, for a one-line report."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            if "error" in line.lower():
                return line.strip()
        return lines[-1].strip() if lines else ""


def _local_network(config: Config) -> Config:
    control, experience, weights, status = free_tcp_ports(4)
    network = dataclasses.replace(config.network, control=f"tcp://127.0.0.1:{control}",
                                  experience=f"tcp://127.0.0.1:{experience}",
                                  weights=f"tcp://127.0.0.1:{weights}", status=f"tcp://127.0.0.1:{status}")
    return dataclasses.replace(config, network=network)


COMPLETE = ("steps done", "time limit reached")
"""Reasons a session ends having done what it was asked (exit code 0)."""


def train(config: Config, *, logdir: str, steps: int | None, minutes: float | None = None) -> int:
    """Runs a whole session until ``steps`` environment steps or ``minutes`` of wall time (whichever comes first),
    Ctrl-C or a process failing; returns the exit code (0 when it ran to its limit)."""
    if session.holds_session(logdir):
        raise session.LogdirError(f"log directory {str(logdir)!r} already holds a session: choose a new --logdir "
                                  f"(its episodes and checkpoints are kept as they are)")
    root = session.prepare(logdir)
    if not config.session:
        config = dataclasses.replace(config, session=root.name)
    config = _local_network(config)
    resolved = root / session.CONFIG
    save(config, resolved)
    python = sys.executable
    common = [str(resolved), "--logdir", str(root)]
    context = zmq.Context()
    collector = StatusCollector(context, config.network.status)
    started = time.monotonic()
    interrupted: list[float] = []           # handlers first, so a Ctrl-C while starting still stops everything
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(time.monotonic()))
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(time.monotonic()))
    children = {"learner": Child("learner", [python, "-m", "learner", *common], root)}
    children["daemon"] = Child("daemon", [python, "-m", "robotd", "daemon", *common], root)
    actor_argv = [python, "-m", "actor", *common, "--actor-id", "actor0"]
    if steps is not None:
        actor_argv += ["--steps", str(steps)]
    children["actor"] = Child("actor", actor_argv, root)
    retired: list[Child] = []
    print(f"robotd train: session {root} ({config.robot.driver}, task {config.task.name}, "
          f"{config.control.rate_hz:g} Hz); Ctrl-C stops the robot and ends the session", file=sys.stderr)
    reason = "steps done"
    tty = sys.stderr.isatty()
    last_print = 0.0
    try:
        while True:
            collector.poll(100)
            now = time.monotonic()
            if now - last_print >= (0.5 if tty else 10.0):
                line = format_line(collector.latest)
                if tty:
                    width = shutil.get_terminal_size((120, 20)).columns - 1
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
            dead = [c for c in children.values() if not c.alive]
            if children["learner"] in dead and len(retired) < LEARNER_RESTARTS and children["actor"].alive:
                # The robot keeps going; a new learner resumes from the checkpoint and refills replay
                # from the episode files, and the actor resends whatever was not acknowledged.
                print(f"\nrobotd train: learner exited (code {children['learner'].process.returncode}): "
                      f"restarting it ({children['learner'].last_error()})", file=sys.stderr)
                children["learner"].kill_group()           # what it left behind (Ray's processes)
                retired.append(children["learner"])
                children["learner"] = Child("learner", [python, "-m", "learner", *common], root)
                continue
            if any(c.name == "actor" for c in dead):
                reason = "steps done" if children["actor"].process.returncode == 0 else "actor failed"
                break
            if dead:
                reason = f"{dead[0].name} exited (code {dead[0].process.returncode})"
                break
    finally:
        if tty:
            print(file=sys.stderr)
        codes = _shutdown(children, collector, interrupted, config)
        collector.close()
        context.term()
    for child in children.values():
        if child.process.returncode not in (0, None, -signal.SIGTERM) and reason != "interrupted":
            print(f"robotd train: {child.name} failed: {child.last_error()} (log: {child.log_path})", file=sys.stderr)
    summary = summarize(root, reason=reason, wall_s=time.monotonic() - started, exit_codes=codes)
    summary["learner_restarts"] = len(retired)
    session.write_json(root / session.SUMMARY, summary)
    print(format_summary(summary, root), file=sys.stderr)
    failed = any(code not in (0, None) for code in codes.values())
    return 130 if reason == "interrupted" else (1 if failed or reason not in COMPLETE else 0)


def _shutdown(children: dict[str, Child], collector: StatusCollector, interrupted: list, config: Config) -> dict:
    """Stops the processes in the safe order; a further Ctrl-C meanwhile kills everything at once."""
    budgets = {"daemon": 5.0, "actor": config.actor.drain_timeout_s + 10.0, "learner": 60.0}
    interrupts_before = len(interrupted)
    for name in STOP_ORDER:
        child = children[name]
        child.signal(signal.SIGTERM)
        deadline = time.monotonic() + budgets[name]
        while child.alive and time.monotonic() < deadline and len(interrupted) == interrupts_before:
            collector.poll(100)
        if len(interrupted) > interrupts_before:
            print("robotd train: interrupted again: killing every process now", file=sys.stderr)
            break
    codes = {}
    for name, child in children.items():
        codes[name] = child.process.poll()
        child.kill_group()
    return codes


def summarize(root: Path, *, reason: str, wall_s: float, exit_codes: dict) -> dict:
    """summary.json: the session's counters from each process's stats and the episode files."""
    daemon, actor, learner = (session.read_stats(root, name) for name in ("daemon", "actor", "learner"))
    logged = 0
    unreadable = []
    for path in sorted(glob.glob(str(root / session.EPISODES / "*.h5"))):
        try:
            logged += count_steps(path)
        except ValueError as exc:
            unreadable.append(f"{Path(path).name}: {exc}")
    return {**episode_outcomes(root),
        "env_steps": actor.get("env_steps", 0), "episodes": actor.get("episodes", 0), "logged_steps": logged,
        "ingested_steps": learner.get("ingested_steps", 0), "duplicate_chunks": learner.get("duplicate_chunks", 0),
        "lost_steps": learner.get("lost_steps", 0), "learner_updates": learner.get("learner_updates", 0),
        "replayed_steps": learner.get("replayed_steps", 0),
        "policy_version_max": actor.get("policy_version_max", 0),
        "published_version": learner.get("published_version", 0),
        "control_rate_hz": daemon.get("control_rate_hz", 0.0), "target_rate_hz": daemon.get("target_rate_hz", 0.0),
        "period_error_ms": daemon.get("period_error_ms", {}),
        "period_error_ms_while_training": daemon.get("period_error_ms_while_training", {}),
        "late_steps": actor.get("late_steps", 0), "stale_readings": daemon.get("stale_readings", 0),
        "daemon_late_ticks": daemon.get("late_steps", 0), "watchdog_stops": daemon.get("watchdog_stops", 0),
        "protective_stops": daemon.get("protective_stops", 0), "safety_clipped": daemon.get("safety_clipped", 0),
        "scheduling": daemon.get("scheduling", ""), "pacing": daemon.get("pacing", "realtime"),
        "unacked_chunks": actor.get("unacked_chunks", 0),
        "resent_chunks": actor.get("resent_chunks", 0),
        "malformed_messages": sum(s.get("malformed", 0) for s in (daemon, actor, learner)),
        "unreadable_episodes": unreadable, "exit_reason": reason, "exit_codes": exit_codes, "wall_s": round(wall_s, 2),
    }


def episode_outcomes(root: Path) -> dict:
    """Return and success of the session's finished episodes (robotd/curves.py), for summary.json.

    ``first20`` and ``last20`` hold ``episodes``, ``return_mean`` and ``success_rate`` of the first and last
    20 finished episodes (fewer when there are fewer; the means None when there are none); ``success_rate``
    and ``episodes_succeeded`` count every finished episode. An episode succeeded when the task reported
    ``is_success`` at its last step; an unreadable file is left out (``unreadable_episodes`` names it)."""
    entries = []
    for path in sorted(glob.glob(str(root / session.EPISODES / "*.h5"))):
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
    return "n/a" if value is None else f"{value:.3f}"


def _window_text(window) -> str:
    if not isinstance(window, dict) or not window.get("episodes"):
        return "-"
    ret, rate = window.get("return_mean"), window.get("success_rate")
    ret_text = f"{ret:.2f}" if isinstance(ret, (int, float)) else "-"
    rate_text = f"{rate:.0%}" if isinstance(rate, (int, float)) else "-"
    return f"return {ret_text}, success {rate_text} ({window['episodes']} episodes)"


def _outcome_line(summary: dict) -> str:
    """The finished episodes' success and return, first 20 against last 20."""
    finished = summary.get("finished_episodes", 0)
    rate = summary.get("success_rate")
    rate_text = f" ({rate:.0%})" if isinstance(rate, (int, float)) else ""
    return (f"  episodes: {finished} finished, {summary.get('episodes_succeeded', 0)} succeeded{rate_text}; "
            f"first 20: {_window_text(summary.get('first20'))}; last 20: {_window_text(summary.get('last20'))}")


def format_summary(summary: dict, root: Path) -> str:
    """A few readable lines for the end of a session."""
    period = summary.get("period_error_ms") or {}
    training = summary.get("period_error_ms_while_training") or {}
    return "\n".join([
        f"session {root}: {summary['exit_reason']} after {summary['wall_s']:.0f} s",
        f"  steps: env {summary['env_steps']}, logged {summary['logged_steps']}, ingested {summary['ingested_steps']}, "
        f"lost {summary['lost_steps']}, duplicate chunks {summary['duplicate_chunks']}, episodes {summary['episodes']}",
        f"  control: {summary['control_rate_hz'] or 0:.2f} Hz, period error p50/p99/max "
        f"{_ms(period.get('p50'))}/{_ms(period.get('p99'))}/{_ms(period.get('max'))} ms "
        f"(while training p99 {_ms(training.get('p99'))} ms), late steps {summary['late_steps']}, "
        f"stale readings {summary['stale_readings']}, {summary['scheduling']}",
        f"  learner: {summary['learner_updates']} updates, newest policy used v{summary['policy_version_max']}",
        _outcome_line(summary),
        f"  summary: {root / session.SUMMARY}",
    ])
