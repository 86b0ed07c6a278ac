"""scripts/eval_gym.py end to end: a short CartPole session through daemon, actor and learner, and
its learning curve checked against the episode files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("matplotlib")

from robotd.episodes import read_episode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "actor.prefill_steps=100", "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4",
        "--set", "learner.batch_length=16", "--set", "learner.publish_every_updates=2", "--set", "learner.train_ratio=2"]


def test_eval_gym_writes_one_entry_per_finished_episode_with_the_recorded_returns(tmp_path):
    out, logdir = tmp_path / "cartpole.json", tmp_path / "session"
    argv = [sys.executable, str(ROOT / "scripts" / "eval_gym.py"), "CartPole-v1", "--steps", "300",
            "--out", str(out), "--logdir", str(logdir), *TINY]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = json.loads(out.read_text())
    assert curve["env"] == "CartPole-v1" and out.with_suffix(".png").stat().st_size > 1000
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] == summary["logged_steps"] == 300 and summary["pacing"] == "lockstep"
    # Lockstep with a train ratio: the simulation waited for the learner, so trained weights acted.
    actor = json.loads((logdir / "stats" / "actor.json").read_text())
    assert actor["learner_waits"] > 0 and summary["policy_version_max"] > 0 and max(curve["policy_versions"]) > 0
    episodes = [read_episode(path) for path in sorted((logdir / "episodes").glob("*.h5"))]
    finished = [e for e in episodes if e.steps["is_terminal"][-1] or {"truncated", "time_limit"} & set(e.attrs["flags"])]
    # A random CartPole policy drops the pole within a few dozen steps: every episode but the cut-off last one ends.
    assert len(finished) >= len(episodes) - 1 >= 3
    assert len(curve["steps"]) == len(curve["returns"]) == len(finished)
    expected_returns = [float(np.sum(e.steps["reward"], dtype=np.float64)) for e in finished]
    assert curve["returns"] == pytest.approx(expected_returns)
    assert curve["steps"] == [int(e.steps["timing/stream_step"][-1]) + 1 for e in finished]
    assert curve["steps"] == sorted(curve["steps"]) and curve["steps"][-1] <= 300
    for episode, length in zip(finished, curve["lengths"]):
        # CartPole pays 1 per step; the first step of an episode (the reset) has no reward.
        assert episode.steps["reward"][0] == 0 and np.all(episode.steps["reward"][1:] == 1)
        assert episode.steps["is_first"][0] and length == len(episode.steps["reward"]) - 1
        assert episode.steps["is_terminal"][-1] and "terminated" in episode.attrs["flags"]
        actions = episode.steps["action"][:-1]                # the last step's action was the reset
        assert np.all(actions.sum(axis=1) == 1) and set(np.unique(actions)) <= {0.0, 1.0}   # one-hot
        assert set(episode.steps) >= {"obs/state"} and not {"obs/reward", "obs/terminated"} & set(episode.steps)


def test_published_reference_curves_are_read_and_bad_names_fail_in_one_line(tmp_path):
    import gzip

    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_gym

    runs = [{"task": "dmc_cartpole_balance", "method": "dreamerv3", "seed": seed, "xs": [0, 10, 20],
             "ys": [0.0, 100.0 * (seed + 1), 200.0]} for seed in range(2)]
    (tmp_path / "dmc_proprio-dreamerv3.json.gz").write_bytes(gzip.compress(json.dumps(runs).encode()))
    curve = eval_gym.reference_curve("dmc_proprio:dmc_cartpole_balance", tmp_path)
    assert curve["steps"] == [0, 10, 20] and curve["returns"] == [0.0, 150.0, 200.0] and curve["seeds"] == 2
    with pytest.raises(ValueError, match="no task 'dmc_walker_walk'.*dmc_cartpole_balance"):
        eval_gym.reference_curve("dmc_proprio:dmc_walker_walk", tmp_path)
    with pytest.raises(ValueError, match="known suite:method pairs: dmc_proprio:dreamerv3"):
        eval_gym.reference_curve("dmc_vision:dmc_walker_walk", tmp_path)
    with pytest.raises(ValueError, match="is not SUITE:TASK"):
        eval_gym.reference_curve("walker", tmp_path)
