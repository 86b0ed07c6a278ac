"""Learning curves from a session's episode files: per finished episode its end step, return and success.

Shared by scripts/eval_gym.py and scripts/bench_learning.py. An episode is finished when its file
is complete and it ended by itself (terminal step, truncation or the task's time limit), not
when the end of the session cut it off.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robotd import steps as step_keys
from robotd.episodes import read_episode

ENDINGS = ("terminated", "truncated", "time_limit")
"""Episode flags of an episode that ended by itself."""


def run_session(argv: list[str], cwd: Path, *, stop_timeout_s: float = 120.0) -> int:
    """Runs a ``robotd train`` command to its end and returns its exit code.

    If this script is interrupted (Ctrl-C, or SIGTERM, which this turns into an exit), the session
    is stopped the way a user stops it, with SIGINT (robot first, then actor and learner), and
    waited for; only a session that does not stop within ``stop_timeout_s`` is killed. A benchmark
    that is killed therefore never leaves a session (and its learner) running behind it."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    child = subprocess.Popen(argv, cwd=cwd)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        signal.signal(signal.SIGTERM, previous)


def finished_episodes(logdir: Path, success: Callable[[dict], bool] | None = None) -> list[dict]:
    """Every finished episode of the session at ``logdir``, in the order they were played.

    Each is ``{"actor", "episode", "end_step", "return", "length", "policy_version"}``, plus
    ``"success"`` when a ``success(steps)`` function (of the episode's step arrays) is given.
    ``end_step`` is the cumulative number of steps of its actor's stream when it ended (one per
    observation, the reset's included), ``length`` its number of actions."""
    found = []
    for path in sorted((Path(logdir) / "episodes").glob("*.h5")):
        episode = read_episode(path)
        data, attrs = episode.steps, episode.attrs
        rewards = data.get(step_keys.REWARD)
        if rewards is None or len(rewards) == 0:
            continue
        flags = set(attrs.get("flags", []))
        ended = bool(data[step_keys.IS_TERMINAL][-1]) or bool(flags & set(ENDINGS))
        if not (episode.complete and ended):
            continue
        entry = {"actor": str(attrs.get("actor_id", "")), "episode": int(attrs.get("episode_id", 0)),
                 "end_step": int(data[step_keys.STREAM_STEP][-1]) + 1,
                 "return": float(np.sum(rewards, dtype=np.float64)),
                 "length": int(len(rewards) - 1),
                 "policy_version": int(np.max(data[step_keys.POLICY_VERSION]))}
        if success is not None:
            entry["success"] = bool(success(data))
        found.append(entry)
    found.sort(key=lambda e: (e["end_step"], e["actor"], e["episode"]))
    return found


def rolling_mean(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (sums[index] - sums[start]) / (index - start)


def steps_to_rate(steps, success, *, rate: float = 0.9, window: int = 10) -> int | None:
    """The step at which the success rate over the last ``window`` episodes first reaches ``rate``.

    Only full windows count (a lucky first episode is not 100%); None when it never does."""
    if window < 1:
        raise ValueError(f"steps_to_rate window={window!r} must be at least 1: pass e.g. window=10")
    success = np.asarray(success, np.float64)
    if len(success) < window:
        return None
    rates = rolling_mean(success, window)
    for index in range(window - 1, len(success)):
        if rates[index] >= rate - 1e-12:
            return int(steps[index])
    return None
