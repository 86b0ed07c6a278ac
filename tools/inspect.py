"""``robotd inspect LOGDIR``: a recorded session's episodes as a table, plots, videos and one HTML page.

Everything comes from the session directory alone (no process needs to run)::

    python -m tools.inspect LOGDIR [--out DIR] [--episodes N] [--no-model] [--device cpu]

prints one row per episode file (length, return, success, control period p50/p99 against the
target, late steps, stale readings per device, dropped camera frames, policy version range, flags)
and a session summary line, then writes ``DIR`` (default ``LOGDIR/inspect``)::

    index.html                 the page: summary, episode table, plots and videos (relative links only)
    plots/learning_curve.png   episode return (raw and rolling mean) and rolling success rate against env
                               steps, with the end of the random prefill marked; return against wall
                               time; learner losses
    plots/control_period.png   histogram of the control period (t_tick_ns differences) with the target
    plots/sensor_age.png       distribution of each device's reading age
    plots/policy_lag.png       policy versions used against the learner's, and the lag per step
    videos/<episode>-<key>.gif the camera stream of the last N episodes, one GIF per image key
    videos/openloop-<key>.gif  the world model's open-loop prediction beside the recorded frames

Policy-version lag. Each step records the weights version that chose its action. The lag of a
step is the newest version known by then minus that version, with "known" taken two ways: the
running maximum of policy_version over the actor's steps so far (exact about what reached the
actor, but zero whenever versions only grow), and, when the learner logged ``weights_version``,
the larger of that and the version the learner had published by the step's wall time (a lower
bound on the true lag: the learner writes a metrics record every few seconds). A step's wall
time is its episode's ``started_at`` (1 s resolution) plus its tick offset, stretched to the
time the actor logged the episode's close where that record is found, since tick times are
simulated under lockstep pacing.

Success. An episode succeeded when the task reported ``is_success`` at its last step. Only finished
episodes (ended by themselves: terminal, truncated or time limit; robotd/curves.py) count towards the
success rate and the rolling figures; the table shows '-' for the others (cut off by the end of the
session, a protective stop, or still open).

Unreadable episode files are listed with their error; episodes whose writer died are read from
their journal (robotd.episodes.read_episode).
"""
from __future__ import annotations

import argparse
import datetime
import html
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robotd import curves, quality, session, steps
from robotd.cli import program_parser
from robotd.episodes import read_episode

OPENLOOP_MAX_STEPS = 64
MAX_GIF_FPS = 50.0
PLOTS = ("learning_curve", "control_period", "sensor_age", "policy_lag")
ROLLING_EPISODES = 10
"""The window of the learning curve's rolling return and success rate."""
_LOSS_KEYS = ("loss/world_model", "loss/image", "loss/reward", "loss/actor", "loss/critic")


@dataclass
class EpisodeRecord:
    """One episode file as inspect sees it: its table row and the small per-step arrays the plots need."""

    path: Path
    row: dict[str, Any]
    timing: dict[str, np.ndarray] = field(default_factory=dict)
    start_wall_s: float | None = None
    end_wall_s: float | None = None

    def step_wall_s(self) -> np.ndarray:
        """Approximate wall time of each step: started_at plus the tick offset, stretched to the episode's end when known.

        Tick times are simulated under lockstep pacing, so the actor's record of the episode's close
        (metrics/actor*.jsonl) fixes the span where it can be matched; NaN where started_at is unknown.
        """
        t_ns = self.timing.get("t_tick_ns", np.zeros(0)).astype(np.float64)
        if self.start_wall_s is None or not t_ns.size:
            return np.full(t_ns.size, np.nan)
        offset_s = (t_ns - t_ns[0]) / 1e9
        if self.end_wall_s is not None and offset_s[-1] > 0 and self.end_wall_s > self.start_wall_s:
            offset_s *= (self.end_wall_s - self.start_wall_s) / offset_s[-1]
        return self.start_wall_s + offset_s


@dataclass
class SessionScan:
    """What inspect read from a session directory."""

    logdir: Path
    episodes: list[EpisodeRecord]
    summary: dict[str, Any]
    config: Any
    config_error: str | None
    learner_metrics: list[dict[str, Any]]
    metrics_error: str | None


def _is_session(logdir: Path) -> bool:
    return logdir.is_dir() and ((logdir / session.EPISODES).is_dir() or (logdir / session.SUMMARY).is_file())


def episode_files(logdir: str | Path) -> list[Path]:
    """The episode files of a session: every episodes/*.h5, plus the journal-only episodes of a writer killed early."""
    directory = Path(logdir) / session.EPISODES
    files = {path for path in directory.glob("*.h5")}
    files |= {path.with_name(path.name[:-len(".journal")]) for path in directory.glob("*.h5.journal")}
    return sorted(files, key=lambda path: path.name)


def _parse_started_at(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _devices(step_arrays: dict[str, np.ndarray]) -> list[str]:
    names = [key[len("timing/"):-len("/age_ns")] for key in step_arrays
             if key.startswith("timing/") and key.endswith("/age_ns")]
    return sorted(names)


def _image_keys(step_arrays: dict[str, np.ndarray]) -> list[str]:
    return sorted(key for key, value in step_arrays.items()
                  if key.startswith(steps.OBS_PREFIX) and value.dtype == np.uint8 and value.ndim == 4
                  and value.shape[-1] in (1, 3))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_episode_record(path: Path, *, rate_hz: float | None = None, camera_fps: dict[str, float] | None = None
                        ) -> EpisodeRecord:
    """Reads one episode file into its table row and timing arrays; an unreadable file gives a row with ``error``."""
    row: dict[str, Any] = {"file": path.name, "episode": path.stem, "error": None}
    try:
        data = read_episode(path)
    except Exception as error:  # any damaged file is reported, never fatal
        row["error"] = _one_line(error)
        return EpisodeRecord(path=path, row=row)
    arrays, attrs, stats = data.steps, data.attrs, data.stats
    length = len(arrays[steps.REWARD]) if steps.REWARD in arrays else len(next(iter(arrays.values()), ()))
    rate = float(attrs.get("control_rate_hz") or rate_hz or 0.0)
    target_ms = 1000.0 / rate if rate > 0 else float("nan")
    t_ns = np.asarray(arrays.get(steps.T_TICK_NS, np.zeros(0)), np.int64)
    periods_ms = np.diff(t_ns).astype(np.float64) / 1e6
    versions = np.asarray(arrays.get(steps.POLICY_VERSION, np.zeros(0)), np.int64)
    rewards = np.asarray(arrays.get(steps.REWARD, np.zeros(0)), np.float64)
    devices = _devices(arrays)
    stale = {device: int(np.sum(arrays[f"timing/{device}/stale"])) for device in devices
             if f"timing/{device}/stale" in arrays}
    # The same statistics the actor stored when it wrote the episode (robotd/quality.py), from the steps themselves.
    measured = quality.episode_stats(arrays, rate, devices, camera_fps) if rate > 0 else {}
    dropped = {device: int(stats.get(f"{device}_dropped_frames", measured[f"{device}_dropped_frames"]))
               for device in devices if f"{device}_dropped_frames" in measured}
    flags = attrs.get("flags", [])
    flags = [str(flag) for flag in (flags if isinstance(flags, (list, tuple)) else [flags])]
    episode_id = attrs.get("episode_id")
    row.update({
        "episode": f"{attrs.get('actor_id', '?')}/{episode_id}" if episode_id is not None else path.stem,
        "actor": str(attrs.get("actor_id", "")),
        "length": int(length),
        "return": float(np.sum(rewards)),
        "finished": curves.is_finished(data),
        "success": curves.last_step_success(arrays),
        "period_ms_p50": float(np.percentile(periods_ms, 50)) if periods_ms.size else float("nan"),
        "period_ms_p99": float(np.percentile(periods_ms, 99)) if periods_ms.size else float("nan"),
        "target_period_ms": target_ms,
        "late_steps": int(np.sum(arrays.get(steps.LATE, 0))),
        "stale": stale,
        "dropped_frames": dropped,
        "policy_version_min": int(versions.min()) if versions.size else None,
        "policy_version_max": int(versions.max()) if versions.size else None,
        "flags": flags,
        "complete": bool(data.complete),
        "started_at": str(attrs.get("started_at", "")),
        "image_keys": _image_keys(arrays),
    })
    timing = {"t_tick_ns": t_ns, "policy_version": versions, "reward": rewards}
    for device in devices:
        timing[f"{device}/age_ns"] = np.asarray(arrays[f"timing/{device}/age_ns"], np.int64)
    return EpisodeRecord(path=path, row=row, timing=timing, start_wall_s=_parse_started_at(attrs.get("started_at")))


def _load_config(logdir: Path) -> tuple[Any, str | None]:
    path = logdir / session.CONFIG
    if not path.exists():
        return None, f"{path} does not exist"
    try:
        from robotd import config as config_module
        return config_module.load(path), None
    except Exception as error:  # an old or edited config still lets the episodes be inspected
        return None, _one_line(error)


def _read_learner_metrics(logdir: Path) -> tuple[list[dict[str, Any]], str | None]:
    path = logdir / "metrics" / "learner.jsonl"
    if not path.exists():
        return [], None
    try:
        from robotd.metrics import read_metrics
        return read_metrics(path), None
    except Exception as error:
        return [], _one_line(error)


def _match_episode_ends(logdir: Path, records: list[EpisodeRecord]) -> None:
    """Sets each episode's end wall time from the actor's metrics record of its close (same length and return)."""
    closes = []
    for path in sorted((logdir / "metrics").glob("actor*.jsonl")):
        try:
            from robotd.metrics import read_metrics
            closes += [record for record in read_metrics(path) if isinstance(record.get("episode/return"), (int, float))
                       and isinstance(record.get("time"), (int, float))]
        except Exception:  # without the actor's metrics the episodes keep their tick-based spans
            continue
    used: set[int] = set()
    for record in records:
        if record.row.get("error") or record.start_wall_s is None:
            continue
        for index, close in enumerate(closes):
            if (index not in used and close.get("episode/length") == record.row["length"]
                    and abs(close["episode/return"] - record.row["return"]) <= 1e-3 * max(1.0, abs(record.row["return"]))
                    and close["time"] >= record.start_wall_s - 1.0):
                used.add(index)
                record.end_wall_s = float(close["time"])
                break


def scan_session(logdir: str | Path) -> SessionScan:
    """Reads a session directory: every episode file, summary.json, config.yaml and the learner's metrics.

    Raises ValueError naming ``logdir`` when it is not a session directory.
    """
    logdir = Path(logdir)
    if not _is_session(logdir):
        raise ValueError(f"LOGDIR {str(logdir)!r} is not a session directory (no episodes/ or summary.json in it); "
                         f"give the --logdir of a robotd train session")
    config, config_error = _load_config(logdir)
    rate_hz = float(config.control.rate_hz) if config is not None else None
    fps = quality.camera_fps(config)
    records = [read_episode_record(path, rate_hz=rate_hz, camera_fps=fps) for path in episode_files(logdir)]
    # Session order: by start time where known, then by file name (actor, episode number).
    records.sort(key=lambda record: (record.start_wall_s is None, record.start_wall_s or 0.0, record.path.name))
    try:
        summary = json.loads((logdir / session.SUMMARY).read_text())
        summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        summary = {}
    metrics, metrics_error = _read_learner_metrics(logdir)
    _match_episode_ends(logdir, records)
    return SessionScan(logdir=logdir, episodes=records, summary=summary, config=config, config_error=config_error,
                       learner_metrics=metrics, metrics_error=metrics_error)


def episode_table(logdir: str | Path) -> list[dict[str, Any]]:
    """One row per episode file in session order: its numbers, or ``error`` for a file that cannot be read."""
    return [record.row for record in scan_session(logdir).episodes]


def _num(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec)


def _per_device(counts: dict[str, int]) -> str:
    return " ".join(f"{device}:{count}" for device, count in counts.items()) or "-"


def _versions(row: dict[str, Any]) -> str:
    low, high = row.get("policy_version_min"), row.get("policy_version_max")
    return "-" if low is None else f"v{low}..{high}" if low != high else f"v{low}"


def _cells(row: dict[str, Any]) -> list[str]:
    """A readable row's cells in the order of TABLE_COLUMNS."""
    return [row["episode"], str(row["length"]), _num(row["return"], ".2f"), _success(row),
            f"{_num(row['period_ms_p50'])}/{_num(row['period_ms_p99'])} ({_num(row['target_period_ms'])})",
            str(row["late_steps"]), _per_device(row["stale"]), _per_device(row["dropped_frames"]), _versions(row),
            (", ".join(row["flags"]) or "-") + ("" if row["complete"] else " [open: from journal]")]


def _success(row: dict[str, Any]) -> str:
    return ("yes" if row.get("success") else "no") if row.get("finished") else "-"


TABLE_COLUMNS = ("episode", "steps", "return", "success", "period p50/p99 (target) ms", "late", "stale", "dropped frames",
                 "policy", "flags")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The episode table as fixed-width text; unreadable files take one line with their error."""
    body = [_cells(row) for row in rows if not row.get("error")]
    widths = [max([len(column)] + [len(cells[i]) for cells in body]) for i, column in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(TABLE_COLUMNS, widths)).rstrip()]
    for row in rows:
        if row.get("error"):
            lines.append(f"{row['file']}  UNREADABLE: {row['error']}")
        else:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(_cells(row), widths)).rstrip())
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Session-wide figures from the table rows (and summary.json where it has them)."""
    good = [row for row in rows if not row.get("error")]
    returns = [row["return"] for row in good]
    p99 = [row["period_ms_p99"] for row in good if np.isfinite(row["period_ms_p99"])]
    targets = [row["target_period_ms"] for row in good if np.isfinite(row["target_period_ms"])]
    highs = [row["policy_version_max"] for row in good if row["policy_version_max"] is not None]
    finished = [row for row in good if row.get("finished")]
    succeeded = sum(bool(row.get("success")) for row in finished)
    return {
        "episodes": len(rows), "unreadable": len(rows) - len(good), "open": sum(not row["complete"] for row in good),
        "steps": sum(row["length"] for row in good),
        "return_mean": float(np.mean(returns)) if returns else None,
        "return_last": returns[-1] if returns else None,
        "finished": len(finished), "succeeded": succeeded,
        "success_rate": succeeded / len(finished) if finished else None,
        "period_ms_p99_max": max(p99) if p99 else None, "target_period_ms": targets[0] if targets else None,
        "late_steps": sum(row["late_steps"] for row in good),
        "stale_readings": sum(sum(row["stale"].values()) for row in good),
        "dropped_frames": sum(sum(row["dropped_frames"].values()) for row in good),
        "policy_version_max": max(highs) if highs else None,
        "flagged": sum(bool(quality.quality_flags(row["flags"])) for row in good),
        "logged_steps": (summary or {}).get("logged_steps"), "learner_updates": (summary or {}).get("learner_updates"),
    }


def _percent(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def summary_line(figures: dict[str, Any]) -> str:
    """The one-line session summary printed under the table."""
    text = (f"session: {figures['episodes']} episodes ({figures['unreadable']} unreadable, {figures['open']} open), "
            f"{figures['steps']} steps, return mean {_num(figures['return_mean'], '.2f')} "
            f"last {_num(figures['return_last'], '.2f')}, {figures['succeeded']} of {figures['finished']} finished "
            f"episodes succeeded ({_num(_percent(figures['success_rate']), '.0f')}%), period p99 max {_num(figures['period_ms_p99_max'])} ms "
            f"(target {_num(figures['target_period_ms'])}), {figures['late_steps']} late steps, "
            f"{figures['stale_readings']} stale readings, {figures['dropped_frames']} dropped frames, "
            f"policy up to v{figures['policy_version_max'] if figures['policy_version_max'] is not None else '-'}, "
            f"{figures['flagged']} quality-flagged")
    if figures.get("learner_updates") is not None:
        text += f", {figures['learner_updates']} learner updates"
    return text


# ---- plots -------------------------------------------------------------------------------------------------------

def _figure(rows: int, height: float = 3.2):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(8, height * rows), dpi=90, layout="constrained")
    return figure, [figure.add_subplot(rows, 1, index + 1) for index in range(rows)]


def _no_data(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _session_origin(scan: SessionScan) -> float | None:
    starts = [record.start_wall_s for record in scan.episodes if record.start_wall_s is not None]
    starts += [float(record["time"]) for record in scan.learner_metrics if isinstance(record.get("time"), (int, float))]
    return min(starts) if starts else None


def _readable(scan: SessionScan) -> list[EpisodeRecord]:
    return [record for record in scan.episodes if not record.row.get("error")]


def learning_curve(scan: SessionScan, window: int = ROLLING_EPISODES) -> dict[str, Any]:
    """The learning curve's data: every readable episode's end step and return, and for the finished ones
    their end step, rolling mean return and rolling success rate over ``window`` episodes, plus the env step
    where the random prefill ended (``prefill_end``, with ``prefill_source`` saying how it was found; None
    when unknown).

    Env steps count every step of every readable episode in session order. The prefill ends at the first
    step whose action came from the policy (policy_version > 0); when no step did, at the config's
    actor.prefill_steps."""
    episodes = _readable(scan)
    lengths = np.asarray([record.row["length"] for record in episodes], np.int64)
    ends = np.cumsum(lengths)
    finished = [index for index, record in enumerate(episodes) if record.row.get("finished")]
    returns = np.asarray([episodes[index].row["return"] for index in finished], np.float64)
    successes = np.asarray([bool(episodes[index].row.get("success")) for index in finished], np.float64)
    prefill_end, source = None, None
    for record, end, length in zip(episodes, ends, lengths):
        versions = record.timing.get("policy_version", np.zeros(0))
        if versions.size and np.any(versions > 0):
            prefill_end, source = int(end - length + int(np.argmax(versions > 0))), "first step of the policy"
            break
    if prefill_end is None and scan.config is not None and scan.config.actor.prefill_steps > 0:
        prefill_end, source = int(scan.config.actor.prefill_steps), "actor.prefill_steps (no step used the policy)"
    return {"end_step": ends, "return": np.asarray([record.row["return"] for record in episodes], np.float64),
            "finished_end_step": ends[finished] if finished else np.zeros(0, np.int64),
            "return_mean": curves.rolling_mean(returns, window) if finished else np.zeros(0),
            "success_rate": curves.rolling_mean(successes, window) if finished else np.zeros(0),
            "success": successes, "prefill_end": prefill_end, "prefill_source": source}


def plot_learning_curve(scan: SessionScan, path: Path) -> Path:
    """Episode return (raw, and its rolling mean) and the rolling success rate against env steps, with the end
    of the random prefill marked; return against wall time; the learner's losses against wall time."""
    figure, (by_steps, success, by_time, losses) = _figure(4, 3.0)
    episodes = _readable(scan)
    origin = _session_origin(scan)
    curve = learning_curve(scan)
    if episodes:
        by_steps.plot(curve["end_step"], curve["return"], "o", alpha=0.4, label="episode return")
        if curve["return_mean"].size:
            by_steps.plot(curve["finished_end_step"], curve["return_mean"], "-", linewidth=2,
                          label=f"rolling mean of {ROLLING_EPISODES} finished episodes")
            success.plot(curve["finished_end_step"], 100 * curve["success_rate"], "-", linewidth=2,
                         label=f"rolling success rate ({ROLLING_EPISODES} episodes)")
            success.plot(curve["finished_end_step"], 100 * curve["success"], "|", color="gray",
                         label="episode succeeded (100) or not (0)")
            overall = 100 * float(np.mean(curve["success"]))
            success.set_title(f"Success rate: {int(curve['success'].sum())} of {curve['success'].size} finished "
                              f"episodes ({overall:.0f}%)")
        else:
            _no_data(success, "no finished episode")
            success.set_title("Success rate")
        if curve["prefill_end"] is not None:
            for axes in (by_steps, success):
                axes.axvline(curve["prefill_end"], color="red", linestyle="--",
                             label=f"prefill ends ({curve['prefill_source']})")
        by_steps.legend(fontsize="small")
        if curve["return_mean"].size:
            success.set_ylim(-5, 105)
            success.legend(fontsize="small")
        timed = [(float(record.step_wall_s()[-1]), record.row["return"]) for record in episodes
                 if record.start_wall_s is not None and record.row["length"] and origin is not None]
        if timed:
            by_time.plot([(t - origin) / 60 for t, _ in timed], [r for _, r in timed], "o-")
        else:
            _no_data(by_time, "no episode start times (started_at)")
    else:
        for axes in (by_steps, success, by_time):
            _no_data(axes, "no readable episodes")
        success.set_title("Success rate")
    by_steps.set(xlabel="env steps (end of episode)", ylabel="episode return", title="Return against env steps")
    success.set(xlabel="env steps (end of episode)", ylabel="success rate (%)")
    by_time.set(xlabel="wall time (min from session start)", ylabel="episode return", title="Return against wall time")
    records = [record for record in scan.learner_metrics if isinstance(record.get("time"), (int, float))]
    drawn = False
    for key in _LOSS_KEYS:
        points = [((record["time"] - origin) / 60, record[key]) for record in records
                  if isinstance(record.get(key), (int, float)) and origin is not None]
        if points:
            losses.plot(*zip(*points), ".-", label=key)
            drawn = True
    if drawn:
        losses.set_yscale("symlog")
        losses.legend(fontsize="small")
    else:
        _no_data(losses, "no learner losses in metrics/learner.jsonl")
    losses.set(xlabel="wall time (min from session start)", ylabel="loss (symlog)", title="Learner losses")
    figure.savefig(path)
    return path


def plot_control_period(scan: SessionScan, path: Path) -> Path:
    """Histogram of the control period over all episodes (differences of t_tick_ns within each), target marked."""
    figure, (axes,) = _figure(1, 3.6)
    periods = [np.diff(record.timing["t_tick_ns"]).astype(np.float64) / 1e6 for record in _readable(scan)
               if record.timing["t_tick_ns"].size > 1]
    targets = [record.row["target_period_ms"] for record in _readable(scan) if np.isfinite(record.row["target_period_ms"])]
    if periods:
        values = np.concatenate(periods)
        low, high = float(values.min()), float(values.max())
        if targets:
            low, high = min(low, targets[0]), max(high, targets[0])
        # A span of at least a fifth of the target keeps a perfectly regular clock readable.
        span = max(high - low, 0.2 * targets[0] if targets else 1.0, 1e-3)
        axes.hist(values, bins=60, range=(low - 0.05 * span, high + 0.05 * span), log=True)
        axes.set_title(f"Control period: {values.size} steps, p50 {np.percentile(values, 50):.2f} ms, "
                       f"p99 {np.percentile(values, 99):.2f} ms, max {high:.2f} ms")
    else:
        _no_data(axes, "no episode with two steps")
        axes.set_title("Control period")
    if targets:
        axes.axvline(targets[0], color="red", linestyle="--", label=f"target {targets[0]:.2f} ms")
        axes.legend()
    axes.set(xlabel="t_tick_ns difference (ms)", ylabel="steps")
    figure.savefig(path)
    return path


def plot_sensor_age(scan: SessionScan, path: Path) -> Path:
    """One histogram per device of its readings' age (tick time minus the reading's host time)."""
    devices = sorted({key[:-len("/age_ns")] for record in _readable(scan) for key in record.timing
                      if key.endswith("/age_ns")})
    figure, axes_list = _figure(max(1, len(devices)), 2.8)
    if not devices:
        _no_data(axes_list[0], "no device timing in the episodes")
    for axes, device in zip(axes_list, devices):
        ages = np.concatenate([record.timing[f"{device}/age_ns"] for record in _readable(scan)
                               if f"{device}/age_ns" in record.timing]).astype(np.float64) / 1e6
        axes.hist(ages, bins=60, log=True)
        axes.set(xlabel="reading age at the tick (ms)", ylabel="steps",
                 title=f"{device}: p50 {np.percentile(ages, 50):.2f} ms, p99 {np.percentile(ages, 99):.2f} ms, "
                       f"max {ages.max():.2f} ms")
    figure.savefig(path)
    return path


def policy_lag(scan: SessionScan) -> dict[str, np.ndarray]:
    """Per step of the session (in order): wall time, version used, lag behind the running max, lag behind the learner.

    ``lag_running`` is the running maximum of policy_version over the same actor's steps so far minus the
    step's version; ``lag_learner`` is the newest version known at the step's wall time, the larger of that
    running maximum and the learner's last logged weights_version, minus the step's version (NaN where the
    time or the learner's record is unknown; see the module docstring).
    """
    wall, used, lag_running = [], [], []
    newest: dict[str, int] = {}
    for record in _readable(scan):
        versions = record.timing["policy_version"]
        if not versions.size:
            continue
        actor = record.row.get("actor", "")
        running = np.maximum.accumulate(np.maximum(versions, newest.get(actor, 0)))
        newest[actor] = int(running[-1])
        lag_running.append(running - versions)
        used.append(versions)
        step_wall = record.step_wall_s()
        wall.append(step_wall if step_wall.size == versions.size else np.full(versions.size, np.nan))
    if not used:
        empty = np.zeros(0)
        return {"wall_s": empty, "version": empty, "lag_running": empty, "lag_learner": empty}
    wall_s, version = np.concatenate(wall), np.concatenate(used)
    published = [(float(record["time"]), float(record["weights_version"])) for record in scan.learner_metrics
                 if isinstance(record.get("time"), (int, float)) and isinstance(record.get("weights_version"), (int, float))]
    running_lag = np.concatenate(lag_running).astype(np.float64)
    lag_learner = np.full(version.size, np.nan)
    if published:
        published.sort()
        times = np.asarray([t for t, _ in published])
        values = np.asarray([v for _, v in published])
        index = np.searchsorted(times, wall_s, side="right") - 1
        known = np.isfinite(wall_s) & (index >= 0)
        newest_known = np.maximum(values[index[known]], version[known] + running_lag[known])
        lag_learner[known] = newest_known - version[known]
    return {"wall_s": wall_s, "version": version.astype(np.float64), "lag_running": running_lag,
            "lag_learner": lag_learner}


def plot_policy_lag(scan: SessionScan, path: Path) -> Path:
    """Versions used by the actor against those the learner published, and the per-step lag."""
    figure, (versions_axes, lag_axes) = _figure(2)
    lag = policy_lag(scan)
    if lag["version"].size:
        steps_index = np.arange(lag["version"].size)
        versions_axes.plot(steps_index, lag["version"], label="policy_version of the step")
        versions_axes.plot(steps_index, lag["version"] + lag["lag_running"], label="newest seen by the actor")
        if np.isfinite(lag["lag_learner"]).any():
            versions_axes.plot(steps_index, lag["version"] + lag["lag_learner"],
                               label="newest known: learner's weights_version by the step's wall time (approx.)")
        versions_axes.legend(fontsize="small")
        lag_axes.plot(steps_index, lag["lag_running"], label="lag behind the actor's newest")
        if np.isfinite(lag["lag_learner"]).any():
            lag_axes.plot(steps_index, lag["lag_learner"], label="lag behind the learner (approx.)", alpha=0.7)
        lag_axes.legend(fontsize="small")
        title = (f"Policy-version lag behind the actor's newest: mean {lag['lag_running'].mean():.2f}, "
                 f"max {lag['lag_running'].max():.0f}")
        if np.isfinite(lag["lag_learner"]).any():
            title += (f"; behind the learner: mean {np.nanmean(lag['lag_learner']):.2f}, "
                      f"max {np.nanmax(lag['lag_learner']):.0f}")
        lag_axes.set_title(title, fontsize="medium")
    else:
        _no_data(versions_axes, "no policy versions recorded")
        _no_data(lag_axes, "no policy versions recorded")
    versions_axes.set(xlabel="session step", ylabel="weights version", title="Policy versions")
    lag_axes.set(xlabel="session step", ylabel="versions behind")
    figure.savefig(path)
    return path


def write_plots(scan: SessionScan, out_dir: Path) -> dict[str, Path]:
    """Writes every plot as plots/<name>.png under out_dir; returns name -> path (empty without matplotlib)."""
    if importlib.util.find_spec("matplotlib") is None:     # an optional dependency (pip install matplotlib)
        return {}
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    makers = {"learning_curve": plot_learning_curve, "control_period": plot_control_period,
              "sensor_age": plot_sensor_age, "policy_lag": plot_policy_lag}
    return {name: maker(scan, plots_dir / f"{name}.png") for name, maker in makers.items()}


# ---- videos ------------------------------------------------------------------------------------------------------

def _gif_fps(rate_hz: float) -> float:
    return min(MAX_GIF_FPS, rate_hz) if rate_hz > 0 else 10.0


def write_camera_videos(scan: SessionScan, out_dir: Path, n_episodes: int) -> list[dict[str, Any]]:
    """GIFs of every image key of the last ``n_episodes`` readable episodes; returns one entry per GIF or failure."""
    from learner.report import write_gif

    videos = []
    chosen = [record for record in _readable(scan) if record.row["image_keys"]][-n_episodes:] if n_episodes > 0 else []
    for record in chosen:
        try:
            data = read_episode(record.path)
        except Exception as error:
            videos.append({"episode": record.row["episode"], "error": _one_line(error)})
            continue
        rate = 1000.0 / record.row["target_period_ms"] if np.isfinite(record.row["target_period_ms"]) else 0.0
        for key in record.row["image_keys"]:
            frames = data.steps[key]
            name = f"{record.path.stem}-{key[len(steps.OBS_PREFIX):].replace('/', '-')}.gif"
            path = write_gif(out_dir / "videos" / name, frames, fps=_gif_fps(rate))
            videos.append({"episode": record.row["episode"], "key": key, "path": path, "frames": len(frames),
                           "fps": _gif_fps(rate)})
    return videos


def _checkpoint_spec(checkpoint: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {key: (tuple(shape), dtype) for key, (shape, dtype) in checkpoint["spec"].items()}


def write_openloop_video(scan: SessionScan, out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """The world model's open-loop prediction on a window of the last episode with images, as GIFs.

    The agent is built as the learner's Trainer builds it (config.yaml, the checkpoint's spec) and loaded
    from checkpoints/latest.pt; the window is the episode's first min(64, length) steps, a batch of one.
    Returns ``{"videos": [{key, path, frames, episode, window}], "scalars": {...}}`` or ``{"skipped": reason}``.
    """
    from learner.report import write_gif
    from learner.trainer import CHECKPOINT_FILE, Trainer, read_checkpoint

    checkpoint_path = scan.logdir / session.CHECKPOINTS / CHECKPOINT_FILE
    if scan.config is None:
        return {"skipped": f"no usable config.yaml ({scan.config_error})"}
    try:
        checkpoint = read_checkpoint(checkpoint_path)
    except Exception as error:
        return {"skipped": f"checkpoint {checkpoint_path} cannot be loaded ({_one_line(error)})"}
    if checkpoint is None:
        return {"skipped": f"no checkpoint at {checkpoint_path}: the learner never saved one"}
    spec = _checkpoint_spec(checkpoint)
    image_keys = [key for key, (shape, dtype) in spec.items()
                  if key.startswith(steps.OBS_PREFIX) and dtype == "uint8" and len(shape) == 3]
    if not image_keys:
        return {"skipped": "the checkpoint's model has no image observation, so there is no open-loop video"}
    candidates = [record for record in _readable(scan) if record.row["length"] >= 2
                  and all(key in record.row["image_keys"] for key in image_keys)]
    if not candidates:
        return {"skipped": "no readable episode with two or more steps holds the model's image keys"}
    record = candidates[-1]
    data = read_episode(record.path)
    window = min(OPENLOOP_MAX_STEPS, record.row["length"])
    missing = [key for key in spec if key not in data.steps]
    if missing:
        return {"skipped": f"episode {record.path.name} lacks the checkpoint's step key(s) {missing}"}
    arrays = {key: np.ascontiguousarray(data.steps[key][:window][None]).astype(dtype, copy=False)
              for key, (_, dtype) in spec.items()}
    import torch
    torch.set_num_threads(min(2, torch.get_num_threads()))
    trainer = Trainer(scan.config, spec, device, scan.logdir, action_discrete=bool(checkpoint.get("action_discrete", False)))
    version = trainer.load(checkpoint)
    scalars, videos = trainer.report(arrays)
    rate = 1000.0 / record.row["target_period_ms"] if np.isfinite(record.row["target_period_ms"]) else 0.0
    written = []
    for name, video in videos.items():
        path = write_gif(out_dir / "videos" / f"{name.replace('/', '-')}.gif", video[0], fps=_gif_fps(rate))
        written.append({"key": name, "path": path, "frames": int(video.shape[1]), "episode": record.row["episode"],
                        "window": window})
    return {"videos": written, "scalars": scalars, "weights_version": version, "updates": trainer.updates}


def _copy_latest_training_report(scan: SessionScan, out_dir: Path) -> dict[str, Any] | None:
    from learner.report import REPORTS
    gifs = sorted((scan.logdir / REPORTS).glob("*.gif"))
    if not gifs:
        return None
    target = out_dir / "videos" / f"training-{gifs[-1].name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gifs[-1], target)
    return {"path": target, "source": gifs[-1].name}


# ---- page --------------------------------------------------------------------------------------------------------

_PLOT_CAPTIONS = {
    "learning_curve": "Episode return against env steps with its rolling mean over the last 10 finished episodes "
                      "(top); the rolling success rate over the last 10 finished episodes, an episode succeeding "
                      "when the task reports success at its last step (second); the dashed line marks where the "
                      "random prefill ended. Return against wall time (third); the learner's losses from "
                      "metrics/learner.jsonl (bottom).",
    "control_period": "Control period: differences of consecutive t_tick_ns within each episode, over all episodes; "
                      "the dashed line is the target period.",
    "sensor_age": "Age of each device's reading at the tick that used it (tick time minus the reading's host time).",
    "policy_lag": "Policy versions. Lag = newest version the actor had used so far minus the step's version; the "
                  "learner's published weights_version at the step's approximate wall time is shown beside it.",
}

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }
th { background: #eee; }
tr.error td { background: #fdd; }
tr.flagged td { background: #ffd; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
img.video { image-rendering: pixelated; height: 256px; }
.note { color: #a33; }
"""


def _relative(path: Path, out_dir: Path) -> str:
    return html.escape(path.relative_to(out_dir).as_posix(), quote=True)


def _html_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in TABLE_COLUMNS)
    body = []
    for row in rows:
        if row.get("error"):
            body.append(f'<tr class="error"><td>{html.escape(row["file"])}</td>'
                        f'<td colspan="{len(TABLE_COLUMNS) - 1}">unreadable: {html.escape(row["error"])}</td></tr>')
            continue
        flagged = bool(quality.quality_flags(row["flags"])) or "protective_stop" in row["flags"]
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(row))
        body.append(f'<tr{" class=flagged" if flagged else ""} title="{html.escape(row["file"], quote=True)}">{cells}</tr>')
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _summary_value(key: str, value: Any) -> str:
    """A summary.json value for the page: the success rate as a percentage, the first20/last20 windows in words."""
    if key == "success_rate" and isinstance(value, (int, float)):
        return f"{100 * value:.0f}% of the finished episodes"
    if isinstance(value, dict) and "episodes" in value:
        rate = value.get("success_rate")
        return (f"{value['episodes']} episodes, return mean {_num(value.get('return_mean'), '.2f')}, "
                f"success {_num(_percent(rate), '.0f')}%")
    return str(value)


def _summary_html(figures: dict[str, Any], summary: dict[str, Any]) -> str:
    keys = ("env_steps", "episodes", "finished_episodes", "episodes_succeeded", "success_rate", "first20", "last20",
            "logged_steps", "ingested_steps", "lost_steps", "learner_updates",
            "policy_version_max", "control_rate_hz", "target_rate_hz", "late_steps", "stale_readings",
            "protective_stops", "watchdog_stops", "pacing", "exit_reason", "wall_s")
    items = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(_summary_value(key, summary[key]))}</td></tr>"
                    for key in keys if key in summary)
    table = f"<table>{items}</table>" if items else '<p class="note">No summary.json (the session did not end cleanly).</p>'
    return f"<p>{html.escape(summary_line(figures))}</p>\n{table}"


def render_html(scan: SessionScan, out_dir: Path, plots: dict[str, Path], camera: list[dict[str, Any]],
                openloop: dict[str, Any] | None, training_report: dict[str, Any] | None) -> str:
    """The self-contained page (relative links to files under out_dir only; no scripts, no network)."""
    rows = [record.row for record in scan.episodes]
    figures = summarise(rows, scan.summary)
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>robotd inspect: "
             f"{html.escape(scan.logdir.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Session {html.escape(scan.logdir.name)}</h1>",
             f"<p>{html.escape(str(scan.logdir))}, inspected {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             "<h2>Summary</h2>", _summary_html(figures, scan.summary)]
    for note in (scan.config_error and f"config.yaml: {scan.config_error}",
                 scan.metrics_error and f"metrics/learner.jsonl: {scan.metrics_error}"):
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
    parts += ["<h2>Episodes</h2>",
              "<p>Success: the task reported success at the episode's last step ('-' for an episode that did not "
              "end by itself: cut off by the end of the session, a protective stop, or still open). "
              "Period in ms: p50/p99 of the control period with the target in brackets. Stale: readings older "
              "than control.max_age_ms, per device. Dropped frames: camera frames no step saw (gaps in "
              "frame_number). Policy: the range of weights versions that chose the actions.</p>",
              _html_table(rows), "<h2>Plots</h2>"]
    if not plots:
        parts.append('<p class="note">No plots: matplotlib is not installed (pip install matplotlib).</p>')
    for name, path in plots.items():
        parts.append(f'<figure><img src="{_relative(path, out_dir)}" alt="{html.escape(name, quote=True)}">'
                     f"<figcaption>{html.escape(_PLOT_CAPTIONS.get(name, name))}</figcaption></figure>")
    parts.append("<h2>Camera</h2>")
    if not camera:
        parts.append('<p class="note">No camera video: no readable episode has an image observation.</p>')
    for video in camera:
        if "error" in video:
            parts.append(f'<p class="note">{html.escape(video["episode"])}: {html.escape(video["error"])}</p>')
            continue
        caption = f"{video['episode']} {video['key']}: {video['frames']} steps at {video['fps']:g} frames/s"
        parts.append(f'<figure><img class="video" src="{_relative(video["path"], out_dir)}" '
                     f'alt="{html.escape(caption, quote=True)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    parts.append("<h2>World model: open-loop prediction</h2>")
    if openloop is None:
        parts.append('<p class="note">Skipped (--no-model).</p>')
    elif "skipped" in openloop:
        parts.append(f'<p class="note">No open-loop video: {html.escape(openloop["skipped"])}</p>')
    else:
        for video in openloop["videos"]:
            error = openloop["scalars"].get(f"report/{video['key']}")
            caption = (f"{video['key']} on the first {video['window']} steps of {video['episode']}, checkpoint weights "
                       f"v{openloop['weights_version']} after {openloop['updates']} updates: recorded frames (left), "
                       f"the model's frames (middle: 5 context steps filtered with observations, then imagined from "
                       f"the recorded actions alone) and their difference (right)"
                       + (f"; open-loop MSE {error:.4f}" if isinstance(error, float) else ""))
            parts.append(f'<figure><img class="video" src="{_relative(video["path"], out_dir)}" '
                         f'alt="{html.escape(video["key"], quote=True)}"><figcaption>{html.escape(caption)}'
                         f"</figcaption></figure>")
    if training_report is not None:
        caption = f"The learner's last report during training ({training_report['source']}), sampled from replay."
        parts.append(f'<figure><img class="video" src="{_relative(training_report["path"], out_dir)}" '
                     f'alt="training report"><figcaption>{html.escape(caption)}</figcaption></figure>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(logdir: str | Path, out_dir: str | Path | None = None, *, episodes: int = 2, model: bool = True,
                 device: str = "cpu") -> Path:
    """Writes plots, videos and index.html for the session in ``logdir``; returns the index.html path.

    ``episodes`` is how many of the last episodes get camera videos; ``model=False`` skips the open-loop video.
    Raises ValueError naming ``logdir`` when it is not a session directory.
    """
    scan = scan_session(logdir)
    return _write_report(scan, Path(out_dir) if out_dir is not None else scan.logdir / "inspect",
                         episodes=episodes, model=model, device=device)


def _write_report(scan: SessionScan, out_dir: Path, *, episodes: int, model: bool, device: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(scan, out_dir)
    camera = write_camera_videos(scan, out_dir, episodes)
    openloop = None
    if model:
        try:
            openloop = write_openloop_video(scan, out_dir, device=device)
        except Exception as error:  # a model that cannot be rebuilt still leaves the rest of the report
            openloop = {"skipped": f"the world model could not be run ({_one_line(error)})"}
    training_report = _copy_latest_training_report(scan, out_dir)
    index = out_dir / "index.html"
    tmp = index.with_suffix(".tmp")
    tmp.write_text(render_html(scan, out_dir, plots, camera, openloop, training_report), encoding="utf-8")
    tmp.replace(index)
    return index


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd inspect``."""
    parser = program_parser(
        "robotd inspect",
        "A recorded session's episodes as a table (length, return, success, control period, late steps, stale "
        "readings, dropped frames, policy versions, flags) and a summary line, then one HTML page with plots, "
        "camera videos and the world model's open-loop video in LOGDIR/inspect (or --out). Reads the session "
        "directory only: no process needs to run.",
        ("a session's report", "robotd inspect runs/demo"),
        ("the table and plots only, videos of the last 5 episodes, elsewhere",
         "robotd inspect runs/demo --episodes 5 --no-model --out /tmp/demo-report"))
    parser.add_argument("logdir", help="the session directory (robotd train --logdir)")
    parser.add_argument("--out", default=None, help="report directory (default: LOGDIR/inspect)")
    parser.add_argument("--episodes", type=int, default=2, help="camera videos for the last N episodes")
    parser.add_argument("--no-model", action="store_true", help="skip the world model's open-loop video")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch device for the world model")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``robotd inspect`` / ``python -m tools.inspect``."""
    args = build_parser().parse_args(argv)
    if args.episodes < 0:
        print(f"robotd inspect: error: --episodes {args.episodes} is negative; give 0 or more", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        scan = scan_session(args.logdir)
    except ValueError as error:
        print(f"robotd inspect: error: {error}", file=sys.stderr)
        return 2
    rows = [record.row for record in scan.episodes]
    print(format_table(rows))
    print(summary_line(summarise(rows, scan.summary)))
    out_dir = Path(args.out) if args.out else scan.logdir / "inspect"
    try:
        index = _write_report(scan, out_dir, episodes=args.episodes, model=not args.no_model, device=args.device)
    except OSError as error:
        print(f"robotd inspect: error: report directory {str(out_dir)!r} cannot be written ({_one_line(error)}); "
              f"give another --out", file=sys.stderr)
        return 2
    print(f"report: {index} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
