"""scripts/bench_fleet.py runs end to end (robots over CurveZMQ into sharded replay on a two-node loopback Ray
cluster) and writes complete rows: every field present, nothing lost, steps stored. Its speeds are not checked."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_fleet.py"
ROW_FIELDS = ("robots", "ingest_steps_per_s", "tick_to_replay_ms_p50", "tick_to_replay_ms_p99", "lost",
              "replay_shards", "load_avg", "seconds", "sent_steps", "stored_steps", "where_time_goes", "targets_met")


def test_two_short_runs_write_complete_rows(tmp_path):
    out = tmp_path / "fleet.json"
    started = time.monotonic()
    # Shard 0 in the benchmark's learner process (learner.replay_in_learner), shard 1 a Ray actor on the other node.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--robots", "1,2", "--seconds", "1.5", "--learner-ranks",
                           "none", "--micro-repeats", "0", "--replay-in-learner", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "steps/s into replay" in proc.stdout and "target ingest_steps_per_s >= 20000" in proc.stdout
    report = json.loads(out.read_text())
    assert report["listeners"]["all_loopback"] is True and report["listeners"]["count"] > 0
    assert [node["address"] for node in report["ray"]["nodes"]] == ["127.0.0.1", "127.0.0.1"]
    rows = report["rows"]
    assert [row["robots"] for row in rows] == [1, 2]
    for row in rows:
        missing = [field for field in ROW_FIELDS if field not in row]
        assert not missing, missing
        assert row["lost"] == 0 and row["sent_steps"] == row["stored_steps"] > 0
        assert row["ingest_steps_per_s"] > 0
        assert 0 < row["tick_to_replay_ms_p50"] <= row["tick_to_replay_ms_p99"]
        assert row["replay_shards"] == 2 and sum(row["steps_per_shard"]) == row["stored_steps"]
        assert row["replay_added_steps"] == row["ingest_ingested_steps"] == row["stored_steps"]
        assert len(row["load_avg"]["start"]) == 3 and len(row["load_avg"]["end"]) == 3
        assert row["seconds"] == pytest.approx(1.5, abs=0.5)
    assert all(steps > 0 for steps in rows[1]["steps_per_shard"])       # two robots: one stream in each shard
    assert set(report["targets_met"]) and "learner" not in report
    assert report["settings"]["replay_in_learner"] is True and report["settings"]["replay_node_resources"] == ["replay_b"]
    print(f"bench_fleet quick run: {time.monotonic() - started:.1f} s")
