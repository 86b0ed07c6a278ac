"""scripts/chaos.py: its accounting from hand-made stats and episode files, its argument checks, the stranger
verdicts, the log and memory figures (no processes), and one end-to-end run with one fault of each kind (slow)."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import chaos  # noqa: E402
from robotd.episodes import EpisodeWriter  # noqa: E402
from tests import procs  # noqa: E402

CONFIG = str(ROOT / "configs" / "mock_arm.yaml")
SPEC = {"action": ((1,), "float32"), "reward": ((), "float32"), "is_first": ((), "bool"), "is_last": ((), "bool"),
        "timing/stream_step": ((), "int64")}


def write_episode(root: Path, episode_id: int, n_steps: int, *, stream: str, start: int, close: bool = True):
    """An episode of ``n_steps`` as the actor writes it; ``close=False`` leaves it as a killed actor does (the
    journal holds its steps)."""
    attrs = {"session": "s", "actor_id": "actor0", "episode_id": episode_id, "robot": "mock_arm", "task": "t",
             "control_rate_hz": 50.0, "stream": stream}
    writer = EpisodeWriter(root / "episodes" / f"actor0-{episode_id:06d}.h5", SPEC, attrs)
    for t in range(n_steps):
        writer.append({"action": [0.0], "reward": 0.0, "is_first": t == 0, "is_last": close and t == n_steps - 1,
                       "timing/stream_step": start + t})
    if close:
        writer.close(stats={}, flags=["time_limit"])
    return writer


@pytest.fixture
def killed_then_restarted(tmp_path):
    """Actor run 0 wrote two closed episodes and one left open by SIGKILL (10 steps, no stats); run 1 wrote one
    episode of 50 steps and its stats."""
    root = tmp_path / "session"
    (root / "episodes").mkdir(parents=True)
    marks = [set()]
    write_episode(root, 0, 100, stream="a", start=0)
    write_episode(root, 1, 100, stream="a", start=100)
    open_writer = write_episode(root, 2, 10, stream="a", start=200, close=False)
    marks.append(chaos.episode_names(root))
    write_episode(root, 3, 50, stream="b", start=0)
    files = chaos.files_by_run(marks, chaos.episode_names(root))
    runs = [{"stats": None, "files": files[0]}, {"stats": {"env_steps": 50}, "files": files[1]}]
    yield root, runs
    del open_writer


def test_each_actor_run_owns_the_episode_files_that_appeared_while_it_ran():
    marks = [set(), {"actor0-000000.h5", "actor0-000001.h5"}]
    final = {"actor0-000000.h5", "actor0-000001.h5", "actor0-000002.h5"}
    assert chaos.files_by_run(marks, final) == [["actor0-000000.h5", "actor0-000001.h5"], ["actor0-000002.h5"]]


def test_a_killed_actors_steps_come_from_its_episode_files_journal_included(killed_then_restarted):
    root, runs = killed_then_restarted
    assert sorted(chaos.episode_names(root)) == [f"actor0-00000{i}.h5" for i in range(4)]
    learner = {"ingested_steps": 250, "replay_steps": 250, "added_steps": 250, "evicted_steps": 0,
               "lost_steps": 0, "duplicate_chunks": 7, "refilled_steps": 0}
    figures = chaos.account(root, runs, learner)
    assert figures["steps_collected"] == 210 + 50
    assert [run["source"] for run in figures["steps_collected_by_run"]] == [
        "episode files (the run wrote no stats: killed)", "actor stats"]
    assert figures["steps_logged"] == 260 and figures["collected_matches_logged"]
    # The ten steps of the killed actor's open episode never reached replay: lost, not hidden.
    assert figures["steps_in_replay"] == 250 and figures["lost"] == 10
    # Resent chunks the learner dropped are not duplicates.
    assert figures["duplicated"] == 0 and figures["duplicate_chunks_dropped"] == 7


def test_steps_stored_twice_count_as_duplicated_and_missing_learner_stats_leave_figures_unknown(killed_then_restarted):
    root, runs = killed_then_restarted
    learner = {"ingested_steps": 260, "replay_steps": 270, "added_steps": 270, "evicted_steps": 0}
    figures = chaos.account(root, runs, learner)
    assert figures["lost"] == 0 and figures["duplicated"] == 10
    # Without added_steps the replay's size stands in while nothing was evicted.
    figures = chaos.account(root, runs, {"ingested_steps": 260, "replay_steps": 265, "evicted_steps": 0})
    assert figures["duplicated"] == 5
    figures = chaos.account(root, runs, None)
    assert figures["lost"] is None and figures["duplicated"] is None and figures["steps_in_replay"] is None
    assert figures["steps_logged"] == 260


def test_a_damaged_episode_file_is_named_not_fatal(killed_then_restarted):
    root, runs = killed_then_restarted
    (root / "episodes" / "actor0-000009.h5").write_bytes(b"not HDF5" * 8)
    runs[1]["files"] = [*runs[1]["files"], "actor0-000009.h5"]
    runs[1]["stats"] = None
    figures = chaos.account(root, runs, {"ingested_steps": 260, "added_steps": 260})
    assert figures["steps_collected"] == 260
    assert any(entry.startswith("actor0-000009.h5") for entry in figures["unreadable_episodes"])


@pytest.mark.parametrize("result, verdict", [
    ({"replies": 0, "data": 0, "effect": False, "sends": 10}, "refused"),
    ({"replies": 0, "data": 0, "effect": False, "sends": 0, "blocked_sends": 9}, "refused"),
    ({"replies": 1, "data": 0, "effect": False}, "accepted"),           # a daemon's or learner's answer
    ({"replies": 0, "data": 3, "effect": False}, "accepted"),           # weights received
    ({"replies": 0, "data": 0, "effect": True}, "accepted"),            # its status counters were taken
])
def test_a_stranger_is_accepted_when_anything_got_through(result, verdict):
    assert chaos.classify_stranger(result) == verdict


def test_the_stranger_messages_are_valid_wire_messages():
    for channel in chaos.CHANNELS:
        result = {"channel": channel, "keys": "own", "sends": 3}
        for kind, meta in chaos.Chaos._stranger_messages(result, 6, "0123456789ab", "s"):
            assert chaos.wire.encode(kind, meta)
    (kind, meta), = chaos.Chaos._stranger_messages({"channel": "status", "keys": "none", "sends": 0}, 6, "d", "s")
    from robotd.status import status_problem
    assert status_problem(meta, {}) == ("actor", None)          # would be taken if it got through
    assert meta["counters"]["env_steps"] == chaos.SENTINEL_STEPS + 6


def test_watchdog_stops_are_read_from_the_daemons_log_lines():
    text = "\n".join([
        "2026-12-02 16:28:01,250 daemon INFO robotd.daemon.loop: actor actor0 connected",
        "2026-12-02 16:28:02,123 daemon INFO robotd.robot: robot stopped: actor silent for 1.01 s (watchdog 1.0 s)",
        "2026-12-02 16:28:09,000 daemon INFO robotd.robot: robot stopped: daemon exiting",
        "garbage 16:28:10 robot stopped: actor silent for 2 s",
    ])
    stops = chaos.parse_watchdog_stops(text)
    expected = datetime.datetime(2026, 12, 2, 16, 28, 2, 123000).timestamp()
    assert stops == [(pytest.approx(expected), 1.01)]


def test_the_stop_bound_is_the_watchdog_plus_one_period_plus_the_margin():
    config = chaos.config_module.load(CONFIG, ["control.rate_hz=50", "control.action_deadline_ms=15",
                                               "control.watchdog_s=0.5"])
    assert chaos.stop_bound_s(config, 0.1) == pytest.approx(0.5 + 0.02 + 0.1)


def test_memory_growth_compares_the_last_third_with_the_middle_third():
    flat = chaos.memory_growth([(t * 5.0, 100.0) for t in range(12)])
    assert flat["growth_mb"] == 0 and flat["samples"] == 12
    # 1 MB per sample every 6 s: 10 MB/min; the middle and last thirds are 4 samples (24 s) apart.
    rising = chaos.memory_growth([(t * 6.0, 100.0 + t) for t in range(12)])
    assert rising["growth_mb"] == pytest.approx(4.0) and rising["growth_mb_per_min"] == pytest.approx(10.0)
    assert rising["first_mb"] == 100.0 and rising["peak_mb"] == 111.0
    short = chaos.memory_growth([(0.0, 5.0), (5.0, None)])
    assert short["samples"] == 1 and short["growth_mb"] is None


def _report(**changes) -> dict:
    report = {"lost": 0, "duplicated": 0, "strangers_accepted": 0, "stops_within_watchdog": 2,
              "robot_stops_expected": 2, "faults": {"actor_kill": {"events": [{"recovered": True}]}},
              "aborted": None, "problems": []}
    report.update(changes)
    return report


def test_the_targets_hold_only_when_nothing_is_lost_duplicated_accepted_or_late():
    targets, problems = chaos.evaluate(_report())
    assert all(targets.values()) and problems == []
    for changes, problem in [({"lost": 10}, "lost steps: 10"), ({"lost": None}, "lost steps: None"),
                             ({"duplicated": 3}, "duplicated steps: 3"),
                             ({"strangers_accepted": 1}, "strangers accepted: 1"),
                             ({"stops_within_watchdog": 1}, "robot stops within the watchdog bound: 1 of 2"),
                             ({"aborted": "interrupted"}, "the run was cut short: interrupted")]:
        targets, problems = chaos.evaluate(_report(**changes))
        assert not all(targets.values()) and problem in problems, changes
    targets, _ = chaos.evaluate(_report(faults={"daemon_kill": {"events": [{"recovered": False}]}}))
    assert not targets["every_fault_recovered"]


def test_the_table_shows_each_fault_and_the_verdict():
    report = _report(config="configs/mock_arm.yaml", seed=0, faults_per_kind=1, passed=True,
                     faults={"daemon_kill": {"events": [{"round": 0, "recovered": True, "robot_stop": chaos.SIMULATED,
                                                         "daemon_up_s": 2.0, "actor_resumed_s": 3.0}]}})
    table = chaos.format_table(report)
    assert "daemon_kill" in table and "n/a (simulated)" in table and table.endswith("result: PASS")


@pytest.mark.parametrize("argv, message", [
    (["--faults", "x"], "--faults x: give a whole number of faults per kind, 0 or more, e.g. --faults 2"),
    (["--faults", "-1"], "--faults -1: give a whole number of faults per kind, 0 or more, e.g. --faults 2"),
    (["--faults", "0"],
     "--faults 0 without --soak-minutes: nothing to do; give --faults 1 or more, or --soak-minutes M"),
    (["--faults", "1", "--soak-minutes", "-2"], "--soak-minutes -2: give a number of minutes, 0 or more"),
    (["--faults", "1", "--seed", "1.5"], "--seed 1.5: give a whole number from 0 to 2147483647, e.g. --seed 0"),
    (["--faults", "1", "--margin-s", "nan"], "--margin-s nan: give seconds, 0 or more, e.g. --margin-s 0.1"),
    (["--faults", "1", "--set", "control.rate_hz=0"],
     "config: control.rate_hz = 0.0 is out of range: allowed 1.0 to 1000.0"),
    (["--faults", "1", "--set", "nosuchkey=1"], "config: unknown key 'nosuchkey'"),
    (["--faults", "1", "--bogus"], "unrecognized arguments: --bogus: see python scripts/chaos.py --help"),
])
def test_bad_arguments_fail_in_one_line_naming_the_value_and_the_fix(tmp_path, capsys, argv, message):
    out = tmp_path / "new" / "chaos.json"
    assert chaos.main([CONFIG, "--out", str(out), *argv]) == chaos.EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaos: error: ") and message in lines[0], lines
    assert not (tmp_path / "new").exists()                  # nothing made on bad input


def test_a_real_robot_config_is_refused_and_so_are_unusable_paths(tmp_path, capsys):
    assert chaos.main([str(ROOT / "configs" / "ur5_reach.yaml"), "--faults", "1",
                       "--out", str(tmp_path / "c.json")]) == chaos.EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        f"chaos: error: config {ROOT / 'configs' / 'ur5_reach.yaml'}: robot.driver = 'ur5' is not a simulated driver: "
        f"chaos kills and freezes the processes that drive the robot, so it runs only on simulated or mock robots "
        f"(mock_*, sim_*, gym); use such a config")
    assert chaos.main([CONFIG, "--faults", "1", "--out", str(tmp_path)]) == chaos.EXIT_USAGE
    assert "is a directory: give a file name such as runs/chaos.json" in capsys.readouterr().err
    (tmp_path / "held" / "episodes").mkdir(parents=True)
    (tmp_path / "held" / "episodes" / "actor0-000000.h5").write_bytes(b"x")
    assert chaos.main([CONFIG, "--faults", "1", "--out", str(tmp_path / "c.json"),
                       "--logdir", str(tmp_path / "held")]) == chaos.EXIT_USAGE
    assert "already holds a session: choose a new directory" in capsys.readouterr().err
    assert chaos.main([str(tmp_path / "none.yaml"), "--faults", "1", "--out", str(tmp_path / "c.json")]) == 2
    assert "no such file: give a config file such as configs/mock_arm.yaml" in capsys.readouterr().err


def test_the_command_line_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), CONFIG, "--faults", "-3",
                             "--out", str(tmp_path / "c.json")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "chaos: error: --faults -3: give a whole number of faults per kind, 0 or more, e.g. --faults 2"]


def session_processes(marker: str) -> list[str]:
    return procs.live_naming(marker, unless=("pytest", "chaos.py"))


@pytest.mark.slow
def test_one_fault_of_each_kind_end_to_end(tmp_path):
    """The whole schedule once on the mock arm (about 3 minutes on a busy 2-core machine)."""
    out, logdir = tmp_path / "chaos.json", tmp_path / "session"
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), CONFIG, "--faults", "1",
                             "--out", str(out), "--logdir", str(logdir), "--seed", "3", "--max-minutes", "20"],
                            capture_output=True, text=True, timeout=1500, cwd=ROOT)
    wall = time.monotonic() - started
    assert out.exists(), result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert result.returncode == report["exit_code"] == (0 if report["passed"] else 1), result.stdout
    assert report["aborted"] is None, report["problems"]
    assert {kind: report["faults"][kind]["count"] for kind in chaos.KINDS} == {kind: 1 for kind in chaos.KINDS}
    assert all(event["recovered"] for kind in chaos.KINDS for event in report["faults"][kind]["events"]), \
        report["problems"]
    assert report["restarts"] == {"daemon": 1, "actor": 1, "learner": 1}
    # The daemon's watchdog stopped the robot after the actor's kill and freeze, in time; the daemon's own kill
    # has nothing physical to stop.
    assert report["robot_stops"] == report["robot_stops_expected"] == 2
    assert report["stops_within_watchdog"] == 2
    assert report["faults"]["daemon_kill"]["events"][0]["robot_stop"] == "n/a (simulated)"
    learner_kill = report["faults"]["learner_kill"]["events"][0]
    assert learner_kill["resumed_from_checkpoint"] and learner_kill["refilled_steps"] > 0
    # Eight strangers (two per channel) tried, none got anything through, while the session's own key got weights.
    assert report["strangers_tried"] == 8 and report["strangers_accepted"] == 0 and report["strangers_refused"] == 8
    weights = [s for s in report["strangers"] if s["channel"] == "weights"]
    assert all(s["member_received"] > 0 for s in weights)
    # The accounting adds up.
    assert report["steps_collected"] == report["steps_logged"] > 0
    assert report["steps_in_replay"] == report["steps_ingested"]
    assert report["lost"] == report["steps_logged"] - report["steps_ingested"]
    assert report["duplicated"] == 0
    assert session_processes(str(logdir)) == []
    print(f"chaos end to end: {wall:.0f} s\n{result.stdout}")
    # The restarted actor resends from the episode files what the killed one had not had acknowledged.
    assert report["lost"] == 0, f"{report['lost']} logged steps never reached replay"
    assert report["passed"]
