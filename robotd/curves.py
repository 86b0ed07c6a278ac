"""Learning curves from a session's episode files: per finished episode its end step, return and success.

Shared by scripts/eval_gym.py, scripts/bench_learning.py, summary.json (robotd/orchestrator.py), the
actor's rolling figures and ``robotd inspect``. An episode is finished when its file is complete and
it ended by itself (terminal step, truncation or the task's time limit), not when the end of the
session (or a protective stop) cut it off. It succeeded when ``is_success`` holds at its last step.
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
    ``"success"`` when a ``success(steps)`` function (of the episode's step arrays) is given, and
    ``"start_tick_ns"`` / ``"end_tick_ns"`` (host monotonic clock of its first and last tick) when recorded.
    ``end_step`` is the cumulative number of steps of its actor's stream when it ended (one per
    observation, the reset's included), ``length`` its number of actions. An unreadable file raises
    its ValueError."""
    found = []
    for path in sorted((Path(logdir) / "episodes").glob("*.h5")):
        entry = finished_entry(read_episode(path), success)
        if entry is not None:
            found.append(entry)
    return sort_played(found)


def reward_per_step(logdir: Path, window_steps: int) -> dict:
    """Mean reward per step in windows of ``window_steps`` steps of the session at ``logdir``, from every episode
    file (the one the session's end cut off included; a long reset-free episode gives a curve before it ends).

    ``{"steps": [window end], "reward_per_step": [...], "wall_s": [seconds from the session's first tick to the
    window's last]}``; an episode's first step (its reset, which earns nothing) is left out of the means."""
    rewards, at_steps, ticks, first_tick = [], [], [], None
    for path in sorted((Path(logdir) / "episodes").glob("*.h5")):
        data = read_episode(path).steps
        if step_keys.REWARD not in data or step_keys.STREAM_STEP not in data:
            continue
        keep = ~np.asarray(data.get(step_keys.IS_FIRST, np.zeros(len(data[step_keys.REWARD]), bool)), bool)
        rewards.append(np.asarray(data[step_keys.REWARD], np.float64)[keep])
        at_steps.append(np.asarray(data[step_keys.STREAM_STEP], np.int64)[keep])
        if step_keys.T_TICK_NS in data and len(data[step_keys.T_TICK_NS]):
            tick = np.asarray(data[step_keys.T_TICK_NS], np.int64)
            first_tick = int(tick.min()) if first_tick is None else min(first_tick, int(tick.min()))
            ticks.append(tick[keep])
    if not rewards:
        return {"steps": [], "reward_per_step": [], "wall_s": []}
    curve = window_means(np.concatenate(at_steps), np.concatenate(rewards), window_steps)
    if ticks and len(ticks) == len(rewards):
        tick = np.concatenate(ticks)
        windows = np.concatenate(at_steps) // window_steps
        curve["wall_s"] = [round(float(tick[windows == w].max() - first_tick) / 1e9, 2)
                           for w in np.unique(windows)]
    return curve


def window_means(at_steps, rewards, window_steps: int) -> dict:
    """Mean of ``rewards`` per window of ``window_steps`` consecutive step numbers (``at_steps``, 0-based):
    ``{"steps": [the end of each window that holds a step], "reward_per_step": [its mean]}``."""
    if window_steps < 1:
        raise ValueError(f"window_steps {window_steps}: give a window of at least one step")
    at_steps, rewards = np.asarray(at_steps, np.int64), np.asarray(rewards, np.float64)
    windows = at_steps // window_steps
    ends, means = [], []
    for window in np.unique(windows):
        ends.append(int(min((window + 1) * window_steps, at_steps[windows == window].max() + 1)))
        means.append(round(float(rewards[windows == window].mean()), 5))
    return {"steps": ends, "reward_per_step": means}


def is_finished(episode) -> bool:
    """True when the episode (robotd.episodes.EpisodeData) is complete and ended by itself."""
    data, attrs = episode.steps, episode.attrs
    rewards = data.get(step_keys.REWARD)
    if rewards is None or len(rewards) == 0 or not episode.complete:
        return False
    flags = set(attrs.get("flags", []))
    terminal = data.get(step_keys.IS_TERMINAL)
    return bool(terminal is not None and len(terminal) and terminal[-1]) or bool(flags & set(ENDINGS))


def finished_entry(episode, success: Callable[[dict], bool] | None = None) -> dict | None:
    """One episode's entry as in ``finished_episodes``, or None when it did not finish."""
    if not is_finished(episode):
        return None
    data, attrs = episode.steps, episode.attrs
    rewards = data[step_keys.REWARD]
    entry = {"actor": str(attrs.get("actor_id", "")), "episode": int(attrs.get("episode_id", 0)),
             "end_step": int(data[step_keys.STREAM_STEP][-1]) + 1,
             "return": float(np.sum(rewards, dtype=np.float64)),
             "length": int(len(rewards) - 1),
             "policy_version": int(np.max(data[step_keys.POLICY_VERSION]))}
    ticks = data.get(step_keys.T_TICK_NS)
    if ticks is not None and len(ticks):
        entry["start_tick_ns"], entry["end_tick_ns"] = int(ticks[0]), int(ticks[-1])
    if success is not None:
        entry["success"] = bool(success(data))
    return entry


def sort_played(entries: list[dict]) -> list[dict]:
    """Finished-episode entries in the order they were played (end step, then actor and episode)."""
    return sorted(entries, key=lambda e: (e["end_step"], e["actor"], e["episode"]))


def last_step_success(data: dict) -> bool:
    """The episode succeeded: the task counted the state at its last step as solved (``is_success``)."""
    flags = data.get(step_keys.IS_SUCCESS)
    return bool(flags is not None and len(flags) and flags[-1])


def window_summary(entries: list[dict]) -> dict:
    """``{"episodes", "return_mean", "success_rate"}`` of finished-episode entries (the rates None when empty)."""
    returns = [float(e["return"]) for e in entries]
    successes = [bool(e.get("success", False)) for e in entries]
    return {"episodes": len(entries),
            "return_mean": float(np.mean(returns)) if returns else None,
            "success_rate": float(np.mean(successes)) if successes else None}


def rolling_mean(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (sums[index] - sums[start]) / (index - start)


def steps_to_return(steps, returns, threshold: float, *, window: int = 10) -> int | None:
    """The step at which the mean return of the last ``window`` episodes first reaches ``threshold``.

    Only full windows count; None when it never does."""
    if len(returns) < window:
        return None
    rolling = rolling_mean(returns, window)
    for index in range(window - 1, len(returns)):
        if rolling[index] >= threshold:
            return int(steps[index])
    return None


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
