"""Suite-wide settings: every device address in a test must be a loopback address (see robotd.daemon.robot_io)."""
import os

# A real-robot config run by a test without its address overridden to a fake is refused before it connects.
os.environ.setdefault("ROBOTD_LOOPBACK_ONLY", "1")


import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def recorded_session(tmp_path_factory) -> Path:
    """One short recorded session, made once per test run and shared (read it, never write into it).

    `robotd train configs/mock_arm.yaml` for 300 steps in lockstep pacing with a train ratio, so the learner
    trains along: the mock arm with its 64x64 camera, three 100-step episodes, learner metrics, a checkpoint,
    world-model report GIFs and every file a session leaves (episodes/*.h5, metrics/*.jsonl,
    checkpoints/latest.pt, reports/, config.yaml, summary.json)."""
    logdir = tmp_path_factory.mktemp("recorded") / "mock_arm"
    argv = [sys.executable, "-m", "robotd", "train", str(_ROOT / "configs" / "mock_arm.yaml"), "--steps", "300",
            "--logdir", str(logdir), "--set", "control.pacing=lockstep", "--set", "learner.train_ratio=16",
            "--set", "actor.prefill_steps=100", "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4",
            "--set", "learner.batch_length=16", "--set", "learner.publish_every_updates=2",
            "--set", "learner.report_every_s=15", "--set", "actor.drain_timeout_s=90"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir
