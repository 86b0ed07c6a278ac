"""A learner killed mid-session and started again: the actor resends what was not acked, and the
new learner resumes from its checkpoint instead of starting from zero."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robotd.netutil import free_tcp_ports

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "mock_arm.yaml")


def start(argv, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(process: subprocess.Popen, signum=signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
    process.wait(30)


def wait_for(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_killed_learner_restarts_resumes_and_loses_nothing(tmp_path):
    """A learner started on its own (as on a separate machine), SIGKILLed and started again by hand.

    Slow set (38 s): the default suite covers the same resume-refill-resend path through `robotd train`'s own
    restart (tests/test_session.py::test_a_learner_that_dies_is_restarted_and_the_session_loses_nothing)."""
    control, experience, weights = free_tcp_ports(3)
    network = ["--set", f"network.control=tcp://127.0.0.1:{control}",
               "--set", f"network.weights=tcp://127.0.0.1:{weights}", "--set", "control.rate_hz=50",
               "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=50",
               "--set", "actor.resend_after_s=0.5", "--set", "learner.min_replay_steps=64",
               "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
               "--set", "learner.publish_every_updates=2", "--set", "learner.checkpoint_every_s=1"]
    learner_dir, robot_dir = tmp_path / "learner", tmp_path / "robot"
    learner_argv = ["learner", CONFIG, *network, "--bind", f"tcp://127.0.0.1:{experience}", "--logdir", str(learner_dir)]
    daemon = start(["robotd", "daemon", CONFIG, *network, "--logdir", str(robot_dir)], tmp_path / "daemon.log")
    learner = start(learner_argv, tmp_path / "learner1.log")
    actor = start(["actor", CONFIG, *network, "--learner", f"tcp://127.0.0.1:{experience}", "--steps", "1500",
                   "--logdir", str(robot_dir)], tmp_path / "actor.log")
    try:
        checkpoint = learner_dir / "checkpoints" / "latest.pt"
        assert wait_for(checkpoint.exists, 90), (tmp_path / "learner1.log").read_text()[-2000:]
        kill_group(learner)                                         # no goodbye, no final checkpoint
        time.sleep(2.0)                                             # the robot keeps going meanwhile
        learner = start(learner_argv, tmp_path / "learner2.log")
        assert actor.wait(120) == 0, (tmp_path / "actor.log").read_text()[-2000:]
    finally:
        kill_group(daemon, signal.SIGTERM)
        learner.send_signal(signal.SIGTERM)
        learner.wait(60)
        kill_group(learner)
        kill_group(actor)
    actor_stats = json.loads((robot_dir / "stats" / "actor.json").read_text())
    learner_stats = json.loads((learner_dir / "stats" / "learner.json").read_text())
    assert actor_stats["env_steps"] == 1500
    assert actor_stats["unacked_chunks"] == 0, "chunks produced while the learner was down never arrived"
    assert actor_stats["learner_restarts"] >= 1
    assert "resumed from checkpoint" in (tmp_path / "learner2.log").read_text()
    assert learner_stats["learner_updates"] > 0
    assert learner_stats["lost_steps"] == 0
    # Its own log directory holds no episodes, so the new learner asked the actor for its history: its replay
    # holds the whole session again, not only what came after the restart.
    assert learner_stats["refilled_steps"] == 0 and learner_stats["history_requests"] == 1
    assert actor_stats["history_acked_steps"] > 0
    assert learner_stats["ingested_steps"] == learner_stats["replay_steps"] == 1500
