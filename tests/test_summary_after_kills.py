"""summary.json and the exit messages when a process of the session is killed or fails."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq

from robotd import security, session, wire
from robotd.episodes import count_steps
from robotd.orchestrator import Child, format_summary, last_log_line, summarize
from tests import procs
from tests.test_session import FAST, ROOT, _write_episode, session_processes

KILLED = {"daemon": 0, "actor": -signal.SIGKILL, "learner": 0}


def _episodes(root: Path) -> Path:
    """Four episodes as an actor killed mid-session leaves them: two closed (4 and 3 steps), one open with 2
    steps in its journal, and one opened just before the kill with none: 9 logged steps in 3 episodes."""
    episodes = root / session.EPISODES
    episodes.mkdir(parents=True)
    (root / session.STATS).mkdir()
    _write_episode(episodes, "actor0", 0, rewards=[0.0, 0.0, 0.0, 1.0], success_last=True)
    _write_episode(episodes, "actor0", 1, rewards=[0.0, 0.0, 1.0], success_last=False, stream_start=4)
    _write_episode(episodes, "actor0", 2, rewards=[0.0, 0.5], success_last=False, stream_start=7, close=False)
    _write_episode(episodes, "actor0", 3, rewards=[], success_last=False, stream_start=9, close=False)
    return root


def _started(seconds_ago: float = 60.0) -> dict:
    return {name: time.time() - seconds_ago for name in ("daemon", "actor", "learner")}


def test_with_the_actor_killed_env_steps_and_episodes_come_from_the_files_and_unreplayed_steps_are_lost(tmp_path):
    root = _episodes(tmp_path / "s")
    session.write_stats(root, "daemon", {"actor_ticks": 11, "control_rate_hz": 49.9, "target_rate_hz": 50.0,
                                         "period_error_ms": {"p50": 0.1, "p99": 0.4, "max": 2.0}})
    session.write_stats(root, "learner", {"ingested_steps": 5, "lost_steps": 0, "learner_updates": 3})
    summary = summarize(root, reason="actor killed by signal 9 (SIGKILL)", wall_s=3.0, exit_codes=KILLED,
                        started_at=_started())
    assert summary["logged_steps"] == 9 and summary["episodes"] == 3
    assert summary["env_steps"] == 9
    assert summary["sources"]["env_steps"] == "episode files (actor stats missing)"
    assert summary["ingested_steps"] == 5 and summary["lost_steps"] == 4 and summary["stream_gap_steps"] == 0
    assert summary["stats_files"] == {"daemon": "final", "actor": "missing", "learner": "final"}
    assert summary["daemon_actor_ticks"] == 11 and summary["control_rate_hz"] == pytest.approx(49.9)
    # What only the actor counted is not known, rather than 0.
    assert summary["late_steps"] is None and summary["policy_version_max"] is None
    json.dumps(summary, allow_nan=False)
    text = format_summary(summary, root)
    assert "steps: env 9, logged 9, ingested 5, lost 4" in text and "episodes 3" in text
    assert "stats files: daemon final, actor missing, learner final; env steps from episode files" in text
    assert "late steps unknown" in text


def test_a_stale_actor_stats_file_is_not_used_and_its_last_status_may_count_more_steps(tmp_path):
    root = _episodes(tmp_path / "s")
    session.write_stats(root, "actor", {"env_steps": 1115, "episodes": 11, "late_steps": 2})
    session.write_stats(root, "learner", {"ingested_steps": 9})
    started = _started()
    started["actor"] = (root / "stats" / "actor.json").stat().st_mtime + 1.0     # the file predates the actor
    summary = summarize(root, reason="r", wall_s=1.0, exit_codes=KILLED, started_at=started)
    assert summary["stats_files"]["actor"] == "stale"
    assert summary["env_steps"] == 9 and summary["late_steps"] is None
    assert summary["lost_steps"] == 0
    # The actor's last (checked) status message counted steps whose file writes a kill cut short.
    summary = summarize(root, reason="r", wall_s=1.0, exit_codes=KILLED, started_at=started,
                        status={"actor": {"env_steps": 10, "episodes": 3}})
    assert summary["env_steps"] == 10
    assert summary["sources"]["env_steps"] == "actor's last status message (actor stats stale)"


def test_lost_steps_are_unknown_without_the_learners_final_stats(tmp_path):
    root = _episodes(tmp_path / "s")
    session.write_stats(root, "learner", {"ingested_steps": 5})
    started = _started()
    started["learner"] = time.time() + 60.0                 # a restarted learner that was killed before its stats
    summary = summarize(root, reason="r", wall_s=1.0, exit_codes={**KILLED, "learner": -9}, started_at=started)
    assert summary["stats_files"]["learner"] == "stale"
    assert summary["ingested_steps"] is None and summary["lost_steps"] is None and summary["learner_updates"] is None
    assert summary["sources"]["lost_steps"] == "unknown (learner stats stale)"
    assert "ingested unknown, lost unknown" in format_summary(summary, root)
    (root / "stats" / "learner.json").unlink()
    summary = summarize(root, reason="r", wall_s=1.0, exit_codes=KILLED, started_at=_started())
    assert summary["stats_files"]["learner"] == "missing" and summary["lost_steps"] is None


def test_a_whole_session_counts_from_the_actors_stats_and_loses_nothing(tmp_path):
    root = _episodes(tmp_path / "s")
    session.write_stats(root, "actor", {"env_steps": 9, "episodes": 3, "late_steps": 1, "policy_version_max": 4})
    session.write_stats(root, "learner", {"ingested_steps": 9, "lost_steps": 0})
    session.write_stats(root, "daemon", {"actor_ticks": 10})
    summary = summarize(root, reason="steps done", wall_s=1.0, exit_codes={}, started_at=_started())
    assert summary["sources"]["env_steps"] == "actor stats"
    assert (summary["env_steps"], summary["logged_steps"], summary["ingested_steps"], summary["lost_steps"]) == (9, 9, 9, 0)
    assert summary["late_steps"] == 1 and summary["policy_version_max"] == 4
    assert summary["stats_files"] == {"daemon": "final", "actor": "final", "learner": "final"}
    assert "stats files" not in format_summary(summary, root)


def test_malformed_stats_files_give_unknown_figures_and_never_break_the_report(tmp_path):
    root = _episodes(tmp_path / "s")
    (root / "stats" / "daemon.json").write_text(json.dumps({
        "control_rate_hz": "fast", "target_rate_hz": True, "period_error_ms": {"p50": "x", "p99": 1e400, "max": [1]},
        "period_error_ms_while_training": "none", "stale_readings": -3, "scheduling": 5, "malformed": 10**30}))
    (root / "stats" / "actor.json").write_text("[1, 2, 3]")
    (root / "stats" / "learner.json").write_text('{"ingested_steps": "many"')
    summary = summarize(root, reason="r", wall_s=float("nan"), exit_codes=KILLED, started_at=_started(),
                        malformed_status={"actor": 3, "unknown": 1})
    assert summary["control_rate_hz"] is None and summary["target_rate_hz"] is None
    assert summary["period_error_ms"] == {"p50": None, "p99": None, "max": None}
    assert summary["period_error_ms_while_training"] == {} and summary["stale_readings"] is None
    assert summary["scheduling"] is None and summary["malformed_messages"] == 0
    assert summary["stats_files"] == {"daemon": "final", "actor": "unreadable", "learner": "unreadable"}
    assert summary["malformed_status"] == {"actor": 3, "unknown": 1}
    text = format_summary(summary, root)
    assert "control: unknown Hz, period error p50/p99/max n/a/n/a/n/a ms" in text
    assert "status channel: 4 malformed messages dropped (actor 3, unknown 1)" in text
    # Even a summary of nonsense reads as a report instead of raising.
    odd = {key: "x" for key in summary}
    assert format_summary(odd, root).startswith(f"session {root}: x after 0 s")


# ---- exit messages ------------------------------------------------------------------------------------------------

FLAGGED = "2024-05-01 10:00:00,000 actor WARNING actor.loop: episode 8 flagged, kept out of training: period error 31 ms"


def test_a_killed_process_is_reported_as_killed_by_its_signal_not_by_an_unrelated_log_line(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "actor.log").write_text(f"{FLAGGED}\n")
    child = Child("actor", ["sleep", "30"], tmp_path)
    try:
        assert child.how_it_ended() == "is still running"
        os.kill(child.process.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill_group()
    message = child.exit_message()
    assert message.startswith("actor killed by signal 9 (SIGKILL); last log line: ")
    assert FLAGGED in message and message.endswith(f"(log: {child.log_path})")
    assert child.exit_message(None, how="did not stop in time").startswith("actor did not stop in time; ")


def test_a_process_that_exits_with_a_code_is_reported_with_its_last_error_record(tmp_path):
    script = ("import sys\n"
              "print('2024-05-01 10:00:00,000 learner INFO learner.loop: learner up')\n"
              "print('2024-05-01 10:00:01,000 learner ERROR learner.loop: replay actor died: out of memory')\n"
              "print('2024-05-01 10:00:02,000 learner WARNING learner.loop: retrying after the error')\n"
              "print('2024-05-01 10:00:03,000 learner INFO learner.loop: shutting down')\n"
              "sys.exit(3)\n")
    child = Child("learner", [sys.executable, "-c", script], tmp_path)
    assert child.wait(30) == 3
    child.kill_group()
    assert child.exit_message() == ("learner exited with code 3; last error: 2024-05-01 10:00:01,000 learner ERROR "
                                    f"learner.loop: replay actor died: out of memory (log: {child.log_path})")


def test_a_traceback_is_quoted_by_its_last_line(tmp_path):
    script = ("import logging, sys\n"
              "logging.basicConfig(format='%(asctime)s daemon %(levelname)s %(name)s: %(message)s', stream=sys.stdout)\n"
              "logging.getLogger('x').error('robot link lost')\n"
              "def deep():\n    raise ValueError('spec mismatch: obs/image is (64, 64, 3)')\n"
              "deep()\n")
    child = Child("daemon", [sys.executable, "-c", script], tmp_path)
    assert child.wait(30) == 1
    child.kill_group()
    assert child.last_error() == "last error: ValueError: spec mismatch: obs/image is (64, 64, 3)"
    assert last_log_line(tmp_path / "missing.log") == ("", False)
    assert Child.how_it_ended(child, -250) == "killed by signal 250"


# ---- a whole session whose actor is killed ------------------------------------------------------------------------

def _actor_pid(logdir: Path) -> int | None:
    return procs.module_pid("actor", str(logdir))


def _closed_episodes(logdir: Path) -> int:
    return sum(1 for path in (logdir / "episodes").glob("*.h5") if not path.with_name(path.name + ".journal").exists())


def _learner_training(logdir: Path) -> bool:
    try:
        return "agent built" in (logdir / "logs" / "learner.log").read_text(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_a_session_whose_actor_is_killed_writes_a_true_summary_and_says_how_the_actor_died(tmp_path):
    logdir = tmp_path / "killed"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "mock_arm.yaml"), "--steps", "100000",
            "--logdir", str(logdir), *FAST]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    context = zmq.Context()
    spoofer = context.socket(zmq.PUB)
    spoofer.setsockopt(zmq.LINGER, 0)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (logdir / "config.yaml").exists():
            time.sleep(0.2)
        # The session's status channel is CurveZMQ with its own keys: the spoofer holds the actor's pair (an
        # admitted peer sending malformed messages; an unkeyed one would only be refused at the handshake).
        actor_key = next(path.stem for path in (logdir / "keys" / "actors").glob("*.key") if path.stem != "daemon")
        security.configure_client(spoofer, logdir / "keys", actor_key)
        spoofer.connect(yaml.safe_load((logdir / "config.yaml").read_text())["network"]["status"])
        # Killed once the learner trains on the actor's steps (Ray can take a while to start on a busy machine).
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not (_learner_training(logdir) and _closed_episodes(logdir) >= 2):
            # Malformed status all along: dropped and counted, never the end of the session.
            spoofer.send_multipart(wire.encode(wire.Kind.STATUS, {"process": "actor",
                                                                  "counters": {"success_rate": "all"}}))
            spoofer.send_multipart([b"not a robotd message"])
            time.sleep(0.2)
        assert _learner_training(logdir) and _closed_episodes(logdir) >= 2, "the session never got going"
        pid = _actor_pid(logdir)
        assert pid is not None, "no actor process found"
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=180)
    finally:
        spoofer.close(0)
        context.term()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "robotd train: actor killed by signal 9 (SIGKILL)" in stderr
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["exit_reason"] == "actor killed by signal 9 (SIGKILL)"
    assert summary["stats_files"] == {"daemon": "final", "actor": "missing", "learner": "final"}, stderr[-3000:]
    files = [p for p in (logdir / "episodes").iterdir() if p.name.endswith(".h5")
             or (p.name.endswith(".h5.journal") and not p.with_name(p.name[:-len(".journal")]).exists())]
    steps = [count_steps(p if p.name.endswith(".h5") else p.with_name(p.name[:-len(".journal")])) for p in files]
    assert summary["logged_steps"] == sum(steps) > 0
    assert summary["episodes"] == sum(1 for n in steps if n > 0) >= 2
    assert summary["env_steps"] >= summary["logged_steps"]
    assert summary["ingested_steps"] is not None and summary["ingested_steps"] <= summary["logged_steps"]
    assert summary["lost_steps"] == summary["logged_steps"] - summary["ingested_steps"]
    assert summary["malformed_status"]["actor"] >= 1 and summary["malformed_status"]["unknown"] >= 1
    assert session_processes(str(logdir)) == []
