"""Learning through the whole asynchronous stack: ``robotd train`` (daemon, actor and learner as processes,
lockstep pacing with a train ratio) on ``robotd/PointReach-v0`` must beat its own random prefill.

The point starts and the target is drawn anew every episode, so a policy that ignores the target cannot
do well; the measure is the mean return of the last episodes against the random-policy episodes of the
same session and a scripted controller that heads straight for the target. The run fails when learning
breaks anywhere: the learner's losses, the replay and its context, the weights reaching the actor, the actor
using them. The learner is the tiny test model with a fast learning rate (as in tests/test_learning.py), so
about 800 updates fit in two minutes on two cores; the small_cpu profile's own curves are benchmarks
(benchmarks/small_cpu/), not tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from robotd.curves import finished_episodes  # noqa: E402
from robotd.gym_envs import PointReach  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "robotd.gym_envs:robotd/PointReach-v0"
STEPS = 1050
PREFILL = 248                      # 8 random episodes of 31 steps


def scripted_return(episodes: int = 40) -> float:
    """Mean return of heading straight for the target at full speed (about the best there is)."""
    env, total = PointReach(), 0.0
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            action = np.clip((obs[2:] - obs[:2]) / env.speed, -1.0, 1.0)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
    return total / episodes


# In the slow set: the processes' timing (when weights reach the actor, which batches the prefetcher holds) makes
# runs with the same seed differ, and at this budget one of three runs measured ended worse than random (67%, -33%
# and 50% of the gap closed). The in-process learning test (tests/test_learning.py) is the default suite's guard.
@pytest.mark.slow
def test_the_stack_learns_point_reach(tmp_path):
    config = tmp_path / "point.yaml"
    config.write_text(json.dumps({
        "robot": {"name": "env", "driver": "gym", "args": {"env_id": ENV_ID}},
        "control": {"rate_hz": 20, "action_deadline_ms": 45, "watchdog_s": 5.0, "pacing": "lockstep"},
        "task": {"name": "gym", "episode_steps": 1000},
        "actor": {"prefill_steps": PREFILL, "chunk_steps": 16, "drain_timeout_s": 90.0},
        "learner": {"model": {"preset": "tiny", "overrides": {"lr": 0.001, "warmup": 20}}, "batch_size": 16,
                    "batch_length": 16, "train_ratio": 256, "threads": 1, "min_replay_steps": PREFILL,
                    "publish_every_updates": 2, "report_every_s": 0},
    }))
    logdir = tmp_path / "run"
    argv = [sys.executable, "-m", "robotd", "train", str(config), "--steps", str(STEPS), "--logdir", str(logdir)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] == summary["logged_steps"] == summary["ingested_steps"] == STEPS
    episodes = finished_episodes(logdir)
    random = [e["return"] for e in episodes if e["policy_version"] == 0]
    learned = [e["return"] for e in episodes if e["policy_version"] > 0]
    assert len(random) >= 7 and len(learned) >= 20, (len(random), len(learned))
    random_mean, last_mean, best = float(np.mean(random)), float(np.mean(learned[-10:])), scripted_return()
    closed = (last_mean - random_mean) / (best - random_mean)
    print(f"PointReach through the stack: random {random_mean:.1f}, last 10 learned {last_mean:.1f}, scripted "
          f"{best:.1f}: {closed:.0%} of the gap closed; {summary['learner_updates']} updates in "
          f"{summary['wall_s']:.0f} s")
    assert closed >= 0.4          # 0.67, -0.33 and 0.50 measured (seed 0, 803 updates, 91-130 s on two cores)
