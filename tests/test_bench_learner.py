"""scripts/bench_learner.py runs end to end and writes well-formed figures (its timings are not checked)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_learner.py"


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.slow  # 9 s on a quiet 2-core machine (a whole benchmark run); the bad-input tests stay in the default set
def test_tiny_run_writes_consistent_json(tmp_path):
    proc = run_script("--sizes", "tiny", "--updates", "1", "--warmup-updates", "0", "--actor-steps", "30",
                      "--batch", "2", "--length", "8", "--image", "16", "--out", "tmp.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replayed steps/s" in proc.stdout and "tiny" in proc.stdout

    report = json.loads((tmp_path / "tmp.json").read_text())
    assert isinstance(report["device"], str) and report["device"]
    assert isinstance(report["torch"], str) and report["torch"]
    settings = report["settings"]
    assert settings["batch"] == 2 and settings["length"] == 8 and settings["action"] == 6
    assert settings["obs"]["image"]["shape"] == [16, 16, 3]
    assert settings["obs"]["vector"]["shape"] == [32]
    assert "dtype" in settings and "compile" in settings

    [result] = report["results"]
    assert "error" not in result, result
    assert result["size"] == "tiny"
    assert isinstance(result["params"], int) and result["params"] > 0
    if "param_breakdown" in result:
        assert all(isinstance(count, int) and count >= 0 for count in result["param_breakdown"].values())
    for key in ("update_s", "replayed_steps_per_s", "actor_step_ms_p50", "actor_step_ms_p99", "peak_mem_mb"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert math.isclose(result["replayed_steps_per_s"], 2 * 8 / result["update_s"], rel_tol=1e-3)
    assert result["actor_step_ms_p50"] <= result["actor_step_ms_p99"]
    assert len(result["update_times_s"]) == 1


def test_unknown_size_fails_naming_it(tmp_path):
    proc = run_script("--sizes", "tiny,no_such_size", "--out", "tmp.json", cwd=tmp_path)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "no_such_size" in output
    assert "tiny" in output.split("no_such_size", 1)[1]  # the known presets are listed
    assert not (tmp_path / "tmp.json").exists()
