"""Task definitions: observation layout, reward, episode ends and resets for each robot task.

A task sees the readings of every device at a tick (``{device: {key: array}}``) and turns them
into the observation the policy gets, the reward for arriving there, and whether the episode
ends. Tasks are registered by name so a config's ``task.name`` picks one; the same task code
serves mock, simulated and real robots.
"""
from __future__ import annotations

import abc
from typing import Callable

import numpy as np

ObsSpec = dict[str, tuple[tuple[int, ...], str]]
Readings = dict[str, dict[str, np.ndarray]]

_TASKS: dict[str, type["Task"]] = {}

SCENE_PREFIX = "scene_"
"""Readings under this prefix describe the world, not the robot: for rewards only, never observed."""


def register(name: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: makes a task available to configs under ``name``."""
    def wrap(cls: type["Task"]) -> type["Task"]:
        _TASKS[name] = cls
        cls.name = name
        return cls
    return wrap


def make(name: str, *, robot: str, cameras: list[str], episode_steps: int, seed: int, args: dict) -> "Task":
    """Builds the task registered as ``name``; unknown names and arguments fail with the known ones listed."""
    if name not in _TASKS:
        raise ValueError(f"task {name!r} is not known: choose one of {', '.join(sorted(_TASKS))}")
    try:
        return _TASKS[name](robot=robot, cameras=cameras, episode_steps=episode_steps, seed=seed, **args)
    except TypeError as exc:
        raise ValueError(f"task {name!r}: bad task.args {args!r} ({exc}): check the task's arguments") from None


class Task(abc.ABC):
    """One robot task. ``reset_request`` says whether an episode end asks the daemon for a robot reset."""

    name = "task"
    reset_request = True

    def __init__(self, *, robot: str, cameras: list[str], episode_steps: int, seed: int):
        self.robot = robot
        self.cameras = list(cameras)
        self.episode_steps = episode_steps
        self.rng = np.random.default_rng(seed)
        self.scene: dict[str, np.ndarray] = {}

    def observation_spec(self, reading_spec: dict[str, ObsSpec]) -> ObsSpec:
        """The observation keys, shapes and dtypes given what each device delivers."""
        spec: ObsSpec = {}
        for camera in self.cameras:
            for key, (shape, dtype) in reading_spec[camera].items():
                spec[key if len(self.cameras) == 1 else f"{camera}_{key}"] = (tuple(shape), dtype)
        spec.update(self.proprio_spec(reading_spec[self.robot]))
        return spec

    def observe(self, readings: Readings) -> dict[str, np.ndarray]:
        """The observation at this tick. The robot's ``scene_*`` readings (a simulator's view of the world:
        target and object positions, base velocity) are kept in ``self.scene`` for the reward and
        episode-end calls on this observation; they are never part of it."""
        self.scene = {key: value for key, value in readings[self.robot].items() if key.startswith(SCENE_PREFIX)}
        obs: dict[str, np.ndarray] = {}
        for camera in self.cameras:
            for key, value in readings[camera].items():
                obs[key if len(self.cameras) == 1 else f"{camera}_{key}"] = value
        obs.update(self.proprio(readings[self.robot]))
        return obs

    @abc.abstractmethod
    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        """Vector observation keys built from the robot's readings."""

    @abc.abstractmethod
    def proprio(self, robot_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vector observation values built from the robot's readings."""

    @abc.abstractmethod
    def reward(self, obs: dict[str, np.ndarray]) -> float:
        """Reward for arriving at ``obs``."""

    def is_terminal(self, obs: dict[str, np.ndarray]) -> bool:
        """True when the episode ends because of the state (not a time limit)."""
        return False

    def is_truncated(self, obs: dict[str, np.ndarray]) -> bool:
        """True when the episode ends here for a reason other than its state (a simulator's time limit);
        the actor's own limit is ``episode_steps``."""
        return False

    def is_success(self, obs: dict[str, np.ndarray]) -> bool:
        """True when the task is solved at ``obs`` (for success rates in the logs)."""
        return False

    def new_episode(self) -> None:
        """Called when an episode starts (new targets are drawn here)."""


@register("mock_reach")
class Reach(Task):
    """Move the tool centre point to a target drawn per episode; dense reward -distance (m)."""

    def __init__(self, *, target_min_m=(-0.6, -0.4, 0.1), target_max_m=(-0.2, 0.4, 0.5),
                 success_radius_m: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.target_min_m = np.asarray(target_min_m, np.float32)
        self.target_max_m = np.asarray(target_max_m, np.float32)
        self.success_radius_m = float(success_radius_m)
        self.target_m = self.target_min_m.copy()
        self.new_episode()

    def new_episode(self) -> None:
        self.target_m = self.rng.uniform(self.target_min_m, self.target_max_m).astype(np.float32)

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        dof = robot_spec["joint_pos"][0][0]
        return {"joint_pos": ((dof,), "float32"), "joint_vel": ((dof,), "float32"),
                "tcp_pos": ((3,), "float32"), "target_pos": ((3,), "float32")}

    def proprio(self, robot_values):
        return {"joint_pos": np.asarray(robot_values["joint_pos"], np.float32),
                "joint_vel": np.asarray(robot_values["joint_vel"], np.float32),
                "tcp_pos": np.asarray(robot_values["tcp_pos"], np.float32),
                "target_pos": self.target_m.copy()}

    def reward(self, obs) -> float:
        return -float(np.linalg.norm(obs["tcp_pos"] - obs["target_pos"]))

    def is_success(self, obs) -> bool:
        return -self.reward(obs) < self.success_radius_m


@register("mock_stand")
class Stand(Task):
    """Legged robot: stay upright near the stand pose; reward in [0, 2] per step, reset-free."""

    reset_request = False

    def __init__(self, *, stand_q_rad=(0.0, 0.9, -1.8) * 4, **kwargs):
        super().__init__(**kwargs)
        self.stand_q_rad = np.asarray(stand_q_rad, np.float32)

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        n = robot_spec["joint_pos"][0][0]
        return {"joint_pos": ((n,), "float32"), "joint_vel": ((n,), "float32"),
                "imu_rpy": ((3,), "float32"), "foot_contact": ((4,), "float32")}

    def proprio(self, robot_values):
        return {key: np.asarray(robot_values[key], np.float32)
                for key in ("joint_pos", "joint_vel", "imu_rpy", "foot_contact")}

    def reward(self, obs) -> float:
        roll, pitch = float(obs["imu_rpy"][0]), float(obs["imu_rpy"][1])
        upright = max(0.0, 1.0 - (abs(roll) + abs(pitch)))
        pose = float(np.exp(-np.sum((obs["joint_pos"] - self.stand_q_rad) ** 2)))
        return upright + upright * pose

    def is_terminal(self, obs) -> bool:
        return bool(max(abs(obs["imu_rpy"][0]), abs(obs["imu_rpy"][1])) > 0.8)

    def is_success(self, obs) -> bool:
        return self.reward(obs) > 1.5


@register("gym")
class GymTask(Task):
    """A Gymnasium environment through the ``gym`` driver: the environment's own reward and episode ends.

    The robot's readings hold the environment's observation plus ``reward``, ``terminated`` and
    ``truncated`` of the step that led to it. Those three are not observations: ``observe`` keeps
    them aside (for the reward and episode-end calls on the observation it just made) and gives the
    policy everything else, a pixel ``image`` included. ``terminated`` is a terminal step and
    ``truncated`` (the environment's time limit) ends the episode without one; both ask the daemon
    for a reset. ``success`` (the environment's ``info["is_success"]``) is the task's success. ``episode_steps`` still caps an episode (set it above the environment's own limit).
    ``reward_scale`` multiplies the environment's reward.
    """

    SIGNALS = ("reward", "terminated", "truncated", "success")

    def __init__(self, *, reward_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.reward_scale = float(reward_scale)
        self._signals = {"reward": 0.0, "terminated": False, "truncated": False, "success": False}

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        missing = [key for key in self.SIGNALS[:3] if key not in robot_spec]
        if missing:
            raise ValueError(f"task 'gym' needs the robot readings {missing}: use robot.driver = gym")
        return {key: (tuple(shape), dtype) for key, (shape, dtype) in robot_spec.items() if key not in self.SIGNALS}

    def proprio(self, robot_values):
        return {key: value for key, value in robot_values.items() if key not in self.SIGNALS}

    def observe(self, readings: Readings) -> dict[str, np.ndarray]:
        robot_values = readings[self.robot]
        self._signals = {"reward": float(np.asarray(robot_values["reward"]).reshape(-1)[0]),
                         "terminated": bool(np.asarray(robot_values["terminated"]).reshape(-1)[0] > 0.5),
                         "truncated": bool(np.asarray(robot_values["truncated"]).reshape(-1)[0] > 0.5),
                         "success": bool(np.asarray(robot_values.get("success", 0.0)).reshape(-1)[0] > 0.5)}
        return super().observe(readings)

    def reward(self, obs) -> float:
        return self.reward_scale * self._signals["reward"]

    def is_terminal(self, obs) -> bool:
        return self._signals["terminated"]

    def is_truncated(self, obs) -> bool:
        return self._signals["truncated"]

    def is_success(self, obs) -> bool:
        return self._signals["success"]


# The robot tasks live in their own modules; importing them registers them.
from robotd import tasks_arm, tasks_legged  # noqa: E402,F401
