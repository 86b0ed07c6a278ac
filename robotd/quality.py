"""Episode timing quality: statistics computed when an episode is written, and the bounds that flag it.

``episode_stats`` summarises an episode's steps (control period p50/p99, late steps, stale readings
and sensor age per device, camera frames dropped or repeated, protective stops, return, success
(``is_success`` at the last step), policy versions); the actor stores them in the episode file. ``assess`` compares them with the config's
``quality`` bounds and returns one flag per violated bound, ``"quality:<what> (<value>, bound
<bound>)"``; the actor adds those flags to the file's flags. Flagged episodes stay on disk and are
kept out of offline training (``robotd replay``) and of a restarted learner's refill unless asked
for (``--include-flagged``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from robotd import steps

QUALITY_PREFIX = "quality:"


def camera_fps(config) -> dict[str, float]:
    """Each configured camera's frame rate where its args give one (``fps``): device name -> fps."""
    if config is None:
        return {}
    return {camera.name: float(camera.args["fps"]) for camera in config.cameras
            if isinstance(camera.args.get("fps"), (int, float))}


def _frames(data: Mapping[str, np.ndarray], device: str) -> np.ndarray | None:
    frames = data.get(f"timing/{device}/frame_number")
    if frames is None:
        return None
    frames = np.asarray(frames, np.int64)
    return frames if frames.size and np.all(frames >= 0) else None


def episode_stats(data: Mapping[str, np.ndarray], rate_hz: float, devices: Iterable[str],
                  camera_fps: Mapping[str, float] | None = None, flags: Iterable[str] = ()) -> dict:
    """Timing quality of one episode from its step arrays (key -> (T, ...)), as plain numbers.

    ``camera_fps`` gives a camera's frame rate where it is known: a step may then see up to
    ceil(fps / rate) new frames without any counting as dropped; otherwise the episode's median
    frame advance per step is taken as the normal one."""
    length = len(data.get(steps.REWARD, ()))
    t_ns = np.asarray(data.get(steps.T_TICK_NS, np.zeros(0)), np.float64)
    periods_ms = np.diff(t_ns) / 1e6 if len(t_ns) > 1 else np.zeros(1)
    versions = np.asarray(data.get(steps.POLICY_VERSION, np.zeros(0, np.int64)))
    stats = {"length": int(length), "late_steps": int(np.sum(data.get(steps.LATE, 0))),
             "period_ms_p50": float(np.percentile(periods_ms, 50)), "period_ms_p99": float(np.percentile(periods_ms, 99)),
             "target_period_ms": 1000.0 / rate_hz, "return": float(np.sum(data.get(steps.REWARD, 0.0))),
             "policy_version_min": int(versions.min()) if versions.size else 0,
             "policy_version_max": int(versions.max()) if versions.size else 0,
             "protective_stops": int("protective_stop" in set(flags))}
    # The episode succeeded when the task counted the state at its last step as solved.
    success = data.get(steps.IS_SUCCESS)
    stats["success"] = bool(success is not None and len(success) and np.asarray(success)[-1])
    for device in devices:
        stats[f"{device}_stale"] = int(np.sum(data.get(f"timing/{device}/stale", 0)))
        ages_ms = np.asarray(data.get(f"timing/{device}/age_ns", np.zeros(1)), np.float64) / 1e6
        stats[f"{device}_age_ms_p99"] = float(np.percentile(ages_ms, 99)) if len(ages_ms) else 0.0
        frames = _frames(data, device)
        if frames is None or len(frames) < 2:
            continue
        advance = np.diff(frames)
        fps = (camera_fps or {}).get(device)
        normal = math.ceil(fps / rate_hz - 1e-9) if fps else max(1, int(np.ceil(np.median(advance))))
        stats[f"{device}_dropped_frames"] = int(np.sum(np.clip(advance - normal, 0, None)))
        stats[f"{device}_repeated_frames"] = int(np.sum(advance == 0)) if (fps is None or fps >= rate_hz) else 0
    return stats


def assess(stats: Mapping[str, float], quality, devices: Iterable[str], flags: Iterable[str] = ()) -> list[str]:
    """The quality flags of an episode: one ``"quality:<what> (<value>, bound <bound>)"`` per bound it breaks."""
    found = []
    length = max(1, int(stats.get("length", 0)))
    target = float(stats.get("target_period_ms", 0.0))
    p99 = float(stats.get("period_ms_p99", 0.0))
    if target > 0 and length > 1 and p99 > quality.max_period_p99_factor * target:
        found.append(f"{QUALITY_PREFIX}period_p99 ({p99:.1f} ms, bound {quality.max_period_p99_factor * target:.1f} ms)")
    late = int(stats.get("late_steps", 0)) / length
    if late > quality.max_late_fraction:
        found.append(f"{QUALITY_PREFIX}late_steps ({late:.0%}, bound {quality.max_late_fraction:.0%})")
    for device in devices:
        stale = int(stats.get(f"{device}_stale", 0)) / length
        if stale > quality.max_stale_fraction:
            found.append(f"{QUALITY_PREFIX}{device}_stale ({stale:.0%}, bound {quality.max_stale_fraction:.0%})")
        dropped = int(stats.get(f"{device}_dropped_frames", 0)) / length
        if dropped > quality.max_dropped_frame_fraction:
            found.append(f"{QUALITY_PREFIX}{device}_dropped_frames ({dropped:.2f} per step, bound "
                         f"{quality.max_dropped_frame_fraction:.2f})")
    if quality.exclude_protective_stops and "protective_stop" in set(flags):
        found.append(f"{QUALITY_PREFIX}protective_stop (exclude_protective_stops)")
    return found


def quality_flags(flags: Iterable[str]) -> list[str]:
    """The quality flags among an episode's flags (empty when it is fit for training)."""
    return [flag for flag in flags if str(flag).startswith(QUALITY_PREFIX)]
