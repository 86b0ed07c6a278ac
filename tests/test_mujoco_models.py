"""The MuJoCo models of the UR5 (with gripper, table, bins, boxes) and the A1, and their sim helpers."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

# drivers.sim.mujoco_sim imports mujoco itself: it picks MUJOCO_GL=egl unless set, and survives a broken
# GL backend (rendering then skips below), which a bare `import mujoco` would not.
from tests import requires  # noqa: E402

mujoco = requires.mujoco()

from drivers.sim.mujoco_sim import A1_XML, UR5_XML, A1Sim, RenderUnavailable, UR5Sim  # noqa: E402

# Standard UR5 DH parameters: T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i).
UR5_D = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
UR5_A = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
UR5_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
UR5_MASSES = (3.7, 8.393, 2.275, 1.219, 1.219, 0.1879)
UR5_LINKS = ("shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link", "wrist_2_link", "wrist_3_link")


def dh_flange(q: np.ndarray) -> np.ndarray:
    """4x4 pose of the UR5 flange (DH frame 6) in the base frame (DH frame 0)."""
    t = np.eye(4)
    for qi, d, a, alpha in zip(q, UR5_D, UR5_A, UR5_ALPHA):
        ct, st, ca, sa = math.cos(qi), math.sin(qi), math.cos(alpha), math.sin(alpha)
        t = t @ np.array(
            [
                [ct, -st * ca, st * sa, a * ct],
                [st, ct * ca, -ct * sa, a * st],
                [0.0, sa, ca, d],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
    return t


@pytest.fixture(scope="module")
def ur5() -> UR5Sim:
    sim = UR5Sim()
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def a1() -> A1Sim:
    sim = A1Sim()
    yield sim
    sim.close()


def _steps_per_s(sim, n: int = 2000) -> float:
    start = time.perf_counter()
    sim.step(n)
    return n / (time.perf_counter() - start)


def test_models_load_and_step(ur5: UR5Sim, a1: A1Sim) -> None:
    for path in (UR5_XML, A1_XML):
        model = mujoco.MjModel.from_xml_path(str(path))
        assert model.vis.quality.shadowsize == 0, f"{path.name}: shadows must be off"
    ur5.reset()
    a1.reset()
    rates = {"ur5": _steps_per_s(ur5), "a1": _steps_per_s(a1)}
    for name, sim in (("ur5", ur5), ("a1", a1)):
        assert np.all(np.isfinite(sim.data.qpos)), name
        assert sim.time_s > 0.0
    print(f"physics steps/s: UR5 {rates['ur5']:.0f} (dt {ur5.timestep_s} s), A1 {rates['a1']:.0f} (dt {a1.timestep_s} s)")


def test_ur5_model_numbers(ur5: UR5Sim) -> None:
    masses = [float(ur5.model.body(b).mass[0]) for b in UR5_LINKS]
    np.testing.assert_allclose(masses, UR5_MASSES, rtol=1e-9)
    assert ur5.model.nu == 7  # six joints + gripper
    np.testing.assert_allclose(ur5.joint_limits_rad[:, 1], [2 * math.pi] * 2 + [math.pi] + [2 * math.pi] * 3)
    np.testing.assert_allclose(ur5.joint_limits_rad[:, 0], -ur5.joint_limits_rad[:, 1])
    assert ur5.model.camera("scene").id >= 0
    assert ur5.model.site("tcp").id >= 0
    for body in ("table", "bin_a", "bin_b", "box_red", "box_yellow", "box_purple"):
        assert ur5.model.body(body).id >= 0


def test_ur5_flange_matches_dh(ur5: UR5Sim) -> None:
    rng = np.random.default_rng(7)
    configs = [np.zeros(6), ur5.home_q_rad] + [rng.uniform(-math.pi, math.pi, 6) for _ in range(6)]
    worst_pos = worst_rot = 0.0
    for q in configs:
        pos, rot = ur5.flange_pose(q)
        expected = dh_flange(q)
        worst_pos = max(worst_pos, float(np.abs(pos - expected[:3, 3]).max()))
        worst_rot = max(worst_rot, float(np.abs(rot - expected[:3, :3]).max()))
        # The tcp is the flange moved TOOL_OFFSET_M along the flange z axis.
        tcp_expected = expected[:3, 3] + ur5.TOOL_OFFSET_M * expected[:3, 2]
        np.testing.assert_allclose(ur5.tcp_position(q), tcp_expected, atol=1e-3)
    print(f"UR5 flange FK vs DH over {len(configs)} configurations: max position error {worst_pos:.2e} m")
    assert worst_pos < 1e-3
    assert worst_rot < 1e-6
    # At q = 0 the DH arm lies stretched along base -x: x = a2 + a3, y = -(d4 + d6), z = d1 - d5.
    np.testing.assert_allclose(
        ur5.flange_pose(np.zeros(6))[0], [-0.81725, -0.19145, -0.005491], atol=1e-6
    )


def test_ur5_holds_joint_target_against_gravity(ur5: UR5Sim) -> None:
    for target in (np.array([0.3, -1.2, 1.0, -1.4, -1.6, 0.2]), np.array([0.0, -0.3, 0.3, 0.0, 0.0, 0.0])):
        ur5.reset(q_rad=ur5.home_q_rad)
        ur5.command_joint_position(target)
        ur5.advance(2.0)
        error = np.abs(ur5.q() - target).max()
        assert error < 0.01, f"joint error {error:.4f} rad after 2 s holding {target.tolist()}"
        assert np.abs(ur5.dq()).max() < 0.01
        assert abs(ur5.joint_torques()[1]) > 5.0  # the shoulder really carries the arm
    with pytest.raises(ValueError, match="outside joint_limits_rad"):
        ur5.command_joint_position([0.0, 0.0, 4.0, 0.0, 0.0, 0.0])


def test_ur5_gripper_closes_and_opens(ur5: UR5Sim) -> None:
    ur5.reset()
    assert ur5.gripper_opening() == pytest.approx(0.08, abs=1e-6)
    ur5.command_gripper(0.0)
    ur5.advance(0.5)
    assert ur5.gripper_opening() < 0.002
    ur5.command_gripper(0.06)
    ur5.advance(0.5)
    assert ur5.gripper_opening() == pytest.approx(0.06, abs=0.002)


def test_ur5_contact_with_table_is_reported(ur5: UR5Sim) -> None:
    ur5.reset()
    ur5.advance(0.2)
    assert ur5.arm_contact_force() == 0.0
    assert not ur5.protective_stop_contact()
    # Turn away from the bins and swing the upper arm down through the table top.
    ur5.command_joint_position([math.pi / 2, 0.3, 0.0, -1.5707963, -1.5707963, 0.0])
    ur5.advance(1.0)
    hits = ur5.arm_contacts()
    assert any("table" in (c.body1, c.body2) for c in hits), hits
    assert ur5.protective_stop_contact(threshold_n=50.0)


def test_a1_model_numbers(a1: A1Sim) -> None:
    m = a1.model
    assert m.nu == 12 and a1.n_motors == 12
    assert float(m.body("trunk").mass[0]) == pytest.approx(4.713)
    for leg in A1Sim.LEGS:
        assert float(m.body(f"{leg}_hip").mass[0]) == pytest.approx(0.696)
        assert float(m.body(f"{leg}_thigh").mass[0]) == pytest.approx(1.013)
        assert float(m.body(f"{leg}_calf").mass[0]) == pytest.approx(0.166 + 0.06)
        assert abs(m.body(f"{leg}_thigh").pos[1]) == pytest.approx(0.0838)
        assert m.body(f"{leg}_calf").pos[2] == pytest.approx(-0.2)
        assert m.site(f"{leg}_foot").pos[2] == pytest.approx(-0.2)
    np.testing.assert_allclose(a1.joint_limits_rad[:3], [[-0.802851, 0.802851], [-1.0472, 4.18879], [-2.69653, -0.916298]])
    np.testing.assert_allclose(m.actuator_ctrlrange, [[-33.5, 33.5]] * 12)
    assert m.site("imu").id >= 0


def test_a1_pd_law_is_applied_each_step(a1: A1Sim) -> None:
    a1.reset()
    kp, kd = np.full(12, 20.0), np.full(12, 0.5)
    q_des = a1.stand_q_rad + 0.1
    a1.command_motors(q_des, np.zeros(12), kp, kd, np.full(12, 0.3))
    expected = np.clip(kp * (q_des - a1.q()) + kd * (0.0 - a1.dq()) + 0.3, -33.5, 33.5)
    a1.step(1)
    np.testing.assert_allclose(a1.tau(), expected, atol=1e-9)
    a1.command_motors(q_des + 5.0, np.zeros(12), 1000.0, 0.0, 0.0)
    a1.step(1)
    assert np.all(np.abs(a1.tau()) <= 33.5 + 1e-9) and np.abs(a1.tau()).max() == pytest.approx(33.5)


def test_a1_stands_under_pd(a1: A1Sim) -> None:
    a1.reset()
    heights, tilts = [], []
    for _ in range(300):  # 3 s in 10 ms slices
        a1.advance(0.01)
        heights.append(a1.trunk_height())
        tilts.append(a1.tilt_rad())
    assert min(heights) > 0.22 and max(heights) < 0.30, (min(heights), max(heights))
    assert max(tilts) < 0.1
    assert not a1.fallen()
    quat = a1.trunk_quat()
    assert quat.shape == (4,) and abs(quat[0]) > 0.99
    imu = a1.imu()
    assert imu["accelerometer"][2] == pytest.approx(9.81, abs=0.3)  # at rest the IMU feels gravity
    assert np.abs(imu["gyroscope"]).max() < 0.05


@pytest.mark.parametrize("mode", ["motors_off", "zero_gains"])
def test_a1_falls_without_motor_torque(a1: A1Sim, mode: str) -> None:
    roll = 0.55  # tipped onto its right legs, not yet past the fall threshold
    a1.reset(base_quat=[math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0])
    assert not a1.fallen()
    if mode == "motors_off":
        a1.motors_off()
    else:
        a1.command_motors(a1.stand_q_rad, np.zeros(12), 0.0, 0.0, 0.0)
    a1.advance(3.0)
    assert a1.fallen(), f"tilt {a1.tilt_rad():.2f} rad"
    assert a1.trunk_height() < 0.2


def test_a1_damping_mode_sets_zero_stiffness(a1: A1Sim) -> None:
    a1.reset()
    a1.damp()
    a1.advance(1.0)
    assert a1.trunk_height() < 0.2  # without stiffness it sinks down


def _render_or_skip(sim, **kwargs) -> np.ndarray:
    try:
        return sim.render(64, 64, **kwargs)
    except RenderUnavailable as err:
        pytest.skip(f"no offscreen GL backend: {err}")


def test_render_64x64(ur5: UR5Sim, a1: A1Sim) -> None:
    ur5.reset()
    first = _render_or_skip(ur5)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert first.std() > 5.0  # not a blank frame
    n = 20
    start = time.perf_counter()
    for _ in range(n):
        ur5.step(10)
        frame = ur5.render(64, 64)
    per_frame_ms = (time.perf_counter() - start) / n * 1e3
    print(f"UR5 'scene' 64x64 render: {per_frame_ms:.2f} ms per frame (incl. 10 physics steps) with MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    assert frame.shape == (64, 64, 3)
    a1.reset()
    a1_frame = _render_or_skip(a1)
    assert a1_frame.shape == (64, 64, 3) and a1_frame.std() > 5.0
    with pytest.raises(ValueError, match="offscreen buffer"):
        ur5.render(4096, 64)


def _place_box(ur5: UR5Sim, index: int, pos_base: np.ndarray) -> None:
    """Put box `index` at pos_base (base frame), upright and at rest."""
    r_base = ur5.data.xmat[ur5._base].reshape(3, 3)
    adr = ur5._box_qadr[index]
    ur5.data.qpos[adr:adr + 3] = ur5.data.xpos[ur5._base] + r_base @ np.asarray(pos_base, dtype=np.float64)
    ur5.data.qpos[adr + 3:adr + 7] = [1.0, 0.0, 0.0, 0.0]
    mujoco.mj_forward(ur5.model, ur5.data)


def test_ur5_tcp_jacobian_matches_finite_differences(ur5: UR5Sim) -> None:
    rng = np.random.default_rng(1)
    for q in (ur5.home_q_rad, ur5.home_q_rad + rng.uniform(-0.5, 0.5, 6)):
        ur5.reset(q_rad=q)
        jacobian = ur5.tcp_jacobian()
        assert jacobian.shape == (6, 6)
        step = 1e-6
        for joint in range(6):
            delta = np.zeros(6)
            delta[joint] = step
            linear = (ur5.tcp_position(q + delta) - ur5.tcp_position(q - delta)) / (2 * step)
            np.testing.assert_allclose(jacobian[:3, joint], linear, atol=1e-5)
            r_plus, r_minus = ur5.flange_pose(q + delta)[1], ur5.flange_pose(q - delta)[1]
            skew = (r_plus - r_minus) / (2 * step) @ ur5.flange_pose(q)[1].T
            np.testing.assert_allclose(jacobian[3:, joint], [skew[2, 1], skew[0, 2], skew[1, 0]], atol=1e-5)


def test_ur5_target_set_hidden_and_kept_over_reset(ur5: UR5Sim) -> None:
    ur5.set_target([-0.5, 0.1, 0.2])
    np.testing.assert_allclose(ur5.target_position(), [-0.5, 0.1, 0.2], atol=1e-9)
    world = ur5.data.xpos[ur5.model.body("target").id]
    np.testing.assert_allclose(world, [0.5, -0.1, 0.95], atol=1e-9)  # base turned by pi about z, 0.75 m up
    ur5.reset()
    assert ur5.target_shown
    np.testing.assert_allclose(ur5.target_position(), [-0.5, 0.1, 0.2], atol=1e-9)
    ur5.hide_target()
    ur5.reset()
    assert not ur5.target_shown and ur5.data.xpos[ur5.model.body("target").id][2] < -1.0
    ur5.advance(0.1)
    assert not [c for c in ur5.contacts() if "target" in (c.body1, c.body2)], "nothing collides with the target"
    with pytest.raises(ValueError, match="set_target"):
        ur5.set_target([0.0, float("nan"), 0.0])


def test_ur5_object_bins_and_grasped(ur5: UR5Sim) -> None:
    ur5.reset()
    np.testing.assert_array_equal(ur5.object_bins(), [1, 1, 1])
    _place_box(ur5, 0, [-0.45, -0.25, 0.03])  # bin_b floor
    _place_box(ur5, 1, [-0.45, 0.0, 0.02])  # table between the bins
    _place_box(ur5, 2, [-0.45, 0.25, 0.2])  # above bin_a's rim
    np.testing.assert_array_equal(ur5.object_bins(), [2, 0, 0])
    ur5.advance(0.5)  # box 2 falls into bin_a
    np.testing.assert_array_equal(ur5.object_bins(), [2, 0, 1])
    assert not ur5.grasped().any() and not ur5.finger_contacts().any()
    rng = np.random.default_rng(0)
    ur5.randomize_objects(rng)
    first = ur5.object_positions()
    ur5.randomize_objects(rng)
    assert np.abs(ur5.object_positions() - first).max() > 0.005
    offsets = ur5.object_positions()[:, :2] - [-0.45, 0.25]
    assert np.abs(offsets).max() < UR5Sim.BIN_INNER_HALF_M - UR5Sim.BOX_HALF_M


def test_ur5_hold_target_holds_without_sag(ur5: UR5Sim) -> None:
    ur5.reset()
    ur5.advance(1.0)
    tcp = ur5.tcp_position()
    ur5.command_joint_position(ur5.q())  # the naive hold sags under gravity
    ur5.advance(1.0)
    naive_sag = np.linalg.norm(ur5.tcp_position() - tcp)
    ur5.reset()
    ur5.advance(1.0)
    tcp = ur5.tcp_position()
    ur5.command_joint_position(ur5.hold_target())
    ur5.advance(1.0)
    assert np.linalg.norm(ur5.tcp_position() - tcp) < 1e-4 < naive_sag


def test_ur5_depth_render_and_render_cost(ur5: UR5Sim) -> None:
    ur5.reset()
    _render_or_skip(ur5)
    depth = ur5.render_depth(64, 64)
    assert depth.shape == (64, 64) and depth.dtype == np.uint16
    assert 700 < depth[-1].min() < 1000, "the bottom rows see the near table edge"
    assert depth[0].max() == np.iinfo(np.uint16).max, "the top rows look past the floor"
    assert ur5.render(64, 64).std() > 5.0, "colour rendering still works after a depth frame"
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        ur5.render(64, 64)
    rgb_ms = (time.perf_counter() - start) / n * 1e3
    start = time.perf_counter()
    for _ in range(n):
        ur5.render_depth(64, 64)
    depth_ms = (time.perf_counter() - start) / n * 1e3
    backend = os.environ.get("MUJOCO_GL")
    print(f"UR5 64x64 with MUJOCO_GL={backend}: colour {rgb_ms:.2f} ms, depth {depth_ms:.2f} ms per frame")
