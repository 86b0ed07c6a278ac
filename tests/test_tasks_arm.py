"""UR5 tasks (robotd/tasks/arm.py): ur5_reach and ur5_pick_place against hand-computed cases.

Readings dicts are built directly, in the shape the simulated UR5 driver delivers them; no driver runs.
"""
import numpy as np
import pytest

from robotd import tasks
from robotd.tasks import SCENE_PREFIX

IMAGE_SPEC = {"image": ((64, 64, 3), "uint8")}
ARM = {"joint_pos": ((6,), "float32"), "joint_vel": ((6,), "float32"), "tcp_pos": ((3,), "float32")}
GRIPPER = {"gripper_pos": ((1,), "float32")}
REACH_SCENE = {"scene_target_pos": ((3,), "float32")}
BOX_SCENE = {"scene_object_pos": ((3, 3), "float32"), "scene_grasped": ((3,), "float32"),
             "scene_object_bin": ((3,), "float32")}
PROPRIO = {"joint_pos": ((6,), "float32"), "joint_vel": ((6,), "float32"), "tcp_pos": ((3,), "float32")}


def make(name, **args):
    return tasks.make(name, robot="arm", cameras=["camera"], episode_steps=100, seed=0, args=args)


def arm_readings(tcp=(0.0, 0.0, 0.0), **scene):
    values = {"joint_pos": np.linspace(-1.0, 1.0, 6).astype(np.float32),
              "joint_vel": np.full(6, 0.1, np.float32),
              "tcp_pos": np.asarray(tcp, np.float32),
              "gripper_pos": np.array([0.25], np.float32)}
    values.update({key: np.asarray(value, np.float32) for key, value in scene.items()})
    return {"arm": values, "camera": {"image": np.full((64, 64, 3), 7, np.uint8)}}


# ---------------------------------------------------------------- ur5_reach

@pytest.mark.parametrize("tcp, target, expected", [
    ((0.4, 0.1, 0.3), (0.4, 0.1, 0.3), 0.0),
    ((0.4, 0.1, 0.3), (0.4, 0.1, 0.7), -0.4),
    ((0.0, 0.0, 0.0), (0.3, 0.4, 0.0), -0.5),
    ((0.1, -0.2, 0.2), (-0.1, 0.2, 0.6), -0.6),
])
def test_reach_reward_is_minus_the_distance_to_the_scene_target(tcp, target, expected):
    task = make("ur5_reach")
    obs = task.observe(arm_readings(tcp, scene_target_pos=target))
    assert task.reward(obs) == pytest.approx(expected, abs=1e-6)


def test_reach_reward_scale_multiplies_the_distance_term_only():
    task = make("ur5_reach", reward_scale=10.0, success_radius_m=0.1, success_bonus=1.0)
    far = task.observe(arm_readings((0.3, 0.0, 0.4), scene_target_pos=(0.0, 0.0, 0.0)))
    assert task.reward(far) == pytest.approx(-5.0, abs=1e-6)
    near = task.observe(arm_readings((0.0, 0.05, 0.0), scene_target_pos=(0.0, 0.0, 0.0)))
    assert task.reward(near) == pytest.approx(-0.5 + 1.0, abs=1e-6) and task.is_success(near)
    with pytest.raises(ValueError, match=r"^task 'ur5_reach': reward_scale = 0(\.0)? is out of range: allowed 0.001 "):
        make("ur5_reach", reward_scale=0)


def test_reach_success_radius_edge_bonus_and_terminal():
    task = make("ur5_reach", success_radius_m=0.1, success_bonus=2.0, terminate_on_success=True)
    inside = task.observe(arm_readings((0.0, 0.0, 0.099), scene_target_pos=(0.0, 0.0, 0.0)))
    assert task.is_success(inside) and task.is_terminal(inside)
    assert task.reward(inside) == pytest.approx(-0.099 + 2.0, abs=1e-6)
    outside = task.observe(arm_readings((0.0, 0.0, 0.101), scene_target_pos=(0.0, 0.0, 0.0)))
    assert not task.is_success(outside) and not task.is_terminal(outside)
    assert task.reward(outside) == pytest.approx(-0.101, abs=1e-6)


def test_reach_is_not_terminal_on_success_by_default_and_asks_for_resets():
    task = make("ur5_reach")
    obs = task.observe(arm_readings((0.4, 0.1, 0.3), scene_target_pos=(0.4, 0.1, 0.3)))
    assert task.is_success(obs) and not task.is_terminal(obs) and not task.is_truncated(obs)
    assert task.reward(obs) == 0.0
    assert task.reset_request is True


def test_reach_spec_shows_the_target_only_with_target_in_obs():
    reading_spec = {"arm": {**ARM, **GRIPPER, **REACH_SCENE}, "camera": IMAGE_SPEC}
    hidden = make("ur5_reach").observation_spec(reading_spec)
    assert hidden == {**IMAGE_SPEC, **PROPRIO, **GRIPPER}
    shown = make("ur5_reach", target_in_obs=True).observation_spec(reading_spec)
    assert shown == {**IMAGE_SPEC, **PROPRIO, **GRIPPER, "target_pos": ((3,), "float32")}
    task = make("ur5_reach", target_in_obs=True)
    obs = task.observe(arm_readings((0.0, 0.0, 0.0), scene_target_pos=(0.5, -0.2, 0.3)))
    np.testing.assert_allclose(obs["target_pos"], [0.5, -0.2, 0.3], atol=1e-6)
    assert set(obs) == set(shown)
    assert {key: (value.shape, value.dtype.name) for key, value in obs.items()} == shown


def test_reach_can_show_the_vector_from_the_tool_to_the_target():
    reading_spec = {"arm": {**ARM, **GRIPPER, **REACH_SCENE}, "camera": IMAGE_SPEC}
    task = make("ur5_reach", target_offset_in_obs=True)
    spec = task.observation_spec(reading_spec)
    assert spec == {**IMAGE_SPEC, **PROPRIO, **GRIPPER, "target_offset": ((3,), "float32")}
    obs = task.observe(arm_readings((0.1, 0.0, 0.2), scene_target_pos=(0.5, -0.2, 0.3)))
    np.testing.assert_allclose(obs["target_offset"], [0.4, -0.2, 0.1], atol=1e-6)
    assert {key: (value.shape, value.dtype.name) for key, value in obs.items()} == spec
    # in decimetres with offset_scale 10; the reward and success still measure metres
    scaled = make("ur5_reach", target_offset_in_obs=True, offset_scale=10, success_radius_m=0.05)
    scaled.observation_spec(reading_spec)
    obs = scaled.observe(arm_readings((0.48, -0.2, 0.3), scene_target_pos=(0.5, -0.2, 0.3)))
    np.testing.assert_allclose(obs["target_offset"], [0.2, 0.0, 0.0], atol=1e-5)
    assert scaled.is_success(obs) and scaled.reward(obs) == pytest.approx(-0.02, abs=1e-5)
    with pytest.raises(ValueError, match=r"^task 'ur5_reach': offset_scale = 0(\.0)? is out of range: allowed 0.001 "):
        make("ur5_reach", target_offset_in_obs=True, offset_scale=0)


def test_reach_without_a_gripper_has_no_gripper_observation():
    spec = make("ur5_reach").observation_spec({"arm": {**ARM, **REACH_SCENE}, "camera": IMAGE_SPEC})
    assert spec == {**IMAGE_SPEC, **PROPRIO}


def test_reach_fixed_target_m_replaces_the_scene_target():
    task = make("ur5_reach", target_m=[0.3, 0.0, 0.4], target_in_obs=True)
    spec = task.observation_spec({"arm": ARM, "camera": IMAGE_SPEC})  # a real arm: no scene readings at all
    assert spec["target_pos"] == ((3,), "float32")
    readings = arm_readings((0.3, 0.0, 0.1))
    del readings["arm"]["gripper_pos"]
    obs = task.observe(readings)
    assert task.reward(obs) == pytest.approx(-0.3, abs=1e-6)
    np.testing.assert_allclose(obs["target_pos"], [0.3, 0.0, 0.4], atol=1e-6)
    # A scene target, when there is one, does not override the fixed target.
    obs = task.observe(arm_readings((0.3, 0.0, 0.1), scene_target_pos=(0.3, 0.0, 0.1)))
    assert task.reward(obs) == pytest.approx(-0.3, abs=1e-6)


def test_reach_missing_scene_target_is_named_with_the_fix():
    with pytest.raises(ValueError, match=r"^task 'ur5_reach' needs the robot reading scene_target_pos: the driver "
                                         r"must provide it \(e.g. sim_ur5 with target: true\); for a real robot "
                                         r"give target_m: \[x, y, z\] in task.args$"):
        make("ur5_reach").observation_spec({"arm": {**ARM, **GRIPPER}, "camera": IMAGE_SPEC})


@pytest.mark.parametrize("args, message", [
    ({"target_m": [0.1, 0.2]}, r"^task 'ur5_reach': target_m = \[0.1, 0.2\] must be three numbers \(x, y, z"),
    ({"target_m": [0.1, 0.2, float("nan")]}, r"^task 'ur5_reach': target_m\[2\] = nan is out of range: allowed"),
    ({"target_m": "up"}, r"^task 'ur5_reach': target_m = 'up' is not a list: write it as a YAML list$"),
    ({"success_radius_m": 0.0}, r"^task 'ur5_reach': success_radius_m = 0.0 is out of range: allowed 0.001 to 1.0$"),
    ({"success_bonus": float("nan")}, r"^task 'ur5_reach': success_bonus = nan is out of range: allowed"),
    ({"reward_scale": "10"}, r"^task 'ur5_reach': reward_scale = '10' is not a number: give a number$"),
])
def test_reach_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message) as err:
        make("ur5_reach", **args)
    assert "\n" not in str(err.value)


def test_scene_readings_never_reach_the_observation_or_its_spec():
    for name, args in (("ur5_reach", {}), ("ur5_reach", {"target_in_obs": True}), ("ur5_pick_place", {})):
        task = make(name, **args)
        spec = task.observation_spec({"arm": {**ARM, **GRIPPER, **REACH_SCENE, **BOX_SCENE}, "camera": IMAGE_SPEC})
        obs = task.observe(arm_readings(scene_target_pos=(0.1, 0.1, 0.1), scene_object_pos=np.zeros((3, 3)),
                                        scene_grasped=[0, 0, 0], scene_object_bin=[1, 1, 1]))
        assert not any(key.startswith(SCENE_PREFIX) for key in spec), (name, spec)
        assert not any(key.startswith(SCENE_PREFIX) for key in obs), (name, list(obs))
        assert set(obs) == set(spec)
        assert set(task.scene) == {"scene_target_pos", "scene_object_pos", "scene_grasped", "scene_object_bin"}


def test_registry_builds_ur5_reach():
    task = tasks.make("ur5_reach", robot="arm", cameras=["camera"], episode_steps=100, seed=0, args={})
    assert type(task).__name__ == "UR5Reach" and task.name == "ur5_reach"
    assert isinstance(tasks.make("ur5_pick_place", robot="arm", cameras=[], episode_steps=100, seed=0, args={}),
                      tasks.Task)
    with pytest.raises(ValueError, match=r"^task 'ur5_reach': unknown key 'target': known keys here are "):
        make("ur5_reach", target=[1, 2, 3])
    with pytest.raises(ValueError, match=r"^task 'ur5_pick_place': place_reward = inf is out of range: allowed"):
        make("ur5_pick_place", place_reward=float("inf"))


# ---------------------------------------------------------------- ur5_pick_place

def step(task, grasped, in_bin, pos=None):
    """Observe one tick with the given per-box grasp and bin state (boxes at rest unless ``pos`` is given);
    the reward of arriving there."""
    pos = np.zeros((3, 3)) if pos is None else np.asarray(pos, np.float64)
    obs = task.observe(arm_readings(scene_object_pos=pos, scene_grasped=grasped,
                                    scene_object_bin=in_bin))
    return task.reward(obs), obs


def test_pick_place_observation_spec_is_image_and_proprio_with_gripper_only():
    task = make("ur5_pick_place")
    spec = task.observation_spec({"arm": {**ARM, **GRIPPER, **BOX_SCENE}, "camera": IMAGE_SPEC})
    assert spec == {**IMAGE_SPEC, **PROPRIO, **GRIPPER}
    _, obs = step(task, [0, 0, 0], [1, 1, 1])
    assert {key: (value.shape, value.dtype.name) for key, value in obs.items()} == spec
    assert task.reset_request is True


def test_pick_place_grasp_carry_and_place_into_bin_b():
    task = make("ur5_pick_place")
    task.new_episode()
    assert step(task, [0, 0, 0], [1, 1, 1])[0] == 0.0       # baseline
    assert step(task, [1, 0, 0], [1, 1, 1])[0] == 1.0       # grasped (lifted, still over bin_a)
    assert step(task, [1, 0, 0], [0, 1, 1])[0] == 0.0       # carried out of bin_a
    assert step(task, [1, 0, 0], [0, 1, 1])[0] == 0.0       # carried on
    assert not task.is_success(None)
    reward, obs = step(task, [0, 0, 0], [2, 1, 1])          # released over bin_b, arrives there
    assert reward == 10.0
    assert task.is_success(obs) and not task.is_terminal(obs)
    assert step(task, [0, 0, 0], [2, 1, 1])[0] == 0.0       # resting in bin_b: counted once


def test_pick_place_release_outside_bin_b_is_penalised_once():
    task = make("ur5_pick_place")
    step(task, [0, 0, 0], [1, 1, 1])
    assert step(task, [0, 1, 0], [1, 1, 1])[0] == 1.0
    assert step(task, [0, 1, 0], [1, 0, 1])[0] == 0.0
    assert step(task, [0, 0, 0], [1, 0, 1])[0] == -1.0      # dropped on the table
    assert step(task, [0, 0, 0], [1, 0, 1])[0] == 0.0
    assert step(task, [0, 1, 0], [1, 0, 1])[0] == 0.0       # picked up from the table again: grasp paid already
    assert step(task, [0, 0, 0], [1, 1, 1])[0] == -1.0      # released back into bin_a
    assert not task.is_success(None)


def test_pick_place_events_of_several_boxes_in_one_step_add_up():
    task = make("ur5_pick_place")
    step(task, [1, 0, 0], [0, 2, 1])                        # baseline: box 0 held, box 1 already placed
    # box 0 placed (+10), box 2 grasped (+1) in the same step
    assert step(task, [0, 0, 1], [2, 2, 1])[0] == 11.0
    # box 2 dropped on the table (-1) while box 1 is picked out of bin_b again (+1)
    assert step(task, [0, 1, 0], [2, 2, 0])[0] == 0.0
    # box 1 leaves bin_b in the gripper (0) and comes back (0: it was in bin_b when the episode started)
    assert step(task, [0, 1, 0], [2, 0, 0])[0] == 0.0
    assert step(task, [0, 0, 0], [2, 2, 0])[0] == 0.0
    assert task.placed == 1


def test_pick_place_pays_each_box_once_so_regrasping_earns_nothing():
    task = make("ur5_pick_place")
    step(task, [0, 0, 0], [1, 1, 1])
    assert step(task, [1, 0, 0], [1, 1, 1])[0] == 1.0
    assert step(task, [0, 0, 0], [2, 1, 1])[0] == 10.0
    for _ in range(3):
        assert step(task, [1, 0, 0], [2, 1, 1])[0] == 0.0   # picked again inside bin_b: already paid
        assert step(task, [0, 0, 0], [2, 1, 1])[0] == 0.0   # released inside bin_b: no penalty, no new place
    assert step(task, [1, 0, 0], [0, 1, 1])[0] == 0.0       # carried out of bin_b
    assert step(task, [0, 0, 0], [1, 1, 1])[0] == -1.0      # dropped into bin_a: a drop still costs
    assert step(task, [1, 0, 0], [1, 1, 1])[0] == 0.0
    assert step(task, [0, 0, 0], [2, 1, 1])[0] == 0.0       # back into bin_b: its place was paid already
    assert task.placed == 1


def test_pick_place_judges_a_release_when_the_box_has_settled():
    task = make("ur5_pick_place")
    at = {"rest": [[0.0, 0.0, 0.03]] * 3}

    def moving(z):
        return [[0.0, 0.0, z], [0.0, 0.0, 0.03], [0.0, 0.0, 0.03]]
    assert step(task, [0, 0, 0], [1, 1, 1], pos=at["rest"])[0] == 0.0
    assert step(task, [1, 0, 0], [0, 1, 1], pos=moving(0.20))[0] == 1.0
    assert step(task, [0, 0, 0], [0, 1, 1], pos=moving(0.15))[0] == 0.0   # let go above bin_b, still falling
    assert step(task, [0, 0, 0], [2, 1, 1], pos=moving(0.05))[0] == 10.0  # falls in: a place, not a drop
    assert step(task, [0, 0, 0], [2, 1, 1], pos=moving(0.05))[0] == 0.0
    task.new_episode()
    assert step(task, [0, 0, 0], [1, 1, 1], pos=at["rest"])[0] == 0.0
    assert step(task, [1, 0, 0], [0, 1, 1], pos=moving(0.20))[0] == 1.0
    assert step(task, [0, 0, 0], [0, 1, 1], pos=moving(0.10))[0] == 0.0   # falling onto the table
    assert step(task, [1, 0, 0], [0, 1, 1], pos=moving(0.10))[0] == 0.0   # caught again: no drop, no new grasp pay
    assert step(task, [0, 0, 0], [0, 1, 1], pos=moving(0.02))[0] == 0.0
    assert step(task, [0, 0, 0], [0, 1, 1], pos=moving(0.02))[0] == -1.0  # at rest on the table: a drop


def test_pick_place_first_observation_is_the_baseline_and_new_episode_forgets():
    task = make("ur5_pick_place")
    assert step(task, [1, 1, 0], [2, 0, 1])[0] == 0.0       # first ever observation: no events
    assert step(task, [1, 1, 0], [2, 0, 1])[0] == 0.0
    assert step(task, [0, 1, 0], [0, 0, 1])[0] == -1.0
    task.new_episode()
    assert task.placed == 0
    # Compared with the last step of the previous episode this would be +1 +10; a new episode starts over.
    assert step(task, [1, 1, 0], [2, 0, 1])[0] == 0.0
    assert not task.is_success(None)
    assert step(task, [1, 1, 0], [2, 2, 1])[0] == 0.0       # held over bin_b is not placed yet
    assert step(task, [1, 0, 0], [2, 2, 1])[0] == 10.0      # let go there
    assert task.is_success(None)


def test_pick_place_terminal_when_every_box_is_in_bin_b():
    task = make("ur5_pick_place")
    _, obs = step(task, [0, 0, 0], [2, 2, 1])
    assert not task.is_terminal(obs)
    _, obs = step(task, [0, 0, 0], [2, 2, 2])
    assert task.is_terminal(obs)
    patient = make("ur5_pick_place", terminate_when_all_placed=False)
    _, obs = step(patient, [0, 0, 0], [2, 2, 2])
    assert not patient.is_terminal(obs)


def test_pick_place_reward_weights_are_arguments():
    task = make("ur5_pick_place", grasp_reward=0.5, drop_penalty=-2.0, place_reward=3.0)
    step(task, [0, 0, 0], [1, 1, 1])
    assert step(task, [1, 1, 0], [1, 1, 1])[0] == 1.0
    assert step(task, [0, 0, 0], [2, 0, 1])[0] == 3.0 - 2.0


def test_pick_place_missing_scene_readings_are_named():
    with pytest.raises(ValueError, match=r"^task 'ur5_pick_place' needs the robot readings "
                                         r"\['scene_grasped', 'scene_object_bin'\]: the driver must report them"):
        make("ur5_pick_place").observation_spec({"arm": {**ARM, **GRIPPER}, "camera": IMAGE_SPEC})
    with pytest.raises(ValueError, match=r"^task 'ur5_pick_place' needs the robot readings \['gripper_pos'\]"):
        make("ur5_pick_place").observation_spec({"arm": {**ARM, **BOX_SCENE}, "camera": IMAGE_SPEC})
    with pytest.raises(ValueError, match=r"^task 'ur5_pick_place': the robot readings hold no \['scene_grasped'\]"):
        make("ur5_pick_place").observe(arm_readings(scene_object_bin=[1, 1, 1]))
