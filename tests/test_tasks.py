"""Task layer: observation layout, rewards and episode ends, against hand-computed cases."""
import dataclasses

import numpy as np
import pytest

from robotd import tasks

ARM_SPEC = {"arm": {"joint_pos": ((6,), "float32"), "joint_vel": ((6,), "float32"), "tcp_pos": ((3,), "float32")},
            "camera": {"image": ((64, 64, 3), "uint8")}}


def reach(**args):
    return tasks.make("mock_reach", robot="arm", cameras=["camera"], episode_steps=10, seed=0, args=args)


def test_reach_observation_spec_has_image_proprio_and_target():
    spec = reach().observation_spec(ARM_SPEC)
    assert spec == {"image": ((64, 64, 3), "uint8"), "joint_pos": ((6,), "float32"),
                    "joint_vel": ((6,), "float32"), "tcp_pos": ((3,), "float32"), "target_pos": ((3,), "float32")}


def test_reach_reward_is_minus_the_distance_to_the_target():
    task = reach(target_min_m=(0.1, 0.2, 0.3), target_max_m=(0.1, 0.2, 0.3))
    obs = task.observe({"arm": {"joint_pos": np.zeros(6), "joint_vel": np.zeros(6),
                                "tcp_pos": np.array([0.1, 0.2, 0.7], np.float32)},
                        "camera": {"image": np.zeros((64, 64, 3), np.uint8)}})
    assert task.reward(obs) == pytest.approx(-0.4, abs=1e-6)
    assert not task.is_success(obs)
    obs["tcp_pos"] = np.array([0.1, 0.2, 0.32], np.float32)
    assert task.is_success(obs)


def test_reach_draws_a_new_target_each_episode_deterministically():
    first, second = reach(), reach()
    targets = []
    for _ in range(3):
        first.new_episode()
        second.new_episode()
        np.testing.assert_array_equal(first.target_m, second.target_m)
        targets.append(first.target_m.copy())
    assert not np.allclose(targets[0], targets[1])


def test_stand_reward_is_highest_upright_at_the_stand_pose_and_a_fall_ends_the_episode():
    task = tasks.make("mock_stand", robot="legs", cameras=[], episode_steps=10, seed=0, args={})
    pose = np.array([0.0, 0.9, -1.8] * 4, np.float32)
    upright = {"joint_pos": pose, "joint_vel": np.zeros(12, np.float32), "imu_rpy": np.zeros(3, np.float32),
               "foot_contact": np.ones(4, np.float32)}
    assert task.reward(upright) == pytest.approx(2.0)
    tilted = dict(upright, imu_rpy=np.array([0.3, 0.2, 0.0], np.float32))
    assert task.reward(tilted) == pytest.approx(0.5 + 0.5)
    assert not task.is_terminal(tilted)
    assert task.is_terminal(dict(upright, imu_rpy=np.array([0.0, 0.9, 0.0], np.float32)))


def test_unknown_task_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"task 'fly' is not known: choose one of ") as error:
        tasks.make("fly", robot="arm", cameras=[], episode_steps=10, seed=0, args={})
    known = str(error.value).split("choose one of ")[1].split(", ")
    assert known == sorted(known) and {"gym", "mock_reach", "mock_stand", "ur5_reach", "ur5_pick_place"} <= set(known)
    with pytest.raises(ValueError, match=r"^task 'mock_reach': unknown key 'speed': known keys here are "
                                         r"success_radius_m, target_max_m, target_min_m$"):
        reach(speed=3)


ALL_TASKS = ("a1_stand", "a1_walk", "gym", "mock_reach", "mock_stand", "ur5_pick_place", "ur5_reach")


def build(name: str, args: dict) -> tasks.Task:
    return tasks.make(name, robot="robot", cameras=[], episode_steps=10, seed=0, args=args)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_refuses_an_unknown_argument_in_one_line_from_config_and_directly(name):
    known = ", ".join(sorted(f.name for f in dataclasses.fields(tasks.base._TASKS[name].Args)))
    with pytest.raises(ValueError) as err:
        tasks.check_args(name, {"foo": 1})
    assert str(err.value) == f"config: unknown key 'task.args.foo': known keys here are {known}"
    with pytest.raises(ValueError) as err:
        build(name, {"foo": 1})
    assert str(err.value) == f"task {name!r}: unknown key 'foo': known keys here are {known}"


@pytest.mark.parametrize("name, key, value, allowed", [
    ("mock_reach", "success_radius_m", 0.0, "0.001 to 1.0"),
    ("mock_stand", "stand_q_rad", [0.0] * 11 + [9.0], None),
    ("gym", "reward_scale", float("inf"), "-1000000.0 to 1000000.0"),
    ("ur5_reach", "reward_scale", 0.0, "0.001 to 1000.0"),
    ("ur5_pick_place", "settle_m", -0.1, "1e-06 to 1.0"),
    ("a1_stand", "pose_sigma_rad", 0.0, "0.001 to 3.0"),
    ("a1_walk", "target_speed_m_s", -1.0, "0.01 to 5.0"),
])
def test_every_task_refuses_an_out_of_range_argument_in_one_line_from_config_and_directly(name, key, value, allowed):
    where, shown = (f"{key}[11]", 9.0) if isinstance(value, list) else (key, value)
    allowed = allowed or "-6.28 to 6.28"
    with pytest.raises(ValueError) as err:
        tasks.check_args(name, {key: value})
    assert str(err.value) == f"config: task.args.{where} = {shown!r} is out of range: allowed {allowed}"
    with pytest.raises(ValueError) as err:
        build(name, {key: value})
    assert str(err.value) == f"task {name!r}: {where} = {shown!r} is out of range: allowed {allowed}"


def test_check_args_names_an_unknown_task_uses_the_given_error_and_returns_the_settings():
    class Refused(ValueError):
        pass
    with pytest.raises(Refused, match=r"^task 'fly' is not known: choose one of a1_stand, "):
        tasks.check_args("fly", {}, "task.args", Refused)
    with pytest.raises(Refused, match=r"^config: task.args: target_min_m = \[0.5, 0.0, 0.0\] must be <= "
                                      r"target_max_m = \[0.0, 0.0, 0.0\] on every axis: swap or fix them$"):
        tasks.check_args("mock_reach", {"target_min_m": [0.5, 0, 0], "target_max_m": [0, 0, 0]}, "task.args", Refused)
    settings = tasks.check_args("a1_walk", {"fall_tilt_rad": 1, "velocity_key": "base_vel_est"})
    assert settings.fall_tilt_rad == 1.0 and settings.velocity_key == "base_vel_est" and settings.pose_sigma_rad == 0.4
    assert isinstance(settings, tasks.base._TASKS["a1_stand"].Args)     # a1_walk extends a1_stand's settings


def test_task_settings_keep_their_attribute_types():
    task = reach(target_min_m=(0.1, 0.2, 0.3), target_max_m=[0.1, 0.2, 0.3], success_radius_m=1)
    assert task.target_min_m.dtype == np.float32 and task.target_min_m.shape == (3,)
    assert isinstance(task.success_radius_m, float) and task.args.success_radius_m == 1.0
