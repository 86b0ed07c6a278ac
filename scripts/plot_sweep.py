#!/usr/bin/env python
"""Collects learning-curve JSON files into one sweep summary (JSON) and one plot.

    python scripts/plot_sweep.py runs/sweep/*.json --out benchmarks/small_cpu/pendulum_sweep \
        [--threshold -250] [--window 10] [--title "Pendulum-v1, in-process"]

Each input is what ``scripts/learn_inprocess.py`` or ``scripts/eval_gym.py`` writes (``returns``
and ``end_steps`` or ``steps`` per finished episode, ``wall_s`` or ``wall_clock_s``, settings).
Files whose name shares a prefix before ``-seed`` are one setting with several seeds. The summary
gives per setting: the final rolling return, the steps at which the rolling mean first reached the
threshold (per seed), updates, and wall time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robotd.curves import rolling_mean, steps_to_return  # noqa: E402


def curve_of(data: dict) -> tuple[list[int], list[float]]:
    steps = data.get("end_steps") or data.get("steps") or []
    return [int(s) for s in steps], [float(r) for r in data.get("returns", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .png)")
    parser.add_argument("--threshold", type=float, default=-250.0)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)

    groups: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for path in sorted(args.files):
        data = json.loads(path.read_text())
        name = re.sub(r"-seed\d+$", "", path.stem)
        groups[name].append((path.name, data))

    summary = {"threshold": args.threshold, "window": args.window, "settings": {}}
    for name, runs in groups.items():
        entries = []
        for filename, data in runs:
            steps, returns = curve_of(data)
            entries.append({
                "file": filename, "seed": data.get("seed"), "episodes": len(returns),
                "final_rolling_return": float(rolling_mean(returns, args.window)[-1]) if returns else None,
                "steps_to_threshold": steps_to_return(steps, returns, args.threshold, window=args.window),
                "updates": data.get("updates", data.get("learner_updates")),
                "wall_s": data.get("wall_s", data.get("wall_clock_s")),
                "steps": steps, "returns": returns,
            })
        summary["settings"][name] = {"settings": runs[0][1].get("settings", runs[0][1].get("config")),
                                     "runs": entries}
        finals = [e["final_rolling_return"] for e in entries if e["final_rolling_return"] is not None]
        reached = [e["steps_to_threshold"] for e in entries]
        print(f"{name:40s} seeds {len(entries)}  final rolling {np.mean(finals) if finals else float('nan'):8.1f}  "
              f"steps to {args.threshold:g}: {reached}  wall {[round(e['wall_s'] or 0) for e in entries]} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_sweep: matplotlib missing, no plot", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, group) in enumerate(summary["settings"].items()):
        colour = colours[index % len(colours)]
        for run_index, run in enumerate(group["runs"]):
            if not run["returns"]:
                continue
            ax.plot(run["steps"], rolling_mean(run["returns"], args.window), color=colour, alpha=0.9,
                    label=name if run_index == 0 else None)
            ax.scatter(run["steps"], run["returns"], color=colour, s=6, alpha=0.3)
    ax.axhline(args.threshold, color="grey", linestyle=":", label=f"threshold {args.threshold:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"episode return (lines: rolling mean of {args.window})")
    ax.set_title(args.title or args.out.name)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
