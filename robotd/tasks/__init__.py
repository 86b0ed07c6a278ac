"""Tasks: what the policy observes of a robot's readings, its reward, and when an episode ends.

``base`` holds the Task interface and the registry a config's ``task.name`` picks from; the tasks
themselves are grouped by robot: ``mock`` (the mock robots), ``arm`` (UR5 reach and pick-and-place,
simulated or real), ``legged`` (A1 stand and walk) and ``gym`` (a Gymnasium environment's own
reward). Importing this package registers all of them. Each task's settings are its dataclass
``Args``; ``check_args`` checks a config's ``task.args`` against them.
"""
from robotd.tasks.base import SCENE_PREFIX, ObsSpec, Readings, Task, check_args, make, names, register
from robotd.tasks import arm, gym, legged, mock  # noqa: F401  (importing them registers the tasks)
from robotd.tasks.gym import GymTask
from robotd.tasks.mock import Reach, Stand

__all__ = ["SCENE_PREFIX", "GymTask", "ObsSpec", "Reach", "Readings", "Stand", "Task", "check_args", "make", "names", "register"]
