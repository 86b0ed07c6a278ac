"""Real-time pacing of the simulated robots: with the host's monotonic clock (no lockstep clock passed in),
the physics follows wall time, and the hardware timestamps advance with it."""
from __future__ import annotations

import time

import pytest

try:
    import drivers.mujoco_sim  # noqa: F401  - picks MUJOCO_GL=egl and survives a broken GL backend
except ModuleNotFoundError as err:
    if err.name != "mujoco":
        raise
pytest.importorskip("mujoco", reason="mujoco is not installed (pip install 'robotd[sim]')")

from drivers.sim_a1 import SimA1  # noqa: E402
from drivers.sim_ur5 import SimUR5  # noqa: E402

WAIT_S = 0.3


@pytest.mark.parametrize("make", [lambda: SimA1(), lambda: SimUR5(world="realtime-test")], ids=["sim_a1", "sim_ur5"])
def test_physics_and_hardware_time_follow_the_wall_clock(make):
    device = make()
    device.connect()
    try:
        first = device.read()
        sim_start = device.sim.time_s
        wall_start = time.monotonic()
        time.sleep(WAIT_S)
        second = device.read()
        wall = time.monotonic() - wall_start
        simulated = device.sim.time_s - sim_start
        # Whole physics steps up to now: behind the wall clock by less than one step plus the read itself.
        assert wall - 0.01 <= simulated <= wall + 0.001
        hw_elapsed_s = (second.hw_time_ns - first.hw_time_ns) / 1e9
        assert hw_elapsed_s == pytest.approx(simulated, abs=0.003)
    finally:
        device.disconnect()
