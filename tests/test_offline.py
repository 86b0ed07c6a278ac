"""Offline training from recorded sessions (robotd replay), episode timing quality, and train --init."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from robotd import quality, steps
from robotd.config import QualityConfig
from robotd.episodes import read_episode

ROOT = Path(__file__).resolve().parent.parent
FAST_LR = "learner.model.overrides={lr: 0.0003, warmup: 10}"


def replay(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd", "replay", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# --- quality: statistics and bounds -------------------------------------------------------------
def _steps(n=100, period_ms=40.0, late=0, stale=0, frames=None):
    t = np.arange(n) * period_ms * 1e6
    data = {steps.REWARD: np.ones(n, np.float32), steps.T_TICK_NS: t.astype(np.int64),
            steps.LATE: np.arange(n) < late, steps.POLICY_VERSION: np.arange(n) // 10,
            "timing/camera/stale": np.arange(n) < stale, "timing/camera/age_ns": np.full(n, 5_000_000)}
    if frames is not None:
        data["timing/camera/frame_number"] = np.asarray(frames, np.int64)
    return data


def test_stats_measure_periods_late_stale_and_frames():
    data = _steps(late=7, stale=3, frames=np.arange(100))
    data[steps.T_TICK_NS][50:] += 200_000_000                  # one 240 ms period
    stats = quality.episode_stats(data, 25.0, ["camera"], {"camera": 25.0})
    assert stats["length"] == 100 and stats["late_steps"] == 7 and stats["camera_stale"] == 3
    assert stats["period_ms_p50"] == pytest.approx(40.0) and stats["period_ms_p99"] > 40.0
    assert stats["camera_dropped_frames"] == 0
    assert stats["policy_version_min"] == 0 and stats["policy_version_max"] == 9
    later = _steps()
    later[steps.POLICY_VERSION] = later[steps.POLICY_VERSION] + 3      # an episode run wholly on weights v3..v12
    assert quality.episode_stats(later, 25.0, [])["policy_version_min"] == 3
    gaps = np.arange(100)
    gaps[60:] += 5                                            # five frames lost once
    gaps[30] = gaps[29]                                       # one frame seen twice
    stats = quality.episode_stats(_steps(frames=gaps), 25.0, ["camera"], {"camera": 25.0})
    assert stats["camera_dropped_frames"] == 5 + 1 and stats["camera_repeated_frames"] == 1
    # a 30 fps camera read at 25 Hz advances 1 or 2 frames per step: none of that is a drop
    regular = np.floor(np.arange(100) * 30 / 25).astype(np.int64)
    assert quality.episode_stats(_steps(frames=regular), 25.0, ["camera"], {"camera": 30.0})["camera_dropped_frames"] == 0


def test_assess_flags_every_bound_broken_and_nothing_else():
    bounds = QualityConfig(max_period_p99_factor=2.0, max_late_fraction=0.1, max_stale_fraction=0.1,
                           max_dropped_frame_fraction=0.05)
    clean = quality.episode_stats(_steps(late=5, stale=5, frames=np.arange(100)), 25.0, ["camera"])
    assert quality.assess(clean, bounds, ["camera"]) == []
    slow = _steps(late=20, stale=30, frames=np.r_[np.arange(50), np.arange(60, 110)])
    slow[steps.T_TICK_NS] = (np.arange(100) * 40e6 + np.clip(np.arange(100) - 94, 0, None) * 100e6).astype(np.int64)
    flags = quality.assess(quality.episode_stats(slow, 25.0, ["camera"], {"camera": 25.0}), bounds, ["camera"])
    kinds = sorted(flag.split(" ")[0] for flag in flags)
    assert kinds == ["quality:camera_dropped_frames", "quality:camera_stale", "quality:late_steps",
                     "quality:period_p99"], flags
    assert all(flag.startswith(quality.QUALITY_PREFIX) and "bound" in flag for flag in flags)
    assert quality.quality_flags(["time_limit", *flags]) == flags
    stopped = quality.assess(clean, QualityConfig(exclude_protective_stops=True), ["camera"], ["protective_stop"])
    assert stopped == ["quality:protective_stop (exclude_protective_stops)"]


# --- robotd replay ------------------------------------------------------------------------------
def test_offline_training_lowers_the_world_model_loss_and_leaves_a_resumable_session(recorded_session, tmp_path):
    out = tmp_path / "offline"
    result = replay(recorded_session, "--updates", 60, "--logdir", out, "--set", FAST_LR,
                    "--set", "learner.report_every_s=3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "replay.json").read_text())
    recorded = json.loads((recorded_session / "summary.json").read_text())
    assert summary["episodes_used"] == recorded["episodes"] and summary["steps"] == recorded["logged_steps"]
    assert summary["left_out"] == []
    before = summary["eval_before"]["report/loss/world_model"]
    after = summary["eval_after"]["report/loss/world_model"]
    assert after < 0.8 * before, (before, after)
    assert (out / "checkpoints" / "latest.pt").exists() and (out / "config.yaml").exists()
    records = [json.loads(line) for line in (out / "metrics" / "learner.jsonl").read_text().splitlines()]
    assert any("loss/world_model" in r for r in records) and any("report/loss/image" in r for r in records)
    assert sorted((out / "reports").glob("openloop-image-*.gif"))
    assert "[" in result.stderr and "60/60 updates" in result.stderr          # the progress bar's last state
    # and on from that checkpoint: the loss on the same evaluation batch keeps falling
    again = replay(recorded_session, "--updates", 20, "--logdir", tmp_path / "again", "--set", FAST_LR,
                   "--init", out / "checkpoints" / "latest.pt")
    assert again.returncode == 0, again.stderr[-3000:]
    continued = json.loads((tmp_path / "again" / "replay.json").read_text())
    assert continued["eval_before"]["report/loss/world_model"] == pytest.approx(after, rel=0.05)
    assert continued["total_updates"] == 80


def _flag(path: Path, flag: str) -> None:
    with h5py.File(path, "r+") as file:
        flags = [f.decode() if isinstance(f, bytes) else str(f) for f in file.attrs.get("flags", [])]
        file.attrs["flags"] = np.array([*flags, flag], dtype=h5py.string_dtype())


def test_flagged_episodes_are_left_out_and_listed_unless_included(recorded_session, tmp_path):
    session = tmp_path / "session"
    shutil.copytree(recorded_session, session)
    flagged = sorted((session / "episodes").glob("*.h5"))[1]
    _flag(flagged, "quality:late_steps (40%, bound 10%)")
    assert "quality:late_steps (40%, bound 10%)" in list(read_episode(flagged).attrs["flags"])
    result = replay(session, "--updates", 2, "--logdir", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "replay.json").read_text())
    recorded = json.loads((recorded_session / "summary.json").read_text())
    assert summary["episodes_used"] == recorded["episodes"] - 1
    assert summary["steps"] == recorded["logged_steps"] - len(read_episode(flagged).steps["reward"])
    assert summary["left_out"] == [{"path": str(flagged), "reason": "quality:late_steps (40%, bound 10%)"}]
    assert f"left out {flagged}: quality:late_steps" in result.stderr
    included = replay(session, "--updates", 2, "--logdir", tmp_path / "all", "--include-flagged")
    assert included.returncode == 0
    assert json.loads((tmp_path / "all" / "replay.json").read_text())["episodes_used"] == recorded["episodes"]


def test_unusable_input_fails_in_one_line(recorded_session, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = replay(empty, "--updates", 5, "--config", recorded_session / "config.yaml", "--logdir", tmp_path / "o1")
    assert result.returncode == 2 and "holds no recorded episodes" in result.stderr
    taken = replay(recorded_session, "--updates", 1, "--logdir", recorded_session)
    assert taken.returncode == 2 and "already holds a session" in taken.stderr
    long = replay(recorded_session, "--updates", 1, "--logdir", tmp_path / "o2", "--set", "learner.batch_length=500")
    assert long.returncode == 2 and "learner.batch_length" in long.stderr


# --- the actor flags episodes; robotd train --init ---------------------------------------------
def test_a_session_started_from_a_checkpoint_flags_its_stale_episodes(recorded_session, tmp_path):
    # The recorded session's own checkpoint (robotd replay writes the same kind: see the offline training test).
    checkpoint = recorded_session / "checkpoints" / "latest.pt"
    logdir = tmp_path / "online"
    # control.max_age_ms=1: the 30 fps camera's frames are always older than that at a tick, so every step has a
    # stale camera reading and every episode breaks quality.max_stale_fraction.
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "150",
            "--logdir", str(logdir), "--init", str(checkpoint),
            "--set", "control.pacing=lockstep", "--set", "actor.prefill_steps=0", "--set", "learner.min_replay_steps=64",
            "--set", "learner.batch_size=4", "--set", "learner.batch_length=16", "--set", "actor.drain_timeout_s=90",
            "--set", "control.max_age_ms=1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    actor = json.loads((logdir / "stats" / "actor.json").read_text())
    assert actor["random_steps"] == 0 and actor["network_steps"] == 150     # the checkpoint's policy acted from step 0
    episodes = [read_episode(p) for p in sorted((logdir / "episodes").glob("*.h5"))]
    assert len(episodes) == 2 and actor["flagged_episodes"] == 2
    for episode in episodes:
        flags = quality.quality_flags(episode.attrs["flags"])
        assert [flag.split(" ")[0] for flag in flags] == ["quality:camera_stale"], flags
        assert episode.stats["camera_stale"] > 0.1 * episode.stats["length"]
    # the live learner was told with each episode's last chunk and kept those steps out of its batches
    learner = json.loads((logdir / "stats" / "learner.json").read_text())
    assert learner["excluded_episodes"] == 2 and learner["excluded_steps"] == 150
    refused = replay(logdir, "--updates", 1, "--logdir", tmp_path / "none")
    assert refused.returncode == 2 and "no usable episode" in refused.stderr and "--include-flagged" in refused.stderr
