"""Several simulated robots feeding one learner (robotd train --robots N): per-robot seeds, episodes, streams and
accounting, and one robot failing while the others go on."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from robotd.episodes import count_steps, read_episode
from tests import procs

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=100",
        "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
        "--set", "learner.publish_every_updates=2", "--set", "task.episode_steps=100"]


def train_argv(logdir: Path, robots: int, steps: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--robots",
            str(robots), "--steps", str(steps), "--logdir", str(logdir), *FAST, *more]


def robot_files(logdir: Path, robot: str) -> list[Path]:
    return sorted((logdir / "episodes").glob(f"{robot}-*.h5"))


def test_two_robots_feed_one_learner_with_exact_per_robot_accounting(tmp_path):
    logdir = tmp_path / "fleet"
    # Replay in two shards, shard 0 in the learner's process (learner.replay_in_learner), shard 1 a Ray actor.
    result = subprocess.run(train_argv(logdir, 2, 801, "--set", "learner.replay_in_learner=true", "--set",
                                       "learner.replay_shards=2"), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((logdir / "summary.json").read_text())
    robots = summary["robots"]
    assert sorted(robots) == ["robot0", "robot1"]
    assert robots["robot0"]["env_steps"] == 401 and robots["robot1"]["env_steps"] == 400   # --steps is the total
    for name, figures in robots.items():
        files = robot_files(logdir, name)
        assert figures["logged_steps"] == sum(count_steps(path) for path in files) == figures["env_steps"]
        assert figures["ingested_steps"] == figures["env_steps"] and figures["lost_steps"] == 0
        assert figures["episodes"] == len(files) >= 2 and figures["ended"] == "steps done"
        assert figures["control_rate_hz"] > 0
    assert summary["env_steps"] == summary["logged_steps"] == summary["ingested_steps"] == 801
    assert summary["lost_steps"] == 0 and summary["exit_reason"] == "steps done"
    learner = json.loads((logdir / "stats" / "learner.json").read_text())
    assert learner["ingested_steps_by_actor"] == {"robot0": 401, "robot1": 400}
    assert learner["replay_in_learner"] is True and learner["replay_shards"] == 2
    assert sum(learner["replay_steps_per_shard"]) == learner["replay_steps"] == 801
    assert learner["replay_actors_per_shard"] == [1, 1]          # one robot in each shard
    for process in ("daemon.robot0", "daemon.robot1", "actor.robot0", "actor.robot1"):
        assert (logdir / "stats" / f"{process}.json").is_file(), process
    # Each robot its own seed: the two mock arms' first observations differ (reset noise is drawn from the seed).
    firsts = [read_episode(robot_files(logdir, name)[0]).steps for name in ("robot0", "robot1")]
    key = next(key for key in firsts[0] if key.endswith("joint_pos"))
    assert not np.allclose(firsts[0][key][0], firsts[1][key][0])


def test_one_robot_failing_stops_alone_and_the_other_finishes_its_steps(tmp_path):
    logdir = tmp_path / "one_fails"
    process = subprocess.Popen(train_argv(logdir, 2, 1200), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not robot_files(logdir, "robot1"):
        time.sleep(0.3)
    daemon = [p for p in procs.processes() if str(logdir) in p.cmdline and "robotd.daemon" in p.argv
              and "robot1" in p.argv]
    assert len(daemon) == 1, "robot1's daemon not found"
    os.kill(daemon[0].pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]                # a robot failed
    assert "robot1 stopped (daemon.robot1 killed by signal 9 (SIGKILL)); the other robots go on" in stderr
    summary = json.loads((logdir / "summary.json").read_text())
    robot0, robot1 = summary["robots"]["robot0"], summary["robots"]["robot1"]
    assert robot0["ended"] == "steps done" and robot0["env_steps"] == 600           # it went on to its share
    assert robot0["logged_steps"] == robot0["ingested_steps"] == 600 and robot0["lost_steps"] == 0
    assert robot1["ended"].startswith("daemon.robot1 killed by signal 9")
    assert robot1["env_steps"] < 600 and robot1["lost_steps"] == 0       # what robot1 collected still arrived
    assert procs.live_naming(str(logdir)) == []


def test_a_fleet_of_real_robots_on_one_machine_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "ur5_reach.yaml"),
                             "--robots", "2", "--set", "robot.args.host=127.0.0.9", "--logdir", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("robotd train: error: --robots 2: robot.driver = 'ur5' is not a simulated driver")
