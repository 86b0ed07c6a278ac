"""UR5 arm tasks: reaching for a target seen in the camera image, and DayDreamer's bin pick-and-place.

Both observe the camera images and the arm's own state only (joint_pos, joint_vel, tcp_pos and, with a
gripper, gripper_pos). What they reward comes from the robot's ``scene_*`` readings (a simulator's view
of the world), which ``Task.observe`` keeps in ``self.scene`` and never shows to the policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.settings import setting
from robotd.tasks.base import ObsSpec, Readings, Task, register

PROPRIO_KEYS = ("joint_pos", "joint_vel", "tcp_pos")


def _arm_proprio_spec(task: str, robot_spec: ObsSpec, *, need_gripper: bool) -> ObsSpec:
    """joint_pos, joint_vel, tcp_pos and gripper_pos (when the arm has one) from an arm's reading spec."""
    missing = [key for key in PROPRIO_KEYS + (("gripper_pos",) if need_gripper else ()) if key not in robot_spec]
    if missing:
        fix = "use an arm with a gripper (robot.driver = sim_ur5 with its gripper on)" if missing == ["gripper_pos"] \
            else "use an arm driver (sim_ur5, mock_arm)"
        raise ValueError(f"task {task!r} needs the robot readings {missing}: {fix}")
    dof = robot_spec["joint_pos"][0][0]
    spec: ObsSpec = {"joint_pos": ((dof,), "float32"), "joint_vel": ((dof,), "float32"), "tcp_pos": ((3,), "float32")}
    if "gripper_pos" in robot_spec:
        spec["gripper_pos"] = ((1,), "float32")
    return spec


def _arm_proprio(robot_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arm's own state as float32 vectors; ``scene_*`` readings are never included."""
    obs = {key: np.asarray(robot_values[key], np.float32) for key in PROPRIO_KEYS}
    if "gripper_pos" in robot_values:
        obs["gripper_pos"] = np.asarray(robot_values["gripper_pos"], np.float32).reshape(1)
    return obs


@register("ur5_reach")
class UR5Reach(Task):
    """Move the tool centre point to the target shown in the camera image; dense reward.

    The target is the robot's ``scene_target_pos`` reading (base frame, m; a simulator draws it at
    each robot reset and renders it as a sphere) or, for a real robot with a physical marker, the fixed
    ``target_m``. Reward per step: ``-reward_scale * ||tcp_pos - target||`` (metres), plus ``success_bonus`` while the
    distance is below ``success_radius_m`` (which is also ``is_success``). With ``target_in_obs`` the
    target is also given as the vector observation ``target_pos`` (for state-based baselines), with
    ``target_offset_in_obs`` the vector from the tool to the target as ``target_offset``, times
    ``offset_scale`` (10 gives decimetres: a network resolves a 1 cm error as 0.1 more easily than as
    0.01); by default the policy has to find it in the image. ``terminate_on_success`` ends the episode on
    success; otherwise only the time limit does. Every episode end asks for a robot reset.
    """

    reset_request = True

    @dataclass
    class Args(Task.Args):
        """What the policy is shown of the target, the reward's scale and bonus, and when it is a success."""
        target_in_obs: bool = setting(False, help="give the target as the vector observation target_pos")
        target_offset_in_obs: bool = setting(False, help="give tool-to-target as the vector observation target_offset")
        success_radius_m: float = setting(0.05, range=(0.001, 1.0),
                                          help="the tool within this distance of the target is a success")
        success_bonus: float = setting(0.0, range=(-1000.0, 1000.0), help="reward added per step while a success")
        reward_scale: float = setting(1.0, range=(0.001, 1000.0),
                                      help="factor on the distance penalty (10 gives the reward in -decimetres)")
        offset_scale: float = setting(1.0, range=(0.001, 1000.0),
                                      help="factor on target_offset (10 gives decimetres)")
        terminate_on_success: bool = setting(False, help="end the episode on success (else only the time limit)")
        target_m: list[float] | None = setting(None, range=(-2.0, 2.0),
                                               help="fixed target (x, y, z) in metres, base frame, for a real robot "
                                                    "with a physical marker; none: the scene_target_pos reading")

        def __post_init__(self):
            if self.target_m is not None and len(self.target_m) != 3:
                raise ValueError(f"target_m = {self.target_m!r} must be three numbers (x, y, z in metres, base "
                                 f"frame): set e.g. target_m: [0.4, 0.0, 0.3]")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        a = self.args
        self.target_in_obs = a.target_in_obs
        self.target_offset_in_obs = a.target_offset_in_obs
        self.success_radius_m = a.success_radius_m
        self.success_bonus = a.success_bonus
        self.reward_scale = a.reward_scale
        self.offset_scale = a.offset_scale
        self.terminate_on_success = a.terminate_on_success
        self.target_m: np.ndarray | None = None if a.target_m is None else np.asarray(a.target_m, np.float32)

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        """Arm state (+ ``target_pos`` with ``target_in_obs``); fails when no target can be known."""
        if self.target_m is None and "scene_target_pos" not in robot_spec:
            raise ValueError("task 'ur5_reach' needs the robot reading scene_target_pos: the driver must provide "
                             "it (e.g. sim_ur5 with target: true); for a real robot give target_m: [x, y, z] "
                             "in task.args")
        spec = _arm_proprio_spec(self.name, robot_spec, need_gripper=False)
        if self.target_in_obs:
            spec["target_pos"] = ((3,), "float32")
        if self.target_offset_in_obs:
            spec["target_offset"] = ((3,), "float32")
        return spec

    def proprio(self, robot_values):
        """Arm state, plus the target as ``target_pos`` when ``target_in_obs``."""
        obs = _arm_proprio(robot_values)
        if self.target_in_obs:
            obs["target_pos"] = self._target(robot_values)
        if self.target_offset_in_obs:
            offset = self._target(robot_values) - np.asarray(obs["tcp_pos"], np.float32)
            obs["target_offset"] = (self.offset_scale * offset).astype(np.float32)
        return obs

    def _target(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """The target position (3,) float32: the fixed ``target_m`` or the ``scene_target_pos`` reading."""
        if self.target_m is not None:
            return self.target_m.copy()
        if "scene_target_pos" not in values:
            raise ValueError("task 'ur5_reach': the robot readings hold no scene_target_pos: the driver must "
                             "provide it (e.g. sim_ur5 with target: true) or give target_m: [x, y, z] in task.args")
        return np.asarray(values["scene_target_pos"], np.float32).reshape(3)

    def distance_m(self, obs) -> float:
        """Distance in metres from the tool centre point in ``obs`` to the target of the last observation."""
        return float(np.linalg.norm(np.asarray(obs["tcp_pos"], np.float64) - self._target(self.scene)))

    def reward(self, obs) -> float:
        distance = self.distance_m(obs)
        return -self.reward_scale * distance + (self.success_bonus if distance < self.success_radius_m else 0.0)

    def is_success(self, obs) -> bool:
        return self.distance_m(obs) < self.success_radius_m

    def is_terminal(self, obs) -> bool:
        return self.terminate_on_success and self.is_success(obs)


@register("ur5_pick_place")
class UR5PickPlace(Task):
    """DayDreamer's bin task: pick boxes out of bin_a and put them into bin_b; sparse event rewards.

    Observations: camera images and the arm's state with its gripper (joint_pos, joint_vel, tcp_pos,
    gripper_pos). Rewards come from the robot's ``scene_grasped`` (per box: 1 held and lifted, else 0)
    and ``scene_object_bin`` (per box: 1 in bin_a, 2 in bin_b, 0 elsewhere) readings, comparing each
    box with its state at the previous observation; each event counts once, on the step it happens,
    and the events of all boxes in one step add up:

    - ``grasp_reward`` (+1) the first time in an episode a box becomes grasped (0 -> 1);
    - ``drop_penalty`` (-1) when a released box comes to rest anywhere but in bin_b (on the table,
      back in bin_a). A box let go is judged once it has settled (it moved less than ``settle_m``
      between two observations, from ``scene_object_pos``; without that reading, at once), so a box
      released above bin_b that falls in is a place and not a drop; a box grasped again before it
      settles is not a drop;
    - ``place_reward`` (+10) when a box comes to be in bin_b and not held (from held over bin_b, from
      falling, or pushed in), the first time in an episode that box arrives there.

    Grasp and place rewards are paid once per box and episode, and every drop costs the penalty, so
    no cycle of grasping and releasing earns anything: an episode is worth at most
    ``n_boxes * (grasp_reward + place_reward)``.

    The first observation of an episode only sets the baseline (reward 0); ``new_episode`` forgets the
    previous state. ``reward(obs)`` is the reward of the transition into the last observed state.
    ``is_terminal``: every box is in bin_b (with ``terminate_when_all_placed``). ``is_success``: at
    least one box arrived in bin_b during this episode. Every episode end asks for a robot reset (a
    simulator puts the boxes back into bin_a at random).
    """

    reset_request = True
    SCENE_KEYS = ("scene_grasped", "scene_object_bin")
    BIN_B = 2

    @dataclass
    class Args(Task.Args):
        """The event rewards, when a released box counts as settled, and whether all boxes placed ends the episode."""
        grasp_reward: float = setting(1.0, range=(-1000.0, 1000.0), help="reward for a box's first grasp per episode")
        drop_penalty: float = setting(-1.0, range=(-1000.0, 1000.0),
                                      help="reward (a penalty: negative) for a box settling outside bin_b")
        place_reward: float = setting(10.0, range=(-1000.0, 1000.0),
                                      help="reward for a box's first arrival in bin_b per episode")
        terminate_when_all_placed: bool = setting(True, help="end the episode once every box is in bin_b")
        settle_m: float = setting(0.002, range=(1e-6, 1.0),
                                  help="a released box that moves less than this between observations has settled")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        a = self.args
        self.grasp_reward = a.grasp_reward
        self.drop_penalty = a.drop_penalty
        self.place_reward = a.place_reward
        self.terminate_when_all_placed = a.terminate_when_all_placed
        self.settle_m = a.settle_m
        self._grasped: np.ndarray | None = None
        self._placed_now: np.ndarray | None = None
        self._pending: np.ndarray | None = None
        self._pos: np.ndarray | None = None
        self._grasp_paid: np.ndarray | None = None
        self._place_paid: np.ndarray | None = None
        self._bin: np.ndarray | None = None
        self._reward = 0.0
        self.placed = 0
        """Number of place events (box arriving in bin_b) in this episode."""

    def new_episode(self) -> None:
        """Forget the previous scene state: the next observation sets the baseline and earns nothing."""
        self._grasped = None
        self._bin = None
        self._placed_now = None
        self._pending = None
        self._pos = None
        self._grasp_paid = None
        self._place_paid = None
        self._reward = 0.0
        self.placed = 0

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        """Arm state with gripper; fails when the robot does not report grasps and bins."""
        missing = [key for key in self.SCENE_KEYS if key not in robot_spec]
        if missing:
            raise ValueError(f"task 'ur5_pick_place' needs the robot readings {missing}: the driver must report "
                             f"them (sim_ur5 with its boxes); a real robot would need a box detector")
        return _arm_proprio_spec(self.name, robot_spec, need_gripper=True)

    def proprio(self, robot_values):
        """Arm state with gripper; never a ``scene_*`` reading."""
        return _arm_proprio(robot_values)

    def observe(self, readings: Readings) -> dict[str, np.ndarray]:
        """The observation; also scores the boxes' transitions since the previous observation."""
        obs = super().observe(readings)
        missing = [key for key in self.SCENE_KEYS if key not in self.scene]
        if missing:
            raise ValueError(f"task 'ur5_pick_place': the robot readings hold no {missing}: the driver must "
                             f"report them (sim_ur5 with its boxes)")
        grasped = np.asarray(self.scene["scene_grasped"], np.float64).reshape(-1) > 0.5
        in_bin = np.rint(np.asarray(self.scene["scene_object_bin"], np.float64).reshape(-1)).astype(np.int64)
        if grasped.shape != in_bin.shape:
            raise ValueError(f"task 'ur5_pick_place': scene_grasped has {grasped.size} boxes but scene_object_bin "
                             f"{in_bin.size}: the driver must report one value per box in both")
        pos = self.scene.get("scene_object_pos")
        pos = None if pos is None else np.asarray(pos, np.float64).reshape(-1, 3)
        placed_now = (in_bin == self.BIN_B) & ~grasped
        if self._grasped is None or self._grasped.shape != grasped.shape:
            self._reward = 0.0
            self._pending = np.zeros_like(grasped)
            self._grasp_paid = grasped.copy()
            self._place_paid = placed_now.copy()
        else:
            grasps = grasped & ~self._grasped & ~self._grasp_paid
            places = placed_now & ~self._placed_now & ~self._place_paid
            self._grasp_paid |= grasps
            self._place_paid |= places
            pending = (self._pending | (self._grasped & ~grasped)) & ~grasped & ~placed_now
            if pos is not None and self._pos is not None and pos.shape == self._pos.shape:
                settled = np.linalg.norm(pos - self._pos, axis=1) < self.settle_m
            else:
                settled = np.ones_like(grasped)
            drops = pending & settled
            self._pending = pending & ~settled
            self._reward = float(self.grasp_reward * grasps.sum() + self.drop_penalty * drops.sum()
                                 + self.place_reward * places.sum())
            self.placed += int(places.sum())
        self._grasped, self._bin, self._placed_now, self._pos = grasped, in_bin, placed_now, pos
        return obs

    def reward(self, obs) -> float:
        return self._reward

    def is_terminal(self, obs) -> bool:
        return bool(self.terminate_when_all_placed and self._bin is not None and self._bin.size > 0
                    and np.all(self._bin == self.BIN_B))

    def is_success(self, obs) -> bool:
        return self.placed > 0

