"""The sweep tools: scripts/learn_inprocess.py (the learner's algorithm on a Gymnasium environment in one
process) writes a learning curve, and scripts/plot_sweep.py groups such curves by setting and summarises them."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import learn_inprocess  # noqa: E402
import plot_sweep  # noqa: E402


def test_a_short_in_process_run_writes_its_curve_and_the_sweep_summary_reads_it(tmp_path):
    out = tmp_path / "point-lr1e-3-seed0.json"
    code = learn_inprocess.main(["robotd/PointReach-v0", "--steps", "160", "--prefill", "62", "--batch", "4",
                                 "--length", "8", "--ratio", "16", "--threads", "1", "--set", "lr=1e-3",
                                 "--set", "horizon=5", "--out", str(out)])
    assert code == 0
    curve = json.loads(out.read_text())
    # The script counts environment steps (30 an episode; robotd also counts the reset's observation).
    assert curve["complete"] and curve["end_steps"] == [30, 60, 90, 120, 150] and len(curve["returns"]) == 5
    assert all(r < 0 for r in curve["returns"]) and len(curve["success"]) == 5
    # (160 - 62) steps at ratio 16 with 4 x 8 sequences: 49 updates, each written back as replay context.
    assert curve["updates"] == 49 and curve["settings"]["overrides"] == {"lr": 1e-3, "horizon": 5}
    second = tmp_path / "point-lr1e-3-seed1.json"
    second.write_text(json.dumps({**curve, "seed": 1, "returns": [-5.0] * 5}))
    summary_path = tmp_path / "sweep"
    assert plot_sweep.main([str(out), str(second), "--out", str(summary_path), "--threshold", "-10",
                            "--window", "2"]) == 0
    summary = json.loads(summary_path.with_suffix(".json").read_text())
    runs = summary["settings"]["point-lr1e-3"]["runs"]
    assert [run["seed"] for run in runs] == [0, 1]
    assert runs[1]["steps_to_threshold"] == 60 and runs[1]["final_rolling_return"] == -5.0
