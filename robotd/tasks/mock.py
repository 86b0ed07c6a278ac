"""The mock robots' tasks: reach a target with the mock arm, stand up with the mock legged robot."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.settings import check_box, setting
from robotd.tasks.base import ObsSpec, Task, register


@register("mock_reach")
class Reach(Task):
    """Move the tool centre point to a target drawn per episode; dense reward -distance (m)."""

    @dataclass
    class Args(Task.Args):
        """Where targets are drawn and when the tool is close enough."""
        target_min_m: list[float] = setting(default_factory=lambda: [-0.6, -0.4, 0.1], range=(-10.0, 10.0),
                                            help="lower corner (x, y, z) of the box targets are drawn from, base frame")
        target_max_m: list[float] = setting(default_factory=lambda: [-0.2, 0.4, 0.5], range=(-10.0, 10.0),
                                            help="upper corner (x, y, z) of the box targets are drawn from, base frame")
        success_radius_m: float = setting(0.05, range=(0.001, 1.0),
                                          help="the tool within this distance of the target is a success")

        def __post_init__(self):
            check_box("target_min_m", self.target_min_m, "target_max_m", self.target_max_m)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.target_min_m = np.asarray(self.args.target_min_m, np.float32)
        self.target_max_m = np.asarray(self.args.target_max_m, np.float32)
        self.success_radius_m = self.args.success_radius_m
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

    @dataclass
    class Args(Task.Args):
        """The pose the reward pulls the joints towards."""
        stand_q_rad: list[float] = setting(default_factory=lambda: [0.0, 0.9, -1.8] * 4, range=(-6.28, 6.28),
                                           help="stand pose, one angle per joint (hip, thigh, calf per leg)")

        def __post_init__(self):
            if not self.stand_q_rad:
                raise ValueError("stand_q_rad = [] must give one angle per joint: give e.g. "
                                 "stand_q_rad: [0.0, 0.9, -1.8, 0.0, 0.9, -1.8, 0.0, 0.9, -1.8, 0.0, 0.9, -1.8]")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stand_q_rad = np.asarray(self.args.stand_q_rad, np.float32)

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
