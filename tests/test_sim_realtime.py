"""Real-time pacing of the simulated robots: with the host's monotonic clock (no lockstep clock passed in),
the physics follows wall time, and the hardware timestamps advance with it."""
from __future__ import annotations

import time

import pytest

from tests import requires  # noqa: E402
requires.mujoco()

from drivers.sim.sim_a1 import SimA1  # noqa: E402
from drivers.sim.sim_ur5 import SimUR5  # noqa: E402

WAIT_S = 0.3


@pytest.mark.parametrize("make", [lambda: SimA1(), lambda: SimUR5(world="realtime-test")], ids=["sim_a1", "sim_ur5"])
def test_physics_and_hardware_time_follow_the_wall_clock(make):
    device = make()
    device.connect()
    try:
        before_first = time.monotonic()
        first = device.read()
        sim_start = device.sim.time_s
        after_first = time.monotonic()
        time.sleep(WAIT_S)
        before_second = time.monotonic()
        second = device.read()
        after_second = time.monotonic()
        simulated = device.sim.time_s - sim_start
        # Each read steps the physics in whole steps up to the host time it starts at, so the simulated
        # time between the reads lies between the wall time between them and the wall time around them.
        assert before_second - after_first - 0.003 <= simulated <= after_second - before_first + 0.001
        assert simulated >= WAIT_S - 0.003
        hw_elapsed_s = (second.hw_time_ns - first.hw_time_ns) / 1e9
        assert hw_elapsed_s == pytest.approx(simulated, abs=0.003)
    finally:
        device.disconnect()
