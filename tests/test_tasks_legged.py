"""The quadruped tasks a1_stand and a1_walk (robotd/tasks/legged.py): observations, gated rewards, bounds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from robotd import tasks

STAND = np.tile([0.0, 0.9, -1.8], 4)
SIGMA = 0.4
SPEC = {
    "joint_pos": ((12,), "float32"),
    "joint_vel": ((12,), "float32"),
    "imu_rpy": ((3,), "float32"),
    "imu_gyro": ((3,), "float32"),
    "foot_contact": ((4,), "float32"),
    "tick": ((1,), "uint32"),
    "scene_base_vel": ((3,), "float32"),
    "scene_base_height": ((1,), "float32"),
}
MOCK_LEGGED_SPEC = {key: SPEC[key] for key in ("joint_pos", "joint_vel", "imu_rpy", "foot_contact", "tick")}


def make(name: str, **args) -> tasks.Task:
    return tasks.make(name, robot="legs", cameras=[], episode_steps=1000, seed=0, args=args)


def readings(q=STAND, rpy=(0.0, 0.0, 0.0), vel=(0.0, 0.0, 0.0)) -> dict:
    return {"legs": {
        "joint_pos": np.asarray(q, np.float32),
        "joint_vel": np.zeros(12, np.float32),
        "imu_rpy": np.asarray(rpy, np.float32),
        "imu_gyro": np.zeros(3, np.float32),
        "foot_contact": np.ones(4, np.float32),
        "tick": np.array([7], np.uint32),
        "scene_base_vel": np.asarray(vel, np.float32),
        "scene_base_height": np.array([0.27], np.float32),
    }}


def reward_at(task: tasks.Task, **kwargs) -> float:
    obs = task.observe(readings(**kwargs))
    return task.reward(obs)


def test_both_are_reset_free_and_observe_proprio_only():
    for name in ("a1_stand", "a1_walk"):
        task = make(name)
        assert task.reset_request is False
        spec = task.observation_spec({"legs": SPEC})
        assert spec == {"joint_pos": ((12,), "float32"), "joint_vel": ((12,), "float32"),
                        "imu_rpy": ((3,), "float32"), "imu_gyro": ((3,), "float32"),
                        "foot_contact": ((4,), "float32")}
        obs = task.observe(readings(vel=(0.3, 0.0, 0.0)))
        assert set(obs) == set(spec)
        assert not any(key.startswith(tasks.SCENE_PREFIX) for key in obs)
        assert task.scene["scene_base_vel"][0] == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["a1_stand", "a1_walk"])
def test_with_fall_tilt_a_fall_ends_the_episode_and_without_it_nothing_does(name):
    reset_free = make(name)
    episodic = make(name, fall_tilt_rad=1.0)
    for rpy, fallen in [((0.0, 0.0, 0.0), False), ((0.9, -0.9, 3.0), False), ((1.2, 0.0, 0.0), True),
                        ((0.0, -1.1, 0.0), True), ((math.pi, 0.0, 0.0), True), ((-math.pi, 0.0, 0.0), True)]:
        assert episodic.is_terminal(episodic.observe(readings(rpy=rpy))) is fallen, rpy
        assert reset_free.is_terminal(reset_free.observe(readings(rpy=rpy))) is False, rpy
    with pytest.raises(ValueError, match=rf"^task '{name}': fall_tilt_rad = 3.5 is out of range: allowed 0.001 to "):
        make(name, fall_tilt_rad=3.5)


def test_upright_at_the_stand_pose_earns_the_full_stand_reward():
    stand = make("a1_stand")
    obs = stand.observe(readings())
    assert stand.reward(obs) == pytest.approx(4.0)
    assert stand.is_success(obs)


@pytest.mark.parametrize("speed, expected", [(0.0, 4.0), (0.25, 9.0), (0.5, 14.0), (1.2, 14.0), (-0.4, 4.0)])
def test_walk_adds_ten_times_the_forward_progress_capped_at_the_target_speed(speed, expected):
    walk = make("a1_walk", target_speed_m_s=0.5)
    obs = walk.observe(readings(vel=(speed, 0.3, 0.0)))
    assert walk.reward(obs) == pytest.approx(expected)
    assert walk.is_success(obs) == (expected > 9.0)


def test_lying_on_its_side_halves_upright_and_gates_the_rest():
    # roll = pi/2: u = (1 + 0) / 2 = 0.5; at the stand pose every pose term is 1.
    assert reward_at(make("a1_stand"), rpy=(math.pi / 2, 0.0, 0.0)) == pytest.approx(4 * 0.5)
    assert reward_at(make("a1_walk"), rpy=(math.pi / 2, 0.0, 0.0), vel=(0.5, 0, 0)) == pytest.approx(2.0 + 10 * 0.5)


def test_upside_down_earns_nothing():
    for name in ("a1_stand", "a1_walk"):
        assert reward_at(make(name), rpy=(math.pi, 0.0, 0.0), vel=(1.0, 0, 0)) == pytest.approx(0.0, abs=1e-9)


def test_a_pose_error_gives_the_gaussian_of_its_mean_square():
    q = STAND.copy()
    q[1::3] += 0.2  # every thigh off by 0.2 rad
    p_thigh = math.exp(-(0.2 ** 2) / (2 * SIGMA ** 2))
    expected = 1 + 1 + p_thigh + p_thigh
    assert reward_at(make("a1_stand", pose_sigma_rad=SIGMA), q=q) == pytest.approx(expected, rel=1e-6)
    q = STAND.copy()
    q[0] += 0.4  # one hip of four off by 0.4: mean square 0.04
    p_hip = math.exp(-0.04 / (2 * SIGMA ** 2))
    assert reward_at(make("a1_stand"), q=q) == pytest.approx(1 + 3 * p_hip, rel=1e-6)
    walk = make("a1_walk", target_speed_m_s=0.5)
    assert reward_at(walk, q=q, vel=(0.25, 0, 0)) == pytest.approx(1 + 3 * p_hip + 10 * p_hip * 0.5, rel=1e-6)


def test_rewards_stay_in_bounds_over_random_readings():
    rng = np.random.default_rng(0)
    stand, walk = make("a1_stand"), make("a1_walk")
    for _ in range(500):
        kwargs = dict(q=rng.uniform(-3, 4, 12), rpy=rng.uniform(-math.pi, math.pi, 3), vel=rng.normal(0, 1, 3))
        r_stand, r_walk = reward_at(stand, **kwargs), reward_at(walk, **kwargs)
        assert 0.0 <= r_stand <= 4.0
        assert 0.0 <= r_walk <= 14.0 and r_walk >= r_stand - 1e-9


def test_walk_without_scene_base_vel_names_the_driver_that_gives_it():
    with pytest.raises(ValueError, match="no scene_base_vel.*sim_a1") as err:
        make("a1_walk").observation_spec({"legs": MOCK_LEGGED_SPEC})
    assert "\n" not in str(err.value)


def test_stand_without_imu_gyro_names_the_missing_reading():
    with pytest.raises(ValueError, match="imu_gyro"):
        make("a1_stand").observation_spec({"legs": MOCK_LEGGED_SPEC})


@pytest.mark.parametrize("args, match", [
    ({"pose_sigma_rad": 0.0}, r"^task 'a1_walk': pose_sigma_rad = 0.0 is out of range: allowed 0.001 to 3.0$"),
    ({"target_speed_m_s": -1.0}, r"^task 'a1_walk': target_speed_m_s = -1.0 is out of range: allowed 0.01 to 5.0$"),
    ({"fall_tilt_rad": 3.2}, r"^task 'a1_walk': fall_tilt_rad = 3.2 is out of range: allowed 0.001 to 3.14$"),
    ({"stand_q_rad": [0.0, 1.0]}, r"^task 'a1_walk': stand_q_rad = \[0.0, 1.0\] must give \(hip, thigh, calf\) "),
    ({"velocity_key": ""}, r"^task 'a1_walk': velocity_key = '' must name a robot reading"),
    ({"velocity_key": 3}, r"^task 'a1_walk': velocity_key = 3 is not a string"),
    ({"speed": 0.5}, r"^task 'a1_walk': unknown key 'speed': known keys here are fall_tilt_rad, pose_sigma_rad, "
                     r"stand_q_rad, target_speed_m_s, velocity_key$"),
])
def test_bad_args_are_rejected_in_one_line(args, match):
    with pytest.raises(ValueError, match=match) as err:
        make("a1_walk", **args)
    assert "\n" not in str(err.value)
