"""Task layer: observation layout, rewards and episode ends, against hand-computed cases."""
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
    with pytest.raises(ValueError, match=r"bad task.args"):
        reach(speed=3)
