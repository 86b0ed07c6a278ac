"""Real drivers against their fakes on this machine: rates, jitter, call costs and fault detection times.

    python scripts/bench_drivers.py --seconds 3 --out runs/bench_drivers.json [--only wire,a1,ur5,realsense]

- wire: the A1's LowCmd encode and LowState decode, microseconds per message.
- a1: the a1 driver against the fake A1 (in its own process): the inner command loop's rate, tick
  jitter p99, late ticks and CPU share, read() cost, and how long the state watchdog takes to trip.
- ur5: the ur5 driver through ur-rtde against the fake UR controller (its own process, 127.0.0.8x):
  a 125 Hz servo loop (servoJ and read() costs, the RTDE rate seen), the e-Series stream at 500 Hz,
  and how long a vanished and a frozen controller take to be seen as a lost link.
- realsense: the realsense driver's frame path (align, crop, resize) at 640x480 -> 64x64 on frames of a
  pyrealsense2 software device, with and without alignment.
Everything runs on loopback addresses. Prints each figure and writes them all as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAND = np.tile([0.0, 0.9, -1.8], 4)
HOME = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]


def percentiles(values_s: list[float]) -> dict:
    """p50 / p99 / max of durations in seconds, as milliseconds."""
    array = np.asarray(values_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(array, 50)), 4), "p99_ms": round(float(np.percentile(array, 99)), 4),
            "max_ms": round(float(array.max()), 4)}


def wait_until(predicate, timeout_s: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.001)
    return None


def bench_wire(_seconds: float) -> dict:
    import timeit

    from drivers.real import a1_wire
    zeros = np.zeros(12)
    state = a1_wire.encode_low_state(q=zeros, dq=zeros)
    n = 2000
    return {"encode_low_cmd_us": round(timeit.timeit(lambda: a1_wire.encode_low_cmd(zeros, zeros, zeros, zeros, zeros),
                                                     number=n) / n * 1e6, 1),
            "decode_low_state_us": round(timeit.timeit(lambda: a1_wire.decode_low_state(state), number=n) / n * 1e6, 1)}


def _serve_fake_a1(conn, stop) -> None:
    from drivers.fakes.a1 import FakeA1
    with FakeA1("127.0.0.1") as fake:
        conn.send(fake.address)
        while True:
            message = conn.recv()
            if message == "silent":
                fake.go_silent()
            elif message == "stop":
                break
    del stop


def bench_a1(seconds: float) -> dict:
    from drivers.real.a1 import A1
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_fake_a1, args=(child, None), daemon=True)
    process.start()
    host, port = parent.recv()
    robot = A1(robot_ip=host, robot_port=port, local_ip="127.0.0.1", local_port=0, state_timeout_s=0.1)
    robot.connect()
    try:
        robot.command_motors(STAND, np.zeros(12), np.full(12, 60.0), np.full(12, 2.0), np.zeros(12))
        late_before = robot.counters["late_ticks"]
        reads = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            robot.read()
            reads.append(time.perf_counter() - t0)
            time.sleep(0.05)                    # the daemon reads at 20 Hz
        info = robot.info()
        result = {"inner_rate_hz": info["inner_rate_hz"], "tick_jitter_p99_ms": info["tick_jitter_p99_ms"],
                  "inner_cpu_fraction": info["inner_cpu_fraction"],
                  "late_ticks_per_s": round((robot.counters["late_ticks"] - late_before) / seconds, 2),
                  "read": percentiles(reads), "malformed": info["malformed"]}
        parent.send("silent")
        silent_at = time.monotonic()
        tripped = wait_until(lambda: robot.status().link_lost, 2.0)
        result["watchdog_trip_ms"] = None if tripped is None else round((time.monotonic() - silent_at) * 1000, 1)
        result["watchdog_setting_ms"] = 100.0
    finally:
        robot.disconnect()
        parent.send("stop")
        process.join(5)
    return result


def bench_ur5(seconds: float) -> dict:
    from drivers.fakes.ur import FakeURController
    from drivers.real.ur5 import UR5
    result = {}
    with FakeURController("127.0.0.80", start_q=HOME):
        arm = UR5(host="127.0.0.80", max_step_rad=0.05)
        arm.set_control_period(0.008)
        arm.connect()
        try:
            servo, reads = [], []
            period, target = 0.008, np.array(HOME) + 0.2
            deadline = time.monotonic()
            for _ in range(int(seconds * 125)):
                t0 = time.perf_counter()
                arm.read()
                t1 = time.perf_counter()
                arm.command_joint_position(target)
                t2 = time.perf_counter()
                reads.append(t1 - t0)
                servo.append(t2 - t1)
                deadline += period
                time.sleep(max(0.0, deadline - time.monotonic()))
            info = arm.info(measure_s=1.0)
            result["cb3_125hz"] = {"rtde_rate_hz": info["rtde_rate_hz"], "servoj_call": percentiles(servo),
                                   "read_call": percentiles(reads), "command_failures": arm.counters["command_failures"],
                                   "tracking_error_rad": round(float(np.abs(arm.read().values["joint_pos"]
                                                                            - target).max()), 4)}
        finally:
            arm.disconnect()
    with FakeURController("127.0.0.81", version=(5, 11, 0, 0), start_q=HOME):
        started = time.monotonic()
        arm = UR5(host="127.0.0.81")
        arm.connect()
        connect_s = time.monotonic() - started
        try:
            result["eseries_500hz"] = {"rtde_rate_hz": arm.info(measure_s=1.0)["rtde_rate_hz"],
                                       "connect_s": round(connect_s, 3)}
        finally:
            arm.disconnect()
    for fault in ("vanish", "freeze"):
        fake = FakeURController("127.0.0.82" if fault == "vanish" else "127.0.0.83", start_q=HOME).start()
        arm = UR5(host=fake.host, freshness_s=0.05)
        arm.connect()
        try:
            getattr(fake, fault)()
            at = time.monotonic()
            seen = wait_until(lambda: arm.status().link_lost, 3.0)
            result[f"{fault}_detected_ms"] = None if seen is None else round((time.monotonic() - at) * 1000, 1)
        finally:
            fake.vanish()
            arm.disconnect()
            fake.stop()
    result["freshness_setting_ms"] = 50.0
    return result


def bench_realsense(seconds: float) -> dict:
    from drivers.fakes.realsense import H, W, SoftwareRealSense, ts_ms
    from drivers.real.realsense import RealSense
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.integers(300, 3000, (H, W), dtype=np.uint16)
    result = {}
    for align in (True, False):
        camera = SoftwareRealSense()
        driver = RealSense(stream_width=W, stream_height=H, fps=30, width=64, height=64, align=align)
        times = []
        n = max(30, int(seconds * 30))
        try:
            for index in range(n):
                camera.inject(index, colour, depth, t_ms=ts_ms(index))
                frameset = camera.sink.try_wait_for_frames(200)
                if not frameset[0]:
                    continue
                t0 = time.perf_counter()
                driver.process(frameset[1])
                times.append(time.perf_counter() - t0)
        finally:
            camera.close()
        result["align" if align else "no_align"] = percentiles(times[2:])
    return result


BENCHES = {"wire": bench_wire, "a1": bench_a1, "ur5": bench_ur5, "realsense": bench_realsense}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure (default 3)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"bench_drivers: --only {','.join(unknown)} unknown; choose from {','.join(BENCHES)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        try:
            results[name] = BENCHES[name](args.seconds)
        except Exception as exc:  # noqa: BLE001 - one bench failing still reports the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
