"""``robotd eval``: a session's checkpoint played greedily on fixed episodes beside a random policy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

from learner import evaluate as evaluate_module  # noqa: E402
from learner.dreamer import Dreamer  # noqa: E402
from learner.sizes import model_config  # noqa: E402
from robotd import config as config_module  # noqa: E402
from robotd import session, steps  # noqa: E402
from robotd.gym_envs import RobotEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def point_config(dim: int) -> config_module.Config:
    return config_module.from_dict({
        "robot": {"name": "env", "driver": "gym",
                  "args": {"env_id": "robotd.gym_envs:robotd/PointReach-v0",
                           "make_args": {"dim": dim, "length": 12}}},
        "control": {"rate_hz": 20, "pacing": "lockstep"},
        "task": {"name": "gym", "episode_steps": 1000},
        "learner": {"model": {"preset": "tiny"}},
    })


def fake_session(logdir: Path, *, trained_dim: int = 1, session_dim: int = 1) -> Path:
    """A session directory holding a config and a checkpoint written as the learner writes it (untrained)."""
    (logdir / session.CHECKPOINTS).mkdir(parents=True)
    config_module.save(point_config(session_dim), logdir / session.CONFIG)
    env = RobotEnv(point_config(trained_dim))
    try:
        torch.manual_seed(0)
        agent = Dreamer(env.obs_spec, env.action_dim, model_config(env.config.learner.model))
        spec = steps.step_spec(env.obs_spec, env.action_dim, ["env"])
    finally:
        env.close()
    torch.save({"agent": agent.checkpoint(), "version": 7, "replayed_steps": 0, "action_discrete": False,
                "spec": {key: [list(shape), dtype] for key, (shape, dtype) in spec.items()}},
               logdir / session.CHECKPOINTS / "latest.pt")
    return logdir


def test_eval_plays_the_same_fixed_episodes_for_both_policies_and_writes_json(tmp_path):
    logdir = fake_session(tmp_path / "run")
    lines: list[str] = []
    report = evaluate_module.evaluate(logdir, episodes=3, seed=50, out=lines.append)
    assert report["seeds"] == [50, 51, 52] and report["version"] == 7 and report["explore"] is False
    assert [row["seed"] for row in report["episodes"]["policy"]] == [50, 51, 52]
    assert [row["seed"] for row in report["episodes"]["random"]] == [50, 51, 52]
    assert all(row["steps"] == 12 for rows in report["episodes"].values() for row in rows)   # 12-step episodes
    # greedy acting is deterministic: the same seeds give the same returns again
    again = evaluate_module.evaluate(logdir, episodes=3, seed=50, random=False, out=lambda line: None)
    assert [row["return"] for row in again["episodes"]["policy"]] == [row["return"] for row in
                                                                       report["episodes"]["policy"]]
    assert "random" not in again["episodes"]
    # other seeds draw other episodes
    other = evaluate_module.evaluate(logdir, episodes=3, seed=90, random=False, out=lambda line: None)
    assert [row["return"] for row in other["episodes"]["policy"]] != [row["return"] for row in
                                                                       report["episodes"]["policy"]]
    summary = report["summary"]["policy"]
    assert summary["mean_return"] == pytest.approx(np.mean([row["return"] for row in report["episodes"]["policy"]]))
    assert len(lines) == 4 and lines[-1].startswith("policy (greedy, 0 updates, weights v7): mean return")

    result = subprocess.run([sys.executable, "-m", "robotd", "eval", str(logdir), "--episodes", "2", "--no-random"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((logdir / "eval" / "eval-0.json").read_text())
    assert written["seeds"] == [evaluate_module.DEFAULT_SEED, evaluate_module.DEFAULT_SEED + 1]
    assert "figures: " in result.stdout


@pytest.mark.parametrize("case, message", [
    ("no_config", r"^robotd eval: error: .*: no config.yaml: pass the directory of a robotd train session$"),
    ("no_checkpoint", r"^robotd eval: error: .*latest.pt: no checkpoint: .*train first"),
    ("other_observations", r"^robotd eval: error: .*latest.pt was trained on other observations .*: evaluate "
                           r"with the session's own config$"),
    ("zero_episodes", r"^robotd eval: error: --episodes 0 must be a positive integer, e.g. --episodes 10$"),
])
def test_bad_input_fails_in_one_line(tmp_path, case, message):
    import re

    logdir = tmp_path / "run"
    extra: list[str] = []
    if case == "no_config":
        logdir.mkdir()
    elif case == "no_checkpoint":
        fake_session(logdir)
        (logdir / session.CHECKPOINTS / "latest.pt").unlink()
    elif case == "other_observations":
        fake_session(logdir, trained_dim=2, session_dim=1)
    else:
        fake_session(logdir)
        extra = ["--episodes", "0"]
    result = subprocess.run([sys.executable, "-m", "robotd", "eval", str(logdir), *extra],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert not (logdir / "eval").exists()
