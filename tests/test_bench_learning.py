"""scripts/bench_learning.py: the stack-vs-SAC learning benchmark, its summary and its output files."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_learning  # noqa: E402
from robotd import tasks  # noqa: E402
from robotd.curves import steps_to_rate  # noqa: E402

TINY = ["--set", "actor.prefill_steps=100", "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4",
        "--set", "learner.batch_length=16", "--set", "learner.publish_every_updates=2", "--set", "learner.train_ratio=2",
        "--set", "actor.drain_timeout_s=60"]


def test_steps_to_90_percent_and_the_summary_on_hand_made_curves():
    # Episodes end every 100 steps; successes start at episode 10, so the window of the last 10
    # episodes first holds 9 successes at episode 18 (ending at step 1900).
    steps = [100 * (i + 1) for i in range(30)]
    dreamer = [0] * 10 + [1] * 20
    assert steps_to_rate(steps, dreamer) == 1900
    assert steps_to_rate(steps, [1] * 9) is None                       # never a full window
    assert steps_to_rate(steps, [1] + [0] * 29) is None                # one early success is not 90%
    assert steps_to_rate(steps, [1, 0] * 15, rate=0.5) == 1000
    sac = [0] * 29 + [1]
    slow_steps = [200 * (i + 1) for i in range(30)]
    curves = [{"method": "dreamer", "seed": 0, "steps": steps, "returns": list(range(30)), "success": dreamer},
              {"method": "sac", "seed": 0, "steps": slow_steps, "returns": [1.0] * 30, "success": dreamer},
              {"method": "sac", "seed": 1, "steps": slow_steps, "returns": [3.0] * 30, "success": sac}]
    summary = bench_learning.summarize(curves)
    assert summary["dreamer"]["steps_to_90"] == [1900] and summary["dreamer"]["steps_to_90_mean"] == 1900
    assert summary["dreamer"]["final_return"] == [pytest.approx(np.mean(range(20, 30)))]
    assert summary["sac"]["steps_to_90"] == [3800, None] and summary["sac"]["steps_to_90_mean"] is None
    assert summary["sac"]["final_return_mean"] == pytest.approx(2.0)
    assert summary["sac_over_dreamer_steps_to_90"] is None             # a SAC seed never got there
    summary = bench_learning.summarize(curves[:2])
    assert summary["sac_over_dreamer_steps_to_90"] == pytest.approx(2.0)
    assert "SAC/dreamer steps to 90%: 2.00" in bench_learning.format_summary(summary)
    # Steps to a rolling return: dreamer's returns 0..29 reach a mean of 10 over 10 episodes at episode 15.
    summary = bench_learning.summarize(curves[:2], return_threshold=10.0)
    assert summary["dreamer"]["steps_to_return"] == [1600] and summary["sac"]["steps_to_return"] == [None]
    assert summary["sac_over_dreamer_steps_to_return"] is None
    assert bench_learning.steps_to_return(steps, [0.0] * 5 + [20.0] * 25, 10.0) == 1000
    assert "steps to a rolling return of 10" in bench_learning.format_summary(summary)


def test_episode_success_is_the_recorded_success_of_the_last_step():
    reach = tasks.make("ur5_reach", robot="arm", cameras=["camera"], episode_steps=10, seed=0, args={})
    assert bench_learning.episode_success(reach, {"is_success": np.array([False, False, True])})
    assert not bench_learning.episode_success(reach, {"is_success": np.array([True, True, False])})
    # Files without the key: the task's is_success on the last observation.
    mock = tasks.make("mock_reach", robot="arm", cameras=[], episode_steps=10, seed=0, args={})
    near = {"reward": np.zeros(2, np.float32), "obs/tcp_pos": np.array([[0, 0, 0], [0.1, 0.2, 0.3]], np.float32),
            "obs/target_pos": np.array([[1, 1, 1], [0.1, 0.2, 0.32]], np.float32)}
    assert bench_learning.episode_success(mock, near)
    near["obs/target_pos"][-1, 2] = 0.5
    assert not bench_learning.episode_success(mock, near)


@pytest.mark.slow  # 12 s of SAC and plotting on a quiet 2-core machine; the summary and plot logic are tested above
def test_a_short_sac_run_writes_the_documented_json_and_a_plot(tmp_path):
    pytest.importorskip("stable_baselines3", reason="SAC needs the bench extra (pip install -e '.[bench]')")
    pytest.importorskip("matplotlib")
    out = tmp_path / "pendulum.json"
    reference = tmp_path / "published.json"
    reference.write_text(json.dumps([{"task": "gym", "method": "sac", "seed": "0", "xs": [0, 300, 900],
                                      "ys": [-1500.0, -1000.0, -200.0]}]))
    code = bench_learning.main([str(ROOT / "configs" / "gym_pendulum.yaml"), "--steps", "450", "--seeds", "1",
                                "--methods", "sac", "--sac-learning-starts", "50", "--out", str(out),
                                "--reference", str(reference), "--reward-window", "100"])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"task", "config", "steps", "curves", "summary"} and result["steps"] == 450
    assert result["task"] == "gym" and result["config"].endswith("gym_pendulum.yaml")
    (curve,) = result["curves"]
    assert set(curve) >= {"method", "seed", "steps", "returns", "success"} and curve["method"] == "sac"
    # Pendulum-v1 ends after 200 actions: 201 observations per episode, the reset's included.
    assert curve["steps"] == [201, 402] and curve["success"] == [False, False]
    assert all(-3000 < value < 0 for value in curve["returns"])
    assert result["summary"]["sac"]["steps_to_90"] == [None]
    # Reward per step in windows of 100 steps; Pendulum pays between -16.3 and 0 a step.
    assert result["reward_window"] == 100 and curve["window_steps"] == [100, 200, 300, 400, 450]
    assert all(-16.3 <= value <= 0 for value in curve["reward_per_step"])
    assert out.with_suffix(".png").stat().st_size > 5000


def test_bad_arguments_fail_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    with pytest.raises(SystemExit):
        bench_learning.main([str(ROOT / "configs" / "gym_pendulum.yaml"), "--steps", "10", "--out", out,
                             "--methods", "ppo"])
    assert "choose from dreamer, sac" in capsys.readouterr().err
    assert bench_learning.main([str(ROOT / "configs" / "gym_pendulum.yaml"), "--steps", "10", "--out", out,
                                "--reference", "nope.json"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--reference 'nope.json': no such file" in error[0]


@pytest.mark.slow
def test_both_methods_on_pendulum_end_to_end(tmp_path):
    pytest.importorskip("stable_baselines3", reason="SAC needs the bench extra (pip install -e '.[bench]')")
    out = tmp_path / "both.json"
    code = bench_learning.main([str(ROOT / "configs" / "gym_pendulum.yaml"), "--steps", "450", "--seeds", "1",
                                "--sac-learning-starts", "50", "--out", str(out), "--logdir", str(tmp_path / "runs"),
                                *TINY])
    assert code == 0
    result = json.loads(out.read_text())
    assert [c["method"] for c in result["curves"]] == ["dreamer", "sac"]
    for curve in result["curves"]:
        assert curve["steps"] == [201, 402] and len(curve["returns"]) == len(curve["success"]) == 2
    assert set(result["summary"]) >= {"dreamer", "sac", "sac_over_dreamer_steps_to_90"}


def test_a_killed_benchmark_stops_its_session_the_way_a_user_does(tmp_path):
    # The "session" is a stand-in that records the SIGINT robotd train stops on; the runner gets SIGTERM.
    marker = tmp_path / "stopped"
    session = ("import signal, sys, time\n"
               f"def stop(signum, frame):\n    open({str(marker)!r}, 'w').write('sigint')\n    sys.exit(0)\n"
               "signal.signal(signal.SIGINT, stop)\n"
               f"open({str(tmp_path / 'started')!r}, 'w').close()\n"
               "time.sleep(60)\n")
    runner = ("import sys\nfrom pathlib import Path\nfrom robotd.curves import run_session\n"
              f"sys.exit(run_session([sys.executable, '-c', {session!r}], Path('.')))\n")
    process = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 128 + signal.SIGTERM
    assert marker.read_text() == "sigint"


def _reset_free_episode(episodes: Path, episode_id: int, first_step: int, rewards, flags) -> None:
    from robotd.episodes import EpisodeWriter
    spec = {"reward": ((), "float32"), "is_first": ((), "bool"), "is_last": ((), "bool"),
            "is_terminal": ((), "bool"), "timing/t_tick_ns": ((), "int64"), "timing/stream_step": ((), "int64")}
    writer = EpisodeWriter(episodes / f"actor0-{episode_id:06d}.h5", spec,
                           {"session": "s", "actor_id": "actor0", "episode_id": episode_id, "robot": "sim_a1",
                            "task": "a1_walk", "control_rate_hz": 20.0})
    for t, reward in enumerate(rewards):
        step = first_step + t
        writer.append({"reward": reward, "is_first": t == 0, "is_last": t == len(rewards) - 1 and bool(flags),
                       "is_terminal": False, "timing/t_tick_ns": step * 50_000_000, "timing/stream_step": step})
    writer.close(stats={}, flags=list(flags))


def test_reward_per_step_windows_cover_every_episode_file_but_not_the_resets(tmp_path):
    from robotd.curves import reward_per_step
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    # Steps 0..14 (a finished episode, its reset earning a misleading 100), then 15..26 cut off by the session's end.
    _reset_free_episode(episodes, 0, 0, [100.0] + [1.0] * 14, ("time_limit",))
    _reset_free_episode(episodes, 1, 15, [100.0] + [3.0] * 11, ())
    curve = reward_per_step(tmp_path, 10)
    assert curve["steps"] == [10, 20, 27]
    # Window 0: steps 1..9 earn 1; window 1: steps 10..14 earn 1, 16..19 earn 3 (15 is a reset); window 2: 3.
    assert curve["reward_per_step"] == pytest.approx([1.0, (5 * 1.0 + 4 * 3.0) / 9, 3.0])
    assert curve["wall_s"] == pytest.approx([0.45, 0.95, 1.3])
    with pytest.raises(ValueError, match="window_steps 0"):
        reward_per_step(tmp_path, 0)


def test_window_means_follow_the_step_numbers():
    assert bench_learning.window_means([0, 1, 2, 3, 7], [1.0, 3.0, 5.0, 7.0, 9.0], 4) == \
        {"steps": [4, 8], "reward_per_step": [4.0, 9.0]}
