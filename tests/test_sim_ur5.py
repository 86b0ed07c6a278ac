"""The MuJoCo UR5 as simulated drivers (drivers/sim_ur5.py): sim_ur5 (Arm) and sim_camera (Camera)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import drivers.mujoco_sim  # noqa: F401  - picks MUJOCO_GL=egl and survives a broken GL backend
except ModuleNotFoundError as err:
    if err.name != "mujoco":
        raise
pytest.importorskip("mujoco", reason="mujoco is not installed (pip install 'robotd[sim]')")

import drivers  # noqa: E402
from drivers import registry  # noqa: E402
from drivers.mock import MockArm  # noqa: E402
from drivers.mujoco_sim import RenderUnavailable  # noqa: E402
from drivers.sim_ur5 import _WORLDS, SimCamera, SimUR5  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERIOD_NS = 20_000_000  # 50 Hz
FAST = ["--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=100",
        "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
        "--set", "learner.publish_every_updates=2"]
# Drives the wrist_2 link down into the table top, beside the bins.
INTO_TABLE_Q = np.array([1.57, -0.5, 1.5, -1.57, -1.57, 0.0])


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def tick(self, n: int = 1) -> None:
        self.ns += n * PERIOD_NS


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def arm(clock, request):
    device = SimUR5(host_clock=clock, world=request.node.name, reset_noise_rad=0.0)
    device.connect()
    yield device
    device.disconnect()


def test_registered_simulated_and_lazy() -> None:
    assert {"sim_ur5", "sim_camera"} <= set(drivers.names())
    assert registry.is_simulated("sim_ur5") and registry.is_simulated("sim_camera")
    # `import drivers` alone must not import mujoco.
    code = "import sys, drivers; assert 'sim_ur5' in drivers.names(); print('mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_reading_spec_and_read_match_mock_arm(arm: SimUR5) -> None:
    mock = MockArm()
    assert arm.reading_spec() == mock.reading_spec()
    reading = arm.read()
    for key, (shape, dtype) in arm.reading_spec().items():
        assert reading.values[key].shape == shape and reading.values[key].dtype == np.dtype(dtype), key
    assert reading.domain == "hardware_clock"
    assert arm.dof == 6 and arm.joint_limits_rad.shape == (6, 2) and arm.home_q_rad.shape == (6,)
    # tcp_position is the DH flange, as MockArm reports it, and read()'s tcp_pos agrees.
    for q in (arm.home_q_rad, arm.home_q_rad + 0.3, np.zeros(6)):
        np.testing.assert_allclose(arm.tcp_position(q), mock.tcp_position(q), atol=1e-6)
    np.testing.assert_allclose(reading.values["tcp_pos"], arm.tcp_position(reading.values["joint_pos"]), atol=1e-4)


def test_position_command_moves_toward_target_as_physics_time_advances(arm: SimUR5, clock: FakeClock) -> None:
    target = arm.home_q_rad + np.array([0.3, -0.2, 0.2, 0.1, 0.2, 0.3])
    arm.command_joint_position(target)
    start_t = arm.sim.time_s
    q0 = arm.read().values["joint_pos"].astype(np.float64)
    assert arm.sim.time_s == start_t, "no host time passed, so no physics step may run"
    errors = [np.abs(q0 - target).max()]
    for _ in range(3):
        clock.ns += 10_000_000  # 10 ms of physics per read
        errors.append(np.abs(arm.read().values["joint_pos"] - target).max())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > 0.01, f"the servo cannot reach the target in 30 ms: {errors}"
    clock.tick(25)  # 0.5 s more
    errors.append(np.abs(arm.read().values["joint_pos"] - target).max())
    assert arm.sim.time_s == pytest.approx(start_t + 0.53, abs=arm.sim.timestep_s)
    assert errors[-1] < 0.01, errors
    assert arm.status().ok


def test_velocity_command_and_stop(arm: SimUR5, clock: FakeClock) -> None:
    q0 = arm.read().values["joint_pos"].astype(np.float64)
    arm.command_joint_velocity(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
    for _ in range(25):
        clock.tick()
        arm.read()
    moved = arm.read().values["joint_pos"][0] - q0[0]
    assert 0.15 < moved < 0.3, moved  # 0.5 rad/s for 0.5 s, minus the servo lag
    arm.stop()
    clock.tick(25)
    held = arm.read().values["joint_pos"][0]
    clock.tick(25)
    assert abs(arm.read().values["joint_pos"][0] - held) < 0.01


def test_protective_stop_on_pushing_into_table(arm: SimUR5, clock: FakeClock) -> None:
    arm.command_joint_position(INTO_TABLE_Q)
    for _ in range(100):
        clock.tick()
        if arm.status().protective_stop:
            break
    status = arm.status()
    assert status.protective_stop and not status.ok and "reset()" in status.fault
    assert any("table" in (c.body1, c.body2) for c in arm.sim.arm_contacts())
    # Commands are ignored until reset(), which goes home and clears the stop.
    arm.command_joint_position(arm.home_q_rad)
    assert arm.status().protective_stop
    arm.reset()
    clock.tick()
    assert arm.status().ok
    np.testing.assert_allclose(arm.read().values["joint_pos"], arm.home_q_rad, atol=0.01)


def _read_or_skip(camera: SimCamera):
    try:
        return camera.read()
    except RenderUnavailable as err:
        print(f"skipping camera test: {err}")
        pytest.skip(f"MuJoCo rendering unavailable: {err}")


def test_camera_frames_share_the_arm_world(clock: FakeClock) -> None:
    arm = SimUR5(host_clock=clock, world="shared", reset_noise_rad=0.0)
    camera = SimCamera(host_clock=clock, world="shared", width=64, height=48, fps=25.0)
    assert camera.reading_spec() == {"image": ((48, 64, 3), "uint8")}
    camera.connect()  # whichever connects first creates the world
    arm.connect()
    try:
        assert arm.sim is camera.sim and _WORLDS["shared"].sim is arm.sim
        first = _read_or_skip(camera)
        assert first.frame_number == 0 and first.values["image"].shape == (48, 64, 3)
        assert first.values["image"].dtype == np.uint8
        arm.command_joint_position(arm.home_q_rad + np.array([0.8, 0.4, 0.0, 0.0, 0.0, 0.0]))
        numbers, images = [0], [first.values["image"]]
        for _ in range(5):
            clock.tick(2)  # 40 ms = one frame at 25 fps
            reading = camera.read()
            numbers.append(reading.frame_number)
            images.append(reading.values["image"])
        assert numbers == [0, 1, 2, 3, 4, 5]
        assert camera.read().frame_number == 5  # no time passed: the same frame again
        assert np.abs(images[-1].astype(int) - images[0].astype(int)).sum() > 0, "the moving arm changes the image"
    finally:
        arm.disconnect()
        assert "shared" in _WORLDS  # the camera still holds the world
        camera.disconnect()
    assert "shared" not in _WORLDS


def test_lockstep_session_on_sim_ur5(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    argv = [sys.executable, "-m", "robotd", "train", str(ROOT / "configs" / "sim_ur5_reach.yaml"),
            "--steps", "200", "--logdir", str(logdir), *FAST]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if result.returncode != 0 and "RenderUnavailable" in result.stderr + result.stdout:
        print("skipping session test: MuJoCo rendering unavailable")
        pytest.skip("MuJoCo rendering unavailable for sim_camera")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["env_steps"] == 200
    assert summary["logged_steps"] == summary["ingested_steps"] == 200
    assert summary["lost_steps"] == 0 and summary["pacing"] == "lockstep"
    print(f"sim_ur5 lockstep session: {summary['control_rate_hz']:.1f} steps/s over {summary['wall_s']} s")
