"""Fault injection for a simulated or mock robotd session, and the accounting of every step afterwards.

    python scripts/chaos.py configs/mock_arm.yaml --faults 2 --out runs/chaos.json
        [--soak-minutes M] [--seed S] [--set KEY=VALUE ...] [--logdir DIR] [--margin-s 0.1] [--max-minutes T]

The script starts the daemon, the actor and the learner itself (each in its own process group, logs in
LOGDIR/logs/<process>-<run>.log), on free 127.0.0.1 ports, every channel (control, experience, weights,
status) under CurveZMQ with keys made for the session (LOGDIR/keys, network.auth=always), and binds the
status channel itself. Then, N rounds, each injecting one fault of every kind in this order:

1. ``learner_kill``: SIGKILL to the learner, a 3 s outage, then a new learner on the same log directory.
   What is left of its process group (Ray's processes) is counted right after the kill and again at the end
   of the outage, then killed, as ``robotd train`` does before its restart.
2. ``learner_stop``: SIGSTOP to the learner for 5 s, then SIGCONT.
3. ``actor_kill``: SIGKILL to the actor, then a new actor with the same --actor-id. The daemon's
   watchdog must stop the robot: the time from the kill to the daemon's "robot stopped: actor silent"
   log line (its timestamp) is measured against control.watchdog_s + one control period + --margin-s.
4. ``actor_stop``: SIGSTOP to the actor for control.watchdog_s + 1.5 s, then SIGCONT (same measurement).
5. ``daemon_kill``: SIGKILL to the daemon, then a new daemon. A simulated robot has nothing physical to
   stop (recorded as "n/a (simulated)"); the actor is expected to reconnect by itself within 30 s, and is
   restarted (recorded) when it does not.
6. ``strangers``: on every channel one socket without keys and one with a CURVE key pair of its own (it
   knows the public server key) try for 5 s: a hello (control), a hello and a chunk (experience), a
   subscription (weights), a status message (status). A stranger is "accepted" when it got any reply or
   data, or its status message reached the collector; else "refused".

Before every fault the session must be healthy again (all three processes up, the daemon serving the
actor, the actor's chunks acknowledged); between faults a pause of 1 to 3 s drawn from --seed. With
--soak-minutes M the session then runs M more minutes without faults while the resident memory (VmRSS)
of the daemon, the actor, the learner and Ray's processes under the learner is sampled every few seconds.

At the end the processes are stopped with SIGTERM in the order daemon, actor, learner (as robotd train
does) and the figures are computed from the files: steps collected (each actor run's stats; a run killed
by SIGKILL writes none, and its steps are counted from the episode files it wrote), logged (episode files),
in replay and ingested (the last learner's stats), lost (logged but never ingested), duplicated (steps
stored in replay more than once: added_steps - ingested_steps of the last learner; resent chunks the
learner dropped are not duplicates), strangers refused and accepted, robot stops and how many came within
the watchdog bound. A table goes to stdout and everything to the --out JSON file.

Unless --set says otherwise the session runs small (SMALL below: 50 Hz, small learner batches, a
checkpoint every second, resends after 0.5 s) and with the config's seed set to --seed.

Exit code 0 when the targets hold (nothing lost, nothing duplicated, no stranger accepted, every robot
stop within the watchdog bound, every fault recovered from, the run finished in time), 1 otherwise,
2 for bad input.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from robotd import config as config_module  # noqa: E402
from robotd import security, session, wire  # noqa: E402
from robotd.episodes import count_steps  # noqa: E402
from robotd.netutil import free_tcp_ports  # noqa: E402
from robotd.orchestrator import episode_counts, read_process_stats  # noqa: E402
from robotd.status import PROCESSES, StatusCollector  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
KINDS = ("learner_kill", "learner_stop", "actor_kill", "actor_stop", "daemon_kill", "strangers")
KIND_TEXT = {"learner_kill": "learner SIGKILL, restart", "learner_stop": "learner SIGSTOP, SIGCONT",
             "actor_kill": "actor SIGKILL, restart", "actor_stop": "actor SIGSTOP, SIGCONT",
             "daemon_kill": "daemon SIGKILL, restart", "strangers": "strangers on 4 channels"}
SMALL = ("control.rate_hz=50", "control.action_deadline_ms=15", "actor.prefill_steps=100",
         "learner.min_replay_steps=64", "learner.batch_size=4", "learner.batch_length=16",
         "learner.publish_every_updates=2", "learner.checkpoint_every_s=1", "actor.resend_after_s=0.5")
"""Overrides applied before the config's own --set ones (which win)."""
ACTOR_ID = "actor0"
CHANNELS = ("control", "experience", "weights", "status")
STRANGER_KEYS = ("none", "own")
SENTINEL_STEPS = 987_654_000
"""A stranger's status message claims env_steps = SENTINEL_STEPS + its index: seen by the collector means accepted."""
SIMULATED = "n/a (simulated)"

LEARNER_OUTAGE_S = 3.0
LEARNER_FREEZE_S = 5.0
ACTOR_FREEZE_EXTRA_S = 1.5
DAEMON_OUTAGE_S = 1.0
STRANGER_WINDOW_S = 5.0
STRANGER_SEND_EVERY_S = 0.5
GAP_S = (1.0, 3.0)
STARTUP_TIMEOUT_S = 300.0
HEALTH_TIMEOUT_S = 150.0
RECOVERY_TIMEOUT_S = 150.0
RECONNECT_TIMEOUT_S = 30.0
STOP_SEARCH_EXTRA_S = 10.0
WEIGHTS_WAIT_S = 90.0
FRESH_S = 5.0
SHUTDOWN_BUDGET_S = {"daemon": 15.0, "actor": 20.0, "learner": 120.0}
SAMPLE_S = 5.0

_STOP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) daemon \w+ [\w.]+: robot stopped: "
                        r"actor silent for ([0-9.]+) s")
_REFILLED = re.compile(r"refilled replay with (\d+) logged steps")
_ADOPTED = re.compile(r"sending (\d+) chunks an earlier actor left unacknowledged")


class UsageError(ValueError):
    """Bad command-line input; the message is one line naming the argument, its value and the fix."""


class Abort(RuntimeError):
    """The run cannot go on (time limit, interrupt, a process that never came up); it is shut down and reported."""


# ---- arguments -------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}: see python scripts/chaos.py --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scripts/chaos.py", description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config whose robot and cameras are simulated or mock drivers")
    parser.add_argument("--faults", required=True, metavar="N", help="faults of each kind (0 with --soak-minutes)")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="where the JSON report goes")
    parser.add_argument("--soak-minutes", default="0", metavar="M", help="minutes without faults, sampling memory")
    parser.add_argument("--seed", default="0", metavar="S", help="pauses between faults and the config's seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, applied after the script's small settings")
    parser.add_argument("--logdir", default=None, help="session directory (default: next to --out, timestamped)")
    parser.add_argument("--margin-s", default="0.1", metavar="S",
                        help="allowed on top of control.watchdog_s + one control period (default 0.1)")
    parser.add_argument("--sample-s", default=str(SAMPLE_S), metavar="S", help="memory sampling period in the soak")
    parser.add_argument("--max-minutes", default=None, metavar="T",
                        help="hard limit for the whole run (default: 10 + 4 per fault + the soak)")
    return parser


@dataclasses.dataclass
class Options:
    config_path: str
    config: config_module.Config
    overrides: list[str]
    faults: int
    soak_minutes: float
    seed: int
    out: Path
    logdir: Path
    margin_s: float
    sample_s: float
    max_minutes: float


def _number(flag: str, text: str, kind, *, low: float, example: str, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {text}: give {what}, e.g. {flag} {example}") from None
    if isinstance(value, float) and not math.isfinite(value) or value < low:
        raise UsageError(f"{flag} {text}: give {what}, e.g. {flag} {example}")
    return value


def parse_args(argv: list[str]) -> Options:
    """Checks every argument and loads the config; bad input raises UsageError (one line)."""
    args = build_parser().parse_args(argv)
    faults = _number("--faults", args.faults, int, low=0, example="2",
                     what="a whole number of faults per kind, 0 or more")
    soak = _number("--soak-minutes", args.soak_minutes, float, low=0, example="10",
                   what="a number of minutes, 0 or more")
    seed = _number("--seed", args.seed, int, low=0, example="0", what="a whole number from 0 to 2147483647")
    if seed > 2**31 - 1:
        raise UsageError(f"--seed {args.seed}: give a whole number from 0 to 2147483647, e.g. --seed 0")
    margin = _number("--margin-s", args.margin_s, float, low=0, example="0.1", what="seconds, 0 or more")
    sample = _number("--sample-s", args.sample_s, float, low=0.1, example="5", what="seconds, 0.1 or more")
    if faults == 0 and soak == 0:
        raise UsageError("--faults 0 without --soak-minutes: nothing to do; give --faults 1 or more, "
                         "or --soak-minutes M")
    max_minutes = 10 + 4 * faults * len(KINDS) + soak
    if args.max_minutes is not None:
        max_minutes = _number("--max-minutes", args.max_minutes, float, low=1, example="60",
                              what="a time limit in minutes, 1 or more")
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):
        raise UsageError(f"--out {args.out}: is a directory: give a file name such as runs/chaos.json")
    if not session_dir_usable(out.parent):
        raise UsageError(f"--out {args.out}: its directory {str(out.parent)!r} cannot be created or written: "
                         f"choose another path")
    if not Path(args.config).is_file():
        raise UsageError(f"config {args.config}: no such file: give a config file such as configs/mock_arm.yaml")
    overrides = [*SMALL, f"seed={seed}", *args.overrides]
    try:
        config = config_module.load(args.config, overrides)
    except config_module.ConfigError as exc:
        raise UsageError(str(exc)) from None
    device = config_module.non_simulated_device(config)
    if device is not None:
        raise UsageError(f"config {args.config}: {device} is not a simulated driver: chaos kills and freezes the "
                         f"processes that drive the robot, so it runs only on simulated or mock robots "
                         f"(mock_*, sim_*, gym); use such a config")
    if not security.curve_available():
        raise UsageError("this libzmq has no CurveZMQ, which every channel of the session needs: install pyzmq "
                         "with libsodium (pip install --force-reinstall pyzmq)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = Path(args.logdir) if args.logdir is not None else out.parent / f"{out.stem}-{stamp}"
    if session.holds_session(logdir):
        raise UsageError(f"--logdir {logdir}: already holds a session: choose a new directory")
    return Options(args.config, config, overrides, faults, soak, seed, out, logdir, margin, sample, max_minutes)


def session_dir_usable(folder: Path) -> bool:
    """Whether ``folder`` is a writable directory, or can be made in its nearest existing ancestor (nothing is
    made here)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


# ---- pure pieces: log lines, accounting, strangers, memory, targets ---------------------------------------------

def parse_watchdog_stops(text: str) -> list[tuple[float, float]]:
    """(wall-clock time, silence in s) of every "robot stopped: actor silent" line of a daemon log."""
    stops = []
    for line in text.splitlines():
        match = _STOP_LINE.match(line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stops.append((stamp, float(match.group(2))))
    return stops


def stop_bound_s(config: config_module.Config, margin_s: float) -> float:
    """The longest a robot stop may take after the actor falls silent: watchdog + one control period + margin."""
    return config.control.watchdog_s + 1.0 / config.control.rate_hz + margin_s


def episode_names(root: Path) -> set[str]:
    """The session's episode file names (``<actor>-<id>.h5``), those only a journal holds included."""
    folder = Path(root) / session.EPISODES
    names = {path.name for path in folder.glob("*.h5")}
    names |= {path.name[: -len(".journal")] for path in folder.glob("*.h5.journal")}
    return names


def files_by_run(marks: list[set[str]], final: set[str]) -> list[list[str]]:
    """The episode files each actor run wrote: ``marks[i]`` is what existed when run i started (one actor at a
    time, so run i wrote what appeared between its start and the next run's)."""
    ends = [*marks[1:], final]
    return [sorted(end - start) for start, end in zip(marks, ends)]


def _steps_in(root: Path, names: list[str]) -> tuple[int, list[str]]:
    total, unreadable = 0, []
    for name in names:
        try:
            total += count_steps(Path(root) / session.EPISODES / name)
        except Exception as exc:        # a damaged file is reported, never fatal
            unreadable.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return total, unreadable


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def account(root: Path, actor_runs: list[dict], learner_stats: dict | None) -> dict:
    """The step accounting of a session from its files.

    ``actor_runs``: one dict per actor run, in order, with ``stats`` (its final stats, None when it wrote none)
    and ``files`` (the episode files it wrote). ``learner_stats``: the last learner's final stats (None when it
    wrote none). Steps collected: each run's env_steps, or, without stats, the steps in its episode files."""
    logged, episodes, unreadable = episode_counts(root)
    collected, by_run = 0, []
    for index, run in enumerate(actor_runs):
        stats = run.get("stats")
        steps = _int(stats.get("env_steps")) if isinstance(stats, dict) else None
        if steps is not None:
            source = "actor stats"
        else:
            steps, bad = _steps_in(root, run.get("files", []))
            source = "episode files (the run wrote no stats: killed)"
            unreadable += [entry for entry in bad if entry not in unreadable]
        collected += steps
        by_run.append({"run": index, "steps": steps, "source": source, "episode_files": len(run.get("files", []))})
    learner = learner_stats if isinstance(learner_stats, dict) else {}
    ingested, in_replay = _int(learner.get("ingested_steps")), _int(learner.get("replay_steps"))
    added, evicted = _int(learner.get("added_steps")), _int(learner.get("evicted_steps"))
    lost = max(0, logged - ingested) if ingested is not None else None
    if added is not None and ingested is not None:
        duplicated = max(0, added - ingested)
    elif in_replay is not None and ingested is not None and not evicted:
        duplicated = max(0, in_replay - ingested)
    else:
        duplicated = None
    return {"steps_collected": collected, "steps_collected_by_run": by_run, "steps_logged": logged,
            "episodes": episodes, "unreadable_episodes": unreadable,
            "steps_in_replay": in_replay, "steps_ingested": ingested, "steps_added_to_replay": added,
            "steps_evicted": evicted, "refilled_steps": _int(learner.get("refilled_steps")),
            "lost": lost, "stream_gap_steps": _int(learner.get("lost_steps")),
            "ingested_not_logged": max(0, ingested - logged) if ingested is not None else None,
            "duplicated": duplicated, "duplicate_chunks_dropped": _int(learner.get("duplicate_chunks")),
            "collected_matches_logged": collected == logged}


def classify_stranger(result: dict) -> str:
    """"accepted" when a stranger got any reply or data through, or its message had an effect; else "refused"."""
    if result.get("replies", 0) > 0 or result.get("data", 0) > 0 or result.get("effect"):
        return "accepted"
    return "refused"


def memory_growth(samples: list[tuple[float, float]]) -> dict:
    """Memory over a soak from ``(seconds, MB)`` samples: the first third is warm-up; growth is the mean of the
    last third minus the mean of the middle third, also per minute (between the two thirds' mean times)."""
    values = [(t, mb) for t, mb in samples if mb is not None]
    result = {"samples": len(values), "first_mb": None, "peak_mb": None, "middle_mean_mb": None,
              "last_mean_mb": None, "growth_mb": None, "growth_mb_per_min": None}
    if not values:
        return result
    result["first_mb"] = round(values[0][1], 1)
    result["peak_mb"] = round(max(mb for _, mb in values), 1)
    if len(values) < 3:
        return result
    third = len(values) // 3
    middle, last = values[third: 2 * third], values[2 * third:]
    middle_mb = sum(mb for _, mb in middle) / len(middle)
    last_mb = sum(mb for _, mb in last) / len(last)
    span_min = (sum(t for t, _ in last) / len(last) - sum(t for t, _ in middle) / len(middle)) / 60.0
    result.update(middle_mean_mb=round(middle_mb, 1), last_mean_mb=round(last_mb, 1),
                  growth_mb=round(last_mb - middle_mb, 1),
                  growth_mb_per_min=round((last_mb - middle_mb) / span_min, 2) if span_min > 0 else None)
    return result


def evaluate(report: dict) -> tuple[dict, list[str]]:
    """The targets and whether each holds, and the problems in words."""
    targets = {
        "zero_lost": report.get("lost") == 0,
        "zero_duplicated": report.get("duplicated") == 0,
        "zero_strangers_accepted": report.get("strangers_accepted") == 0,
        "robot_stops_within_watchdog": report.get("stops_within_watchdog") == report.get("robot_stops_expected"),
        "every_fault_recovered": all(event.get("recovered") is not False
                                     for kind in report.get("faults", {}).values() for event in kind.get("events", [])),
        "run_completed": not report.get("aborted"),
    }
    problems = list(report.get("problems", []))
    words = {"zero_lost": f"lost steps: {report.get('lost')}",
             "zero_duplicated": f"duplicated steps: {report.get('duplicated')}",
             "zero_strangers_accepted": f"strangers accepted: {report.get('strangers_accepted')}",
             "robot_stops_within_watchdog": f"robot stops within the watchdog bound: "
                                            f"{report.get('stops_within_watchdog')} of "
                                            f"{report.get('robot_stops_expected')}",
             "every_fault_recovered": "a fault the session did not recover from (see faults)",
             "run_completed": f"the run was cut short: {report.get('aborted')}"}
    problems += [words[name] for name, held in targets.items() if not held and words[name] not in problems]
    return targets, problems


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _event_text(kind: str, event: dict) -> str:
    if kind == "learner_kill":
        return (f"back {_fmt(event.get('learner_back_s'), 1)} s after restart, backlog drained "
                f"{_fmt(event.get('backlog_drained_s'), 1)} s, peak unacked {_fmt(event.get('unacked_peak'))}, "
                f"resumed checkpoint {'yes' if event.get('resumed_from_checkpoint') else 'no'}, "
                f"refilled {_fmt(event.get('refilled_steps'))}, Ray processes left "
                f"{_fmt(event.get('ray_left_at_kill'))}/{_fmt(event.get('ray_left_after_outage'))}")
    if kind == "learner_stop":
        return (f"frozen {_fmt(event.get('frozen_s'), 1)} s, peak unacked {_fmt(event.get('unacked_peak'))}, "
                f"ingesting {_fmt(event.get('ingesting_after_cont_s'), 1)} s and drained "
                f"{_fmt(event.get('drained_after_cont_s'), 1)} s after SIGCONT")
    if kind in ("actor_kill", "actor_stop"):
        stop = event.get("robot_stop_s")
        verdict = "within" if event.get("stop_within_watchdog") else "NOT within"
        text = (f"robot stop {_fmt(stop, 3)} s ({verdict} {_fmt(event.get('stop_bound_s'), 3)} s), "
                f"served again {_fmt(event.get('reconnected_s'), 1)} s after "
                f"{'restart' if kind == 'actor_kill' else 'SIGCONT'}")
        if kind == "actor_kill":
            text += f", adopted {_fmt(event.get('adopted_chunks'))} spooled chunks"
        return text
    if kind == "daemon_kill":
        how = "restarted" if event.get("actor_restarted") else "reconnected by itself"
        return (f"robot stop {event.get('robot_stop')}, daemon up {_fmt(event.get('daemon_up_s'), 1)} s, "
                f"actor {how} {_fmt(event.get('actor_resumed_s'), 1)} s after restart")
    if kind == "strangers":
        return f"{event.get('refused')} refused, {event.get('accepted')} accepted of {event.get('tried')}"
    return ""


def format_table(report: dict) -> str:
    """The readable summary printed at the end."""
    lines = [f"chaos: {report.get('config')}, seed {report.get('seed')}, {report.get('faults_per_kind')} fault(s) "
             f"per kind, wall {_fmt(report.get('timings', {}).get('wall_s'), 0)} s, logdir {report.get('logdir')}",
             f"{'fault':<14} {'#':>2}  {'ok':<3} measured"]
    for kind in KINDS:
        for event in report.get("faults", {}).get(kind, {}).get("events", []):
            ok = {True: "yes", False: "NO"}.get(event.get("recovered"), "-")
            lines.append(f"{kind:<14} {event.get('round', 0) + 1:>2}  {ok:<3} {_event_text(kind, event)}")
    lines += [
        f"steps: collected {_fmt(report.get('steps_collected'))}, logged {_fmt(report.get('steps_logged'))}, "
        f"in replay {_fmt(report.get('steps_in_replay'))} (ingested {_fmt(report.get('steps_ingested'))}), "
        f"lost {_fmt(report.get('lost'))}, duplicated {_fmt(report.get('duplicated'))} "
        f"(resent chunks dropped {_fmt(report.get('duplicate_chunks_dropped'))}, "
        f"stream gaps {_fmt(report.get('stream_gap_steps'))})",
        f"strangers: {_fmt(report.get('strangers_refused'))} refused, {_fmt(report.get('strangers_accepted'))} "
        f"accepted",
        f"robot stops: {_fmt(report.get('robot_stops'))} measured, {_fmt(report.get('stops_within_watchdog'))} "
        f"within {_fmt(report.get('robot_stop_bound_s'), 3)} s, {_fmt(report.get('robot_stops_expected'))} expected, "
        f"{len(report.get('unexpected_robot_stops', []))} without a fault; daemon kills: {SIMULATED}",
        "restarts: " + ", ".join(f"{name} {count}" for name, count in report.get("restarts", {}).items())
        + ("; unplanned: " + ", ".join(f"{name} {count}" for name, count in report.get("unplanned_restarts", {}).items()
                                       if count) if any(report.get("unplanned_restarts", {}).values()) else ""),
    ]
    soak = report.get("soak")
    if soak:
        lines.append(f"soak {_fmt(soak.get('minutes'), 1)} min, RSS MB (first / middle third / last third / growth, "
                     f"per min):")
        for name, growth in soak.get("growth", {}).items():
            lines.append(f"  {name:<8} {_fmt(growth.get('first_mb'), 1)} / {_fmt(growth.get('middle_mean_mb'), 1)} / "
                         f"{_fmt(growth.get('last_mean_mb'), 1)} / {_fmt(growth.get('growth_mb'), 1)}, "
                         f"{_fmt(growth.get('growth_mb_per_min'), 2)}")
    for problem in report.get("problems", []):
        lines.append(f"problem: {problem}")
    lines.append(f"result: {'PASS' if report.get('passed') else 'FAIL'}")
    return "\n".join(lines)


# ---- processes -------------------------------------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent, process group, session) of ``pid`` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def group_members(leader: int) -> list[int]:
    """Live processes in the process group or session of ``leader`` (a child started in a new session), or
    descended from it, ``leader`` left out."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    members = {pid for pid, (_, group, sid) in table.items() if leader in (group, sid)}
    changed = True
    while changed:
        changed = False
        for pid, (parent, _, _) in table.items():
            if pid not in members and (parent == leader or parent in members):
                members.add(pid)
                changed = True
    members.discard(leader)
    return sorted(members)


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "?"


def how_ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class Proc:
    """One process of the session (daemon, actor or learner) across its runs; each start is a run of its own."""

    def __init__(self, name: str, argv: list[str], root: Path, clock):
        self.name, self.argv, self.root, self.clock = name, argv, root, clock
        self.runs: list[dict] = []
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, reason: str) -> None:
        number = len(self.runs)
        log_path = self.root / "logs" / f"{self.name}-{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        started_at = time.time()
        self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.runs.append({"run": number, "pid": self.process.pid, "reason": reason, "started_at": started_at,
                          "started_s": round(self.clock(), 2), "log": str(log_path), "ended_s": None,
                          "ended": None, "exit_code": None, "stats_state": None, "stats": None,
                          "group_leftovers_killed": 0})

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return Path(self.runs[-1]["log"])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> bool:
        if not self.alive:
            return False
        try:
            os.kill(self.process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def finish(self) -> None:
        """Records how the current run ended and its stats, and kills what is left of its process group."""
        if self.process is None or not self.runs or self.runs[-1]["ended"] is not None:
            return
        run = self.runs[-1]
        leftovers = group_members(self.process.pid)
        for target in (self.process.pid, *leftovers):       # its group, and anything of it that left the group
            try:
                (os.killpg if target == self.process.pid else os.kill)(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        code = self.wait(10.0)
        run.update(ended_s=round(self.clock(), 2), exit_code=code, ended=how_ended(code),
                   group_leftovers_killed=len(leftovers))
        stats, state = read_process_stats(self.root, self.name, run["started_at"])
        run.update(stats_state=state, stats=stats or None)
        if self._log is not None:
            self._log.close()
            self._log = None


class Collector(StatusCollector):
    """The session's status collector, keeping a short history per process and the strangers' sentinels it took."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = {name: collections.deque(maxlen=5000) for name in PROCESSES}
        self.sentinels: set[int] = set()

    def take(self, frames: list) -> bool:
        before = dict(self.received_at)
        taken = super().take(frames)
        if taken:
            for name, at in self.received_at.items():
                if before.get(name) != at:
                    counters = dict(self.latest[name])
                    self.history[name].append((at, counters))
                    steps = counters.get("env_steps")
                    if name == "actor" and isinstance(steps, int) and steps >= SENTINEL_STEPS:
                        self.sentinels.add(steps)
        return taken

    def first(self, name: str, since: float, predicate=lambda counters: True) -> float | None:
        """When the first status of ``name`` received at or after ``since`` satisfying ``predicate`` came."""
        for at, counters in self.history[name]:
            if at >= since and predicate(counters):
                return at
        return None

    def values(self, name: str, key: str, since: float, until: float | None = None) -> list:
        return [counters.get(key) for at, counters in self.history[name]
                if at >= since and (until is None or at <= until) and key in counters]

    def fresh(self, name: str, within_s: float = FRESH_S) -> dict | None:
        at = self.received_at.get(name)
        return self.latest.get(name) if at is not None and time.monotonic() - at <= within_s else None


# ---- the run ---------------------------------------------------------------------------------------------------

class Chaos:
    """Starts the session, injects the faults, soaks, stops everything and reports."""

    def __init__(self, options: Options):
        self.options = options
        self.rng = random.Random(options.seed)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.max_minutes * 60.0
        self.interrupts: list[float] = []
        self.stopping = False
        self.problems: list[str] = []
        self.aborted: str | None = None
        self.faults = {kind: {"count": 0, "events": []} for kind in KINDS}
        self.unplanned = {name: 0 for name in PROCESSES}
        self.frozen: set[str] = set()
        self.stop_lines: list[tuple[float, float]] = []
        self._log_offsets: dict[str, int] = {}
        self.claimed_stops: set[float] = set()
        self.actor_marks: list[set[str]] = []
        self.memory: dict | None = None
        self._next_sample = 0.0
        self.timings: dict = {"started_at": datetime.datetime.now().isoformat(timespec="seconds")}
        self.procs: dict[str, Proc] = {}
        self.collector: Collector | None = None
        self.status_server = None
        self.context: zmq.Context | None = None
        self.config = options.config

    def clock(self) -> float:
        return time.monotonic() - self.t0

    # -- waiting ------------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.stopping:
            return
        if self.interrupts:
            raise Abort("interrupted")
        if time.monotonic() > self.deadline:
            raise Abort(f"the run passed its limit of {self.options.max_minutes:g} minutes (--max-minutes)")

    def pump(self, seconds: float) -> None:
        """Takes status messages, reads new daemon log lines and samples memory for ``seconds``."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self._check()
            left = end - time.monotonic()
            if self.collector is not None:
                self.collector.poll(int(min(max(left, 0.0), 0.1) * 1000))
            else:
                time.sleep(min(max(left, 0.0), 0.1))
            self._scan_daemon_logs()
            self._sample_memory()
            if time.monotonic() >= end:
                return

    def wait_for(self, predicate, timeout_s: float):
        """The first true value of ``predicate`` within ``timeout_s``, else None."""
        end = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= end:
                return None
            self.pump(0.1)

    def _scan_daemon_logs(self) -> None:
        daemon = self.procs.get("daemon")
        if daemon is None:
            return
        for run in daemon.runs:
            path = run["log"]
            offset = self._log_offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            complete = data.rfind(b"\n") + 1
            if complete:
                self._log_offsets[path] = offset + complete
                self.stop_lines += parse_watchdog_stops(data[:complete].decode("utf-8", errors="replace"))

    # -- start -------------------------------------------------------------------------------------------------
    def start_session(self) -> None:
        options = self.options
        root = session.prepare(options.logdir)
        config = self.config
        if not config.session:
            config = dataclasses.replace(config, session=root.name)
        keys_dir = security.session_keys(root / "keys", ACTOR_ID)
        control, experience, weights, status = free_tcp_ports(4)
        network = dataclasses.replace(config.network, control=f"tcp://127.0.0.1:{control}",
                                      experience=f"tcp://127.0.0.1:{experience}",
                                      weights=f"tcp://127.0.0.1:{weights}", status=f"tcp://127.0.0.1:{status}",
                                      auth="always", keys_dir=str(keys_dir), actor_key=ACTOR_ID)
        self.config = config = dataclasses.replace(config, network=network)
        self.root = root
        self.resolved = root / session.CONFIG
        config_module.save(config, self.resolved)
        self.context = zmq.Context()
        self.status_server = security.server_for_every_channel(network, self.context)
        self.collector = Collector(self.context, network.status, secure=self.status_server.configure)
        python, common = sys.executable, [str(self.resolved), "--logdir", str(root)]
        self.procs = {"daemon": Proc("daemon", [python, "-m", "robotd.daemon", *common], root, self.clock),
                      "actor": Proc("actor", [python, "-m", "actor", *common, "--actor-id", ACTOR_ID], root,
                                    self.clock),
                      "learner": Proc("learner", [python, "-m", "learner", *common], root, self.clock)}
        self.procs["learner"].start("session start")
        self.procs["daemon"].start("session start")
        if not self.wait_for(lambda: self.collector.fresh("daemon") or not self.procs["daemon"].alive, 90.0) \
                or not self.procs["daemon"].alive:
            raise Abort(f"the daemon did not come up: {self._last_line('daemon')}")
        self.start_actor("session start")
        checkpoint = root / session.CHECKPOINTS / "latest.pt"
        up = self.wait_for(lambda: self.healthy() and checkpoint.exists() or self._dead(), STARTUP_TIMEOUT_S)
        if not up or self._dead():
            dead = self._dead()
            raise Abort(f"the session did not come up within {STARTUP_TIMEOUT_S:g} s"
                        + (f": {dead} {how_ended(self.procs[dead].process.returncode)}; "
                           f"{self._last_line(dead)}" if dead else " (no learner checkpoint or no healthy status)"))
        self.timings["startup_s"] = round(self.clock(), 1)

    def start_actor(self, reason: str) -> None:
        self.actor_marks.append(episode_names(self.root))
        self.procs["actor"].start(reason)

    def _dead(self) -> str | None:
        return next((name for name, proc in self.procs.items() if not proc.alive and name not in self.frozen), None)

    def _last_line(self, name: str) -> str:
        lines = [line for line in self.procs[name].log_text().splitlines() if line.strip()]
        return f"last log line: {lines[-1][:300]}" if lines else "no log output"

    def healthy(self) -> bool:
        if any(not proc.alive for proc in self.procs.values()):
            return False
        daemon, actor, learner = (self.collector.fresh(name) for name in PROCESSES)
        return bool(daemon and daemon.get("actor_connected") and actor and actor.get("learner_connected")
                    and actor.get("unacked_chunks", 99) <= 2 and learner is not None)

    def wait_healthy(self, event: dict) -> None:
        """Waits for a healthy session before a fault; a process that died meanwhile is restarted (unplanned)."""
        started = time.monotonic()
        end = started + HEALTH_TIMEOUT_S
        while time.monotonic() < end:
            if self.healthy():
                break
            dead = self._dead()
            if dead:
                proc = self.procs[dead]
                problem = f"{dead} {how_ended(proc.process.returncode)} by itself at {self.clock():.1f} s " \
                          f"({self._last_line(dead)}): restarted"
                self.problems.append(problem)
                event.setdefault("notes", []).append(problem)
                proc.finish()
                self.unplanned[dead] += 1
                if dead == "actor":
                    self.start_actor("unplanned restart")
                else:
                    proc.start("unplanned restart")
            self.pump(0.2)
        event["healthy_before"] = self.healthy()
        event["waited_for_health_s"] = round(time.monotonic() - started, 1)
        if not event["healthy_before"] and event.get("kind"):
            self.problems.append(f"{event['kind']} round {event['round'] + 1}: the session was not healthy within "
                                 f"{HEALTH_TIMEOUT_S:g} s before the fault (injected anyway)")

    # -- faults ------------------------------------------------------------------------------------------------
    def schedule(self) -> None:
        started = self.clock()
        for round_index in range(self.options.faults):
            for kind in KINDS:
                event = {"kind": kind, "round": round_index, "recovered": None}
                self.wait_healthy(event)
                self.pump(self.rng.uniform(*GAP_S))
                event["at_s"] = round(self.clock(), 1)
                self.faults[kind]["events"].append(event)
                self.faults[kind]["count"] += 1
                getattr(self, f"fault_{kind}")(event)
        self.timings["schedule_s"] = round(self.clock() - started, 1)

    def _unacked(self) -> int:
        actor = self.collector.latest.get("actor") or {}
        value = actor.get("unacked_chunks")
        return value if isinstance(value, int) else 0

    def _peak_unacked(self, since: float) -> int | None:
        values = [v for v in self.collector.values("actor", "unacked_chunks", since) if isinstance(v, int)]
        return max(values) if values else None

    def _drained(self, since: float, limit: int):
        return self.collector.first("actor", since, lambda c: c.get("learner_connected")
                                    and isinstance(c.get("unacked_chunks"), int) and c["unacked_chunks"] <= limit)

    def fault_learner_kill(self, event: dict) -> None:
        learner = self.procs["learner"]
        limit = max(self._unacked(), 2)
        killed_at = time.monotonic()
        learner.signal(signal.SIGKILL)
        learner.wait(10.0)
        event["ray_left_at_kill"] = len(group_members(learner.pid))
        self.pump(LEARNER_OUTAGE_S)
        event["ray_left_after_outage_names"] = sorted(process_name(pid) for pid in group_members(learner.pid))
        learner.finish()
        event["exit"] = learner.runs[-1]["ended"]
        event["ray_left_after_outage"] = learner.runs[-1]["group_leftovers_killed"]
        restarted_at = time.monotonic()
        learner.start("restart after SIGKILL")
        back = self.wait_for(lambda: self.collector.first("learner", restarted_at) or not learner.alive,
                             RECOVERY_TIMEOUT_S)
        back = back if learner.alive else None
        drained = None
        if back:
            drained = self.wait_for(lambda: self._drained(back, limit), RECOVERY_TIMEOUT_S)
        text = learner.log_text()
        refilled = _REFILLED.search(text)
        event.update(outage_s=round(restarted_at - killed_at, 2),
                     learner_back_s=round(back - restarted_at, 2) if back else None,
                     backlog_drained_s=round(drained - restarted_at, 2) if drained else None,
                     unacked_peak=self._peak_unacked(killed_at),
                     resumed_from_checkpoint="resumed from checkpoint" in text,
                     refilled_steps=int(refilled.group(1)) if refilled else 0,
                     recovered=bool(back and drained))
        if not event["recovered"]:
            self.problems.append(f"learner_kill round {event['round'] + 1}: the new learner "
                                 + ("never published status" if not back else "never drained the actor's backlog")
                                 + f" within {RECOVERY_TIMEOUT_S:g} s ({self._last_line('learner')})")

    def fault_learner_stop(self, event: dict) -> None:
        learner = self.procs["learner"]
        limit = max(self._unacked(), 1)
        replay = (self.collector.latest.get("learner") or {}).get("replay_steps", 0)
        replay = replay if isinstance(replay, int) else 0
        stopped_at = time.monotonic()
        learner.signal(signal.SIGSTOP)
        self.frozen.add("learner")
        try:
            self.pump(LEARNER_FREEZE_S)
        finally:
            learner.signal(signal.SIGCONT)
            self.frozen.discard("learner")
        continued_at = time.monotonic()
        ingesting = self.wait_for(lambda: self.collector.first(
            "learner", continued_at, lambda c: isinstance(c.get("replay_steps"), int) and c["replay_steps"] > replay),
            RECOVERY_TIMEOUT_S)
        drained = self.wait_for(lambda: self._drained(continued_at, limit), RECOVERY_TIMEOUT_S)
        event.update(frozen_s=round(continued_at - stopped_at, 2), unacked_before=limit,
                     unacked_peak=self._peak_unacked(stopped_at),
                     ingesting_after_cont_s=round(ingesting - continued_at, 2) if ingesting else None,
                     drained_after_cont_s=round(drained - continued_at, 2) if drained else None,
                     learner_alive=learner.alive, recovered=bool(drained and ingesting) and learner.alive)
        if not event["recovered"]:
            self.problems.append(f"learner_stop round {event['round'] + 1}: the learner did not take new steps and "
                                 f"drain the actor's backlog within {RECOVERY_TIMEOUT_S:g} s of SIGCONT")

    def _watchdog_stop(self, after_wall: float, until_wall: float | None) -> tuple[float, float] | None:
        for stamp, silent in self.stop_lines:
            if stamp >= after_wall - 0.001 and (until_wall is None or stamp <= until_wall) \
                    and stamp not in self.claimed_stops:
                self.claimed_stops.add(stamp)
                return stamp, silent
        return None

    def _record_stop(self, event: dict, began_wall: float, until_wall: float | None) -> None:
        bound = stop_bound_s(self.config, self.options.margin_s)
        found = self.wait_for(lambda: self._watchdog_stop(began_wall, until_wall),
                              2.0 if until_wall is not None else bound + STOP_SEARCH_EXTRA_S)
        event["stop_bound_s"] = round(bound, 3)
        if found is None:
            event.update(robot_stop_s=None, robot_stop_silence_s=None, stop_within_watchdog=False)
            self.problems.append(f"{event['kind']} round {event['round'] + 1}: no watchdog stop in the daemon's log")
            return
        stamp, silent = found
        event.update(robot_stop_s=round(stamp - began_wall, 3), robot_stop_silence_s=silent,
                     stop_within_watchdog=stamp - began_wall <= bound)

    def fault_actor_kill(self, event: dict) -> None:
        actor = self.procs["actor"]
        killed_wall = time.time()
        actor.signal(signal.SIGKILL)
        actor.wait(10.0)
        self._record_stop(event, killed_wall, None)
        actor.finish()
        event["exit"] = actor.runs[-1]["ended"]
        restarted_at = time.monotonic()
        self.start_actor("restart after SIGKILL")
        served = self.wait_for(lambda: self._served_again(restarted_at, 0), RECONNECT_TIMEOUT_S * 3)
        adopted = _ADOPTED.search(actor.log_text())
        event.update(reconnected_s=round(served - restarted_at, 2) if served else None,
                     adopted_chunks=int(adopted.group(1)) if adopted else 0, recovered=bool(served))
        if not served:
            self.problems.append(f"actor_kill round {event['round'] + 1}: the new actor was not served by the "
                                 f"daemon within {RECONNECT_TIMEOUT_S * 3:g} s ({self._last_line('actor')})")

    def _served_again(self, since: float, base_steps: int) -> float | None:
        """When the daemon served the actor again after ``since``: the first daemon status saying so, followed by
        an actor status beyond ``base_steps``."""
        connected = self.collector.first("daemon", since, lambda c: c.get("actor_connected") is True)
        if connected is None:
            return None
        return self.collector.first("actor", connected, lambda c: isinstance(c.get("env_steps"), int)
                                    and c["env_steps"] > base_steps)

    def fault_actor_stop(self, event: dict) -> None:
        actor = self.procs["actor"]
        base = (self.collector.latest.get("actor") or {}).get("env_steps", 0)
        stopped_wall = time.time()
        actor.signal(signal.SIGSTOP)
        self.frozen.add("actor")
        try:
            self.pump(self.config.control.watchdog_s + ACTOR_FREEZE_EXTRA_S)
        finally:
            actor.signal(signal.SIGCONT)
            self.frozen.discard("actor")
        continued_wall, continued_at = time.time(), time.monotonic()
        self.pump(0.2)
        self._record_stop(event, stopped_wall, continued_wall + 0.5)
        served = self.wait_for(lambda: self._served_again(continued_at, base if isinstance(base, int) else 0),
                               RECONNECT_TIMEOUT_S)
        event.update(frozen_s=round(continued_wall - stopped_wall, 2),
                     reconnected_s=round(served - continued_at, 2) if served else None,
                     actor_alive=actor.alive, recovered=bool(served) and actor.alive)
        if not event["recovered"]:
            self.problems.append(f"actor_stop round {event['round'] + 1}: the actor was not served again within "
                                 f"{RECONNECT_TIMEOUT_S:g} s of SIGCONT ({self._last_line('actor')})")

    def fault_daemon_kill(self, event: dict) -> None:
        daemon, actor = self.procs["daemon"], self.procs["actor"]
        base = (self.collector.latest.get("actor") or {}).get("env_steps", 0)
        base = base if isinstance(base, int) else 0
        daemon.signal(signal.SIGKILL)
        daemon.wait(10.0)
        daemon.finish()
        event.update(exit=daemon.runs[-1]["ended"], robot_stop=SIMULATED)
        self.pump(DAEMON_OUTAGE_S)
        restarted_at = time.monotonic()
        daemon.start("restart after SIGKILL")
        up = self.wait_for(lambda: self.collector.first("daemon", restarted_at) or not daemon.alive, 60.0)
        event["daemon_up_s"] = round(up - restarted_at, 2) if up and daemon.alive else None
        served = self.wait_for(lambda: self._served_again(restarted_at, base) or not actor.alive,
                               RECONNECT_TIMEOUT_S)
        event["actor_restarted"] = False
        if not served or not actor.alive:
            why = (f"the actor {how_ended(actor.process.returncode)} after the daemon died" if not actor.alive
                   else f"the actor was not served by the new daemon within {RECONNECT_TIMEOUT_S:g} s")
            event.setdefault("notes", []).append(f"{why}: restarted it")
            if actor.alive:
                actor.signal(signal.SIGTERM)
                actor.wait(self.config.actor.drain_timeout_s + 15.0)
            actor.finish()
            event["actor_restarted"] = True
            event["actor_exit"] = actor.runs[-1]["ended"]
            actor_started = time.monotonic()
            self.start_actor("restart after the daemon's restart")
            served = self.wait_for(lambda: self._served_again(actor_started, 0) if actor.alive else None,
                                   RECONNECT_TIMEOUT_S * 3)
        event.update(actor_resumed_s=round(served - restarted_at, 2) if served else None,
                     recovered=bool(served) and daemon.alive)
        if not event["recovered"]:
            self.problems.append(f"daemon_kill round {event['round'] + 1}: the session did not resume "
                                 f"({self._last_line('daemon')})")

    def fault_strangers(self, event: dict) -> None:
        published = self.wait_for(lambda: (self.collector.latest.get("learner") or {}).get("published_version", 0)
                                   >= 1, WEIGHTS_WAIT_S)
        results = self.knock()
        accepted = sum(result["verdict"] == "accepted" for result in results)
        event.update(results=results, tried=len(results), accepted=accepted, refused=len(results) - accepted,
                     weights_published_before=bool(published), recovered=True)

    def knock(self) -> list[dict]:
        """Strangers on every channel for STRANGER_WINDOW_S; one result per socket, classified."""
        network = self.config.network
        server_key = security.load_public(Path(network.keys_dir) / "learner.key")
        context = zmq.Context()
        kinds = {"control": zmq.DEALER, "experience": zmq.DEALER, "weights": zmq.SUB, "status": zmq.PUB}
        strangers = []
        for channel in CHANNELS:
            for keys in STRANGER_KEYS:
                socket = context.socket(kinds[channel])
                socket.linger = 0
                if keys == "own":
                    socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
                    socket.curve_serverkey = server_key
                if kinds[channel] == zmq.SUB:
                    socket.setsockopt(zmq.SUBSCRIBE, b"")
                socket.connect(getattr(network, channel))
                strangers.append((socket, {"channel": channel, "keys": keys, "sends": 0, "blocked_sends": 0,
                                           "replies": 0, "data": 0, "effect": False}))
        member = context.socket(zmq.SUB)        # the session's own actor key: shows weights flowed meanwhile
        member.linger = 0
        member.setsockopt(zmq.SUBSCRIBE, b"")
        security.configure_client(member, network.keys_dir, ACTOR_ID)
        member.connect(network.weights)
        member_received = 0
        rejected_before = self.status_server.rejected
        malformed_before = sum(self.collector.malformed.values())
        digest, name = self.config.digest(), self.config.session
        end, next_send = time.monotonic() + STRANGER_WINDOW_S, 0.0
        try:
            while time.monotonic() < end:
                if time.monotonic() >= next_send:
                    for index, (socket, result) in enumerate(strangers):
                        for kind, meta in self._stranger_messages(result, index, digest, name):
                            try:
                                wire.send(socket, kind, meta, flags=zmq.NOBLOCK)
                                result["sends"] += 1
                            except zmq.Again:            # a refused DEALER has no peer to queue for
                                result["blocked_sends"] += 1
                    next_send = time.monotonic() + STRANGER_SEND_EVERY_S
                for socket, result in strangers:
                    if socket.type in (zmq.DEALER, zmq.SUB):
                        while socket.poll(0):
                            socket.recv_multipart()
                            result["replies" if socket.type == zmq.DEALER else "data"] += 1
                while member.poll(0):
                    member.recv_multipart()
                    member_received += 1
                self.pump(0.05)
            self.pump(0.5)
        finally:
            for socket, _ in strangers:
                socket.close(0)
            member.close(0)
            context.term()
        malformed = sum(self.collector.malformed.values()) - malformed_before
        results = []
        for index, (_, result) in enumerate(strangers):
            if result["channel"] == "status":
                result["effect"] = SENTINEL_STEPS + index in self.collector.sentinels or malformed > 0
            if result["channel"] == "weights":
                result["member_received"] = member_received
            result["verdict"] = classify_stranger(result)
            results.append(result)
        self.stranger_handshakes_refused = getattr(self, "stranger_handshakes_refused", 0) + \
            self.status_server.rejected - rejected_before
        return results

    @staticmethod
    def _stranger_messages(result: dict, index: int, digest: str, name: str) -> list[tuple]:
        who = f"stranger-{result['keys']}"
        if result["channel"] == "control":
            return [(wire.Kind.HELLO, {"role": "actor", "session": name, "actor_id": who, "config_digest": digest})]
        if result["channel"] == "experience":
            return [(wire.Kind.HELLO, {"role": "actor", "session": name, "actor_id": who, "stream": who,
                                       "config_digest": digest, "spec": {}}),
                    (wire.Kind.CHUNK, {"actor_id": who, "stream": who, "episode_id": 0, "seq": result["sends"],
                                       "n_steps": 0, "stream_step": 0})]
        if result["channel"] == "status":
            return [(wire.Kind.STATUS, {"process": "actor", "counters": {
                "env_steps": SENTINEL_STEPS + index, "episodes": 0, "finished_episodes": 0}})]
        return []

    # -- soak --------------------------------------------------------------------------------------------------
    def soak(self) -> None:
        minutes = self.options.soak_minutes
        started = self.clock()
        self.memory = {"minutes": minutes, "sample_s": self.options.sample_s, "samples": []}
        self._next_sample = 0.0
        end = time.monotonic() + minutes * 60.0
        event: dict = {}
        while time.monotonic() < end:
            dead = self._dead()
            if dead:
                self.wait_healthy(event)
            self.pump(min(1.0, max(0.0, end - time.monotonic())))
        self._sample_memory(force=True)
        self.timings["soak_s"] = round(self.clock() - started, 1)
        series: dict[str, list] = collections.defaultdict(list)
        for sample in self.memory["samples"]:
            for name in (*PROCESSES, "ray"):
                series[name].append((sample["t_s"], sample.get(f"{name}_mb")))
        self.memory["growth"] = {name: memory_growth(values) for name, values in series.items()}
        self.memory["restarts_during_soak"] = event.get("notes", [])

    def _sample_memory(self, force: bool = False) -> None:
        if self.memory is None or "growth" in self.memory:
            return
        now = time.monotonic()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + self.options.sample_s
        sample = {"t_s": round(self.clock(), 1)}
        for name, proc in self.procs.items():
            mb = rss_mb(proc.pid) if proc.alive else None
            sample[f"{name}_mb"] = round(mb, 1) if mb is not None else None
            sample[f"{name}_pid"] = proc.pid
        learner = self.procs["learner"]
        ray: dict[str, float] = {}
        if learner.alive:
            for pid in group_members(learner.pid):
                mb = rss_mb(pid)
                if mb is not None:
                    ray[process_name(pid)] = round(ray.get(process_name(pid), 0.0) + mb, 1)
        sample["ray_mb"] = round(sum(ray.values()), 1) if ray else None
        sample["ray_by_process"] = ray
        self.memory["samples"].append(sample)

    # -- stop and report ---------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.stopping = True
        started = self.clock()
        interrupts = len(self.interrupts)
        for name in list(self.frozen):
            self.procs[name].signal(signal.SIGCONT)
        self.frozen.clear()
        budgets = dict(SHUTDOWN_BUDGET_S, actor=self.config.actor.drain_timeout_s + SHUTDOWN_BUDGET_S["actor"])
        for name in ("daemon", "actor", "learner"):
            proc = self.procs.get(name)
            if proc is None or proc.process is None:
                continue
            if proc.alive and len(self.interrupts) == interrupts:
                proc.signal(signal.SIGTERM)
                end = time.monotonic() + budgets[name]
                while proc.alive and time.monotonic() < end and len(self.interrupts) == interrupts:
                    self.pump(0.1)
                if proc.alive:
                    self.problems.append(f"{name} did not stop within {budgets[name]:g} s of SIGTERM: killed")
            proc.finish()
        self._scan_daemon_logs()
        if self.collector is not None:
            self.collector.close()
        if self.status_server is not None:
            self.status_server.stop()
        if self.context is not None:
            self.context.term()
        self.timings["shutdown_s"] = round(self.clock() - started, 1)

    def report(self) -> dict:
        options = self.options
        root = getattr(self, "root", options.logdir)
        actor_runs = self.procs["actor"].runs if self.procs else []
        files = files_by_run(self.actor_marks, episode_names(root)) if self.actor_marks else []
        runs = [{"stats": run["stats"], "files": run_files} for run, run_files in zip(actor_runs, files)]
        learner_runs = self.procs["learner"].runs if self.procs else []
        last_learner = learner_runs[-1]["stats"] if learner_runs else None
        if learner_runs and last_learner is None:
            self.problems.append(f"the last learner wrote no final stats ({learner_runs[-1]['ended']}): "
                                 f"replay figures unknown")
        figures = account(root, runs, last_learner)
        for run, run_files in zip(actor_runs, files):
            run["episode_files"] = len(run_files)
        strangers = [result for event in self.faults["strangers"]["events"] for result in event.get("results", [])]
        accepted = sum(result["verdict"] == "accepted" for result in strangers)
        measured = [event for kind in ("actor_kill", "actor_stop") for event in self.faults[kind]["events"]
                    if "stop_within_watchdog" in event]
        unexpected = [{"at": datetime.datetime.fromtimestamp(stamp).isoformat(timespec="milliseconds"),
                       "silence_s": silent} for stamp, silent in self.stop_lines if stamp not in self.claimed_stops]
        refused = {"status": self.status_server.rejected if self.status_server is not None else None}
        for name in ("daemon", "learner"):
            counts = [run["stats"].get("refused_connections") for run in self.procs[name].runs
                      if run["stats"]] if self.procs else []
            refused[name] = sum(count for count in counts if isinstance(count, int))
        watchdog_counted = sum(run["stats"].get("watchdog_stops", 0) for run in self.procs["daemon"].runs
                               if run["stats"]) if self.procs else 0
        report = {
            "config": options.config_path, "resolved_config": str(root / session.CONFIG),
            "overrides": options.overrides, "seed": options.seed, "logdir": str(root),
            "faults_per_kind": options.faults, "soak_minutes": options.soak_minutes,
            "timings": {**self.timings, "wall_s": round(self.clock(), 1)},
            "restarts": {name: sum(run["reason"].startswith("restart") for run in proc.runs)
                         for name, proc in self.procs.items()},
            "unplanned_restarts": self.unplanned,
            "processes": {name: proc.runs for name, proc in self.procs.items()},
            **figures,
            "strangers_tried": len(strangers), "strangers_refused": len(strangers) - accepted,
            "strangers_accepted": accepted, "strangers": strangers,
            "refused_handshakes": refused,
            "faults": self.faults,
            "robot_stops": sum(event.get("robot_stop_s") is not None for event in measured),
            "stops_within_watchdog": sum(bool(event.get("stop_within_watchdog")) for event in measured),
            "robot_stops_expected": self.faults["actor_kill"]["count"] + self.faults["actor_stop"]["count"],
            "robot_stops_not_measurable": {"daemon_kill": self.faults["daemon_kill"]["count"], "why": SIMULATED},
            "robot_stop_bound_s": round(stop_bound_s(self.config, options.margin_s), 3),
            "unexpected_robot_stops": unexpected, "daemon_watchdog_stops_in_stats": watchdog_counted,
            "soak": self.memory, "aborted": self.aborted,
        }
        report["problems"] = self.problems
        report["targets"], report["problems"] = evaluate(report)
        report["passed"] = all(report["targets"].values())
        return report

    def run(self) -> dict:
        previous = {signum: signal.signal(signum, lambda *_: self.interrupts.append(time.monotonic()))
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self.start_session()
                if self.options.faults:
                    self.schedule()
                if self.options.soak_minutes:
                    self.soak()
            except Abort as exc:
                self.aborted = str(exc)
            except Exception as exc:        # reported with the figures gathered so far; the processes still stop
                traceback.print_exc()
                self.aborted = f"unexpected error: {type(exc).__name__}: {exc}"
            finally:
                if self.procs:
                    self.shutdown()
            return self.report()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"chaos: error: {exc.filename or ''} cannot be used ({exc.strerror}): check the path", file=sys.stderr)
        return EXIT_USAGE
    report = Chaos(options).run()
    report["exit_code"] = EXIT_OK if report["passed"] else EXIT_FAILED
    options.out.parent.mkdir(parents=True, exist_ok=True)
    session.write_json(options.out, report)
    print(format_table(report))
    print(f"report: {options.out}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
