"""Bad input from the outside: each gives one clear line, and nothing already collected is lost."""
import json
import subprocess
import sys
from pathlib import Path

import zmq

from robotd.episodes import count_steps
from robotd.netutil import free_tcp_ports

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "mock_arm.yaml")


def run(argv, timeout_s=60):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error" in line.lower()]


def test_a_port_already_in_use_is_named_with_what_to_do(tmp_path):
    (port,) = free_tcp_ports(1)
    context = zmq.Context()
    holder = context.socket(zmq.ROUTER)
    holder.bind(f"tcp://127.0.0.1:{port}")
    try:
        result = run(["robotd", "daemon", CONFIG, "--set", f"network.control=tcp://127.0.0.1:{port}",
                      "--set", "control.realtime=off"])
    finally:
        holder.close(0)
        context.term()
    assert result.returncode == 2
    assert error_lines(result) == [f"robotd daemon: error: control channel (network.control): tcp://127.0.0.1:{port} "
                                   f"is already in use (another robotd running?): stop it or choose another port with --set"]


def test_an_unreachable_daemon_is_named_in_one_line(tmp_path):
    (port,) = free_tcp_ports(1)
    result = run(["actor", CONFIG, "--set", f"network.control=tcp://127.0.0.1:{port}",
                  "--set", "actor.daemon_timeout_s=0.5", "--logdir", str(tmp_path / "s")])
    assert result.returncode == 2
    assert error_lines(result) == [f"robotd actor: error: daemon at tcp://127.0.0.1:{port} did not answer within 0.5 s: "
                                   f"start `robotd daemon` first or fix network.control"]


def test_an_unreachable_learner_loses_nothing_the_robot_collected(tmp_path):
    control, learner = free_tcp_ports(2)
    logdir = tmp_path / "s"
    common = [CONFIG, "--set", f"network.control=tcp://127.0.0.1:{control}", "--set", "control.rate_hz=50",
              "--set", "control.action_deadline_ms=15", "--set", "control.realtime=off", "--logdir", str(logdir)]
    daemon = subprocess.Popen([sys.executable, "-m", "robotd.daemon", *common], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = run(["actor", *common, "--learner", f"tcp://127.0.0.1:{learner}", "--steps", "320",
                      "--set", "actor.drain_timeout_s=0.5"], timeout_s=90)
    finally:
        daemon.terminate()
        daemon.wait(10)
    # It says so and exits non-zero, and keeps every unacked chunk on disk for the next actor on this directory.
    assert result.returncode == 3, result.stderr[-2000:]
    assert "not answering" in result.stderr and "Experience is kept" in result.stderr
    assert f"chunks ({320} steps) never reached a learner: they are kept in the log directory's spool/" in result.stderr
    stats = json.loads((logdir / "stats" / "actor.json").read_text())
    assert stats["env_steps"] == 320 and stats["unacked_chunks"] > 0 and stats["unacked_steps"] == 320
    assert len(list((logdir / "spool").rglob("*.chunk"))) == stats["unacked_chunks"]
    assert sum(count_steps(p) for p in (logdir / "episodes").glob("*.h5")) == 320


def test_a_daemon_refuses_a_control_address_other_machines_can_reach():
    result = run(["robotd", "daemon", CONFIG, "--set", "network.control=tcp://0.0.0.0:5999"])
    assert result.returncode == 2
    assert error_lines(result) == ["robotd daemon: error: network.control tcp://0.0.0.0:5999 is reachable from other "
                                   "machines: the daemon takes actions only from this machine; use "
                                   "tcp://127.0.0.1:PORT or ipc://PATH"]


def test_a_learner_bound_beyond_loopback_without_keys_says_how_to_make_them(tmp_path):
    result = run(["learner", CONFIG, "--bind", "tcp://0.0.0.0:5998", "--logdir", str(tmp_path / "l")])
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "robotd keys DIR" in lines[0] and "network.keys_dir" in lines[0]


def test_train_refuses_a_logdir_that_already_holds_a_session(tmp_path):
    (tmp_path / "old" / "episodes").mkdir(parents=True)
    (tmp_path / "old" / "episodes" / "actor0-000000.h5").write_bytes(b"recorded")
    result = run(["robotd", "train", CONFIG, "--logdir", str(tmp_path / "old")])
    assert result.returncode == 2
    old = tmp_path / "old"
    assert error_lines(result) == [f"robotd train: error: log directory {str(old)!r} already holds a session, with no "
                                   f"checkpoint yet: choose a new --logdir (its episodes and checkpoints are kept as "
                                   f"they are); to continue from its episodes, train a checkpoint with `robotd replay "
                                   f"{old} --updates N` and start from it with --init"]
    assert (tmp_path / "old" / "episodes" / "actor0-000000.h5").read_bytes() == b"recorded"


def test_an_actor_restarted_into_its_log_directory_numbers_episodes_after_the_old_ones(tmp_path):
    from robotd.session import next_episode_id
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    for name in ("a0-000000.h5", "a0-000007.h5.journal", "a0-000003.h5", "b1-000042.h5"):
        (episodes / name).write_bytes(b"")
    assert next_episode_id(tmp_path, "a0") == 8
    assert next_episode_id(tmp_path, "c2") == 0
