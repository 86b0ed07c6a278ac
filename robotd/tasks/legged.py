"""Quadruped tasks (a Unitree A1 or its simulation): stand up and walk, reset-free, DayDreamer style.

The reward terms are gated multiplicatively on the ones before them, so the robot is paid for
being upright first, then for each joint group reaching the stand pose, then (walking) for
moving forward: the upright term u = (1 + cos(roll) cos(pitch)) / 2 and the pose terms
p_g = exp(-mean((q_g - q*_g)^2) / (2 sigma^2)) for the hips, thighs and calves give

    stand: r = u + u p_hip + u p_hip p_thigh + u p_hip p_thigh p_calf          in [0, 4]
    walk:  r = stand + 10 u p_hip p_thigh p_calf clip(v_forward / target, 0, 1)  in [0, 14]

v_forward is the robot's privileged ``scene_base_vel`` reading (a simulator's trunk velocity in
the heading frame): a reward input, never an observation. Episodes never ask for a robot reset;
``episode_steps`` only cuts the stream into episodes for bookkeeping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivers.settings import setting
from robotd.tasks.base import SCENE_PREFIX, ObsSpec, Task, register

A1_STAND_Q_RAD = (0.0, 0.9, -1.8) * 4
PROPRIO_KEYS = ("joint_pos", "joint_vel", "imu_rpy", "imu_gyro", "foot_contact")
# Motor order FR, FL, RR, RL x (hip, thigh, calf): every third joint is in the same group.
_GROUPS = {"hip": slice(0, None, 3), "thigh": slice(1, None, 3), "calf": slice(2, None, 3)}


@register("a1_stand")
class A1Stand(Task):
    """Stand up (from wherever the robot is, e.g. on its back) and stay upright at the stand pose; reward in [0, 4]."""

    reset_request = False                       # a time limit does not reset the robot; a fall (terminal) does
    REWARD_MAX = 4.0
    SUCCESS_REWARD = 3.5

    @dataclass
    class Args(Task.Args):
        """The stand pose, how close to it pays, and (optionally) the tilt that counts as a fall."""
        stand_q_rad: list[float] = setting(default_factory=lambda: list(A1_STAND_Q_RAD), range=(-6.28, 6.28),
                                           help="stand pose, (hip, thigh, calf) per leg in motor order FR, FL, RR, RL")
        pose_sigma_rad: float = setting(0.4, range=(0.001, 3.0),
                                        help="width of each joint group's pose term exp(-mean(err^2) / (2 sigma^2))")
        fall_tilt_rad: float | None = setting(None, range=(0.001, 3.14),
                                              help="a roll or pitch beyond this is a fall: a terminal step that asks "
                                                   "for a reset (a simulator); none: reset-free, as a real robot is")

        def __post_init__(self):
            if not self.stand_q_rad or len(self.stand_q_rad) % 3 != 0:
                raise ValueError(f"stand_q_rad = {self.stand_q_rad!r} must give (hip, thigh, calf) per leg: "
                                 f"use e.g. {list(A1_STAND_Q_RAD)}")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        a = self.args
        # With fall_tilt_rad an episode ends (terminal) once the roll or pitch passes it, and a terminal end asks for
        # a reset: a simulator stands the robot up again. Without it the task is reset-free, as a real robot's must be.
        self.fall_tilt_rad: float | None = a.fall_tilt_rad
        self.stand_q_rad = np.asarray(a.stand_q_rad, np.float64)
        self.pose_sigma_rad = a.pose_sigma_rad

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        missing = [key for key in PROPRIO_KEYS if key not in robot_spec]
        if missing:
            raise ValueError(f"task {self.name!r} needs the robot readings {missing}, which the robot driver "
                             f"does not give: use robot.driver = sim_a1")
        n = robot_spec["joint_pos"][0][0]
        if n != self.stand_q_rad.size:
            raise ValueError(f"task {self.name!r}: the robot has {n} joints but stand_q_rad has "
                             f"{self.stand_q_rad.size}; give one stand angle per joint")
        return {key: (tuple(robot_spec[key][0]), "float32") for key in PROPRIO_KEYS}

    def proprio(self, robot_values):
        return {key: np.asarray(robot_values[key], np.float32) for key in PROPRIO_KEYS}

    def terms(self, obs) -> dict[str, float]:
        """The reward's factors: upright u and the pose closeness of the hips, thighs and calves, each in [0, 1]."""
        roll, pitch = float(obs["imu_rpy"][0]), float(obs["imu_rpy"][1])
        upright = min(1.0, max(0.0, (1.0 + math.cos(roll) * math.cos(pitch)) / 2.0))
        q = np.asarray(obs["joint_pos"], np.float64)
        out = {"upright": upright}
        for group, index in _GROUPS.items():
            error = float(np.mean((q[index] - self.stand_q_rad[index]) ** 2))
            out[group] = math.exp(-error / (2.0 * self.pose_sigma_rad ** 2))
        return out

    def is_terminal(self, obs) -> bool:
        """A fall, when ``fall_tilt_rad`` is set: the roll or the pitch beyond it."""
        if self.fall_tilt_rad is None:
            return False
        roll, pitch = float(obs["imu_rpy"][0]), float(obs["imu_rpy"][1])
        return not (abs(roll) <= self.fall_tilt_rad and abs(pitch) <= self.fall_tilt_rad)

    def stand_reward(self, obs) -> tuple[float, float]:
        """(the gated stand reward in [0, 4], the product of all four terms)."""
        t = self.terms(obs)
        gate = t["upright"]
        total = gate
        for group in ("hip", "thigh", "calf"):
            gate *= t[group]
            total += gate
        return total, gate

    def reward(self, obs) -> float:
        return float(self.stand_reward(obs)[0])

    def is_success(self, obs) -> bool:
        return self.reward(obs) > self.SUCCESS_REWARD


@register("a1_walk")
class A1Walk(A1Stand):
    """Walk forward at target_speed_m_s while upright at the stand posture; reward in [0, 14].

    The forward speed is the robot reading ``velocity_key`` (x of the trunk velocity in the heading
    frame): the simulator's privileged ``scene_base_vel`` (sim_a1), or on a real A1 the driver's leg
    odometry ``base_vel_est`` (drivers/real/a1_odometry.py).
    """

    REWARD_MAX = 14.0
    SUCCESS_REWARD = 9.0
    VELOCITY_WEIGHT = 10.0

    @dataclass
    class Args(A1Stand.Args):
        """The stand settings, and the forward speed that earns the full velocity term and where it is read."""
        target_speed_m_s: float = setting(0.5, range=(0.01, 5.0),
                                          help="forward speed that earns the full velocity term")
        velocity_key: str = setting(SCENE_PREFIX + "base_vel",
                                    help="robot reading with the forward speed: scene_base_vel (sim_a1) or "
                                         "base_vel_est (a1)")

        def __post_init__(self):
            super().__post_init__()
            if not self.velocity_key:
                raise ValueError("velocity_key = '' must name a robot reading: use scene_base_vel (sim_a1) or "
                                 "base_vel_est (a1)")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.target_speed_m_s = self.args.target_speed_m_s
        self.velocity_key = self.args.velocity_key
        self.velocity: np.ndarray | None = None

    def proprio_spec(self, robot_spec: ObsSpec) -> ObsSpec:
        key = self.velocity_key
        if key not in robot_spec:
            raise ValueError(f"task {self.name!r} needs the robot reading {key!r} for its reward, and the robot "
                             f"driver gives no {key}: use task.args.velocity_key = scene_base_vel with sim_a1 "
                             f"or base_vel_est with a1")
        return super().proprio_spec(robot_spec)

    def observe(self, readings):
        self.velocity = readings[self.robot].get(self.velocity_key)
        return super().observe(readings)

    def reward(self, obs) -> float:
        stand, gate = self.stand_reward(obs)
        velocity = self.velocity
        forward = 0.0 if velocity is None else float(np.asarray(velocity).reshape(-1)[0])
        if not math.isfinite(forward):
            forward = 0.0
        progress = min(1.0, max(0.0, forward / self.target_speed_m_s))
        return float(stand + self.VELOCITY_WEIGHT * gate * progress)
