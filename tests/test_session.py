"""Whole sessions: `robotd train` with daemon, actor and learner as real processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from robotd.episodes import count_steps, read_episode
from robotd.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
from tests import procs  # noqa: E402
from tests.test_ray_local import _is_loopback, listening_sockets  # noqa: E402

FAST = ["--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=100",
        "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
        "--set", "learner.publish_every_updates=2"]


def session_processes(marker: str) -> list[str]:
    """Command lines of live processes that name ``marker`` (the session's log directory)."""
    return procs.live_naming(marker)


def train(config: str, logdir: Path, steps: int, extra=(), timeout_s=240) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / config), "--steps", str(steps),
            "--logdir", str(logdir), *FAST, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def assert_session_invariants(logdir: Path, steps: int | None) -> dict:
    summary = json.loads((logdir / "summary.json").read_text())
    if steps is not None:
        assert summary["env_steps"] == steps
    assert summary["logged_steps"] == summary["ingested_steps"] == summary["env_steps"] > 0
    assert summary["lost_steps"] == 0
    assert summary["unreadable_episodes"] == []
    episode_files = sorted((logdir / "episodes").glob("*.h5"))
    assert len(episode_files) == summary["episodes"]
    assert sum(count_steps(p) for p in episode_files) == summary["logged_steps"]
    return summary


def test_a_short_arm_session_streams_trains_uses_new_weights_and_survives_faults(tmp_path):
    logdir = tmp_path / "arm"
    # The stop 10 s after the robot starts: an actor that a busy machine holds at its start for more than 5 s
    # would find the robot already stopped, before its first episode, which then has nothing to flag.
    faults = ["--set", "robot.args.faults={protective_stop_at_s: 10.0}",
              "--set", "cameras.0.args.faults={frozen_at_s: 3.0, frozen_for_s: 0.5}",
              "--set", "learner.report_every_s=2"]
    # 1000 steps (20 s): on a busy machine the learner can take 12 s to start, train and publish twice
    result = train("mock_arm.yaml", logdir, 1000, faults)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_session_invariants(logdir, 1000)
    assert summary["protective_stops"] == 1
    assert summary["stale_readings"] > 0                                  # the frozen camera aged past max_age_ms
    stopped = [read_episode(p) for p in sorted((logdir / "episodes").glob("*.h5"))]
    stopped = [e for e in stopped if "protective_stop" in list(e.attrs.get("flags", []))]
    assert len(stopped) == 1 and stopped[0].steps["is_last"][-1]
    assert summary["policy_version_max"] >= 2, "weights never flowed back to the robot"
    # every channel ran under CurveZMQ with the session's own keys (robotd train makes them)
    assert "CurveZMQ on" in (logdir / "logs" / "learner.log").read_text() and (logdir / "keys" / "learner.key").exists()
    assert summary["learner_updates"] > 0
    assert summary["control_rate_hz"] == pytest.approx(50, rel=0.05)
    assert summary["period_error_ms"]["p50"] < 5
    assert (logdir / "config.yaml").exists() and (logdir / "checkpoints" / "latest.pt").exists()
    episode = read_episode(sorted((logdir / "episodes").glob("*.h5"))[0])
    assert episode.steps["obs/image"].shape[1:] == (64, 64, 3)
    assert episode.steps["is_first"][0] and episode.steps["is_last"][-1]
    assert session_processes(str(logdir)) == []
    ray_dirs, ray_left = procs.ray_of_session(logdir)
    assert ray_dirs and ray_left == []
    # World-model reports: per-head losses in the learner's metrics, open-loop videos as GIFs.
    reported = [r for r in read_metrics(logdir / "metrics" / "learner.jsonl") if "report/openloop/image" in r]
    assert reported and reported[-1]["report/loss/reward"] >= 0
    gifs = sorted((logdir / "reports").glob("openloop-image-*.gif"))
    assert gifs and Image.open(gifs[-1]).n_frames == 16


def test_a_target_train_ratio_is_held_by_the_learner_while_the_robot_keeps_its_rate(tmp_path):
    """learner.train_ratio = 2: the learner replays about two steps per collected step, and
    waits (rather than slowing the robot) when it is ahead."""
    logdir = tmp_path / "ratio"
    result = train("mock_legged.yaml", logdir, 500, ["--set", "learner.train_ratio=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_session_invariants(logdir, 500)
    batch_steps = 4 * 16
    assert summary["learner_updates"] > 0
    # Counted from the start of training (64 steps in replay): never ahead of the target by more
    # than one batch...
    collected = summary["ingested_steps"] - 64
    assert summary["replayed_steps"] <= 2 * collected + batch_steps
    # ...and the tiny model keeps up, so it is not far behind either.
    assert summary["replayed_steps"] >= 2 * collected * 0.5
    assert summary["control_rate_hz"] == pytest.approx(50, rel=0.05)


def test_ctrl_c_stops_everything_and_leaves_a_readable_session(tmp_path):
    logdir = tmp_path / "interrupted"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "100000",
            "--logdir", str(logdir), *FAST]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list((logdir / "episodes").glob("*.h5"))) < 2:
        time.sleep(0.5)
    assert len(list((logdir / "episodes").glob("*.h5"))) >= 2, "the session never got going"
    # Nothing of the session listens beyond loopback: not its channels, not Ray (GCS, raylet, workers, agents).
    listening = listening_sockets(procs.descendants(process.pid))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert len(listening) >= 4, listening                      # the four channels' binds at least (and Ray's)
    assert [entry for entry in listening if not _is_loopback(entry[1])] == [], listening
    summary = assert_session_invariants(logdir, None)
    assert summary["exit_reason"] == "interrupted"
    daemon = json.loads((logdir / "stats" / "daemon.json").read_text())
    assert daemon["ticks"] > 0
    assert session_processes(str(logdir)) == []
    ray_dirs, ray_left = procs.ray_of_session(logdir)
    assert ray_dirs and ray_left == []


def knock_as_strangers(logdir: Path, seconds: float = 4.0) -> bool:
    """Once the session's config is written, a process with a CURVE key pair of its own (not the session's) says
    hello on the control channel and publishes status for ``seconds``; True when it got to try."""
    import yaml
    import zmq

    from robotd import security, wire
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (logdir / "config.yaml").exists():
        time.sleep(0.1)
    if not (logdir / "config.yaml").exists():
        return False
    time.sleep(0.5)
    network = yaml.safe_load((logdir / "config.yaml").read_text())["network"]
    context = zmq.Context()
    sockets = []
    for kind, address in ((zmq.DEALER, network["control"]), (zmq.PUB, network["status"])):
        socket = context.socket(kind)
        socket.linger = 0
        socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
        socket.curve_serverkey = security.load_public(Path(network["keys_dir"]) / "learner.key")
        socket.connect(address)
        sockets.append(socket)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for socket, kind, meta in ((sockets[0], wire.Kind.HELLO, {"role": "actor", "session": "x", "actor_id": "x"}),
                                   (sockets[1], wire.Kind.STATUS, {"process": "actor", "counters": {"env_steps": 10**9}})):
            try:
                wire.send(socket, kind, meta, flags=zmq.NOBLOCK)    # a refused DEALER has no peer to queue for
            except zmq.Again:
                pass
        time.sleep(0.5)
    for socket in sockets:
        socket.close(0)
    context.term()
    return True


def test_minutes_ends_the_session_on_time_with_exit_code_zero(tmp_path):
    logdir = tmp_path / "timed"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "100000",
            "--minutes", "0.2", "--logdir", str(logdir), *FAST]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    knocked = knock_as_strangers(logdir)
    _, stderr = process.communicate(timeout=240)
    wall = time.monotonic() - started
    assert process.returncode == 0, stderr[-3000:]
    assert "0.2 minutes are up" in stderr
    summary = assert_session_invariants(logdir, None)
    assert summary["exit_reason"] == "time limit reached"
    # Strangers with key pairs of their own knocked on the control and status channels: refused and counted.
    assert knocked and summary["refused_connections"]["daemon"] >= 1 and summary["refused_connections"]["status"] >= 1
    assert 12 <= summary["wall_s"] and wall < 12 + 150       # the limit, then at most the shutdown budgets
    assert 0 < summary["env_steps"] < 100000
    assert session_processes(str(logdir)) == []


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "-5", "--steps -5: give a positive number of environment steps"),
    ("--steps", "0", "--steps 0: give a positive number"),
    ("--minutes", "0", "--minutes 0.0: give a positive wall-clock limit"),
])
def test_a_limit_that_is_not_positive_fails_in_one_line_before_anything_starts(tmp_path, flag, value, message):
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), flag, value,
            "--logdir", str(tmp_path / "x")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["mock_arm.yaml", "mock_legged.yaml"])
def test_the_acceptance_session_of_3000_steps(tmp_path, config):
    logdir = tmp_path / config
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / config), "--steps", "3000",
            "--logdir", str(logdir)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 180
    summary = assert_session_invariants(logdir, 3000)
    assert summary["policy_version_max"] >= 2
    assert session_processes(str(logdir)) == []


def test_a_bad_config_fails_in_one_line_before_anything_starts(tmp_path):
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"),
            "--set", "control.rate_hz=0", "--logdir", str(tmp_path / "x")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "robotd train: error: config: control.rate_hz = 0.0 is out of range: allowed 1.0 to 1000.0"]
    assert not (tmp_path / "x").exists()


def test_an_unwritable_logdir_fails_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"),
            "--logdir", str(blocker / "session")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not writable" in lines[0] and "--logdir" in lines[0]


def _prepare_many(logdir: str, times: int) -> None:
    from robotd import session
    for _ in range(times):
        session.prepare(logdir)


def test_processes_preparing_one_logdir_at_once_all_succeed(tmp_path):
    # The daemons of a fleet prepare the session directory at the same moment; a probe file shared between
    # them let one unlink the other's and fail with "not writable (No such file or directory)".
    import multiprocessing
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_prepare_many, args=(str(tmp_path / "fleet"), 300)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert not [path.name for path in (tmp_path / "fleet").iterdir() if path.name.startswith(".write-test")]


def find_learner_pid(logdir: Path) -> int | None:
    return procs.module_pid("learner", str(logdir))


def test_a_learner_that_dies_is_restarted_and_the_session_loses_nothing(tmp_path):
    logdir = tmp_path / "restart"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "1200",
            "--logdir", str(logdir), *FAST, "--set", "learner.checkpoint_every_s=1", "--set", "actor.resend_after_s=0.5"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (logdir / "checkpoints" / "latest.pt").exists():
        time.sleep(0.3)
    pid = find_learner_pid(logdir)
    assert pid is not None, "no learner process found"
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    assert "learner exited" in stderr and "restarting" in stderr
    summary = assert_session_invariants(logdir, 1200)
    assert summary["learner_restarts"] == 1
    learner = json.loads((logdir / "stats" / "learner.json").read_text())
    assert learner["refilled_steps"] > 0
    assert session_processes(str(logdir)) == []


def test_ctrl_c_while_the_processes_are_still_starting_leaves_nothing_running(tmp_path):
    logdir = tmp_path / "early"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "100000",
            "--logdir", str(logdir), *FAST]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (logdir / "logs" / "actor.log").exists():
        time.sleep(0.05)
    time.sleep(0.5)                                   # Ray and torch are still loading now
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["exit_reason"] == "interrupted"
    assert summary["logged_steps"] == summary["env_steps"]
    assert session_processes(str(logdir)) == []
    assert procs.ray_of_session(logdir)[1] == []        # a Ray that was starting too


# ---- summary.json's return and success, from hand-made episode files (no processes) ------------------------------

def _write_episode(episodes_dir: Path, actor: str, episode_id: int, *, rewards, success_last: bool,
                   flags=("time_limit",), stream_start: int = 0, close: bool = True) -> None:
    """An episode file as the actor writes it: rewards per step, is_success only at the last step if asked."""
    from robotd.episodes import EpisodeWriter
    spec = {"action": ((1,), "float32"), "reward": ((), "float32"), "is_first": ((), "bool"), "is_last": ((), "bool"),
            "is_terminal": ((), "bool"), "is_success": ((), "bool"), "timing/stream_step": ((), "int64"),
            "timing/policy_version": ((), "int64")}
    attrs = {"session": "s", "actor_id": actor, "episode_id": episode_id, "robot": "mock_arm", "task": "t",
             "control_rate_hz": 25.0}
    writer = EpisodeWriter(episodes_dir / f"{actor}-{episode_id:06d}.h5", spec, attrs)
    n = len(rewards)
    for t, reward in enumerate(rewards):
        last = t == n - 1
        writer.append({"action": [0.0], "reward": reward, "is_first": t == 0, "is_last": last and close,
                       "is_terminal": False, "is_success": last and success_last, "timing/stream_step": stream_start + t,
                       "timing/policy_version": 0})
    if close:
        writer.close(stats={}, flags=list(flags))


def _hand_made_session(root: Path, n_finished: int, succeeded_from: int) -> Path:
    """n_finished episodes of 4 steps (episode i has return i, succeeds from succeeded_from on), then one
    episode cut off by the end of the session (success at its last step, which must not count)."""
    episodes = root / "episodes"
    episodes.mkdir(parents=True)
    for i in range(n_finished):
        _write_episode(episodes, "actor0", i, rewards=[0.0, 0.0, 0.0, float(i)], success_last=i >= succeeded_from,
                       stream_start=4 * i)
    _write_episode(episodes, "actor0", n_finished, rewards=[0.0, 100.0], success_last=True, flags=(),
                   stream_start=4 * n_finished)
    return root


def test_summary_has_first20_and_last20_return_and_success_of_the_finished_episodes(tmp_path):
    from robotd.orchestrator import format_summary, summarize
    root = _hand_made_session(tmp_path / "s", 25, 15)
    (root / "episodes" / "actor0-000099.h5").write_bytes(b"not HDF5" * 10)
    summary = summarize(root, reason="steps done", wall_s=1.0, exit_codes={})
    assert summary["finished_episodes"] == 25 and summary["episodes_succeeded"] == 10
    assert summary["success_rate"] == pytest.approx(0.4)
    assert summary["first20"] == {"episodes": 20, "return_mean": pytest.approx(9.5), "success_rate": pytest.approx(0.25)}
    assert summary["last20"] == {"episodes": 20, "return_mean": pytest.approx(14.5), "success_rate": pytest.approx(0.5)}
    assert len(summary["unreadable_episodes"]) == 1 and summary["logged_steps"] == 25 * 4 + 2
    json.dumps(summary, allow_nan=False)
    line = [text for text in format_summary(summary, root).splitlines() if text.startswith("  episodes:")]
    assert line == ["  episodes: 25 finished, 10 succeeded (40%); first 20: return 9.50, success 25% (20 episodes); "
                    "last 20: return 14.50, success 50% (20 episodes)"]


def test_summary_of_a_short_session_and_of_one_without_finished_episodes(tmp_path):
    from robotd.orchestrator import episode_outcomes, format_summary, summarize
    short = episode_outcomes(_hand_made_session(tmp_path / "short", 3, 2))
    assert short["first20"] == short["last20"] == {"episodes": 3, "return_mean": pytest.approx(1.0),
                                                   "success_rate": pytest.approx(1 / 3)}
    empty = _hand_made_session(tmp_path / "empty", 0, 0)
    summary = summarize(empty, reason="interrupted", wall_s=1.0, exit_codes={})
    assert summary["finished_episodes"] == summary["episodes_succeeded"] == 0 and summary["success_rate"] is None
    assert summary["first20"] == summary["last20"] == {"episodes": 0, "return_mean": None, "success_rate": None}
    assert "  episodes: 0 finished, 0 succeeded; first 20: -; last 20: -" in format_summary(summary, empty)


def test_a_killed_robotd_train_takes_its_daemon_actor_and_learner_with_it(tmp_path):
    """SIGKILL gives robotd train no chance to stop its children: each asked the kernel for SIGTERM when its parent
    dies (PR_SET_PDEATHSIG), so the daemon stops the robot, the actor closes its episode and the learner
    checkpoints, and nothing of the session is left running."""
    logdir = tmp_path / "killed"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "100000",
            "--logdir", str(logdir), *FAST]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (list((logdir / "episodes").glob("*.h5")) and find_learner_pid(logdir)):
        time.sleep(0.3)
    assert len(session_processes(str(logdir))) >= 4, session_processes(str(logdir))   # robotd train and its three
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and session_processes(str(logdir)):
        time.sleep(0.5)
    assert session_processes(str(logdir)) == []
    daemon = json.loads((logdir / "stats" / "daemon.json").read_text())
    assert daemon["ticks"] > 0                     # the daemon stopped on its SIGTERM path and wrote its stats
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and procs.ray_of_session(logdir)[1]:
        time.sleep(0.5)
    assert procs.ray_of_session(logdir)[1] == []
