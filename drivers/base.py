"""Hardware interfaces the daemon drives: every real, simulated and mock device implements one of these."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drivers.settings import build

# Where a reading's hw_time_ns comes from. The daemon aligns each domain to host time differently:
# a device's own free-running clock, a clock already synchronised to the host, or the host clock itself.
TIMESTAMP_DOMAINS = ("hardware_clock", "global_time", "system_time")


@dataclass
class Reading:
    """One timestamped sample from one device."""

    values: dict[str, np.ndarray]
    hw_time_ns: int
    host_time_ns: int
    domain: str
    frame_number: int | None = None

    def __post_init__(self) -> None:
        """Reject an unknown timestamp domain, since the daemon could not align it."""
        if self.domain not in TIMESTAMP_DOMAINS:
            raise ValueError(
                f"Reading.domain {self.domain!r} is unknown; use one of {', '.join(TIMESTAMP_DOMAINS)}"
            )


@dataclass
class DeviceStatus:
    """Health of a device as the device itself reports it."""

    ok: bool = True
    protective_stop: bool = False
    emergency_stop: bool = False
    fallen: bool = False
    fault: str | None = None
    # The link to the device is gone (no fresh data, or the connection dropped): it cannot be driven any more.
    link_lost: bool = False


class Device(abc.ABC):
    """A device the daemon polls at a fixed rate.

    ``simulated`` is True for devices whose world exists only in software (mocks, simulators):
    only a session whose every device is simulated may run with ``control.pacing: lockstep``.

    ``Args`` is the driver's settings: a dataclass of typed fields (``drivers.settings.setting``: a range or
    choices, help) holding everything a config's ``args`` may give it. Config loading checks a session's
    ``robot.args`` and ``cameras[i].args`` against it; a driver built directly checks its keyword arguments
    against it through :meth:`settings`. What is not a setting (``name``, ``host_clock``, objects a test
    passes) stays a plain constructor argument.
    """

    @dataclass
    class Args:
        """No settings."""

    name: str
    simulated: bool = False
    Args: ClassVar[type]

    @property
    def _owner(self) -> str:
        """How messages name this device: its class and name, e.g. "SimA1 'legs'"."""
        return f"{type(self).__name__} {self.name!r}"

    @classmethod
    def settings(cls, args: dict, owner: str):
        """``args`` checked against ``cls.Args``: an Args instance, or a one-line ValueError naming owner, the key,
        the value and what is allowed."""
        return build(cls.Args, dict(args), owner=owner)

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection and start streaming."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stop streaming and close the connection, leaving the device in a safe state."""

    @abc.abstractmethod
    def read(self) -> Reading:
        """Return the latest sample; never blocks longer than a few milliseconds."""

    @abc.abstractmethod
    def status(self) -> DeviceStatus:
        """Return the device's current health."""

    @abc.abstractmethod
    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Return key -> (shape, dtype name) for every array read().values holds."""

    def set_control_period(self, period_s: float) -> None:
        """The daemon's control period, told before connect(). A driver that paces its own motion commands (a
        UR's servoJ time, its watchdog) uses it; the others need nothing from it."""


class Arm(Device):
    """A joint-position/velocity controlled manipulator (a UR5 in this project), optionally with a gripper.

    An arm with ``has_gripper`` also reads ``gripper_pos`` (1,): 0 fully open .. 1 fully closed.
    Readings whose key starts with ``scene_`` describe the world rather than the arm (a simulator's
    target and object positions); tasks may use them for rewards but never show them to the policy.
    """

    dof: int
    joint_limits_rad: np.ndarray  # (dof, 2): lower, upper
    home_q_rad: np.ndarray  # (dof,)
    has_gripper: bool = False

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """An arm's readings: joint_pos and joint_vel (dof,), tcp_pos (3,), gripper_pos (1,) with a gripper; float32."""
        spec = {
            "joint_pos": ((self.dof,), "float32"),
            "joint_vel": ((self.dof,), "float32"),
            "tcp_pos": ((3,), "float32"),
        }
        if self.has_gripper:
            spec["gripper_pos"] = ((1,), "float32")
        return spec

    @abc.abstractmethod
    def command_tcp_velocity(self, v: np.ndarray) -> None:
        """Move the tool at v (6,): linear m/s then angular rad/s, in the base frame (what speedL does on a UR)."""

    def command_gripper(self, closure: float) -> None:
        """Set the gripper target: 0 fully open .. 1 fully closed (values outside are clipped)."""
        raise RuntimeError(f"{type(self).__name__} {getattr(self, 'name', '?')!r} has no gripper; "
                           f"set safety.arm.gripper = false for this robot")

    @abc.abstractmethod
    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """Set the servo target for every joint (what servoJ does on a UR)."""

    @abc.abstractmethod
    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """Set the target velocity for every joint (what speedJ does on a UR)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Decelerate to zero velocity and hold position."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Move to the home pose and clear a protective stop."""

    @abc.abstractmethod
    def tcp_position(self, q_rad: np.ndarray) -> np.ndarray:
        """Return the tool centre point position in metres, (3,), for joint angles q_rad."""


class Legged(Device):
    """A quadruped driven with per-motor PD targets (a Unitree A1 in low-level mode)."""

    n_motors: int
    stand_q_rad: np.ndarray  # (n_motors,)
    joint_limits_rad: np.ndarray  # (n_motors, 2): lower, upper

    @abc.abstractmethod
    def command_motors(
        self,
        q_rad: np.ndarray,
        dq_rad_s: np.ndarray,
        kp: np.ndarray,
        kd: np.ndarray,
        tau_nm: np.ndarray,
    ) -> None:
        """Command every motor: torque = kp * (q_rad - q) + kd * (dq_rad_s - dq) + tau_nm."""

    @abc.abstractmethod
    def damp(self) -> None:
        """Enter damping mode (kp = 0, kd = damping), used on falls and stops."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Bring the robot to a safe passive state."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Return to the standing pose and clear a fall."""

    def _motor_vector(self, what: str, value: object) -> np.ndarray:
        """``value`` as a finite float64 array of one value per motor, or a one-line ValueError naming ``what``."""
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{self._owner}: command_motors {what} must be numbers, got {value!r}") from None
        if array.shape != (self.n_motors,):
            raise ValueError(f"{self._owner}: command_motors {what} must have shape ({self.n_motors},), "
                             f"got {array.shape}; pass one value per motor")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self._owner}: command_motors {what} must be finite, got {array.tolist()}")
        return array.copy()


class Camera(Device):
    """A colour (and optionally depth) camera; read() returns the newest frame.

    read().values holds "image": (height, width, 3) uint8 and, when the camera streams depth,
    "depth": (height, width) uint16 in millimetres; read().frame_number numbers the frames.
    """

    width: int
    height: int
    fps: float
    depth: bool = False
    draws_scene: bool = False
    """True for a camera that draws the robot's scene from a function given to set_scene (the mock camera)."""

    def set_scene(self, scene) -> None:
        """Where a camera with ``draws_scene`` gets what it draws; the others film the real world."""
        raise NotImplementedError(f"{type(self).__name__} films the world; it draws no scene")

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """image (height, width, 3) uint8, plus depth (height, width) uint16 in mm when the camera streams it."""
        spec = {"image": ((self.height, self.width, 3), "uint8")}
        if self.depth:
            spec["depth"] = ((self.height, self.width), "uint16")
        return spec

    def capture_offset_ns(self, frame_number: int) -> int:
        """Capture time of frame ``frame_number`` after frame 0, on the camera's grid of 1 / fps."""
        return round(frame_number * 1_000_000_000 / self.fps)

    def newest_frame(self, elapsed_ns: int) -> int:
        """Number of the newest frame captured at most ``elapsed_ns`` after frame 0."""
        if elapsed_ns <= 0:
            return 0
        frame_number = int(elapsed_ns * self.fps // 1_000_000_000)
        # The float estimate can be one off right at a frame boundary; settle it on the integer grid.
        while frame_number > 0 and self.capture_offset_ns(frame_number) > elapsed_ns:
            frame_number -= 1
        while self.capture_offset_ns(frame_number + 1) <= elapsed_ns:
            frame_number += 1
        return frame_number


class SteppedEnv(Device):
    """A simulated robot that advances by one step per command (a Gymnasium environment).

    The action is normalised: ``action_dim`` values in [-1, 1] for a continuous action space,
    or a one-hot (score) vector of ``action_dim`` = number of choices for a discrete one
    (``action_discrete``). Between commands the simulated world stands still.
    """

    simulated = True
    action_dim: int
    action_discrete: bool

    @abc.abstractmethod
    def command_action(self, action: np.ndarray) -> None:
        """Advance the simulation by one step under the normalised ``action``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Safe stop: the simulation is not advanced any more until the next command."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Start a new episode."""
