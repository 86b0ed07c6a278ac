"""The real Unitree A1 in low-level mode over UDP (legged SDK 3.3.x wire format): the ``a1`` driver.

The driver speaks the protocol itself (drivers/real/a1_wire.py; no Unitree SDK needed). ``connect()``
binds ``(local_ip, local_port)`` and starts an inner thread that, at ``inner_rate_hz``, sends one
LowCmd to ``(robot_ip, robot_port)`` and collects the LowState the robot answers each command with.
The A1's motor boards expect a steady command stream: run the inner loop at 500 Hz or more (the
range accepted is 200-2000 Hz; below 500 the robot's own watchdog may cut in).

What the inner loop sends, each tick:

- Damping (every motor mode 0x0A, kp 0, kd ``damping_kd``, q PosStopF, dq 0, tau 0) before the
  first command_motors(), after damp()/stop(), while a fall is latched and while the link is lost.
  The driver never sends a position target the policy (or reset()) did not give.
- Otherwise the held PD targets: a new command_motors() starts a linear ramp of q, dq and tau from
  the target in force to the new one over ``interpolate_s`` (as DayDreamer did between 20 Hz policy
  steps; kp and kd take their new values at once), optionally low-passed per tick
  (``filter_alpha`` < 1). Leaving damping, the ramp starts from the measured joint angles.

Hard limits, applied to every command_motors() (clipped, counted in ``counters["clipped"]``): q to
the joint limits, kp to ``kp_max``, kd to ``kd_max``, feed-forward tau to +-``tau_max_nm`` (the A1's
motors give 33.5 N m at most).

Safety latches:

- Fall: the trunk's tilt from vertical (from the IMU's roll and pitch) beyond ``max_tilt_rad``
  latches damping and status().fallen until reset(); ``max_tilt_rad`` None (or pi) turns it off, for
  reset-free learning where the policy itself must recover from falls.
- Watchdog: no valid LowState for ``state_timeout_s`` -> status() not ok with ``link_lost`` and a
  fault naming the robot's address and the silence; the loop sends damping until states come back,
  and after that until a command_motors() or reset() given since the trip (the ramp then starts
  from the measured pose).

read() returns the latest state with the robot's own clock: its u32 millisecond ``tick``, unwrapped
across 2**32, as ``hw_time_ns`` (domain "hardware_clock"), and the host receive time
(time.monotonic_ns) as ``host_time_ns``. It never blocks and never touches the network.

Nothing here touches the network before connect(). Keep robot_ip/robot_port/local_port
configurable: the defaults are the A1's (robot 192.168.123.10:8007, local port 8080).
"""
from __future__ import annotations

import collections
import ipaddress
import math
import os
import select
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from drivers.real import a1_wire
from drivers.real.a1_odometry import LegOdometry
from drivers.base import DeviceStatus, Legged, Reading
from drivers.registry import register
from drivers.settings import setting

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_U32 = 2**32
# A tick this far behind the newest is a reordered datagram (dropped); further behind, the robot's clock restarted.
_REORDER_MS = 1000
# Commands of damping disconnect() sends before it stops the inner loop, and how long it waits for them.
DISCONNECT_DAMP_TICKS = 10
DISCONNECT_WAIT_S = 0.2

N_MOTORS = a1_wire.N_MOTORS
# What every A1 driver reads, simulated or real (the simulated one adds its scene_* readings).
A1_READING_SPEC = {
    "joint_pos": ((N_MOTORS,), "float32"),
    "joint_vel": ((N_MOTORS,), "float32"),
    "imu_rpy": ((3,), "float32"),
    "imu_gyro": ((3,), "float32"),
    "foot_contact": ((4,), "float32"),
    "tick": ((1,), "uint32"),
}
# The A1's standing pose and joint limits (FR, FL, RR, RL x hip, thigh, calf), as in drivers/sim/models/a1.xml.
STAND_Q_RAD = np.tile([0.0, 0.9, -1.8], 4)
JOINT_LIMITS_RAD = np.tile(np.array([[-0.802851, 0.802851], [-1.0472, 4.18879], [-2.69653, -0.916298]]), (4, 1))
TORQUE_LIMIT_NM = 33.5
STAND_KP = 60.0
STAND_KD = 2.0


def _under_fifo() -> bool:
    """Whether the calling thread runs under SCHED_FIFO (the kernel then wakes it on time without spinning)."""
    try:
        return os.sched_getscheduler(0) == os.SCHED_FIFO
    except (AttributeError, OSError):
        return False


def unwrap_tick(last_ms: int | None, tick: int) -> int:
    """The robot's u32 millisecond ``tick`` on an unbounded count, continuing ``last_ms`` (None: start there).

    The step from the last value is taken modulo 2**32 as the shorter way round, so a wrap from
    2**32 - 1 to 0 moves one millisecond forward and an older (reordered) tick lands just behind.
    """
    tick = int(tick) & (_U32 - 1)
    if last_ms is None:
        return tick
    delta = (tick - last_ms) % _U32
    if delta >= _U32 // 2:
        delta -= _U32
    return last_ms + delta


def tilt_from_rpy(roll: float, pitch: float) -> float:
    """Angle between the trunk's up axis and the vertical for an IMU roll and pitch (ZYX), rad in [0, pi]."""
    return math.acos(max(-1.0, min(1.0, math.cos(roll) * math.cos(pitch))))


class _State:
    """One decoded LowState with its host receive time and unwrapped robot clock (immutable once made)."""

    __slots__ = ("fields", "host_ns", "tick_ms")

    def __init__(self, fields: dict, host_ns: int, tick_ms: int) -> None:
        self.fields = fields
        self.host_ns = host_ns
        self.tick_ms = tick_ms


@register("a1")
class A1(Legged):
    """A Unitree A1 in low-level mode over UDP, with an inner command loop, hard limits, a fall latch and a watchdog.

    ``counters``: commands_sent, states, malformed (wrong size, CRC, level, or not from the robot),
    out_of_order (reordered states dropped), late_ticks, clipped (commands that hit a hard limit),
    watchdog_trips, falls, socket_errors.
    """

    simulated = False

    @dataclass
    class Args:
        """The A1 driver's settings (``robot.args``).

        foot_contact_threshold is in the robot's footForce units (newtons on the fake; calibrate on the robot).
        stand_kp/stand_kd are the gains reset() stands up and holds with (at most kp_max/kd_max). spin_s is how
        long before each tick the loop stops sleeping and polls the clock (at most half a period); a loop running
        under SCHED_FIFO never polls (the kernel wakes it on time, and a spinning FIFO thread would starve every
        other thread on its core). min_rate_fraction: status() is not ok while the inner loop, measured over its
        last second, sends fewer than this fraction of inner_rate_hz commands."""
        robot_ip: str = setting("192.168.123.10", help="the robot's IPv4 address")
        robot_port: int = setting(8007, range=(1, 65535), help="the robot's low-level UDP port")
        local_ip: str = setting("0.0.0.0", help="the IPv4 address this side binds (0.0.0.0: every interface)")
        local_port: int = setting(8080, range=(0, 65535), help="the UDP port this side binds (0: any free one)")
        inner_rate_hz: float = setting(500.0, range=(200.0, 2000.0),
                                       help="the inner command loop's rate; the A1 needs 500 or more")
        interpolate_s: float = setting(0.05, range=(0.0, 1.0),
                                       help="time a new target is interpolated over (0: step to it)")
        filter_alpha: float = setting(1.0, range=(0.0, 1.0),
                                      help="low-pass factor on targets, above 0 (1: no filtering)")
        kp_max: float = setting(100.0, range=(0.0, 500.0), help="hard limit of every command's kp, above 0")
        kd_max: float = setting(5.0, range=(0.0, 50.0), help="hard limit of every command's kd, above 0")
        tau_max_nm: float = setting(TORQUE_LIMIT_NM, range=(0.0, TORQUE_LIMIT_NM),
                                    help="hard limit of every command's feed-forward torque, above 0")
        damping_kd: float = setting(2.0, range=(0.0, 50.0),
                                    help="kd of the damping the robot falls back to, above 0 and at most kd_max")
        max_tilt_rad: float | None = setting(0.8, range=(0.0, math.pi),
                                             help="body tilt that latches a fall (damping), above 0; None or pi: off")
        state_timeout_s: float = setting(0.1, range=(0.0, 10.0),
                                         help="no state for this long is a lost link (at least two inner periods)")
        foot_contact_threshold: float = setting(10.0, range=(0.0, 1e4),
                                                help="footForce above which a foot is in contact")
        stand_up_s: float = setting(2.0, range=(0.0, 30.0), help="duration of reset()'s stand-up, above 0")
        stand_kp: float = setting(STAND_KP, range=(0.0, 500.0),
                                  help="kp reset() stands up and holds with, above 0 (at most kp_max)")
        stand_kd: float = setting(STAND_KD, range=(0.0, 50.0),
                                  help="kd reset() stands up and holds with (at most kd_max)")
        connect_timeout_s: float = setting(1.0, range=(0.0, 30.0),
                                           help="how long connect() waits for the first state, above 0")
        spin_s: float = setting(0.001, range=(0.0, 0.01),
                                help="how long before each tick the loop polls the clock (at most half a period)")
        min_rate_fraction: float = setting(0.8, range=(0.0, 1.0),
                                           help="status() is not ok below this fraction of inner_rate_hz (0: never)")

        def __post_init__(self) -> None:
            for what in ("robot_ip", "local_ip"):
                value = getattr(self, what)
                try:
                    setattr(self, what, str(ipaddress.IPv4Address(value)))
                except (ipaddress.AddressValueError, ValueError, TypeError):
                    raise ValueError(f"{what} = {value!r} is not an IPv4 address: e.g. '192.168.123.10' for the "
                                     f"robot") from None
            for what, hint in (("filter_alpha", "use 1 for no filtering"), ("kp_max", "use e.g. 100"),
                               ("kd_max", "use e.g. 5"),
                               ("tau_max_nm", f"the A1's motors give {TORQUE_LIMIT_NM} N m at most"),
                               ("damping_kd", "use 2-5, at most kd_max"),
                               ("max_tilt_rad", "use e.g. 0.8, or None (or pi) to turn fall damping off"),
                               ("stand_up_s", "use e.g. 2"), ("stand_kp", f"use e.g. {STAND_KP}"),
                               ("connect_timeout_s", "use e.g. 1")):
                if getattr(self, what) == 0.0:
                    raise ValueError(f"{what} = 0.0 must be above 0: {hint}")
            if self.damping_kd > self.kd_max:
                raise ValueError(f"damping_kd = {self.damping_kd!r} is above kd_max {self.kd_max:g}: use 2-5, at "
                                 f"most kd_max")
            if self.state_timeout_s < 2.0 / self.inner_rate_hz:
                raise ValueError(f"state_timeout_s = {self.state_timeout_s!r} is shorter than two inner periods "
                                 f"({2.0 / self.inner_rate_hz:g} s at inner_rate_hz {self.inner_rate_hz:g}): use "
                                 f"e.g. 0.1")

    def __init__(self, *, name: str = "legs", **args) -> None:
        """Validate the configuration (:class:`A1.Args`); nothing touches the network until connect()."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A1: name must be a non-empty string, got {name!r}; pass e.g. name='legs'")
        self.name = name
        a = self.settings(args, self._owner)
        self.robot_ip = a.robot_ip
        self.local_ip = a.local_ip
        self.robot_port = a.robot_port
        self.local_port = a.local_port
        self.inner_rate_hz = a.inner_rate_hz
        self.interpolate_s = a.interpolate_s
        self.filter_alpha = a.filter_alpha
        self.tau_max_nm = a.tau_max_nm
        self.kp_max = a.kp_max
        self.kd_max = a.kd_max
        self.damping_kd = a.damping_kd
        self.max_tilt_rad = None if a.max_tilt_rad is None or a.max_tilt_rad >= math.pi else a.max_tilt_rad
        self.state_timeout_s = a.state_timeout_s
        self.foot_contact_threshold = a.foot_contact_threshold
        self.stand_up_s = a.stand_up_s
        # Leg odometry for base_vel_est, updated once per new state read (a reward's forward speed).
        self._odometry = LegOdometry(alpha=0.5)
        self._odometry_tick: int | None = None
        self._velocity = np.zeros(3, np.float32)
        # The stand-up gains obey the hard limits too.
        self.stand_kp = min(self.kp_max, a.stand_kp)
        self.stand_kd = min(self.kd_max, a.stand_kd)
        self.connect_timeout_s = a.connect_timeout_s
        # Never poll for more than half a period, whatever the rate.
        self.spin_s = min(0.5 / self.inner_rate_hz, a.spin_s)
        self.min_rate_fraction = a.min_rate_fraction

        self.n_motors = N_MOTORS
        self.stand_q_rad = STAND_Q_RAD.copy()
        self.joint_limits_rad = JOINT_LIMITS_RAD.copy()
        self.period_ns = round(_NS_PER_S / self.inner_rate_hz)
        self.counters = {key: 0 for key in ("commands_sent", "states", "malformed", "out_of_order", "late_ticks",
                                             "clipped", "watchdog_trips", "falls", "socket_errors")}
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._first_state = threading.Event()
        self._connected = False
        self._bound: tuple[str, int] | None = None
        self._thread_error: str | None = None
        self._latest: _State | None = None
        self._send_times: collections.deque[int] = collections.deque(maxlen=int(2 * self.inner_rate_hz) + 16)
        self._cpu_fraction: float | None = None
        self._rate_hz: float | None = None          # commands per second over the inner loop's last full second
        self._failed = False
        self._damp_datagram = a1_wire.encode_low_cmd(None, 0.0, 0.0, self.damping_kd, 0.0)
        self._reset_targets()

    # --- connection -------------------------------------------------------------------------
    @property
    def robot_address(self) -> str:
        """The robot's "ip:port"."""
        return f"{self.robot_ip}:{self.robot_port}"

    def connect(self) -> None:
        """Bind the local port, start the inner loop (damping) and wait for the robot's first state.

        Raises RuntimeError, with everything it opened closed again, when the port cannot be bound or
        no valid state arrives within connect_timeout_s.
        """
        if self._connected:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.local_ip, self.local_port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"{self._owner}: cannot bind {self.local_ip}:{self.local_port} ({exc}): is another "
                               f"process using the port? set local_ip/local_port") from None
        sock.setblocking(False)
        self._socket = sock
        self._rate_hz = None
        self._bound = sock.getsockname()
        self._stop_event.clear()
        self._first_state.clear()
        self._latest = None
        self._thread_error = None
        self._failed = False
        self._send_times.clear()
        self._cpu_fraction = None
        self._reset_targets()
        self._thread = threading.Thread(target=self._run, name=f"a1-{self.name}", daemon=True)
        self._connected = True
        self._thread.start()
        if not self._first_state.wait(self.connect_timeout_s):
            self._shutdown()
            raise RuntimeError(f"{self._owner}: no state from {self.robot_address} within {self.connect_timeout_s} s: "
                               f"is the robot on and in low-level mode, and robot_ip/robot_port right?")

    def disconnect(self) -> None:
        """Send a few cycles of damping, then stop the inner loop and close the socket (idempotent)."""
        if not self._connected:
            return
        with self._lock:
            self._mode = "damp"
        target = self.counters["commands_sent"] + DISCONNECT_DAMP_TICKS
        deadline = time.monotonic() + DISCONNECT_WAIT_S
        while self.counters["commands_sent"] < target and time.monotonic() < deadline and self._alive():
            time.sleep(0.002)
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._connected = False

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """joint_pos, joint_vel (12,), imu_rpy, imu_gyro (3,), foot_contact (4,) float32; tick (1,) uint32 ms;
        base_vel_est (3,) float32: the trunk's velocity in the heading frame by leg odometry (m/s)."""
        return {**A1_READING_SPEC, "base_vel_est": ((3,), "float32")}

    # --- Device -----------------------------------------------------------------------------
    def read(self) -> Reading:
        """The latest state the robot sent, stamped with its own millisecond clock; never blocks."""
        latest = self._latest
        if not self._connected or latest is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        fields = latest.fields
        contact = (fields["foot_force"] > self.foot_contact_threshold).astype(np.float32)
        if latest.tick_ms != self._odometry_tick:
            self._odometry_tick = latest.tick_ms
            self._velocity = self._odometry.update(fields["q"], fields["dq"], fields["gyroscope"], fields["rpy"],
                                                   contact).astype(np.float32)
        values = {
            "joint_pos": fields["q"].astype(np.float32),
            "joint_vel": fields["dq"].astype(np.float32),
            "imu_rpy": fields["rpy"].astype(np.float32),
            "imu_gyro": fields["gyroscope"].astype(np.float32),
            "foot_contact": contact,
            "tick": np.array([fields["tick"]], dtype=np.uint32),
            "base_vel_est": self._velocity.copy(),
        }
        return Reading(values, latest.tick_ms * _NS_PER_MS, latest.host_ns, "hardware_clock")

    def status(self) -> DeviceStatus:
        """ok unless disconnected, the inner loop died, the link is lost (``link_lost``) or the inner loop fell
        below ``min_rate_fraction`` of its rate over its last second; ``fallen`` while latched."""
        if not self._connected:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        if not self._alive() or self._failed:
            return DeviceStatus(ok=False, fault=f"{self._owner}: the inner command loop failed "
                                                f"({self._thread_error or 'it stopped'}): it only damps now; "
                                                f"disconnect and reconnect")
        with self._lock:
            fallen = self._fall_latched
        silence_s = self._silence_s()
        if silence_s > self.state_timeout_s:
            return DeviceStatus(ok=False, fallen=fallen, link_lost=True,
                                fault=f"{self._owner}: no state from {self.robot_address} for {silence_s:.3f} s "
                                      f"(state_timeout_s {self.state_timeout_s:g}): link lost, motors damped; check "
                                      f"the cable and that the robot is in low-level mode")
        rate = self._rate_hz
        if rate is not None and rate < self.min_rate_fraction * self.inner_rate_hz:
            return DeviceStatus(ok=False, fallen=fallen,
                                fault=f"{self._owner}: the inner command loop ran at {rate:.0f} Hz over its last "
                                      f"second, below {self.min_rate_fraction:g} x inner_rate_hz "
                                      f"{self.inner_rate_hz:g}: the machine is too busy for it; free a core or run "
                                      f"the daemon with SCHED_FIFO (README: Timing and safety)")
        return DeviceStatus(fallen=fallen)

    def info(self) -> dict:
        """The link's health for ``robotd check``: addresses, measured rate, counts and the robot's last tick."""
        latest = self._latest
        now_ns = time.monotonic_ns()
        sends = np.array(list(self._send_times), dtype=np.int64)
        recent = sends[sends >= now_ns - _NS_PER_S]
        jitter_ms = None
        if recent.size > 2:
            deviation = np.abs(np.diff(recent) - self.period_ns) / _NS_PER_MS
            jitter_ms = float(np.percentile(deviation, 99))
        local = f"{self._bound[0]}:{self._bound[1]}" if self._bound else f"{self.local_ip}:{self.local_port}"
        return {
            "robot": self.robot_address,
            "local": local,
            "connected": self._connected,
            "inner_rate_hz_set": self.inner_rate_hz,
            "inner_rate_hz": float(recent.size),
            "tick_jitter_p99_ms": jitter_ms,
            "inner_cpu_fraction": self._cpu_fraction,
            "commands_sent": self.counters["commands_sent"],
            "states": self.counters["states"],
            "malformed": self.counters["malformed"],
            "late_ticks": self.counters["late_ticks"],
            "watchdog_trips": self.counters["watchdog_trips"],
            "last_tick": None if latest is None else int(latest.fields["tick"]),
            "since_last_state_s": None if latest is None else (now_ns - latest.host_ns) / _NS_PER_S,
            "mode": self._mode,
            "fallen": self._fall_latched,
        }

    # --- Legged -----------------------------------------------------------------------------
    def command_motors(
        self,
        q_rad: np.ndarray,
        dq_rad_s: np.ndarray,
        kp: np.ndarray,
        kd: np.ndarray,
        tau_nm: np.ndarray,
    ) -> None:
        """Hold new PD targets (each (12,)): q, dq and tau ramp to them over interpolate_s, within the hard limits."""
        q, dq, kp_a, kd_a, tau = (self._motor_vector(what, value)
                                  for what, value in (("q_rad", q_rad), ("dq_rad_s", dq_rad_s), ("kp", kp), ("kd", kd),
                                                      ("tau_nm", tau_nm)))
        for what, gains in (("kp", kp_a), ("kd", kd_a)):
            if np.any(gains < 0.0):
                raise ValueError(f"{self._owner}: command_motors {what} must be >= 0, got {gains.tolist()}")
        if not self._connected:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        limited = (np.clip(q, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1]),
                   np.minimum(kp_a, self.kp_max), np.minimum(kd_a, self.kd_max),
                   np.clip(tau, -self.tau_max_nm, self.tau_max_nm))
        clipped = any(np.any(after != before) for after, before in zip(limited, (q, kp_a, kd_a, tau)))
        q, kp_a, kd_a, tau = limited
        with self._lock:
            self.counters["clipped"] += int(clipped)
            self._start_ramp(q, dq, kp_a, kd_a, tau, round(self.interpolate_s * _NS_PER_S))

    def damp(self) -> None:
        """Damping now (kp 0, kd damping_kd) until the next command_motors() or reset()."""
        with self._lock:
            self._mode = "damp"

    def stop(self) -> None:
        """Safe passive state: damping, as damp()."""
        self.damp()

    def reset(self) -> None:
        """Stand up: ramp from the measured pose to stand_q_rad over stand_up_s with stand_kp/stand_kd (blocking).

        Clears the fall latch. Raises RuntimeError when not connected, when no state arrives (before
        or during the ramp), when the robot lies tilted beyond max_tilt_rad (right it first), or when
        it falls while standing up.
        """
        if not self._connected or not self._alive():
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        self._require_state("before standing up")
        latest = self._latest
        roll, pitch = (float(v) for v in latest.fields["rpy"][:2])
        tilt = tilt_from_rpy(roll, pitch)
        if self.max_tilt_rad is not None and tilt > self.max_tilt_rad:
            raise RuntimeError(f"{self._owner}: cannot stand up while tilted {tilt:.2f} rad (max_tilt_rad "
                               f"{self.max_tilt_rad:g}): put the robot on its feet or belly first")
        ramp_ns = round(self.stand_up_s * _NS_PER_S)
        zeros = np.zeros(N_MOTORS)
        with self._lock:
            self._fall_latched = False
            self._start_ramp(self.stand_q_rad.copy(), zeros, np.full(N_MOTORS, self.stand_kp),
                             np.full(N_MOTORS, self.stand_kd), zeros, ramp_ns)
            self._rebase = True
            generation = self._generation
        end = time.monotonic() + self.stand_up_s + 2.0 / self.inner_rate_hz
        while time.monotonic() < end:
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
            self._require_state("while standing up")
            with self._lock:
                if self._fall_latched:
                    raise RuntimeError(f"{self._owner}: fell while standing up; motors damped")
                if self._generation != generation:
                    return            # a newer command or damp() took over: the stand-up is no longer ours
            if not self._alive() or self._failed:
                raise RuntimeError(f"{self._owner}: the inner command loop failed while standing up "
                                   f"({self._thread_error}); reconnect")

    def _require_state(self, when: str) -> None:
        silence_s = self._silence_s()
        if self._latest is None or silence_s > self.state_timeout_s:
            raise RuntimeError(f"{self._owner}: no state from {self.robot_address} for {silence_s:.3f} s {when}: "
                               f"link lost, motors damped")

    # --- targets ----------------------------------------------------------------------------
    def _reset_targets(self) -> None:
        """Back to idle damping with no targets held (no lock: only before the inner loop runs)."""
        zeros = np.zeros(N_MOTORS)
        self._mode = "idle"              # idle (never commanded) | targets | damp
        self._fall_latched = False
        self._link_lost = False
        self._rebase = True              # the next ramp starts from the measured pose
        self._generation = 0
        self._ramp_from = (zeros, zeros, zeros)
        self._ramp_to = (zeros, zeros, zeros)
        self._gains = (zeros, zeros)
        self._ramp_start_ns = 0
        self._ramp_ns = 0
        self._filtered_q = zeros

    def _ramp_at(self, now_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q, dq, tau of the ramp in force at now_ns (call with the lock held)."""
        if self._ramp_ns <= 0 or now_ns >= self._ramp_start_ns + self._ramp_ns:
            return self._ramp_to
        alpha = max(0.0, (now_ns - self._ramp_start_ns) / self._ramp_ns)
        return tuple(a + alpha * (b - a) for a, b in zip(self._ramp_from, self._ramp_to))  # type: ignore[return-value]

    def _start_ramp(self, q, dq, kp, kd, tau, ramp_ns: int) -> None:
        """New targets, ramped to from the target in force (call with the lock held)."""
        now_ns = time.monotonic_ns()
        damping = self._mode != "targets" or self._fall_latched or self._link_lost
        if damping:
            self._rebase = True          # the inner loop starts the ramp from the measured pose
        else:
            self._ramp_from = self._ramp_at(now_ns)
        self._ramp_to = (q, dq, tau)
        self._gains = (kp, kd)
        self._ramp_start_ns = now_ns
        self._ramp_ns = ramp_ns
        self._mode = "targets"
        self._generation += 1

    # --- inner loop -------------------------------------------------------------------------
    def _silence_s(self) -> float:
        latest = self._latest
        if latest is None:
            return math.inf
        return (time.monotonic_ns() - latest.host_ns) / _NS_PER_S

    def _run(self) -> None:
        period = self.period_ns
        spin_ns = 0 if _under_fifo() else round(self.spin_s * _NS_PER_S)   # a spinning FIFO thread starves the rest
        late_ns = period // 2
        sock = self._socket
        use_select = True
        next_ns = time.monotonic_ns()
        cpu_mark = (next_ns, time.thread_time())
        sent_mark = self.counters["commands_sent"]
        while not self._stop_event.is_set():
            while True:                                        # sleep (collecting states) until just before the tick
                remaining = next_ns - time.monotonic_ns() - spin_ns
                if remaining <= 0:
                    break
                if not use_select:
                    time.sleep(remaining / _NS_PER_S)
                    break
                try:
                    readable, _, _ = select.select([sock], [], [], remaining / _NS_PER_S)
                except ValueError:                             # a descriptor beyond select()'s range: sleep instead
                    use_select = False
                    continue
                except OSError:
                    if self._stop_event.is_set():
                        return
                    raise
                if readable:
                    self._drain(sock)
            while time.monotonic_ns() < next_ns:               # then poll the clock, letting other threads run
                time.sleep(0)
            start_ns = time.monotonic_ns()
            if start_ns - next_ns > late_ns:
                self.counters["late_ticks"] += 1
            try:
                self._drain(sock)
                self._tick(sock, start_ns)
            except OSError as exc:
                if self._stop_event.is_set():
                    return
                self.counters["socket_errors"] += 1
                self._thread_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - recorded for status(); from now on the loop only damps
                self._thread_error = f"{type(exc).__name__}: {exc}"
                self._failed = True
                try:
                    sock.sendto(self._damp_datagram, (self.robot_ip, self.robot_port))
                except OSError:
                    pass
            next_ns += period
            now_ns = time.monotonic_ns()
            if now_ns - next_ns > period:                      # more than a period behind: skip, never burst
                next_ns = now_ns
            if now_ns - cpu_mark[0] >= _NS_PER_S:
                cpu_now = time.thread_time()
                elapsed_s = (now_ns - cpu_mark[0]) / _NS_PER_S
                self._cpu_fraction = (cpu_now - cpu_mark[1]) / elapsed_s
                sent = self.counters["commands_sent"]
                self._rate_hz = (sent - sent_mark) / elapsed_s
                cpu_mark, sent_mark = (now_ns, cpu_now), sent

    def _drain(self, sock: socket.socket) -> None:
        """Take every datagram waiting; keep the newest valid state from the robot, count and drop the rest."""
        while True:
            try:
                data, sender = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                if not self._stop_event.is_set():
                    self.counters["socket_errors"] += 1
                return
            host_ns = time.monotonic_ns()
            if sender[0] != self.robot_ip:
                self.counters["malformed"] += 1
                continue
            try:
                fields = a1_wire.decode_low_state(data)
            except a1_wire.A1WireError:
                self.counters["malformed"] += 1
                continue
            if fields["level"] != a1_wire.LOWLEVEL:
                self.counters["malformed"] += 1
                continue
            latest = self._latest
            tick_ms = unwrap_tick(None if latest is None else latest.tick_ms, fields["tick"])
            if latest is not None and latest.tick_ms - _REORDER_MS <= tick_ms < latest.tick_ms:
                self.counters["out_of_order"] += 1
                continue
            if latest is not None and tick_ms < latest.tick_ms:
                tick_ms = int(fields["tick"])             # the robot's clock restarted: start counting there
            self._latest = _State(fields, host_ns, tick_ms)
            self.counters["states"] += 1
            self._first_state.set()

    def _tick(self, sock: socket.socket, now_ns: int) -> None:
        """Check the watchdog and the fall latch, then send this tick's command."""
        if self._failed:
            sock.sendto(self._damp_datagram, (self.robot_ip, self.robot_port))
            return
        latest = self._latest
        with self._lock:
            silent = latest is not None and now_ns - latest.host_ns > self.state_timeout_s * _NS_PER_S
            if silent and not self._link_lost:
                self._link_lost = True
                self.counters["watchdog_trips"] += 1
                if self._mode == "targets":
                    self._mode = "damp"
            elif not silent and self._link_lost and latest is not None:
                self._link_lost = False
            if (self.max_tilt_rad is not None and latest is not None and not self._fall_latched and not silent
                    and tilt_from_rpy(float(latest.fields["rpy"][0]), float(latest.fields["rpy"][1]))
                    > self.max_tilt_rad):
                self._fall_latched = True
                self.counters["falls"] += 1
            damping = self._mode != "targets" or self._fall_latched or self._link_lost or latest is None
            if damping:
                self._rebase = True
            else:
                if self._rebase:
                    measured = np.clip(latest.fields["q"], self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
                    self._ramp_from = (measured, np.zeros(N_MOTORS), np.zeros(N_MOTORS))
                    self._ramp_start_ns = now_ns
                    self._filtered_q = measured
                    self._rebase = False
                q, dq, tau = self._ramp_at(now_ns)
                if self.filter_alpha < 1.0:
                    q = self._filtered_q + self.filter_alpha * (q - self._filtered_q)
                self._filtered_q = q
                kp, kd = self._gains
        if damping:
            datagram = self._damp_datagram
        else:
            q = np.clip(q, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
            datagram = a1_wire.encode_low_cmd(q, dq, np.minimum(kp, self.kp_max), np.minimum(kd, self.kd_max),
                                              np.clip(tau, -self.tau_max_nm, self.tau_max_nm))
        sock.sendto(datagram, (self.robot_ip, self.robot_port))
        self.counters["commands_sent"] += 1
        self._send_times.append(now_ns)
