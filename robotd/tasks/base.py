"""Task definitions: observation layout, reward, episode ends and resets for each robot task.

A task sees the readings of every device at a tick (``{device: {key: array}}``) and turns them
into the observation the policy gets, the reward for arriving there, and whether the episode
ends. Tasks are registered by name so a config's ``task.name`` picks one; the same task code
serves mock, simulated and real robots.

Each task declares its settings once, as the dataclass ``Args`` (typed fields made with
``drivers.settings.setting``: a range or choices, help): config loading checks a session's
``task.args`` against it (:func:`check_args`) before any process starts, and a task built
directly checks its keyword arguments against the same class.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from drivers.settings import build

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


def names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)


def _unknown(name: str) -> str:
    return f"task {name!r} is not known: choose one of {', '.join(names())}"


def check_args(name: str, args: dict, where: str = "task.args", error: type[ValueError] = ValueError):
    """The settings of the task registered as ``name`` built from a config's ``args`` (at ``where``): an unknown
    task, unknown keys, wrong types and values out of range fail in one line naming them and what is allowed."""
    if name not in _TASKS:
        raise error(_unknown(name))
    return build(_TASKS[name].Args, args, prefix=where, owner="config", error=error)


def make(name: str, *, robot: str, cameras: list[str], episode_steps: int, seed: int, args: dict) -> "Task":
    """Builds the task registered as ``name``; unknown names and bad arguments fail in one line naming them."""
    if name not in _TASKS:
        raise ValueError(_unknown(name))
    if not isinstance(args, dict):
        raise ValueError(f"task {name!r}: task.args = {args!r} is not a mapping: write it as a YAML mapping of "
                         f"the task's arguments")
    return _TASKS[name](robot=robot, cameras=cameras, episode_steps=episode_steps, seed=seed, **args)


class Task(abc.ABC):
    """One robot task. ``reset_request`` says whether an episode end asks the daemon for a robot reset.

    ``Args`` is the task's settings: a dataclass of typed fields holding everything a config's ``task.args`` may
    give it; a subclass extends its parent task's ``Args``. The constructor checks its keyword arguments against it
    and keeps the result as ``self.args`` (one-line ValueError ``"task 'name': key = value ..."`` otherwise); a
    task's ``__init__`` reads its settings from there.
    """

    @dataclass
    class Args:
        """No settings."""

    name = "task"
    reset_request = True
    Args: ClassVar[type]

    def __init__(self, *, robot: str, cameras: list[str], episode_steps: int, seed: int, **args):
        self.args = build(type(self).Args, args, owner=f"task {self.name!r}")
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
