"""Runs one `robotd train` session and reports its timing figures (printed and as JSON).

    python scripts/bench_session.py configs/mock_arm.yaml --steps 3000 --out runs/bench_session.json

Figures: wall time, control rate, period error (p50/p99/max) over the whole session and while
the learner was training (steps chosen by trained weights), late steps, stale readings,
learner updates per second, and the session invariants (logged == ingested == env steps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="robotd-bench-")) / Path(args.config).stem
    argv = [sys.executable, "-m", "robotd", "train", args.config, "--steps", str(args.steps), "--logdir", str(logdir)]
    for item in args.overrides:
        argv += ["--set", item]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall_s = time.monotonic() - started
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return result.returncode
    summary = json.loads((logdir / "summary.json").read_text())
    learner = json.loads((logdir / "stats" / "learner.json").read_text())
    figures = {
        "config": args.config, "steps": args.steps, "wall_s": round(wall_s, 1),
        "control_rate_hz": summary["control_rate_hz"], "target_rate_hz": summary["target_rate_hz"],
        "period_error_ms": summary["period_error_ms"],
        "period_error_ms_while_training": summary["period_error_ms_while_training"],
        "late_steps": summary["late_steps"], "stale_readings": summary["stale_readings"],
        "scheduling": summary["scheduling"], "learner_updates": summary["learner_updates"],
        "updates_per_s": round(summary["learner_updates"] / max(wall_s, 1e-9), 2),
        "policy_version_max": summary["policy_version_max"],
        "invariants_hold": summary["logged_steps"] == summary["ingested_steps"] == summary["env_steps"] == args.steps
        and summary["lost_steps"] == 0,
        "device": learner.get("device"), "logdir": str(logdir),
    }
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
