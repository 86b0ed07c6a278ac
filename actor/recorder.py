"""Step recording: observations and the daemon's reports in, steps, episode files and chunks out.

A step is opened when the actor answers an observation (``begin``) and completed when the next
observation says what the daemon really applied for it (``complete``): the policy's own action, or
the fallback when it came late, the command after the safety layer and the late and clipped flags.
A completed step is numbered on the actor's stream (``stream_step``), appended to the episode's
file and to the current chunk; a chunk is handed on when it is full or its episode ends, with the
episode's quality verdict on the last one (a flagged episode's steps are kept out of training).

Nothing here touches a socket: chunks go to ``emit`` (the actor passes its ExperienceStream's
``put``), per-episode figures to a MetricsWriter, so the whole bookkeeping is testable alone.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from robotd import curves, quality, session, steps, wire
from robotd.config import Config
from robotd.episodes import EpisodeWriter

log = logging.getLogger("actor")

ROLLING_EPISODES = 20
"""The window of the rolling return and success rate (status, metrics/actor.jsonl, TensorBoard)."""

# emit(seq, frames, n_steps, stream_step, episode_id)
Emit = Callable[[int, list, int, int, int], None]


@dataclasses.dataclass
class Pending:
    """The step of the last observation, waiting for what the daemon applied."""
    tick: int
    record: dict
    sent_action: np.ndarray


class StepRecorder:
    """The actor's steps, episodes and chunks (see the module's docstring); ``counters`` is shared with the actor
    and gets env_steps, episodes, late_steps, chunks, flagged_episodes and policy_version_max."""

    def __init__(self, config: Config, *, logdir: Path, actor_id: str, stream_id: str, task_name: str,
                 step_spec: dict, devices: list[str], first_episode_id: int, emit: Emit, metrics, counters: dict):
        self.config = config
        self.logdir = Path(logdir)
        self.actor_id, self.stream_id, self.task_name = actor_id, stream_id, task_name
        self.step_spec, self.devices = step_spec, devices
        self.emit, self.metrics, self.counters = emit, metrics, counters
        for key in ("env_steps", "episodes", "late_steps", "chunks", "flagged_episodes", "policy_version_max"):
            counters.setdefault(key, 0)
        self.pending: Pending | None = None
        self.episode: EpisodeWriter | None = None
        self.episode_id = -1
        self.next_episode_id = first_episode_id
        self.episode_step = 0                   # steps begun in the open episode
        self.episode_return = 0.0
        self.episode_flags: set[str] = set()
        self.episode_timing: list[dict] = []
        self.chunk_rows: list[dict] = []
        self.seq = 0
        self.stream_step = 0                    # the stream step of the chunk being filled
        self.last_return, self.last_success = 0.0, False
        # (return, success) of the last ROLLING_EPISODES finished episodes (ended by themselves, robotd/curves.py).
        self.recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=ROLLING_EPISODES)
        self.finished_episodes = 0
        self.succeeded_episodes = 0

    # -- the step's life ----------------------------------------------------------------------
    @property
    def next_is_first(self) -> bool:
        """Whether the next step begins an episode (none open yet, or the pending step ends one)."""
        if self.pending is not None:
            return bool(self.pending.record[steps.IS_LAST])
        return self.episode is None

    @property
    def steps_begun(self) -> int:
        """Completed steps plus the pending one."""
        return self.counters["env_steps"] + (self.pending is not None)

    def begin(self, *, tick: int, t_tick_ns: int, devices: dict, obs: dict, reward: float, is_first: bool,
              is_last: bool, terminal: bool, success: bool, policy_version: int, sent_action: np.ndarray,
              flags: Iterable[str] = ()) -> None:
        """Opens the step answered at ``tick`` (the previous one must be completed first); ``flags`` say how its
        episode ends (terminated, truncated, time_limit) or what happened in it (protective_stop)."""
        if self.pending is not None:
            raise RuntimeError("StepRecorder.begin with a step still pending: complete() it first")
        if is_first:
            self._open_episode()
        record = {steps.OBS_PREFIX + key: np.array(value) for key, value in obs.items()}
        record.update({steps.REWARD: np.float32(reward), steps.IS_FIRST: bool(is_first), steps.IS_LAST: bool(is_last),
                       steps.IS_TERMINAL: bool(terminal), steps.IS_SUCCESS: bool(success), steps.TICK: tick,
                       steps.T_TICK_NS: t_tick_ns, steps.POLICY_VERSION: policy_version})
        for device, timing in devices.items():
            for field in steps.DEVICE_FIELDS:
                record[f"timing/{device}/{field}"] = timing[field]
        self.episode_flags.update(flags)
        self.pending = Pending(tick, record, sent_action)
        self.episode_step = 1 if is_first else self.episode_step + 1

    def complete(self, prev: dict | None, recorded: np.ndarray | None, applied: np.ndarray | None = None,
                 *, force_last: bool = False) -> None:
        """Finishes the pending step with the daemon's record of its action (the policy's own, or the fallback
        when it was late), the command applied and the late flag; writes and streams it. Without the daemon's
        report for that tick (``prev`` of another tick, or None) the sent action is recorded, marked late.
        ``force_last`` ends the episode there (the session or the daemon's link ended)."""
        pending = self.pending
        if pending is None:
            return
        record = pending.record
        shape = pending.sent_action.shape
        if prev is not None and prev.get("tick") == pending.tick and recorded is not None and recorded.shape == shape:
            record[steps.ACTION] = np.asarray(recorded, np.float32)
            known = applied is not None and applied.shape == shape
            record[steps.APPLIED_ACTION] = np.asarray(applied if known else recorded, np.float32)
            record[steps.LATE] = bool(prev.get("late"))
            record[steps.CLIPPED] = bool(prev.get("clipped"))
        else:
            record[steps.ACTION] = pending.sent_action
            record[steps.APPLIED_ACTION] = pending.sent_action
            record[steps.LATE] = True
            record[steps.CLIPPED] = False
        if force_last:
            record[steps.IS_LAST] = True
        record[steps.STREAM_STEP] = self.counters["env_steps"]
        self.counters["late_steps"] += int(record[steps.LATE])
        self.episode.append(record)
        self.episode_return += float(record[steps.REWARD])
        self.episode_timing.append({key: record[key] for key in self.step_spec
                                    if key.startswith("timing/") or key in (steps.REWARD, steps.IS_SUCCESS)})
        self.chunk_rows.append(record)
        self.counters["env_steps"] += 1
        self.counters["policy_version_max"] = max(self.counters["policy_version_max"], int(record[steps.POLICY_VERSION]))
        self.pending = None
        if record[steps.IS_LAST]:
            self._end_episode(int(record[steps.POLICY_VERSION]))
        elif len(self.chunk_rows) >= self.config.actor.chunk_steps:
            self.flush()

    def flush(self, exclude: dict | None = None) -> None:
        """Hands the completed steps not sent yet to ``emit`` as one chunk."""
        rows = self.chunk_rows
        if not rows:
            return
        arrays = {key: np.stack([np.asarray(row[key], dtype) for row in rows]).reshape(len(rows), *shape)
                  for key, (shape, dtype) in self.step_spec.items()}
        meta = {"actor_id": self.actor_id, "stream": self.stream_id, "episode_id": self.episode_id,
                "seq": self.seq, "n_steps": len(rows), "stream_step": self.stream_step}
        if exclude is not None:
            meta["exclude"] = exclude
        self.emit(self.seq, wire.encode(wire.Kind.CHUNK, meta, arrays), len(rows), self.stream_step, self.episode_id)
        self.seq += 1
        self.stream_step += len(rows)
        self.counters["chunks"] += 1
        self.chunk_rows = []

    def close(self) -> None:
        """At the session's end: the pending step (without the daemon's report) ends its episode, and the open
        episode is closed."""
        if self.pending is not None:
            self.complete(None, None, force_last=True)
        if self.episode is not None:
            self._end_episode(self.counters["policy_version_max"])

    def rolling(self) -> tuple[float, float]:
        """Mean return and success rate of the last ROLLING_EPISODES finished episodes ((0, 0) before any)."""
        if not self.recent:
            return 0.0, 0.0
        return (float(np.mean([r for r, _ in self.recent])), float(np.mean([s for _, s in self.recent])))

    # -- episodes -----------------------------------------------------------------------------
    def _open_episode(self) -> None:
        self.episode_id = self.next_episode_id
        self.next_episode_id += 1
        attrs = {"session": self.config.session, "actor_id": self.actor_id, "stream": self.stream_id,
                 "episode_id": self.episode_id, "robot": self.config.robot.driver, "task": self.task_name,
                 "control_rate_hz": self.config.control.rate_hz,
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.episode = EpisodeWriter(session.episode_path(self.logdir, self.actor_id, self.episode_id),
                                     self.step_spec, attrs)
        self.episode_return = 0.0
        self.episode_step = 0
        self.episode_flags = set()
        self.episode_timing = []

    def _end_episode(self, policy_version: int) -> None:
        """Sends the episode's last chunk with its verdict (a flagged episode's steps are kept out of training)
        and closes its file."""
        rows = self.episode_timing
        data = {key: np.asarray([row[key] for row in rows]) for key in (rows[0] if rows else {})}
        stats = quality.episode_stats(data, self.config.control.rate_hz, self.devices,
                                      quality.camera_fps(self.config), flags=self.episode_flags)
        flagged = quality.assess(stats, self.config.quality, self.devices, self.episode_flags)
        exclude = None
        if flagged and rows:
            exclude = {"from": int(rows[0][steps.STREAM_STEP]), "n": len(rows), "reasons": flagged}
        self.flush(exclude=exclude)
        if flagged:
            self.counters["flagged_episodes"] += 1
            log.warning("episode %d flagged, kept out of training: %s", self.episode_id, "; ".join(flagged))
        self.episode.close(stats=stats, flags=sorted(self.episode_flags | set(flagged)))
        self.counters["episodes"] += 1
        self.last_return = self.episode_return
        self.last_success = bool(stats["success"])
        scalars = {"episode/return": self.episode_return, "episode/success": float(self.last_success),
                   "episode/length": stats["length"], "episode/late_steps": stats["late_steps"],
                   "episode/period_p99_ms": stats["period_ms_p99"], "policy_version": policy_version}
        # The rolling figures count only episodes that ended by themselves, not one cut off by the session's end.
        finished = bool(self.episode_flags & set(curves.ENDINGS))
        scalars["episode/finished"] = float(finished)
        if finished:
            self.recent.append((self.episode_return, self.last_success))
            self.finished_episodes += 1
            self.succeeded_episodes += int(self.last_success)
        if self.recent:
            scalars["episode/return_mean20"], scalars["episode/success_rate20"] = self.rolling()
        self.metrics.write(self.counters["env_steps"], scalars)
        self.episode = None
