"""Leg odometry for the A1: foot kinematics against the MuJoCo model, velocity against the simulator's truth."""
from __future__ import annotations

import math

import numpy as np

from tests import requires  # noqa: E402

mujoco = requires.mujoco()

from drivers.real.a1_odometry import LegOdometry, foot_positions, tilt_rotation  # noqa: E402
from drivers.sim.mujoco_sim import A1Sim  # noqa: E402
from drivers.sim.sim_a1 import quat_to_rpy  # noqa: E402

FEET = ("FR_foot", "FL_foot", "RR_foot", "RL_foot")


def test_foot_positions_match_the_model():
    sim = A1Sim()
    rng = np.random.default_rng(3)
    lower, upper = sim.joint_limits_rad[:, 0], sim.joint_limits_rad[:, 1]
    for _ in range(5):
        q = rng.uniform(lower, upper)
        sim.reset(q)
        mujoco.mj_kinematics(sim.model, sim.data)
        trunk = sim.model.body("trunk").id
        rotation = sim.data.xmat[trunk].reshape(3, 3)
        origin = sim.data.xpos[trunk]
        model_feet = np.stack([rotation.T @ (sim.data.geom(name).xpos - origin) for name in FEET])
        np.testing.assert_allclose(foot_positions(sim.q()), model_feet, atol=1e-6)


def test_tilt_rotation_undoes_roll_then_pitch():
    # A vector along the tilted trunk's x axis is level forward-and-down in the heading frame.
    pitch = 0.3
    v = tilt_rotation(0.0, pitch) @ np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(v, [math.cos(pitch), 0.0, -math.sin(pitch)], atol=1e-12)


def _truth_and_readings(sim: A1Sim, foot_geoms) -> tuple[np.ndarray, dict]:
    """The trunk's velocity in the heading frame (the simulator's truth) and what a real A1 would read."""
    data = sim.data
    touching = set(data.contact.geom[: data.ncon].ravel().tolist())
    trunk = sim.model.body("trunk").id
    xmat = data.xmat[trunk]
    heading = math.atan2(float(xmat[3]), float(xmat[0]))
    c, s = math.cos(heading), math.sin(heading)
    v = data.qvel[0:3]
    imu = sim.imu()
    readings = {"q": sim.q(), "dq": sim.dq(), "gyro": imu["gyroscope"], "rpy": quat_to_rpy(imu["quaternion"]),
                "contact": np.array([1.0 if g in touching else 0.0 for g in foot_geoms])}
    return np.array([c * v[0] + s * v[1], -s * v[0] + c * v[1], v[2]]), readings


def test_velocity_estimate_tracks_the_simulated_trunk_while_it_sways():
    """Feet planted, all thighs swinging together: the trunk rocks forward and back and up and down, and the
    estimate from joints, gyroscope and contacts follows the simulator's true trunk velocity."""
    sim = A1Sim()
    sim.reset(sim.stand_q_rad)
    sim.step(300)
    foot_geoms = [sim.model.geom(name).id for name in FEET]
    odometry = LegOdometry(alpha=1.0)
    estimated, truth = [], []
    for step in range(400):                            # 400 x 5 ms: two sway cycles at 1 Hz
        offset = 0.2 * math.sin(2 * math.pi * step * 0.005)
        q = sim.stand_q_rad + np.tile([0.0, offset, 0.0], 4)
        sim.command_motors(q, np.zeros(12), 60.0, 2.0, np.zeros(12))
        sim.step(5)
        true_velocity, r = _truth_and_readings(sim, foot_geoms)
        estimate = odometry.update(r["q"], r["dq"], r["gyro"], r["rpy"], r["contact"])
        if step >= 50:
            estimated.append(estimate)
            truth.append(true_velocity)
    estimated, truth = np.array(estimated), np.array(truth)
    assert np.abs(truth[:, 0]).max() > 0.1, "the trunk should sway forward and back"
    for axis in (0, 2):
        error = np.abs(estimated[:, axis] - truth[:, axis]).mean()
        assert error < 0.25 * np.abs(truth[:, axis]).mean(), (axis, error, np.abs(truth[:, axis]).mean())
        assert np.corrcoef(estimated[:, axis], truth[:, axis])[0, 1] > 0.95
