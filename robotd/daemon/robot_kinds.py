"""How RobotIO drives each kind of robot: an arm, a legged robot or a simulated environment.

A kind knows the size of the policy's action, builds the safety layer for its limits, reads the joint state the
safety layer needs, turns a safe command into driver calls, expresses it back in the policy's normalised units
and stops the robot. RobotIO picks the kind from the driver's base class (drivers.base.Arm, Legged, SteppedEnv)
once, and never tests the kind again.
"""
from __future__ import annotations

import numpy as np

from drivers.base import Arm, Device, Legged, SteppedEnv
from robotd.config import Config
from robotd.daemon.safety import (ArmLimits, ArmSafety, LeggedLimits, LeggedSafety, SafeCommand, SimSafety, TcpLimits,
                           TcpSafety)


UNCHANGED = object()
"""What ``RobotKind.apply`` returns for a command that leaves the last target as it was (damping)."""


class RobotKind:
    """The kind-specific half of RobotIO for one robot driver."""

    name = "robot"
    action_discrete = False

    def __init__(self, robot: Device, config: Config, period_s: float) -> None:
        self.robot = robot
        self.config = config
        self.period_s = period_s
        self.action_dim = 0

    def build_safety(self):
        raise NotImplementedError

    def joint_q(self, arrays: dict) -> np.ndarray | None:
        """The measured joint positions the safety layer checks against (None where there are none)."""
        return np.asarray(arrays[f"{self.robot.name}/joint_pos"], np.float64)

    def command(self, safety, action: np.ndarray, q_now, last_target, arrays: dict) -> SafeCommand:
        """The policy's action through the safety layer."""
        return safety.command(action, q_now, last_target)

    def apply(self, command: SafeCommand):
        """Sends a safe command to the driver; returns the new joint (or action) target, None when there is none
        any more, or UNCHANGED."""
        raise NotImplementedError

    def normalised(self, safety, command: SafeCommand, base_q) -> np.ndarray:
        """The command in the policy's normalised action units (what the data records as applied)."""
        raise NotImplementedError

    def stop(self, reason: str) -> None:
        """The driver's stop for ``reason`` (robot_io logs and counts it)."""
        self.robot.stop()

    def links_scene(self, cameras: list) -> bool:
        """Whether the cameras draw this robot's scene (mock cameras next to a mock arm)."""
        return False


class ArmKind(RobotKind):
    """An arm: joint or tool-space deltas, an optional gripper, joint and workspace limits."""

    name = "arm"

    def __init__(self, robot: Arm, config: Config, period_s: float) -> None:
        super().__init__(robot, config, period_s)
        arm = config.safety.arm
        self.mode = arm.action_mode
        self.gripper = bool(arm.gripper)
        if self.gripper and not robot.has_gripper:
            raise ValueError(f"safety.arm.gripper = true but robot driver {config.robot.driver!r} has no gripper: "
                             f"set safety.arm.gripper = false or use a driver with one (sim_ur5)")
        self.action_dim = (robot.dof if self.mode == "joint_delta" else 3) + int(self.gripper)

    def build_safety(self):
        arm = self.config.safety.arm
        limits = ArmLimits(joint_limits_rad=np.asarray(self.robot.joint_limits_rad, np.float64),
                           max_joint_vel_rad_s=arm.max_joint_vel_rad_s, max_delta_rad=arm.max_delta_rad,
                           workspace_min_m=np.asarray(arm.workspace_min_m, np.float64),
                           workspace_max_m=np.asarray(arm.workspace_max_m, np.float64))
        if self.mode == "tcp_delta":
            tcp = TcpLimits(max_tcp_delta_m=arm.max_tcp_delta_m, max_tcp_speed_m_s=arm.max_tcp_speed_m_s)
            return TcpSafety(limits, tcp, self.robot.tcp_position, self.period_s, gripper=self.gripper)
        return ArmSafety(limits, self.robot.tcp_position, self.period_s, gripper=self.gripper)

    def apply(self, command: SafeCommand):
        target = None
        if command.q_rad is not None:
            self.robot.command_joint_position(command.q_rad)
            target = np.asarray(command.q_rad, np.float64)
        elif command.tcp_velocity is not None:
            self.robot.command_tcp_velocity(command.tcp_velocity)
        else:
            self.robot.stop()
        if command.gripper is not None:
            self.robot.command_gripper(float(command.gripper[0]))
        return target

    def normalised(self, safety, command: SafeCommand, base_q) -> np.ndarray:
        return safety.normalised(command, base_q).astype(np.float32)

    def links_scene(self, cameras: list) -> bool:
        return bool(cameras) and all(camera.draws_scene for camera in cameras)


class LeggedKind(RobotKind):
    """A legged robot: PD targets around the stand pose, a fall damps the motors instead of holding them."""

    name = "legged"

    def __init__(self, robot: Legged, config: Config, period_s: float) -> None:
        super().__init__(robot, config, period_s)
        self.action_dim = robot.n_motors

    def build_safety(self):
        legged = self.config.safety.legged
        limits = LeggedLimits(joint_limits_rad=np.asarray(self.robot.joint_limits_rad, np.float64),
                              action_scale_rad=legged.action_scale_rad, max_delta_rad=legged.max_delta_rad,
                              kp_max=legged.kp_max, kd_max=legged.kd_max, tau_max_nm=legged.tau_max_nm,
                              kp=legged.kp, kd=legged.kd, max_tilt_rad=legged.max_tilt_rad,
                              action_filter=legged.action_filter)
        return LeggedSafety(limits, np.asarray(self.robot.stand_q_rad, np.float64), self.period_s)

    def command(self, safety, action: np.ndarray, q_now, last_target, arrays: dict) -> SafeCommand:
        return safety.command(action, q_now, last_target, arrays[f"{self.robot.name}/imu_rpy"])

    def apply(self, command: SafeCommand):
        if command.kind in ("motors", "hold") and command.q_rad is not None:
            pd = command.pd
            if pd is not None:
                self.robot.command_motors(pd["q_rad"], pd["dq_rad_s"], pd["kp"], pd["kd"], pd["tau_nm"])
            else:
                legged = self.config.safety.legged
                n = self.action_dim
                self.robot.command_motors(command.q_rad, np.zeros(n), np.full(n, legged.kp),
                                          np.full(n, legged.kd), np.zeros(n))
            return np.asarray(command.q_rad, np.float64)
        if command.kind == "damp":
            self.robot.damp()
            return UNCHANGED
        self.robot.stop()
        return None

    def normalised(self, safety, command: SafeCommand, base_q) -> np.ndarray:
        scale = self.config.safety.legged.action_scale_rad
        if command.kind in ("motors", "hold") and command.q_rad is not None:
            offset = (command.q_rad - np.asarray(self.robot.stand_q_rad)) / scale
            return np.clip(offset, -1.0, 1.0).astype(np.float32)
        return np.zeros(self.action_dim, np.float32)

    def stop(self, reason: str) -> None:
        if reason == "fall":
            self.robot.damp()
        else:
            self.robot.stop()


class SimKind(RobotKind):
    """A simulated environment (Gymnasium): its own action space, no joint state for the safety layer."""

    name = "sim"

    def __init__(self, robot: SteppedEnv, config: Config, period_s: float) -> None:
        super().__init__(robot, config, period_s)
        self.action_dim = int(robot.action_dim)
        self.action_discrete = bool(robot.action_discrete)

    def build_safety(self):
        return SimSafety(self.action_dim, self.action_discrete)

    def joint_q(self, arrays: dict) -> np.ndarray | None:
        return None

    def apply(self, command: SafeCommand):
        self.robot.command_action(command.action)
        return np.asarray(command.action, np.float64)

    def normalised(self, safety, command: SafeCommand, base_q) -> np.ndarray:
        return np.asarray(command.action, np.float32)


KINDS: tuple[tuple[type, type[RobotKind]], ...] = ((Arm, ArmKind), (Legged, LeggedKind), (SteppedEnv, SimKind))


def kind_of(robot: Device, config: Config, period_s: float) -> RobotKind:
    """The kind for a robot driver, from its base class; any other driver fails in one line."""
    for base, kind in KINDS:
        if isinstance(robot, base):
            return kind(robot, config, period_s)
    raise ValueError(f"robot driver {config.robot.driver!r} is neither an arm, a legged robot nor a simulated "
                     f"environment: use an Arm, Legged or SteppedEnv driver for robot.driver")
