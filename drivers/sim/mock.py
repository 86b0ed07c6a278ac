"""Hardware-free mocks of the arm, the quadruped and the camera, for tests and the default session.

Every mock is cheap, deterministic under `seed` and a controllable `host_clock`, timestamps its
readings on its own DeviceClock ("hardware_clock" domain) a simulated transport latency before
they are received, and can have faults injected by method call or scheduled through `faults`.

Scheduled faults are a dict of seconds after connect() (plus each fault's parameter). A fault
fires on the first call to the mock at or after its time; its effect is dated to that time.
  all mocks:   frozen_at_s + frozen_for_s  sensor repeats its last reading for frozen_for_s
               late_at_s + late_s          the next reading is late_s older than usual
  MockArm:     protective_stop_at_s        protective stop until reset()
  MockLegged:  fall_at_s                   the robot falls over
  MockCamera:  drop_at_s + drop_n          the next drop_n frames are lost
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drivers.base import Arm, Camera, DeviceStatus, Legged, Reading
from drivers.device_clock import DeviceClock
from drivers.registry import register
from drivers.real.ur5 import UR5_HOME_Q_RAD, ur5_point_m
from drivers.settings import setting
from drivers.sim.realism import DeviceArgs

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000


def _positive(owner: str, what: str, value: float) -> float:
    """Return value as a float; raise naming owner, what and value if it is not finite and > 0."""
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{owner}: {what} must be a finite number > 0, got {value!r}; pass a positive value")
    return number


def _finite_array(owner: str, what: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """Return value as a float64 array of exactly `shape`; raise naming what was wrong otherwise (after owner, when
    one is given)."""
    where = f"{owner}: {what}" if owner else what
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be numbers of shape {shape}, got {value!r}") from None
    if array.shape != shape:
        raise ValueError(f"{where} must have shape {shape}, got {array.shape}; pass one value per joint")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where} must be finite, got {array.tolist()}; remove the NaN/inf entries")
    return array.copy()


def parse_faults(faults: Mapping[str, float], keys: Mapping[str, str | None]) -> list[tuple[int, str, float | None]]:
    """A faults dict as (offset_ns after connect, key, parameter) sorted by time; ``keys`` maps each fault's start
    key to the key of its parameter (None when it takes none). A one-line ValueError names a key that is unknown,
    a start without its parameter (or the reverse), or a time or parameter that is not a positive number."""
    starts_by_param = {param: start for start, param in keys.items() if param is not None}
    for key in faults:
        if key not in keys and key not in starts_by_param:
            allowed = ", ".join(sorted([*keys, *starts_by_param]))
            raise ValueError(f"unknown fault key {key!r}; allowed keys: {allowed}")
    schedule = []
    for start, param in keys.items():
        if param is not None and (start in faults) != (param in faults):
            given, missing = (start, param) if start in faults else (param, start)
            raise ValueError(f"fault key {given!r} needs {missing!r} too; give both or neither")
        if start in faults:
            at_s = _number(f"faults[{start!r}]", faults[start], allow_zero=True)
            value = None if param is None else _number(f"faults[{param!r}]", faults[param], allow_zero=False)
            schedule.append((round(at_s * _NS_PER_S), start, value))
    schedule.sort(key=lambda entry: (entry[0], entry[1]))
    return schedule


def _number(what: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{what} = {value!r} must be a finite number {'>=' if allow_zero else '>'} 0")
    return float(value)


@dataclass
class MockArgs(DeviceArgs):
    """Settings every mock takes: a reading's capture-to-receipt delay and scheduled faults (see the module doc)."""
    sensor_latency_s: float = setting(0.001, range=(0.0, 10.0), help="capture to receipt delay of a reading")
    latency_jitter_s: float = setting(0.0002, range=(0.0, 10.0), help="uniform extra receipt delay, at most this")
    faults: dict = setting(default_factory=dict, help="scheduled faults, seconds after connect(): see drivers.sim.mock")

    FAULT_KEYS: ClassVar[dict[str, str | None]] = {"frozen_at_s": "frozen_for_s", "late_at_s": "late_s"}

    def __post_init__(self) -> None:
        self.schedule = parse_faults(self.faults, self.FAULT_KEYS)


class _MockDevice:
    """Timing, noise, connection and fault machinery shared by the mocks.

    A subclass provides _sample(sample_host_ns, host_now_ns) -> Reading, _on_connect(host_ns), and
    handles its own scheduled fault keys in _apply_scheduled_fault before deferring here.
    """

    # Software only: a mock may run under control.pacing = lockstep.
    simulated = True
    Args = MockArgs

    def __init__(self, *, name: str, host_clock: Callable[[], int] = time.monotonic_ns, **args) -> None:
        """Set up the clock, latency, noise streams and fault schedule from ``args`` (the class's ``Args``);
        host_clock is the host's monotonic ns clock (tests pass a fake)."""
        self.name = name
        self.args = args = self.settings(args, self._owner)
        self.noise_std = args.noise_std
        self._latency_ns = round(args.sensor_latency_s * _NS_PER_S)
        self._jitter_ns = round(args.latency_jitter_s * _NS_PER_S)
        self._host_clock = host_clock
        self.clock = DeviceClock(args.clock_offset_s, args.clock_drift_ppm, host_clock)
        # Independent streams, so switching sensor noise on does not shift the latency draws.
        self._noise_rng, self._latency_rng, self._reset_rng = np.random.default_rng(args.seed).spawn(3)
        self._schedule = args.schedule
        self._next_fault = 0
        self._connected_at_ns: int | None = None
        self._frozen_until_ns: int | None = None
        self._pending_late_ns = 0
        self._last_sample_host_ns: int | None = None
        self._last_reading: Reading | None = None

    def connect(self) -> None:
        """Start streaming; scheduled faults count from now."""
        now_ns = self._host_clock()
        self._connected_at_ns = now_ns
        self._next_fault = 0
        self._last_sample_host_ns = None
        self._last_reading = None
        self._on_connect(now_ns)

    def disconnect(self) -> None:
        """Stop streaming; read() and commands fail until connect() is called again."""
        self._connected_at_ns = None

    def read(self) -> Reading:
        """Return the newest sample, timestamped on the device clock at its capture time."""
        now_ns = self._live_now_ns()
        last = self._last_reading
        if last is not None and self._frozen_until_ns is not None and now_ns < self._frozen_until_ns:
            # A stale sensor repeats its last sample, hardware timestamp included; only receipt moves on.
            values = {key: array.copy() for key, array in last.values.items()}
            return dataclasses.replace(last, values=values, host_time_ns=now_ns)
        sample_host_ns = now_ns - self._latency_ns - round(self._jitter_ns * self._latency_rng.random())
        if self._pending_late_ns:
            sample_host_ns -= self._pending_late_ns
            self._pending_late_ns = 0
        elif self._last_sample_host_ns is not None:
            # Jitter must not reorder samples: a device never captures one before its predecessor.
            sample_host_ns = max(sample_host_ns, self._last_sample_host_ns)
        if self._last_sample_host_ns is None or sample_host_ns > self._last_sample_host_ns:
            self._last_sample_host_ns = sample_host_ns
        reading = self._sample(sample_host_ns, now_ns)
        self._last_reading = reading
        return reading

    def inject_frozen(self, duration_s: float) -> None:
        """Make read() repeat its last reading, values and hw_time_ns alike, for duration_s."""
        duration_ns = round(_positive(self._owner, "inject_frozen duration_s", duration_s) * _NS_PER_S)
        self._frozen_until_ns = self._host_clock() + duration_ns

    def inject_late(self, delay_s: float) -> None:
        """Make the next reading arrive delay_s late: captured that much earlier than usual."""
        self._pending_late_ns = round(_positive(self._owner, "inject_late delay_s", delay_s) * _NS_PER_S)

    def _apply_scheduled_fault(self, key: str, value: float | None, at_host_ns: int) -> None:
        """Fire the shared scheduled faults (frozen_at_s, late_at_s) dated at_host_ns."""
        if key == "frozen_at_s":
            self._frozen_until_ns = at_host_ns + round(value * _NS_PER_S)
        else:  # "late_at_s", the only other shared key
            self.inject_late(value)

    def _live_now_ns(self) -> int:
        """Return host time now after checking the connection and firing scheduled faults now due."""
        if self._connected_at_ns is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        now_ns = self._host_clock()
        while self._next_fault < len(self._schedule):
            offset_ns, key, value = self._schedule[self._next_fault]
            at_host_ns = self._connected_at_ns + offset_ns
            if at_host_ns > now_ns:
                break
            self._next_fault += 1
            self._apply_scheduled_fault(key, value, at_host_ns)
        return now_ns

    def _disconnected_status(self) -> DeviceStatus:
        """Status of a mock that is not connected."""
        return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")

    def _with_noise(self, values: np.ndarray) -> np.ndarray:
        """Return values plus Gaussian sensor noise of std noise_std, as float32."""
        if self.noise_std > 0.0:
            values = values + self._noise_rng.normal(0.0, self.noise_std, values.shape)
        return values.astype(np.float32)


_UR5_ELBOW_JOINT = 2

# A planar arm of any dof gets the UR5's reach, so workspace boxes stay meaningful across dof.
_PLANAR_REACH_M = 0.85


def _position_jacobian(fk, q_rad: np.ndarray, step_rad: float = 1e-6) -> np.ndarray:
    """d tcp / d q, (3, dof), by central differences of the forward kinematics fk."""
    columns = []
    for joint in range(len(q_rad)):
        delta = np.zeros(len(q_rad))
        delta[joint] = step_rad
        columns.append((fk(q_rad + delta) - fk(q_rad - delta)) / (2.0 * step_rad))
    return np.stack(columns, axis=1)


def _planar_tcp_m(q_rad: np.ndarray) -> np.ndarray:
    """Tip of a planar chain of equal links in the base x-y plane, metres; every joint turns about z."""
    link_m = _PLANAR_REACH_M / len(q_rad)
    angles_rad = np.cumsum(q_rad)
    return np.array([link_m * np.cos(angles_rad).sum(), link_m * np.sin(angles_rad).sum(), 0.0])


@register("mock_arm")
class MockArm(_MockDevice, Arm):
    """Kinematic arm: each joint follows its target with a first-order lag and a speed limit.

    Position targets are approached with time constant tau_s, capped at max_vel_rad_s; velocity
    targets are reached with the same time constant. The motion is integrated in closed form over
    the elapsed host time, so it is identical at any control rate. dof=6 uses UR5 kinematics and
    limits; any other dof is a planar chain with +-pi limits and a zero home pose.
    Scheduled fault keys: frozen_at_s + frozen_for_s, late_at_s + late_s, protective_stop_at_s.
    """

    @dataclass
    class Args(MockArgs):
        dof: int = setting(6, range=(1, 64), help="joints: 6 uses UR5 kinematics and limits, others a planar chain")
        tau_s: float = setting(0.05, range=(1e-4, 100.0), help="time constant of a joint following its target")
        max_vel_rad_s: float = setting(math.pi, range=(1e-3, 100.0), help="joint speed limit")
        reset_noise_rad: float = setting(0.01, range=(0.0, 10.0), help="uniform noise on the home pose at reset")
        reset_s: float = setting(0.0, range=(0.0, 600.0), help="wall time reset() takes (a real move home: seconds)")
        home_q_rad: list[float] | None = setting(None, help="home pose (default: the UR5's, or zeros)")
        joint_limits_rad: list | None = setting(None, help="(lower, upper) per joint (default: UR5's, or +-pi)")

        FAULT_KEYS: ClassVar[dict[str, str | None]] = {**MockArgs.FAULT_KEYS, "protective_stop_at_s": None}

        def __post_init__(self) -> None:
            super().__post_init__()
            dof = self.dof
            if self.joint_limits_rad is None:
                half_range_rad = np.full(dof, math.pi)
                if dof == 6:
                    half_range_rad[:] = 2.0 * math.pi
                    half_range_rad[_UR5_ELBOW_JOINT] = math.pi
                limits = np.stack([-half_range_rad, half_range_rad], axis=1)
            else:
                limits = _finite_array("", "joint_limits_rad", self.joint_limits_rad, (dof, 2))
            if np.any(limits[:, 0] >= limits[:, 1]):
                raise ValueError(f"joint_limits_rad rows must be (lower, upper) with lower < upper, got "
                                 f"{limits.tolist()}; swap or widen the offending rows")
            home = np.asarray(UR5_HOME_Q_RAD if dof == 6 else np.zeros(dof)) if self.home_q_rad is None else (
                _finite_array("", "home_q_rad", self.home_q_rad, (dof,)))
            if np.any(home < limits[:, 0]) or np.any(home > limits[:, 1]):
                raise ValueError(f"home_q_rad {home.tolist()} lies outside joint_limits_rad {limits.tolist()}; "
                                 f"move it inside the limits")
            self.limits_array, self.home_array = limits, np.array(home, dtype=np.float64)

    def __init__(self, *, name: str = "arm", **args) -> None:
        """Build a disconnected arm resting at its home pose; noise_std applies to every value read; reset() takes
        reset_s of wall time (a real arm's move home takes seconds)."""
        super().__init__(name=name, **args)
        settings = self.args
        self.dof = settings.dof
        self.tau_s = settings.tau_s
        self.max_vel_rad_s = settings.max_vel_rad_s
        self.reset_noise_rad = settings.reset_noise_rad
        self.reset_s = settings.reset_s
        self.joint_limits_rad = settings.limits_array.copy()
        self.home_q_rad = settings.home_array.copy()
        self._q_rad = self.home_q_rad.copy()
        self._qd_rad_s = np.zeros(self.dof)
        self._target_q_rad = self.home_q_rad.copy()
        self._target_qd_rad_s = np.zeros(self.dof)
        self._velocity_mode = False
        self._protective_stop = False
        self._t_ns = 0

    def status(self) -> DeviceStatus:
        """Report a protective stop (injected or scheduled) until reset() clears it."""
        if self._connected_at_ns is None:
            return self._disconnected_status()
        self._live_now_ns()
        if self._protective_stop:
            return DeviceStatus(
                ok=False, protective_stop=True, fault=f"{self._owner} is in protective stop; call reset() to clear it"
            )
        return DeviceStatus()

    def disconnect(self) -> None:
        """Stop the arm and stop streaming, as a UR halts when its control connection closes."""
        if self._connected_at_ns is not None:
            self._advance(self._host_clock())
            self._hold()
        super().disconnect()

    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """Servo towards q_rad (clamped to the joint limits); ignored during a protective stop."""
        target_rad = _finite_array(self._owner, "command_joint_position q_rad", q_rad, (self.dof,))
        self._advance(self._live_now_ns())
        if self._protective_stop:
            return
        self._target_q_rad = np.clip(target_rad, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        self._velocity_mode = False

    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """Move at qd_rad_s (clamped to max_vel_rad_s); ignored during a protective stop."""
        target_rad_s = _finite_array(self._owner, "command_joint_velocity qd_rad_s", qd_rad_s, (self.dof,))
        self._advance(self._live_now_ns())
        if self._protective_stop:
            return
        self._target_qd_rad_s = np.clip(target_rad_s, -self.max_vel_rad_s, self.max_vel_rad_s)
        self._velocity_mode = True

    def command_tcp_velocity(self, v: np.ndarray) -> None:
        """Move the tool at the linear part of v (6,), m/s, through joint velocities from the position
        Jacobian at the current pose (damped least squares); the mock has no tool orientation, so the
        angular part is ignored. Held until the next command, as speedL is."""
        twist = _finite_array(self._owner, "command_tcp_velocity v", v, (6,))
        self._advance(self._live_now_ns())
        if self._protective_stop:
            return
        jacobian = _position_jacobian(self.tcp_position, self._q_rad)
        damping = 1e-3
        qd = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + damping * np.eye(3), twist[:3])
        self._target_qd_rad_s = np.clip(qd, -self.max_vel_rad_s, self.max_vel_rad_s)
        self._velocity_mode = True

    def stop(self) -> None:
        """Decelerate to zero velocity (time constant tau_s) and hold where the arm comes to rest."""
        self._advance(self._live_now_ns())
        self._target_qd_rad_s = np.zeros(self.dof)
        self._velocity_mode = True

    def reset(self) -> None:
        """Put the arm at home plus seeded noise of std reset_noise_rad, at rest, and clear a protective stop (after
        reset_s of wall time)."""
        if self.reset_s > 0:
            time.sleep(self.reset_s)
        self._advance(self._live_now_ns())
        noisy_home_rad = self.home_q_rad + self._reset_rng.normal(0.0, self.reset_noise_rad, self.dof)
        self._q_rad = np.clip(noisy_home_rad, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        self._hold()
        self._protective_stop = False

    def inject_protective_stop(self) -> None:
        """Stop the arm where it is; status() reports it and commands are ignored until reset()."""
        self._protective_stop_at(self._host_clock() if self._connected_at_ns is not None else self._t_ns)

    def tcp_position(self, q_rad: np.ndarray) -> np.ndarray:
        """Forward kinematics: tool flange position for joint angles q_rad, (3,) metres, base frame."""
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != (self.dof,):
            raise ValueError(f"{self._owner}: tcp_position q_rad must have shape ({self.dof},), got {q.shape}")
        return ur5_point_m(q) if self.dof == 6 else _planar_tcp_m(q)

    def _apply_scheduled_fault(self, key: str, value: float | None, at_host_ns: int) -> None:
        """Fire protective_stop_at_s here, the shared keys in the base class."""
        if key == "protective_stop_at_s":
            self._protective_stop_at(at_host_ns)
        else:
            super()._apply_scheduled_fault(key, value, at_host_ns)

    def _protective_stop_at(self, host_ns: int) -> None:
        """Brake to a standstill at host time host_ns and latch the protective stop."""
        self._advance(host_ns)
        self._hold()
        self._protective_stop = True

    def _hold(self) -> None:
        """Stand still at the current joint angles."""
        self._qd_rad_s = np.zeros(self.dof)
        self._target_q_rad = self._q_rad.copy()
        self._velocity_mode = False

    def _on_connect(self, host_ns: int) -> None:
        """Start integrating motion from host_ns; time spent disconnected does not move the arm."""
        self._t_ns = host_ns

    def _advance(self, host_ns: int) -> None:
        """Integrate the joint motion exactly up to host_ns (no-op if already there)."""
        dt_s = (host_ns - self._t_ns) / _NS_PER_S
        if dt_s <= 0.0:
            return
        self._t_ns = host_ns
        tau_s, max_vel_rad_s = self.tau_s, self.max_vel_rad_s
        if self._velocity_mode:
            # qd relaxes to its target: qd(t) = v + (qd0 - v) e^(-t/tau); q is its integral.
            decay = math.exp(-dt_s / tau_s)
            excess_rad_s = self._qd_rad_s - self._target_qd_rad_s
            q_rad = self._q_rad + self._target_qd_rad_s * dt_s + excess_rad_s * tau_s * (1.0 - decay)
            qd_rad_s = self._target_qd_rad_s + excess_rad_s * decay
        else:
            # First-order approach, qd = error / tau, capped at max_vel: a joint far from its target
            # first slews at max_vel until its error shrinks to max_vel * tau, then decays exponentially.
            error_rad = self._target_q_rad - self._q_rad
            abs_error_rad = np.abs(error_rad)
            slew_s = np.minimum(dt_s, np.maximum(abs_error_rad - max_vel_rad_s * tau_s, 0.0) / max_vel_rad_s)
            error_rad = np.sign(error_rad) * (abs_error_rad - max_vel_rad_s * slew_s)
            decay_s = dt_s - slew_s
            error_rad = error_rad * np.exp(-decay_s / tau_s)
            q_rad = self._target_q_rad - error_rad
            qd_rad_s = np.where(decay_s > 0.0, error_rad / tau_s, np.sign(error_rad) * max_vel_rad_s)
        lower_rad, upper_rad = self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1]
        self._q_rad = np.clip(q_rad, lower_rad, upper_rad)
        self._qd_rad_s = np.where(self._q_rad == q_rad, qd_rad_s, 0.0)

    def _sample(self, sample_host_ns: int, host_now_ns: int) -> Reading:
        """The arm's state at sample_host_ns (or its latest state, if that is later), with noise."""
        self._advance(sample_host_ns)
        values = {
            "joint_pos": self._with_noise(self._q_rad),
            "joint_vel": self._with_noise(self._qd_rad_s),
            "tcp_pos": self._with_noise(self.tcp_position(self._q_rad)),
        }
        return Reading(values, self.clock.to_device_ns(sample_host_ns), host_now_ns, "hardware_clock")


# Unitree A1 motor order: legs FR, FL, RR, RL, each (hip, thigh, calf).
_A1_N_MOTORS = 12
_A1_STAND_LEG_RAD = (0.0, 0.9, -1.8)
_A1_LIE_LEG_RAD = (0.0, 1.1, -2.6)
_A1_LEG_LIMITS_RAD = ((-0.8, 0.8), (-1.0, 4.2), (-2.7, -0.9))
_A1_LINK_M = 0.2  # thigh and calf length
# Rows turn per-joint angle integrals into (roll, pitch) differences: mean of the left legs (FL, RL)
# minus the right legs (FR, RR), and mean of the front legs (FR, FL) minus the rear legs (RR, RL).
_A1_TILT_WEIGHTS = np.array(
    [
        [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
    ]
) / 6.0
_FOOT_CONTACT_BAND_M = 0.01  # feet within this height of the lowest foot bear weight
_U32_TICKS = 2**32


@register("mock_legged")
class MockLegged(_MockDevice, Legged):
    """First-order A1-like quadruped: each motor follows its PD command, faster for larger kp.

    A motor with viscous damping b under the A1 law tau = kp (q* - q) + kd (dq* - dq) + tau_ff
    moves at dq = (kp (q* - q) + kd dq* + tau_ff) / (b + kd): first order with time constant
    (b + kd) / kp, integrated in closed form. There is no gravity: with kp = 0 the joints hold.
    The body tilts slowly in proportion to the left-right (roll) and front-rear (pitch) difference of
    mean joint angle, and counts as fallen past fall_tilt_rad. It starts lying down.
    Scheduled fault keys: frozen_at_s + frozen_for_s, late_at_s + late_s, fall_at_s.
    """

    @dataclass
    class Args(MockArgs):
        joint_damping_nm_s_rad: float = setting(0.5, range=(1e-3, 1000.0), help="viscous damping of every joint")
        damp_kd: float = setting(2.0, range=(0.0, 100.0), help="kd of damp()")
        tilt_gain_per_s: float = setting(0.5, range=(0.0, 100.0), help="body tilt rate per radian of leg imbalance")
        fall_tilt_rad: float = setting(0.8, range=(1e-3, math.pi), help="tilt beyond which the robot has fallen")
        reset_noise_rad: float = setting(0.01, range=(0.0, 10.0), help="uniform noise on the pose at reset")

        FAULT_KEYS: ClassVar[dict[str, str | None]] = {**MockArgs.FAULT_KEYS, "fall_at_s": None}

    def __init__(self, *, name: str = "legged", **args) -> None:
        """Build a disconnected robot lying down with passive motors; noise_std applies to joints and IMU."""
        super().__init__(name=name, **args)
        settings = self.args
        self.n_motors = _A1_N_MOTORS
        self.stand_q_rad = np.tile(_A1_STAND_LEG_RAD, 4)
        self.joint_limits_rad = np.tile(np.array(_A1_LEG_LIMITS_RAD), (4, 1))
        self.joint_damping_nm_s_rad = settings.joint_damping_nm_s_rad
        self.damp_kd = settings.damp_kd
        self.tilt_gain_per_s = settings.tilt_gain_per_s
        self.fall_tilt_rad = settings.fall_tilt_rad
        self.reset_noise_rad = settings.reset_noise_rad
        self._q_rad = np.tile(_A1_LIE_LEG_RAD, 4)
        self._dq_rad_s = np.zeros(_A1_N_MOTORS)
        self._set_command(self._q_rad, 0.0, 0.0, 0.0, 0.0)
        self._roll_rad = 0.0
        self._pitch_rad = 0.0
        self._fall_reason: str | None = None
        self._t_ns = 0

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """joint_pos, joint_vel (12,), imu_rpy (3,), foot_contact (4,) float32; tick (1,) uint32 ms."""
        return {
            "joint_pos": ((_A1_N_MOTORS,), "float32"),
            "joint_vel": ((_A1_N_MOTORS,), "float32"),
            "imu_rpy": ((3,), "float32"),
            "foot_contact": ((4,), "float32"),
            "tick": ((1,), "uint32"),
        }

    def status(self) -> DeviceStatus:
        """Report a fall (tilt past fall_tilt_rad, injected or scheduled) until reset() clears it."""
        if self._connected_at_ns is None:
            return self._disconnected_status()
        self._advance(self._live_now_ns())
        if self._fall_reason is not None:
            return DeviceStatus(ok=False, fallen=True, fault=self._fall_reason)
        return DeviceStatus()

    def disconnect(self) -> None:
        """Damp the motors and stop streaming, as the robot should be left when nobody commands it."""
        if self._connected_at_ns is not None:
            self.damp()
        super().disconnect()

    def command_motors(
        self,
        q_rad: np.ndarray,
        dq_rad_s: np.ndarray,
        kp: np.ndarray,
        kd: np.ndarray,
        tau_nm: np.ndarray,
    ) -> None:
        """PD command per motor (each (12,) or a scalar for all); q_rad is clamped to the joint limits."""
        arrays = [
            self._motor_array(what, value)
            for what, value in (("q_rad", q_rad), ("dq_rad_s", dq_rad_s), ("kp", kp), ("kd", kd), ("tau_nm", tau_nm))
        ]
        for what, gains in (("kp", arrays[2]), ("kd", arrays[3])):
            if np.any(gains < 0.0):
                raise ValueError(f"{self._owner}: command_motors {what} must be >= 0, got {gains.tolist()}")
        self._advance(self._live_now_ns())
        self._set_command(*arrays)

    def damp(self) -> None:
        """Damping mode: kp = 0, kd = damp_kd, no feed-forward; the joints come to rest."""
        self._advance(self._live_now_ns())
        self._set_command(self._q_rad, 0.0, 0.0, self.damp_kd, 0.0)

    def stop(self) -> None:
        """Safe stop: damping mode."""
        self.damp()

    def reset(self) -> None:
        """Stand the robot up (stand pose plus seeded noise, level, damped) and clear a fall."""
        self._advance(self._live_now_ns())
        noisy_stand_rad = self.stand_q_rad + self._reset_rng.normal(0.0, self.reset_noise_rad, _A1_N_MOTORS)
        self._q_rad = np.clip(noisy_stand_rad, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        self._dq_rad_s = np.zeros(_A1_N_MOTORS)
        self._roll_rad = self._pitch_rad = 0.0
        self._fall_reason = None
        self._set_command(self._q_rad, 0.0, 0.0, self.damp_kd, 0.0)

    def inject_fall(self) -> None:
        """Knock the robot onto its side: status() reports fallen until reset()."""
        self._fall_at(self._host_clock() if self._connected_at_ns is not None else self._t_ns)

    def _apply_scheduled_fault(self, key: str, value: float | None, at_host_ns: int) -> None:
        """Fire fall_at_s here, the shared keys in the base class."""
        if key == "fall_at_s":
            self._fall_at(at_host_ns)
        else:
            super()._apply_scheduled_fault(key, value, at_host_ns)

    def _fall_at(self, host_ns: int) -> None:
        """Roll the body onto its side at host time host_ns and latch the fall."""
        self._advance(host_ns)
        self._roll_rad = math.pi / 2
        self._fall_reason = f"{self._owner} fall injected; call reset() to stand it up"

    def _motor_array(self, what: str, value: object) -> np.ndarray:
        """Broadcast value to one finite float per motor."""
        array = np.asarray(value, dtype=np.float64)
        try:
            array = np.broadcast_to(array, (_A1_N_MOTORS,)).copy()
        except ValueError:
            raise ValueError(
                f"{self._owner}: command_motors {what} must be a scalar or shape ({_A1_N_MOTORS},), "
                f"got {array.shape}; pass one value per motor"
            ) from None
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self._owner}: command_motors {what} must be finite, got {array.tolist()}")
        return array

    def _set_command(self, q_rad: object, dq_rad_s: object, kp: object, kd: object, tau_nm: object) -> None:
        """Store the active PD command, broadcasting scalars to every motor."""
        self._cmd_q_rad = np.clip(
            np.broadcast_to(q_rad, (_A1_N_MOTORS,)), self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1]
        )
        self._cmd_dq_rad_s = np.broadcast_to(np.asarray(dq_rad_s, dtype=np.float64), (_A1_N_MOTORS,)).copy()
        self._cmd_kp = np.broadcast_to(np.asarray(kp, dtype=np.float64), (_A1_N_MOTORS,)).copy()
        self._cmd_kd = np.broadcast_to(np.asarray(kd, dtype=np.float64), (_A1_N_MOTORS,)).copy()
        self._cmd_tau_nm = np.broadcast_to(np.asarray(tau_nm, dtype=np.float64), (_A1_N_MOTORS,)).copy()

    def _on_connect(self, host_ns: int) -> None:
        """Start integrating motion from host_ns; time spent disconnected does not move the robot."""
        self._t_ns = host_ns

    def _advance(self, host_ns: int) -> None:
        """Integrate joints and body tilt exactly up to host_ns (no-op if already there)."""
        dt_s = (host_ns - self._t_ns) / _NS_PER_S
        if dt_s <= 0.0:
            return
        self._t_ns = host_ns
        damping = self.joint_damping_nm_s_rad + self._cmd_kd
        rate_per_s = self._cmd_kp / damping
        drift_rad_s = (self._cmd_kd * self._cmd_dq_rad_s + self._cmd_tau_nm) / damping
        pd = rate_per_s > 0.0
        # Motors with kp = 0 just move at the constant feed-forward velocity; keep their rate finite
        # so the PD branch, computed for every motor and then discarded for them, stays warning-free.
        safe_rate_per_s = np.where(pd, rate_per_s, 1.0)
        rest_rad = self._cmd_q_rad + drift_rad_s / safe_rate_per_s
        gap_rad = self._q_rad - rest_rad
        decay = np.exp(-safe_rate_per_s * dt_s)
        q_rad = np.where(pd, rest_rad + gap_rad * decay, self._q_rad + drift_rad_s * dt_s)
        dq_rad_s = np.where(pd, -safe_rate_per_s * gap_rad * decay, drift_rad_s)
        # Time integral of each joint angle over the step, which drives the body tilt.
        area_rad_s = np.where(
            pd,
            rest_rad * dt_s + gap_rad * (1.0 - decay) / safe_rate_per_s,
            self._q_rad * dt_s + 0.5 * drift_rad_s * dt_s * dt_s,
        )
        self._q_rad = np.clip(q_rad, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        self._dq_rad_s = np.where(self._q_rad == q_rad, dq_rad_s, 0.0)
        roll_step_rad, pitch_step_rad = (self.tilt_gain_per_s * (_A1_TILT_WEIGHTS @ area_rad_s)).tolist()
        roll_rad = self._roll_rad + roll_step_rad
        pitch_rad = self._pitch_rad + pitch_step_rad
        # Lying on its side or back is as far as a body can tip.
        self._roll_rad = min(max(roll_rad, -math.pi / 2), math.pi / 2)
        self._pitch_rad = min(max(pitch_rad, -math.pi / 2), math.pi / 2)
        if self._fall_reason is None and max(abs(self._roll_rad), abs(self._pitch_rad)) > self.fall_tilt_rad:
            self._fall_reason = (
                f"{self._owner} fell: roll {self._roll_rad:.2f} rad, pitch {self._pitch_rad:.2f} rad "
                f"exceed {self.fall_tilt_rad} rad; call reset() to stand it up"
            )

    def _foot_contact(self) -> np.ndarray:
        """1.0 for each foot (FR, FL, RR, RL) bearing weight: within a band of the lowest foot."""
        if self._fall_reason is not None:
            return np.zeros(4, dtype=np.float32)
        thigh_rad, calf_rad = self._q_rad[1::3], self._q_rad[2::3]
        # Foot depth below the hip in the leg's sagittal plane; hip abduction barely changes it.
        depth_m = _A1_LINK_M * (np.cos(thigh_rad) + np.cos(thigh_rad + calf_rad))
        return (depth_m >= depth_m.max() - _FOOT_CONTACT_BAND_M).astype(np.float32)

    def _sample(self, sample_host_ns: int, host_now_ns: int) -> Reading:
        """The robot's state at sample_host_ns (or its latest state, if that is later), with noise."""
        self._advance(sample_host_ns)
        hw_time_ns = self.clock.to_device_ns(sample_host_ns)
        values = {
            "joint_pos": self._with_noise(self._q_rad),
            "joint_vel": self._with_noise(self._dq_rad_s),
            "imu_rpy": self._with_noise(np.array([self._roll_rad, self._pitch_rad, 0.0])),
            "foot_contact": self._foot_contact(),
            # The A1 reports a wrapping millisecond tick; the mock derives it from its device clock.
            "tick": np.array([(hw_time_ns // _NS_PER_MS) % _U32_TICKS], dtype=np.uint32),
        }
        return Reading(values, hw_time_ns, host_now_ns, "hardware_clock")


_BACKGROUND_TOP_RGB = np.array([40.0, 50.0, 70.0])
_BACKGROUND_BOTTOM_RGB = np.array([90.0, 110.0, 150.0])
_BLOB_RGB = np.array([230, 60, 40], dtype=np.uint8)
_BLOB_RADIUS_FRACTION = 0.1  # of the shorter image side
_BACKGROUND_DEPTH_MM = 1000
_BLOB_DEPTH_MM = 600
_RECENT_FRAMES_KEPT = 4


def _centred_blob() -> tuple[float, float]:
    """Default scene: the blob sits in the middle of the image."""
    return (0.5, 0.5)


@register("mock_camera")
class MockCamera(_MockDevice, Camera):
    """Camera that renders a coloured disc ("blob") on a gradient, where a scene callable puts it.

    Frame k is captured at exactly k / fps seconds of device time after connect(); read() returns
    the newest frame captured a transport latency before the call. set_scene(fn) chooses the blob
    position: fn() -> (x, y) in [0, 1]^2, x rightwards and y downwards. A frame is rendered when
    first read, with the scene as it is then. noise_std is Gaussian luminance noise in intensity levels;
    depth=True adds a depth image in millimetres.
    Scheduled fault keys: frozen_at_s + frozen_for_s, late_at_s + late_s, drop_at_s + drop_n.
    """

    draws_scene = True

    @dataclass
    class Args(MockArgs):
        width: int = setting(64, range=(1, 8192), help="image width, pixels")
        height: int = setting(64, range=(1, 8192), help="image height, pixels")
        fps: float = setting(30.0, range=(0.01, 1e7), help="frames per second of device time")
        depth: bool = setting(False, help="add a depth image in millimetres")

        FAULT_KEYS: ClassVar[dict[str, str | None]] = {**MockArgs.FAULT_KEYS, "drop_at_s": "drop_n"}

        def __post_init__(self) -> None:
            super().__post_init__()
            drop_n = self.faults.get("drop_n")
            if drop_n is not None and int(drop_n) != drop_n:
                raise ValueError(f"faults['drop_n'] must be an integer, got {drop_n!r}; pass e.g. 2")

    def __init__(self, *, name: str = "camera", **args) -> None:
        """Build a disconnected camera showing the default centred blob."""
        super().__init__(name=name, **args)
        width, height = self.args.width, self.args.height
        self.width = width
        self.height = height
        self.fps = self.args.fps
        self.depth = self.args.depth
        self._scene: Callable[[], tuple[float, float]] = _centred_blob
        # Pixel-centre coordinates shaped to broadcast into an (height, width) distance map.
        self._xs_px = np.arange(width, dtype=np.float32)[None, :] + 0.5
        self._ys_px = np.arange(height, dtype=np.float32)[:, None] + 0.5
        self._blob_radius_sq_px = max(1.0, _BLOB_RADIUS_FRACTION * min(width, height)) ** 2
        row_fraction = (np.arange(height) + 0.5)[:, None] / height
        row_rgb = _BACKGROUND_TOP_RGB + row_fraction * (_BACKGROUND_BOTTOM_RGB - _BACKGROUND_TOP_RGB)
        self._background = np.broadcast_to(row_rgb[:, None, :], (height, width, 3)).round().astype(np.uint8)
        self._device_t0_ns = 0
        self._dropped_frames = (0, -1)  # inclusive range of lost frame numbers; empty at first
        # The last few rendered frames, so a frame read again (repeated, or after a late one) is the same image.
        self._recent_frames: dict[int, dict[str, np.ndarray]] = {}

    def status(self) -> DeviceStatus:
        """A connected mock camera is always healthy; its faults show only in the frames."""
        if self._connected_at_ns is None:
            return self._disconnected_status()
        self._live_now_ns()
        return DeviceStatus()

    def set_scene(self, scene: Callable[[], tuple[float, float]]) -> None:
        """Render the blob at scene() -> (x, y) in [0, 1]^2, evaluated once per new frame."""
        if not callable(scene):
            raise TypeError(f"{self._owner}: set_scene needs a callable returning (x, y), got {scene!r}")
        self._scene = scene

    def drop_frames(self, n: int) -> None:
        """Lose the next n frames: the frame number delivered next after them jumps by n + 1."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"{self._owner}: drop_frames n must be an integer >= 1, got {n!r}")
        self._drop_after(self._live_now_ns(), int(n))

    def _apply_scheduled_fault(self, key: str, value: float | None, at_host_ns: int) -> None:
        """Fire drop_at_s here, the shared keys in the base class."""
        if key == "drop_at_s":
            self._drop_after(at_host_ns, int(value))
        else:
            super()._apply_scheduled_fault(key, value, at_host_ns)

    def _drop_after(self, host_ns: int, n: int) -> None:
        """Lose the n frames captured after the newest one at host time host_ns."""
        newest = self.newest_frame(self.clock.to_device_ns(host_ns) - self._device_t0_ns)
        self._dropped_frames = (newest + 1, newest + n)

    def _on_connect(self, host_ns: int) -> None:
        """Start the frame grid at host_ns: frame 0 is captured on connect."""
        self._device_t0_ns = self.clock.to_device_ns(host_ns)
        self._dropped_frames = (0, -1)
        self._recent_frames = {}

    def _render(self) -> dict[str, np.ndarray]:
        """Draw the current scene: the blob over the background, plus noise and depth as configured."""
        x, y = self._scene()
        centre_x_px = min(max(float(x), 0.0), 1.0) * self.width
        centre_y_px = min(max(float(y), 0.0), 1.0) * self.height
        inside = (self._xs_px - centre_x_px) ** 2 + (self._ys_px - centre_y_px) ** 2 < self._blob_radius_sq_px
        image = self._background.copy()
        image[inside] = _BLOB_RGB
        if self.noise_std > 0.0:
            # One draw per pixel shared by its three channels (luminance noise): a third of the
            # Gaussian draws, which dominate the cost of a frame.
            noise = self._noise_rng.normal(0.0, self.noise_std, (self.height, self.width, 1))
            noisy = image + noise + 0.5  # + 0.5 rounds to nearest on the truncating cast below
            image = np.clip(noisy, 0.0, 255.0).astype(np.uint8)
        values = {"image": image}
        if self.depth:
            depth_mm = np.full((self.height, self.width), _BACKGROUND_DEPTH_MM, dtype=np.uint16)
            depth_mm[inside] = _BLOB_DEPTH_MM
            values["depth"] = depth_mm
        return values

    def _sample(self, sample_host_ns: int, host_now_ns: int) -> Reading:
        """The newest frame delivered by sample_host_ns, skipping lost frames."""
        frame_number = self.newest_frame(self.clock.to_device_ns(sample_host_ns) - self._device_t0_ns)
        first_lost, last_lost = self._dropped_frames
        if first_lost <= frame_number <= last_lost:
            # The lost frames never arrive, so the newest delivered frame is the one before them.
            frame_number = first_lost - 1
        if frame_number not in self._recent_frames:
            if len(self._recent_frames) == _RECENT_FRAMES_KEPT:
                del self._recent_frames[next(iter(self._recent_frames))]
            self._recent_frames[frame_number] = self._render()
        values = {key: array.copy() for key, array in self._recent_frames[frame_number].items()}
        hw_time_ns = self._device_t0_ns + self.capture_offset_ns(frame_number)
        return Reading(values, hw_time_ns, host_now_ns, "hardware_clock", frame_number=frame_number)
