"""The MuJoCo UR5 as simulated drivers (drivers/sim/sim_ur5.py): sim_ur5 (Arm) and sim_camera (Camera)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import requires  # noqa: E402
requires.mujoco()

import drivers  # noqa: E402
from drivers import registry  # noqa: E402
from drivers.sim.mock import MockArm  # noqa: E402
from drivers.sim.mujoco_sim import RenderUnavailable  # noqa: E402
from drivers.sim.sim_ur5 import _WORLDS, SimCamera, SimUR5  # noqa: E402
from tests.clocks import FakeClock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERIOD_NS = 20_000_000  # 50 Hz
FAST = ["--set", "control.rate_hz=50", "--set", "control.action_deadline_ms=15", "--set", "actor.prefill_steps=100",
        "--set", "learner.min_replay_steps=64", "--set", "learner.batch_size=4", "--set", "learner.batch_length=16",
        "--set", "learner.publish_every_updates=2", "--set", "learner.profile=",   # plumbing only: the tiny default model
        # A session this short can end before a loaded machine has the learner up: the actor waits for its acks.
        "--set", "actor.drain_timeout_s=90"]
# Drives the wrist_2 link down into the table top, beside the bins.
INTO_TABLE_Q = np.array([1.57, -0.5, 1.5, -1.57, -1.57, 0.0])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(period_ns=PERIOD_NS)


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


def _dh_tool(q: np.ndarray, tool_m: float = 0.13) -> np.ndarray:
    """UR5 DH forward kinematics (T_i = Rz(q) Tz(d) Tx(a) Rx(alpha)) plus the tool offset along flange z."""
    d = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
    a = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
    alpha = (np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0)
    pose = np.eye(4)
    for qi, di, ai, al in zip(q, d, a, alpha):
        c, s, ca, sa = np.cos(qi), np.sin(qi), np.cos(al), np.sin(al)
        pose = pose @ np.array([[c, -s * ca, s * sa, ai * c], [s, c * ca, -c * sa, ai * s],
                                [0.0, sa, ca, di], [0.0, 0.0, 0.0, 1.0]])
    return pose[:3, 3] + tool_m * pose[:3, 2]


def test_reading_spec_and_tcp_forward_kinematics(arm: SimUR5) -> None:
    spec = arm.reading_spec()
    assert {k: v for k, v in spec.items() if not k.startswith("scene_")} == {
        **MockArm().reading_spec(), "gripper_pos": ((1,), "float32")}
    assert spec["scene_object_pos"] == ((3, 3), "float32") and spec["scene_object_bin"] == ((3,), "float32")
    assert arm.has_gripper
    reading = arm.read()
    assert set(reading.values) == set(spec)
    for key, (shape, dtype) in spec.items():
        assert reading.values[key].shape == shape and reading.values[key].dtype == np.dtype(dtype), key
    assert reading.domain == "hardware_clock"
    assert arm.dof == 6 and arm.joint_limits_rad.shape == (6, 2) and arm.home_q_rad.shape == (6,)
    # tcp_position is the tool centre point: DH flange + 0.13 m along the flange z axis, exactly.
    for q in (arm.home_q_rad, arm.home_q_rad + 0.3, np.zeros(6), np.array([0.4, -1.2, 1.9, -2.0, -1.2, 0.7])):
        np.testing.assert_allclose(arm.tcp_position(q), _dh_tool(q), atol=1e-6)
    np.testing.assert_allclose(arm.tcp_position(arm.home_q_rad), [-0.4869, -0.10915, 0.301859], atol=1e-6)
    np.testing.assert_allclose(reading.values["tcp_pos"], arm.tcp_position(reading.values["joint_pos"]), atol=1e-4)
    no_gripper = SimUR5(gripper=False)
    assert "gripper_pos" not in no_gripper.reading_spec()
    with pytest.raises(RuntimeError, match="no gripper"):
        no_gripper.command_gripper(1.0)


@pytest.mark.parametrize("kwargs, word", [
    ({"gripper": "yes"}, "gripper"), ({"target": 1}, "target"), ({"randomize_objects": None}, "randomize_objects"),
    ({"target_min_m": [0.0, 0.0]}, "target_min_m"), ({"target_max_m": [0.0, 0.0, float("nan")]}, "target_max_m"),
    ({"target_min_m": [0.0, 0.0, 0.5], "target_max_m": [0.1, 0.1, 0.2]}, "target_min_m"),
    ({"command_latency_s": -0.1}, "command_latency_s"), ({"sensor_latency_s": "x"}, "sensor_latency_s"),
    ({"latency_jitter_s": float("inf")}, "latency_jitter_s"), ({"orientation_hold": "on"}, "orientation_hold"),
])
def test_arm_arguments_are_validated(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word) as info:
        SimUR5(**kwargs)
    assert "\n" not in str(info.value)


def test_camera_arguments_are_validated() -> None:
    for kwargs, word in (({"drop_rate": 1.0}, "drop_rate"), ({"drop_rate": -0.1}, "drop_rate"),
                         ({"depth": 1}, "depth"), ({"width": 0}, "width"), ({"fps": "fast"}, "fps"),
                         ({"world": ""}, "world")):
        with pytest.raises(ValueError, match=word) as info:
            SimCamera(**kwargs)
        assert "\n" not in str(info.value)


def test_unknown_and_out_of_range_arguments_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError) as info:
        SimUR5(latency_ms=5)
    assert str(info.value).startswith("SimUR5 'arm': unknown key 'latency_ms': known keys here are ")
    assert "command_latency_s" in str(info.value) and "world" in str(info.value)
    with pytest.raises(ValueError) as info:
        SimUR5(name="left", max_vel_rad_s=0.0)
    assert str(info.value) == "SimUR5 'left': max_vel_rad_s = 0.0 is out of range: allowed 0.001 to 10.0"
    with pytest.raises(ValueError) as info:
        SimCamera(resolution=64)
    assert str(info.value).startswith("SimCamera 'camera': unknown key 'resolution': known keys here are ")
    with pytest.raises(ValueError) as info:
        SimCamera(height=100000)
    assert str(info.value) == "SimCamera 'camera': height = 100000 is out of range: allowed 1 to 4096"
    with pytest.raises(ValueError) as info:
        SimUR5(target_min_m=[0.0, 0.0, 0.5], target_max_m=[0.1, 0.1, 0.2])
    assert str(info.value) == ("SimUR5 'arm': target_min_m = [0.0, 0.0, 0.5] must be <= target_max_m = "
                               "[0.1, 0.1, 0.2] on every axis: swap or fix them")
    # A config's args are checked against the same dataclasses at load time.
    from robotd import config as config_mod
    with pytest.raises(config_mod.ConfigError, match=r"^config: unknown key 'cameras\[0\].args.resolution'"):
        config_mod.load(ROOT / "configs" / "sim_ur5_reach.yaml", ["cameras.0.args.resolution=64"])
    with pytest.raises(config_mod.ConfigError, match=r"^config: robot.args.gripper = 'maybe' is not a boolean"):
        config_mod.load(ROOT / "configs" / "sim_ur5_reach.yaml", ["robot.args.gripper=maybe"])


def test_command_loss_drops_a_seeded_share_of_the_commands(clock: FakeClock) -> None:
    arm = SimUR5(host_clock=clock, world="loss", reset_noise_rad=0.0, command_loss=0.5, seed=2)
    arm.connect()
    try:
        arm.reset()
        q0 = arm.read().values["joint_pos"].astype(np.float64)
        for _ in range(200):
            arm.command_joint_position(q0)
        assert arm.commands_sent == 200 and 70 < arm.commands_lost < 130
        lost = arm.commands_lost
        arm.stop()  # stop() is not a command that can be lost
        assert arm.commands_sent == 200 and arm.commands_lost == lost
    finally:
        arm.disconnect()


def test_position_command_moves_toward_target_as_physics_time_advances(arm: SimUR5, clock: FakeClock) -> None:
    target = arm.home_q_rad + np.array([0.3, -0.2, 0.2, 0.1, 0.2, 0.3])
    arm.command_joint_position(target)
    start_t = arm.sim.time_s
    q0 = arm.read().values["joint_pos"].astype(np.float64)
    assert arm.sim.time_s == start_t, "no host time passed, so no physics step may run"
    errors = [np.abs(q0 - target).max()]
    for _ in range(3):
        clock.advance(10_000_000)  # 10 ms of physics per read
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


# --- tasks in the simulated world: target, objects, grasping, tcp velocity ------------------------
def _cyan(image: np.ndarray) -> np.ndarray:
    """Pixels of the target sphere's colour (emissive cyan), (h, w) bool."""
    image = image.astype(int)
    return (image[..., 1] > 150) & (image[..., 2] > 150) & (image[..., 0] < 100)


def _project(sim, pos_base: np.ndarray, width: int, height: int) -> np.ndarray:
    """(row, column) of a base-frame point in the scene camera's image (pinhole model from the MJCF fovy)."""
    cam = sim.model.camera("scene").id
    r_base = sim.data.xmat[sim._base].reshape(3, 3)
    world = sim.data.xpos[sim._base] + r_base @ pos_base
    local = sim.data.cam_xmat[cam].reshape(3, 3).T @ (world - sim.data.cam_xpos[cam])
    focal = (height / 2) / np.tan(np.radians(sim.model.cam_fovy[cam]) / 2)
    return np.array([height / 2 - focal * local[1] / -local[2], width / 2 + focal * local[0] / -local[2]])


def test_target_drawn_per_reset_and_seen_by_the_camera(clock: FakeClock) -> None:
    arm = SimUR5(host_clock=clock, world="target", reset_noise_rad=0.0, seed=3)
    camera = SimCamera(host_clock=clock, world="target", width=64, height=64)
    arm.connect()
    camera.connect()
    try:
        targets = []
        for _ in range(3):
            arm.reset()
            clock.tick(2)
            target = arm.read().values["scene_target_pos"].astype(np.float64)
            assert np.all(target >= arm.target_min_m - 1e-6) and np.all(target <= arm.target_max_m + 1e-6)
            np.testing.assert_allclose(target, arm.sim.target_position(), atol=1e-6)
            mask = _cyan(_read_or_skip(camera).values["image"])
            assert mask.sum() >= 3, "the target sphere shows in the 64x64 image"
            expected = _project(arm.sim, target, 64, 64)
            assert np.abs(np.argwhere(mask).mean(axis=0) - expected).max() < 2.0, (np.argwhere(mask), expected)
            targets.append(target)
        assert min(np.linalg.norm(a - b) for a, b in zip(targets, targets[1:])) > 0.01, "a new target per reset"
    finally:
        camera.disconnect()
        arm.disconnect()
    hidden = SimUR5(host_clock=clock, world="no_target", target=False)
    hidden_camera = SimCamera(host_clock=clock, world="no_target", width=64, height=64)
    hidden_camera.connect()
    hidden.connect()
    try:
        hidden.reset()
        clock.tick()
        assert not hidden.read().values["scene_target_pos"].any()
        assert _cyan(_read_or_skip(hidden_camera).values["image"]).sum() == 0
    finally:
        hidden.disconnect()
        hidden_camera.disconnect()


def test_objects_rerandomised_in_bin_a_per_reset(arm: SimUR5, clock: FakeClock) -> None:
    layouts = []
    for _ in range(4):
        arm.reset()
        clock.tick()
        start = arm.read().values
        clock.tick(25)  # 0.5 s: resting boxes stay put
        after = arm.read().values
        objects = after["scene_object_pos"].astype(np.float64)
        assert np.abs(objects - start["scene_object_pos"]).max() < 0.003, "boxes are placed resting, not dropped"
        np.testing.assert_array_equal(after["scene_object_bin"], [1, 1, 1])
        assert not after["scene_grasped"].any()
        gaps = [np.linalg.norm(objects[i, :2] - objects[j, :2]) for i in range(3) for j in range(i + 1, 3)]
        assert min(gaps) > 0.04, "boxes do not overlap"
        np.testing.assert_allclose(objects[:, 2], 0.03, atol=0.002)  # on bin_a's floor (1 cm above the table)
        layouts.append(objects)
    assert min(np.abs(a - b).max() for a, b in zip(layouts, layouts[1:])) > 0.005, "a new layout per reset"
    fixed = SimUR5(host_clock=clock, world="fixed_objects", randomize_objects=False)
    fixed.connect()
    try:
        fixed.reset()
        np.testing.assert_allclose(fixed.read().values["scene_object_pos"][0], [-0.41, 0.28, 0.032], atol=1e-6)
    finally:
        fixed.disconnect()


def _move_tcp(arm: SimUR5, clock: FakeClock, goal: np.ndarray, speed: float = 0.25, tol: float = 0.004) -> dict:
    """Drive the tcp to goal with a proportional tcp velocity command each 20 ms tick; the last reading."""
    for _ in range(300):
        clock.tick()
        values = arm.read().values
        error = goal - values["tcp_pos"]
        if np.linalg.norm(error) < tol:
            return values
        command = 4.0 * error
        command *= min(1.0, speed / max(np.linalg.norm(command), 1e-9))
        arm.command_tcp_velocity(np.r_[command, 0.0, 0.0, 0.0])
    raise AssertionError(f"tcp did not reach {goal}: at {values['tcp_pos']}")


def test_scripted_grasp_lift_and_place_in_bin_b(arm: SimUR5, clock: FakeClock) -> None:
    arm.reset()
    clock.tick()
    values = arm.read().values
    box = values["scene_object_pos"][0].astype(np.float64)
    assert values["gripper_pos"][0] == pytest.approx(0.0, abs=0.01)
    arm.command_gripper(0.1)
    _move_tcp(arm, clock, box + [0.0, 0.0, 0.12])
    _move_tcp(arm, clock, box + [0.0, 0.0, 0.005], speed=0.1)
    arm.command_tcp_velocity(np.zeros(6))
    arm.command_gripper(1.0)
    for _ in range(25):
        clock.tick()
        values = arm.read().values
    assert 0.2 < values["gripper_pos"][0] < 0.8, "the fingers stop on the box"
    assert values["scene_grasped"][0] == 0.0, "pinched but not lifted yet"
    values = _move_tcp(arm, clock, box + [0.0, 0.0, 0.15])
    np.testing.assert_array_equal(values["scene_grasped"], [1, 0, 0])
    assert values["scene_object_bin"][0] == 0 and values["scene_object_pos"][0][2] > 0.12
    values = _move_tcp(arm, clock, np.array([-0.45, -0.25, 0.15]))  # over bin_b
    assert values["scene_grasped"][0] == 1.0
    arm.command_gripper(0.0)
    for _ in range(50):
        clock.tick()
        values = arm.read().values
    assert values["scene_grasped"][0] == 0.0 and values["scene_object_bin"][0] == 2
    np.testing.assert_array_equal(values["scene_object_bin"][1:], [1, 1])
    assert arm.status().ok


def test_tcp_velocity_follows_the_command_with_the_gripper_down(arm: SimUR5, clock: FakeClock) -> None:
    velocity = np.array([0.05, -0.05, 0.03])
    arm.command_tcp_velocity(np.r_[velocity, 0.3, 0.0, 0.0])  # the angular part is replaced by the hold
    clock.tick(5)
    start = arm.read().values["tcp_pos"].astype(np.float64)
    clock.tick(25)
    moved = arm.read().values["tcp_pos"] - start
    np.testing.assert_allclose(moved, velocity * 0.5, atol=0.002)
    tool_z = arm.sim.tcp_rotation()[:, 2]
    assert np.degrees(np.arccos(-tool_z[2])) < 0.5, "the tool still points straight down"
    arm.stop()  # leaves velocity mode: the tcp holds
    clock.tick(5)
    held = arm.read().values["tcp_pos"].astype(np.float64)
    clock.tick(25)
    np.testing.assert_allclose(arm.read().values["tcp_pos"], held, atol=5e-4)
    # Without the hold the angular part is obeyed: the tool turns about base z.
    free = SimUR5(host_clock=clock, world="free_orientation", orientation_hold=False, reset_noise_rad=0.0)
    free.connect()
    try:
        free.reset()
        free.command_tcp_velocity(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.4]))
        clock.tick(25)
        free.read()
        rotation, home = free.sim.tcp_rotation(), free.sim.flange_pose(free.home_q_rad)[1]
        yaw = np.arctan2(rotation[1, 0], rotation[0, 0]) - np.arctan2(home[1, 0], home[0, 0])
        assert yaw == pytest.approx(0.2, abs=0.02), "0.4 rad/s about base z for 0.5 s"
        assert np.degrees(np.arccos(-rotation[2, 2])) < 0.5
    finally:
        free.disconnect()


# --- realism: latency, dropped frames, depth, protective stop every tick ----------------------------
def test_command_latency_delays_every_command(clock: FakeClock) -> None:
    arm = SimUR5(host_clock=clock, world="latency", reset_noise_rad=0.0, command_latency_s=0.1)
    arm.connect()
    try:
        arm.reset()
        q0 = arm.read().values["joint_pos"].astype(np.float64)
        arm.command_joint_position(q0 + np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0]))
        arm.command_gripper(1.0)
        for _ in range(4):  # 80 ms: nothing has arrived yet
            clock.tick()
            values = arm.read().values
            assert abs(values["joint_pos"][0] - q0[0]) < 1e-3 and values["gripper_pos"][0] < 0.01
        clock.tick(5)
        values = arm.read().values
        assert values["joint_pos"][0] - q0[0] > 0.05 and values["gripper_pos"][0] > 0.2
        # stop() acts at once and drops what is still in flight.
        clock.tick(50)
        held = arm.read().values["tcp_pos"].astype(np.float64)
        arm.command_tcp_velocity(np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.0]))
        clock.tick(2)
        arm.stop()
        clock.tick(25)
        np.testing.assert_allclose(arm.read().values["tcp_pos"], held, atol=5e-4)
        arm.command_tcp_velocity(np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.0]))
        clock.tick(25)
        assert arm.read().values["tcp_pos"][2] - held[2] > 0.03, "without stop() the command arrives and moves the tool"
    finally:
        arm.disconnect()


def test_sensor_latency_shows_the_past_stamped_with_its_capture_time(clock: FakeClock) -> None:
    arm = SimUR5(host_clock=clock, world="sensor_latency", reset_noise_rad=0.0, sensor_latency_s=0.1)
    arm.connect()
    try:
        arm.reset()
        reset_ns = clock.ns
        arm.command_joint_velocity(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
        truth = {}
        for tick in range(1, 21):
            clock.tick()
            reading = arm.read()
            truth[clock.ns] = arm.sim.q()[0]
            if tick < 5:  # nothing older than the reset exists: the reset state, stamped with the reset time
                assert reading.hw_time_ns == reset_ns
            else:
                assert clock.ns - reading.hw_time_ns == pytest.approx(100_000_000, abs=2_000_000)
        # The reading at t shows the arm as it was at t - 0.1 s (5 ticks earlier).
        assert reading.values["joint_pos"][0] == pytest.approx(truth[clock.ns - 100_000_000], abs=1e-6)
        assert arm.sim.q()[0] - reading.values["joint_pos"][0] > 0.03
    finally:
        arm.disconnect()


def test_dropped_frames_leave_gaps_at_the_drop_rate(clock: FakeClock) -> None:
    camera = SimCamera(host_clock=clock, world="drops", width=16, height=16, fps=50.0, drop_rate=0.3, seed=1)
    camera.connect()
    try:
        readings = [_read_or_skip(camera)]
        for _ in range(300):
            clock.tick()  # one 20 ms frame period per read
            readings.append(camera.read())
    finally:
        camera.disconnect()
    numbers = np.array([r.frame_number for r in readings])
    assert numbers[0] == 0 and np.all(np.diff(numbers) >= 0)
    delivered = np.unique(numbers)
    assert 0.6 < len(delivered) / len(numbers) < 0.8, len(delivered) / len(numbers)
    assert np.diff(delivered).max() >= 2, "lost frames show as gaps in the numbers"
    for reading in readings:  # a repeated frame keeps its own number and capture time
        assert reading.hw_time_ns == readings[0].hw_time_ns + reading.frame_number * 20_000_000


def test_depth_frames_measure_the_table(clock: FakeClock) -> None:
    import mujoco

    camera = SimCamera(host_clock=clock, world="depth", width=64, height=48, depth=True)
    assert camera.reading_spec()["depth"] == ((48, 64), "uint16")
    camera.connect()
    try:
        reading = _read_or_skip(camera)
        depth = reading.values["depth"]
        assert depth.shape == (48, 64) and depth.dtype == np.uint16
        sim = camera.sim
        cam = sim.model.camera("scene").id
        axis = -sim.data.cam_xmat[cam].reshape(3, 3)[:, 2]
        geom = np.zeros(1, dtype=np.int32)
        distance = mujoco.mj_ray(sim.model, sim.data, sim.data.cam_xpos[cam], axis, None, 1, -1, geom)
        assert sim.model.geom(int(geom[0])).name == "table_top"
        centre = depth[23:25, 31:33].mean()
        assert centre == pytest.approx(distance * 1000.0, rel=0.03), (centre, distance)
        assert 700 < depth[-1].min() <= depth[-1].max() < 1000, "the bottom rows see the near table top at ~0.8 m"
        assert depth[0].min() > depth[-1].max(), "the top rows look farther away"
    finally:
        camera.disconnect()


def test_protective_stop_checked_every_inner_tick(arm: SimUR5, clock: FakeClock) -> None:
    arm.command_joint_position(INTO_TABLE_Q)
    clock.tick(100)  # 2 s in one read: the stop must latch at the first tick over the threshold
    assert arm.status().protective_stop
    # Unchecked, the servo would push on to ~200 N; held at the first tick over 50 N it stays near 50 N.
    assert arm.sim.arm_contact_force() < 2 * arm.protective_stop_n, "the arm held instead of pushing on for 2 s"
