"""Control-clock period error on this machine, idle and with a training-like load beside it.

    python scripts/bench_clock.py --rates 25,50,100,500 --seconds 5 --out runs/bench_clock.json

For each rate it runs the daemon's FixedRateClock with normal scheduling (sleep, then spin) and
under SCHED_FIFO (sleep only), first on an idle machine and then while another process keeps
every core busy with matrix multiplies (what a learner does), and prints p50/p99/max period
error and the measured rate.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from robotd.daemon.clock import measure_jitter  # noqa: E402


def _burn(stop) -> None:
    os.nice(5)
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    while not stop.is_set():
        a = np.tanh(a @ a.T / 256)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,500")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for load in (False, True):
        stop = multiprocessing.Event()
        burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)] if load else []
        for burner in burners:
            burner.start()
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                for realtime in (False, True):
                    summary = measure_jitter(rate, args.seconds, realtime)
                    error = summary["period_error_ms"]
                    results.append({"rate_hz": rate, "load": load, "scheduling": summary["scheduling"],
                                    "sleep_mode": summary["sleep_mode"], "measured_rate_hz": summary["rate_hz"],
                                    "p50_ms": error["p50"], "p99_ms": error["p99"], "max_ms": error["max"],
                                    "overruns": summary["overruns"]})
                    row = results[-1]
                    print(f"{rate:6.0f} Hz  load={'yes' if load else 'no ':3s}  {row['sleep_mode']:10s}  "
                          f"p50 {row['p50_ms']:.3f}  p99 {row['p99_ms']:.3f}  max {row['max_ms']:.3f} ms  "
                          f"rate {row['measured_rate_hz']:.3f}  overruns {row['overruns']}", flush=True)
        finally:
            stop.set()
            for burner in burners:
                burner.join(5)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
