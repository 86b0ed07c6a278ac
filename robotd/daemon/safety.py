"""The safety layer: turns a normalised policy action into a bounded robot command.

Every action passes through here before any driver sees it. Nothing in ``command`` or
``fallback`` raises on bad data in the control loop: malformed actions or states become a hold,
stop or damp command whose ``reasons`` say why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _as_float_array(owner: str, field: str, value, shape: tuple[int | None, ...]) -> np.ndarray:
    """Convert a limits field to a finite float64 array of ``shape`` (None matches any size) or raise."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{field}={value!r} is not numeric; give an array of numbers of shape {shape}") from None
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise ValueError(f"{owner}.{field} has shape {array.shape}; expected {shape}, fix the limits config")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{owner}.{field}={array.tolist()} contains NaN or inf; give finite limits")
    return array


def _check_bounds(owner: str, field: str, lower: np.ndarray, upper: np.ndarray) -> None:
    """Raise unless every lower bound is strictly below its upper bound."""
    bad = np.flatnonzero(lower >= upper)
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"{owner}.{field}[{k}] = [{lower[k]}, {upper[k]}]: lower bound must be below upper; fix or swap the bounds"
        )


def _check_positive(owner: str, field: str, value, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float or raise unless it is finite and positive (or zero if allowed)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{field}={value!r} is not a number; give a positive number") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        wanted = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{owner}.{field}={value!r} must be {wanted}; fix the limits config")
    return number


@dataclass
class ArmLimits:
    """Limits for a position-controlled arm; validated and converted to float arrays on construction."""

    joint_limits_rad: np.ndarray  # (dof, 2): lower, upper
    max_joint_vel_rad_s: np.ndarray | float  # scalar or (dof,)
    max_delta_rad: float  # per control step, what action = +-1 means (joint-delta action mode)
    workspace_min_m: np.ndarray  # (3,) Cartesian box for the tcp
    workspace_max_m: np.ndarray

    def __post_init__(self) -> None:
        owner = "ArmLimits"
        self.joint_limits_rad = _as_float_array(owner, "joint_limits_rad", self.joint_limits_rad, (None, 2))
        dof = self.joint_limits_rad.shape[0]
        if dof == 0:
            raise ValueError("ArmLimits.joint_limits_rad has no joints; give one [lower, upper] row per joint")
        _check_bounds(owner, "joint_limits_rad", self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        if np.ndim(self.max_joint_vel_rad_s) == 0:
            self.max_joint_vel_rad_s = np.full(dof, _check_positive(owner, "max_joint_vel_rad_s", self.max_joint_vel_rad_s))
        else:
            velocity = _as_float_array(owner, "max_joint_vel_rad_s", self.max_joint_vel_rad_s, (dof,))
            if np.any(velocity <= 0):
                raise ValueError(f"ArmLimits.max_joint_vel_rad_s={velocity.tolist()} must be > 0 for every joint; fix the limits config")
            self.max_joint_vel_rad_s = velocity
        self.max_delta_rad = _check_positive(owner, "max_delta_rad", self.max_delta_rad)
        self.workspace_min_m = _as_float_array(owner, "workspace_min_m", self.workspace_min_m, (3,))
        self.workspace_max_m = _as_float_array(owner, "workspace_max_m", self.workspace_max_m, (3,))
        _check_bounds(owner, "workspace_min_m/workspace_max_m", self.workspace_min_m, self.workspace_max_m)

    @property
    def dof(self) -> int:
        """Number of joints."""
        return self.joint_limits_rad.shape[0]


@dataclass
class LeggedLimits:
    """Limits for a quadruped under joint PD control; validated and converted on construction."""

    joint_limits_rad: np.ndarray  # (12, 2): lower, upper
    action_scale_rad: float  # action +-1 = stand pose +- this
    max_delta_rad: float  # per-step change of the joint target
    kp_max: float
    kd_max: float
    tau_max_nm: float
    kp: float  # gains used for position targets (clipped to the max)
    kd: float
    max_tilt_rad: float  # |roll| or |pitch| beyond this = fall -> damping (pi: never)
    action_filter: float = 1.0  # weight of the new target per step (first-order low-pass; 1 = none)

    def __post_init__(self) -> None:
        owner = "LeggedLimits"
        self.joint_limits_rad = _as_float_array(owner, "joint_limits_rad", self.joint_limits_rad, (None, 2))
        if self.joint_limits_rad.shape[0] == 0:
            raise ValueError("LeggedLimits.joint_limits_rad has no joints; give one [lower, upper] row per joint")
        _check_bounds(owner, "joint_limits_rad", self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        for field in ("action_scale_rad", "max_delta_rad", "kp_max", "tau_max_nm"):
            setattr(self, field, _check_positive(owner, field, getattr(self, field)))
        for field in ("kd_max", "kp", "kd"):
            setattr(self, field, _check_positive(owner, field, getattr(self, field), allow_zero=True))
        self.max_tilt_rad = _check_positive(owner, "max_tilt_rad", self.max_tilt_rad)
        if self.max_tilt_rad > math.pi:
            raise ValueError(f"LeggedLimits.max_tilt_rad={self.max_tilt_rad!r} exceeds pi, so a fall could never trigger; use e.g. 0.8")
        self.action_filter = _check_positive(owner, "action_filter", self.action_filter)
        if self.action_filter > 1.0:
            raise ValueError(f"LeggedLimits.action_filter={self.action_filter!r} must be in (0, 1]; "
                             f"use 1.0 for no filtering or e.g. 0.5 to smooth the targets")

    @property
    def dof(self) -> int:
        """Number of joints."""
        return self.joint_limits_rad.shape[0]


PD_FIELDS = ("q_rad", "dq_rad_s", "kp", "kd", "tau_nm")
"""A legged robot's per-motor PD command: targets, velocity targets, gains and feed-forward torque."""

COMMAND_FIELDS: dict[str, tuple[frozenset, frozenset]] = {
    # kind: (fields it must hold, fields it may hold besides)
    "joint_position": (frozenset({"q_rad"}), frozenset({"gripper"})),
    "tcp_velocity": (frozenset({"tcp_velocity"}), frozenset({"gripper"})),
    "motors": (frozenset(PD_FIELDS), frozenset()),
    "damp": (frozenset(PD_FIELDS), frozenset()),
    "hold": (frozenset(), frozenset({*PD_FIELDS, "tcp_velocity", "gripper", "action"})),
    "stop": (frozenset(), frozenset({"action"})),
    "action": (frozenset({"action"}), frozenset()),
}
"""What a safe command of each kind carries: the agreement between the safety layers, which build commands,
and robotd.daemon.robot_kinds, which turns them into driver calls. SafeCommand checks it when built."""


@dataclass(frozen=True)
class SafeCommand:
    """A command the drivers may execute as is.

    kind: "joint_position" (arm target), "tcp_velocity" (arm tool twist), "motors" (legged PD targets), "hold"
    (keep the last safe target), "stop" (decelerate and stop, no target), "damp" (zero stiffness, damping
    only) or "action" (a simulated robot's normalised action, see SimSafety). ``values`` holds what
    COMMAND_FIELDS allows for the kind, each a numpy array, read through the properties below: ``q_rad``
    (joint targets), ``tcp_velocity`` (m/s, rad/s), ``gripper`` (1,) 0 open .. 1 closed, ``action``, and the
    PD set ``dq_rad_s``, ``kp``, ``kd``, ``tau_nm`` (all five or none).
    """

    kind: str
    values: dict[str, np.ndarray]  # e.g. {"q_rad"} or {"q_rad", "dq_rad_s", "kp", "kd", "tau_nm"}
    clipped: bool  # any limit changed the request
    reasons: tuple[str, ...]  # which limits acted, e.g. ("joint_limit", "workspace")

    def __post_init__(self) -> None:
        fields = COMMAND_FIELDS.get(self.kind)
        if fields is None:
            raise ValueError(f"SafeCommand kind {self.kind!r} is unknown: use one of {', '.join(COMMAND_FIELDS)}")
        required, optional = fields
        keys = set(self.values)
        if not required <= keys or not keys <= required | optional:
            raise ValueError(f"SafeCommand {self.kind!r} holds {sorted(keys)}: it must hold {sorted(required)} and "
                             f"may hold {sorted(optional)}")
        pd = keys & set(PD_FIELDS[1:])
        if pd and (pd != set(PD_FIELDS[1:]) or "q_rad" not in keys):
            raise ValueError(f"SafeCommand {self.kind!r} holds part of a PD command ({sorted(keys)}): give all of "
                             f"{list(PD_FIELDS)} or none of {list(PD_FIELDS[1:])}")
        for key, value in self.values.items():
            if not isinstance(value, np.ndarray):
                raise ValueError(f"SafeCommand {self.kind!r}: {key} is a {type(value).__name__}, not a numpy array")

    @property
    def q_rad(self) -> np.ndarray | None:
        return self.values.get("q_rad")

    @property
    def tcp_velocity(self) -> np.ndarray | None:
        return self.values.get("tcp_velocity")

    @property
    def gripper(self) -> np.ndarray | None:
        return self.values.get("gripper")

    @property
    def action(self) -> np.ndarray | None:
        return self.values.get("action")

    @property
    def pd(self) -> dict[str, np.ndarray] | None:
        """The whole PD command (q_rad, dq_rad_s, kp, kd, tau_nm) when it has one."""
        return {key: self.values[key] for key in PD_FIELDS} if "kp" in self.values else None


def _finite_vector(value, size: int) -> np.ndarray | None:
    """``value`` as a float64 vector of ``size`` finite entries, or None if it is not one."""
    if value is None:
        return None
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        return None
    return array


def _bounded_step(desired: np.ndarray, base: np.ndarray, step: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """Move from ``base`` toward ``desired`` by at most ``step`` per joint, inside [lower, upper].

    Returns (target, step_acted, limit_acted). When ``base`` lies outside the joint limits the
    step bound wins, so the target walks back inside rather than jumping.
    """
    stepped = np.clip(desired, base - step, base + step)
    limited = np.clip(stepped, lower, upper)
    target = np.clip(limited, base - step, base + step)
    return target, bool(np.any(stepped != desired)), bool(np.any(limited != stepped))


class _Gripper:
    """The optional last action value of an arm: -1 fully open .. +1 fully closed -> closure 0 .. 1."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.last_unit = -1.0                 # the gripper starts open

    def values(self, unit: np.ndarray) -> dict[str, np.ndarray]:
        """The gripper part of a command for the already clipped action ``unit`` (empty without a gripper)."""
        if not self.enabled:
            return {}
        return {"gripper": np.array([(float(unit[-1]) + 1.0) / 2.0])}

    def normalised(self, command: SafeCommand) -> list[float]:
        """The gripper action a command amounts to (a command without one keeps the last)."""
        if not self.enabled:
            return []
        if command.gripper is not None:
            self.last_unit = float(command.gripper[0]) * 2.0 - 1.0
        return [self.last_unit]


class ArmSafety:
    """Safety layer for a joint-position-controlled arm in joint-delta action mode (plus an optional gripper)."""

    def __init__(self, limits: ArmLimits, tcp_position: Callable[[np.ndarray], np.ndarray], period_s: float,
                 *, gripper: bool = False) -> None:
        if not callable(tcp_position):
            raise ValueError(f"ArmSafety tcp_position={tcp_position!r} is not callable; pass forward kinematics q_rad -> xyz_m")
        self.limits = limits
        self.period_s = _check_positive("ArmSafety", "period_s", period_s)
        self._tcp_position = tcp_position
        self.gripper = _Gripper(gripper)
        # The largest per-step move: what the action may ask for, further capped by the joint speed limit.
        self.max_step_rad = np.minimum(limits.max_delta_rad, limits.max_joint_vel_rad_s * self.period_s)

    @property
    def action_dim(self) -> int:
        """Joint deltas, plus one gripper value when there is a gripper."""
        return self.limits.dof + int(self.gripper.enabled)

    def normalised(self, command: SafeCommand, base_q_rad: np.ndarray | None) -> np.ndarray:
        """``command`` expressed back as a policy action (joint delta from ``base_q_rad``, then the gripper)."""
        if command.kind == "joint_position" and base_q_rad is not None:
            joints = np.clip((command.q_rad - base_q_rad) / self.limits.max_delta_rad, -1.0, 1.0)
        else:
            joints = np.zeros(self.limits.dof)
        return np.concatenate([joints, self.gripper.normalised(command)])

    def command(self, action: np.ndarray, q_now_rad: np.ndarray, q_last_target_rad: np.ndarray | None) -> SafeCommand:
        """Map ``action`` in [-1, 1]^dof to a joint target ``max_delta_rad`` per unit away from the last target
        (and, with a gripper, the last value to its closure)."""
        dof = self.limits.dof
        reasons: list[str] = []
        last_target = _finite_vector(q_last_target_rad, dof)
        if q_last_target_rad is not None and last_target is None:
            reasons.append("invalid_state")
        base = last_target if last_target is not None else _finite_vector(q_now_rad, dof)
        if base is None:
            return SafeCommand("stop", {}, True, tuple(reasons) + ("invalid_state",))
        vector = _finite_vector(action, self.action_dim)
        if vector is None:
            return SafeCommand("hold", {"q_rad": base.copy()}, True, tuple(reasons) + ("invalid_action",))
        unit_all = np.clip(vector, -1.0, 1.0)
        if np.any(unit_all != vector):
            reasons.append("action_range")
        gripper = self.gripper.values(unit_all)
        unit = unit_all[:dof]
        target, step_acted, limit_acted = _bounded_step(
            base + unit * self.limits.max_delta_rad,
            base,
            self.max_step_rad,
            self.limits.joint_limits_rad[:, 0],
            self.limits.joint_limits_rad[:, 1],
        )
        if step_acted:
            reasons.append("joint_velocity")
        if limit_acted:
            reasons.append("joint_limit")
        workspace_reason = self._workspace_violation(target)
        if workspace_reason:
            return SafeCommand("hold", {"q_rad": base.copy(), **gripper}, True, tuple(reasons) + (workspace_reason,))
        return SafeCommand("joint_position", {"q_rad": target, **gripper}, bool(reasons), tuple(reasons))

    def fallback(self, mode: str, q_now_rad: np.ndarray, q_last_target_rad: np.ndarray | None) -> SafeCommand:
        """Command to send when no fresh action is available: mode "hold" (keep the last target) or "stop"."""
        if mode not in ("hold", "stop"):
            raise ValueError(f"ArmSafety fallback mode={mode!r} is unknown; use 'hold' or 'stop'")
        if mode == "hold":
            dof = self.limits.dof
            held = _finite_vector(q_last_target_rad, dof)
            if held is None:
                held = _finite_vector(q_now_rad, dof)
            if held is not None:
                return SafeCommand("hold", {"q_rad": held}, False, ("fallback",))
            # Nothing trustworthy to hold on to; stopping is the only safe command left.
            return SafeCommand("stop", {}, True, ("fallback", "invalid_state"))
        return SafeCommand("stop", {}, False, ("fallback",))

    def _workspace_violation(self, q_target_rad: np.ndarray) -> str | None:
        """Reason to hold if the tcp at ``q_target_rad`` leaves the workspace box or cannot be computed."""
        try:
            tcp_m = np.asarray(self._tcp_position(q_target_rad.copy()), dtype=np.float64)
        except Exception:  # broken kinematics must stop motion, not crash the control loop
            return "kinematics_error"
        if tcp_m.shape != (3,) or not np.all(np.isfinite(tcp_m)):
            return "kinematics_error"
        if np.any(tcp_m < self.limits.workspace_min_m) or np.any(tcp_m > self.limits.workspace_max_m):
            return "workspace"
        return None


@dataclass
class TcpLimits:
    """Cartesian limits of the tcp_delta action mode: the per-step displacement action = 1 asks for, and a speed cap."""

    max_tcp_delta_m: float
    max_tcp_speed_m_s: float

    def __post_init__(self) -> None:
        self.max_tcp_delta_m = _check_positive("TcpLimits", "max_tcp_delta_m", self.max_tcp_delta_m)
        self.max_tcp_speed_m_s = _check_positive("TcpLimits", "max_tcp_speed_m_s", self.max_tcp_speed_m_s)


class TcpSafety:
    """Safety layer for an arm moved by its tool centre point (tcp_delta action mode, plus an optional gripper).

    ``action[:3]`` in [-1, 1] asks the tool to move ``max_tcp_delta_m`` per unit and axis this step. The
    desired point, from where the tool is now (forward kinematics of the measured joints), is pulled
    back inside the workspace box, and the Cartesian velocity that reaches it in one period is capped
    at ``max_tcp_speed_m_s``. The command is a tool velocity (linear part; the angular part is zero,
    the tool keeps its orientation), held by the driver until the next one, as speedL is. Joint
    limits are the driver's and the controller's to keep in this mode.
    """

    def __init__(self, limits: ArmLimits, tcp: TcpLimits, tcp_position: Callable[[np.ndarray], np.ndarray],
                 period_s: float, *, gripper: bool = False) -> None:
        if not callable(tcp_position):
            raise ValueError(f"TcpSafety tcp_position={tcp_position!r} is not callable; pass forward kinematics q_rad -> xyz_m")
        self.limits = limits
        self.tcp = tcp
        self.period_s = _check_positive("TcpSafety", "period_s", period_s)
        self._tcp_position = tcp_position
        self.gripper = _Gripper(gripper)

    @property
    def action_dim(self) -> int:
        """x, y, z, plus one gripper value when there is a gripper."""
        return 3 + int(self.gripper.enabled)

    def normalised(self, command: SafeCommand, base_q_rad: np.ndarray | None = None) -> np.ndarray:
        """``command`` expressed back as a policy action (tool displacement per step, then the gripper)."""
        if command.tcp_velocity is not None:
            xyz = np.clip(command.tcp_velocity[:3] * self.period_s / self.tcp.max_tcp_delta_m, -1.0, 1.0)
        else:
            xyz = np.zeros(3)
        return np.concatenate([xyz, self.gripper.normalised(command)])

    def _tcp_now(self, q_now_rad) -> np.ndarray | None:
        q_now = _finite_vector(q_now_rad, self.limits.dof)
        if q_now is None:
            return None
        try:
            tcp_m = np.asarray(self._tcp_position(q_now.copy()), dtype=np.float64)
        except Exception:  # broken kinematics must stop motion, not crash the control loop
            return None
        return tcp_m if tcp_m.shape == (3,) and np.all(np.isfinite(tcp_m)) else None

    def command(self, action: np.ndarray, q_now_rad: np.ndarray, q_last_target_rad=None) -> SafeCommand:
        """Map ``action`` to a tool velocity that stays inside the workspace box and under the speed cap."""
        tcp_now = self._tcp_now(q_now_rad)
        if tcp_now is None:
            return SafeCommand("stop", {}, True, ("invalid_state",))
        vector = _finite_vector(action, self.action_dim)
        if vector is None:
            return SafeCommand("hold", {"tcp_velocity": np.zeros(6)}, True, ("invalid_action",))
        reasons: list[str] = []
        unit = np.clip(vector, -1.0, 1.0)
        if np.any(unit != vector):
            reasons.append("action_range")
        desired = tcp_now + unit[:3] * self.tcp.max_tcp_delta_m
        inside = np.clip(desired, self.limits.workspace_min_m, self.limits.workspace_max_m)
        if np.any(inside != desired):
            reasons.append("workspace")
        velocity = (inside - tcp_now) / self.period_s
        speed = float(np.linalg.norm(velocity))
        if speed > self.tcp.max_tcp_speed_m_s:
            velocity *= self.tcp.max_tcp_speed_m_s / speed
            reasons.append("tcp_speed")
        twist = np.concatenate([velocity, np.zeros(3)])
        return SafeCommand("tcp_velocity", {"tcp_velocity": twist, **self.gripper.values(unit)}, bool(reasons),
                           tuple(reasons))

    def fallback(self, mode: str, q_now_rad=None, q_last_target_rad=None) -> SafeCommand:
        """Command when no fresh action is available: "hold" commands zero tool velocity, "stop" stops the arm."""
        if mode not in ("hold", "stop"):
            raise ValueError(f"TcpSafety fallback mode={mode!r} is unknown; use 'hold' or 'stop'")
        if mode == "hold":
            return SafeCommand("hold", {"tcp_velocity": np.zeros(6)}, False, ("fallback",))
        return SafeCommand("stop", {}, False, ("fallback",))


class LeggedSafety:
    """Safety layer for a quadruped: PD position targets around a stand pose, damping on a fall."""

    def __init__(self, limits: LeggedLimits, stand_q_rad: np.ndarray, period_s: float) -> None:
        self.limits = limits
        self.period_s = _check_positive("LeggedSafety", "period_s", period_s)
        stand = _as_float_array("LeggedSafety", "stand_q_rad", stand_q_rad, (limits.dof,))
        lower, upper = limits.joint_limits_rad[:, 0], limits.joint_limits_rad[:, 1]
        outside = np.flatnonzero((stand < lower) | (stand > upper))
        if outside.size:
            k = int(outside[0])
            raise ValueError(
                f"LeggedSafety stand_q_rad[{k}]={stand[k]} is outside joint limits [{lower[k]}, {upper[k]}]; fix the stand pose or limits"
            )
        self.stand_q_rad = stand
        self.kp = min(limits.kp, limits.kp_max)
        self.kd = min(limits.kd, limits.kd_max)
        self._gains_clipped = self.kp != limits.kp or self.kd != limits.kd

    def command(self, action: np.ndarray, q_now_rad: np.ndarray, q_last_target_rad: np.ndarray | None, rpy_rad: np.ndarray) -> SafeCommand:
        """Map ``action`` in [-1, 1]^12 to PD targets stand + action * action_scale_rad, bounded per step."""
        dof = self.limits.dof
        q_now = _finite_vector(q_now_rad, dof)
        rpy = _finite_vector(rpy_rad, 3)
        if rpy is None:
            return self._damp(q_now, ("invalid_state",))
        if abs(rpy[0]) > self.limits.max_tilt_rad or abs(rpy[1]) > self.limits.max_tilt_rad:
            return self._damp(q_now, ("fall",))
        reasons: list[str] = ["gain_limit"] if self._gains_clipped else []
        last_target = _finite_vector(q_last_target_rad, dof)
        if q_now is None or (q_last_target_rad is not None and last_target is None):
            reasons.append("invalid_state")
        base = last_target if last_target is not None else q_now
        if base is None:
            return self._damp(None, tuple(reasons))
        vector = _finite_vector(action, dof)
        if vector is None:
            return SafeCommand("hold", self._motors(base), True, tuple(reasons) + ("invalid_action",))
        unit = np.clip(vector, -1.0, 1.0)
        if np.any(unit != vector):
            reasons.append("action_range")
        desired = self.stand_q_rad + unit * self.limits.action_scale_rad
        if self.limits.action_filter < 1.0:
            # First-order low-pass from the last target; the torque, step and joint bounds still act after it.
            desired = self.limits.action_filter * desired + (1.0 - self.limits.action_filter) * base
        if q_now is not None and self.kp > 0:
            # Bound the PD torque kp * (q_target - q_now) before the step and joint bounds, which take precedence.
            reach = self.limits.tau_max_nm / self.kp
            torque_bounded = np.clip(desired, q_now - reach, q_now + reach)
            if np.any(torque_bounded != desired):
                reasons.append("torque")
            desired = torque_bounded
        target, step_acted, limit_acted = _bounded_step(
            desired,
            base,
            np.full(dof, self.limits.max_delta_rad),
            self.limits.joint_limits_rad[:, 0],
            self.limits.joint_limits_rad[:, 1],
        )
        if step_acted:
            reasons.append("step_delta")
        if limit_acted:
            reasons.append("joint_limit")
        return SafeCommand("motors", self._motors(target), bool(reasons), tuple(reasons))

    def fallback(self, mode: str, q_now_rad: np.ndarray, q_last_target_rad: np.ndarray | None) -> SafeCommand:
        """Command when no fresh action is available: "hold" keeps the last target; "damp" or "stop" damps.

        A quadruped has no brake, so "stop" means damping it down rather than freezing the motors.
        """
        if mode not in ("hold", "damp", "stop"):
            raise ValueError(f"LeggedSafety fallback mode={mode!r} is unknown; use 'hold', 'damp' or 'stop'")
        dof = self.limits.dof
        q_now = _finite_vector(q_now_rad, dof)
        if mode == "hold":
            held = _finite_vector(q_last_target_rad, dof)
            if held is None:
                held = q_now
            if held is not None:
                return SafeCommand("hold", self._motors(held), False, ("fallback",))
            return self._damp(None, ("fallback", "invalid_state"))
        return self._damp(q_now, ("fallback",), clipped=False)

    def _motors(self, q_target_rad: np.ndarray) -> dict[str, np.ndarray]:
        """Per-motor PD command values for position targets (no velocity target, no feed-forward torque)."""
        dof = self.limits.dof
        return {
            "q_rad": q_target_rad.copy(),
            "dq_rad_s": np.zeros(dof),
            "kp": np.full(dof, self.kp),
            "kd": np.full(dof, self.kd),
            "tau_nm": np.zeros(dof),
        }

    def _damp(self, q_now: np.ndarray | None, reasons: tuple[str, ...], *, clipped: bool = True) -> SafeCommand:
        """Zero-stiffness command that only resists joint velocity, letting the robot settle."""
        values = self._motors(q_now if q_now is not None else self.stand_q_rad)
        values["kp"] = np.zeros(self.limits.dof)
        return SafeCommand("damp", values, clipped, reasons)


class SimSafety:
    """Safety layer for a simulated robot stepped with normalised actions (a Gymnasium environment).

    A simulation has no joints to protect, so the limits are those of the action itself: a
    continuous action is clipped to [-1, 1]; a discrete one becomes the one-hot of its largest
    score. A malformed action (wrong size, NaN or inf) repeats the last applied action ("hold").
    Fallbacks: "hold" repeats the last applied action, "stop" applies the neutral action (all
    zeros, i.e. the middle of each bound; for a discrete action the first choice). Every command
    is of kind "action" or "hold"/"stop" with ``values["action"]`` the normalised action to apply.
    """

    def __init__(self, action_dim: int, discrete: bool) -> None:
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"SimSafety action_dim={action_dim!r} must be an integer >= 1")
        self.action_dim = action_dim
        self.discrete = bool(discrete)

    def neutral(self) -> np.ndarray:
        """The action applied by a "stop" fallback."""
        action = np.zeros(self.action_dim)
        if self.discrete:
            action[0] = 1.0
        return action

    def command(self, action: np.ndarray, q_now_rad=None, last_action: np.ndarray | None = None) -> SafeCommand:
        """The action to apply: clipped (continuous) or one-hot (discrete); malformed ones hold the last action."""
        vector = _finite_vector(action, self.action_dim)
        if vector is None:
            return SafeCommand("hold", {"action": self._held(last_action)}, True, ("invalid_action",))
        if self.discrete:
            one_hot = np.zeros(self.action_dim)
            one_hot[int(np.argmax(vector))] = 1.0
            changed = bool(np.any(one_hot != vector))
            return SafeCommand("action", {"action": one_hot}, changed, ("one_hot",) if changed else ())
        unit = np.clip(vector, -1.0, 1.0)
        changed = bool(np.any(unit != vector))
        return SafeCommand("action", {"action": unit}, changed, ("action_range",) if changed else ())

    def fallback(self, mode: str, q_now_rad=None, last_action: np.ndarray | None = None) -> SafeCommand:
        """Action when no fresh one is available: "hold" repeats the last one, "stop" applies the neutral one."""
        if mode not in ("hold", "stop"):
            raise ValueError(f"SimSafety fallback mode={mode!r} is unknown; use 'hold' or 'stop'")
        if mode == "hold":
            return SafeCommand("hold", {"action": self._held(last_action)}, False, ("fallback",))
        return SafeCommand("stop", {"action": self.neutral()}, False, ("fallback",))

    def _held(self, last_action) -> np.ndarray:
        held = _finite_vector(last_action, self.action_dim)
        return held if held is not None else self.neutral()


class ActionWatchdog:
    """Notices when actions stop arriving; the silence is counted from construction until the first feed()."""

    def __init__(self, timeout_s: float, *, now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.timeout_s = _check_positive("ActionWatchdog", "timeout_s", timeout_s)
        self._timeout_ns = round(self.timeout_s * 1e9)
        self._now_ns = now_ns
        self._last_feed_ns = now_ns()

    def feed(self) -> None:
        """Record that a fresh action just arrived."""
        self._last_feed_ns = self._now_ns()

    def silent_for_s(self) -> float:
        """Seconds since the last feed (or construction)."""
        return (self._now_ns() - self._last_feed_ns) / 1e9

    def expired(self) -> bool:
        """True once the silence is longer than timeout_s."""
        return self._now_ns() - self._last_feed_ns > self._timeout_ns
