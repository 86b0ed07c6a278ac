"""The ``gym`` task: a Gymnasium environment's own reward and episode ends, through the ``gym`` driver."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.settings import setting
from robotd.tasks.base import ObsSpec, Readings, Task, register


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

    @dataclass
    class Args(Task.Args):
        """How the environment's reward is scaled."""
        reward_scale: float = setting(1.0, range=(-1e6, 1e6), help="factor on the environment's reward")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reward_scale = self.args.reward_scale
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
