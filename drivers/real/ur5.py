"""Universal Robots UR5 / UR5e over RTDE through the ``ur-rtde`` library: the Arm driver ``ur5``.

The robot streams its state on the RTDE port (30004) at the controller's rate (125 Hz on a CB3,
500 Hz on an e-Series, unless ``frequency_hz`` says otherwise); the control interface uploads
ur-rtde's control script and passes servoJ / speedJ / speedL commands through RTDE registers.

What this driver adds on top of the library, because the library does not:

- **Hardware time.** Every reading carries the controller's own timestamp (seconds since the
  controller started) as its hardware time, in the ``hardware_clock`` domain; the daemon maps it
  to host time with its clock-offset estimator.
- **Freshness.** After the link dies, ur-rtde keeps returning the last values and ``True`` from
  commands. The driver watches the connection state and that the controller timestamp keeps
  advancing: no new timestamp for ``freshness_s`` (or a dropped connection) is a lost link,
  reported in ``status()`` (``link_lost``), after which no command is sent any more.
- **Stops.** Safety stops are reported in ``status()``: an emergency stop as ``emergency_stop``, any
  other safety mode but NORMAL and REDUCED as ``protective_stop`` (a protective stop; a safeguard
  stop, the protective stop a door or light curtain triggers; a fault). The daemon ends the episode
  and the robot is not moved again until the stop is cleared: on the teach pendant, by resetting the
  safeguard, or (``unlock_protective_stop: true``) through the dashboard server when the next episode
  resets. ``status()`` is also not ok while the control script is not running (every command is
  refused then; the next reset() re-uploads it) and after ``refused_limit`` commands in a row were
  refused. Nothing here retries motion by itself.
- **Bounded calls.** ur-rtde waits up to 300 s for its control script to answer a command, also after
  the controller died. Every call that can wait (the stops, the reset's moveJ, setWatchdog,
  reuploadScript, stopScript, disconnect, the dashboard) runs on a daemon thread joined with a
  deadline (``command_timeout_s``); one that misses it is abandoned (left to finish on its own),
  logged, and counts as a lost link. servoJ / speedJ / speedL / kickWatchdog go out directly: sent
  only over a fresh link, they wait at most for the script's next cycle (the library gives up after
  3 s). The reset's move home is an asynchronous moveJ watched through the measured joints until it
  arrives, within ``reset_timeout_s`` (default: the move's duration at ``home_speed_rad_s`` /
  ``home_acc_rad_s2``, times 1.5, plus 2 s), else it is stopped (stopJ) and reset() raises.
  ur-rtde's constructors hold the GIL while they wait, so no thread can bound them: connect() first
  checks, within ``connect_timeout_s``, that the controller answers on its RTDE and dashboard ports.
- **Controller watchdog.** Before the first motion command after connect() or a script re-upload the
  driver arms the control script's RTDE watchdog (ur-rtde's setWatchdog, ``watchdog_hz``; 0 turns it
  off): every command, and read() when nothing else went out for a quarter of its period, updates
  the watched register (kickWatchdog). When the daemon dies (even by SIGKILL) or stalls for longer
  than 1 / ``watchdog_hz``, the controller stops the program and with it the arm. Stops decelerate
  with zero-velocity commands first, so that no blocking stop keeps the register silent for long.
- **Last-line limits.** Servo targets are clipped to the joint limits and to ``max_step_rad`` from
  the measured position; velocities to ``max_joint_vel_rad_s`` / ``max_tcp_speed_m_s``. The safety
  layer (robotd/daemon/safety.py: workspace box, per-step deltas) has already limited every command; this
  only catches what should never get past it, and counts it.
- **A clean stop.** disconnect() decelerates (servoStop / speedStop), stops the control script and
  closes both interfaces, each step bounded by ``command_timeout_s``.

``tcp_pos`` is the tool centre point by the UR5's DH kinematics plus ``tool_offset_m`` along the
flange's z axis, from the measured joints: the same function the safety layer uses for its
workspace box. ``robotd check`` shows it beside the controller's own TCP pose.

ur-rtde is imported when the driver connects, so ``import drivers`` never needs it.
"""
from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from drivers.base import Arm, DeviceStatus, Reading
from drivers.registry import register
from drivers.real.robotiq import ROBOTIQ_PORT, RobotiqGripper
from drivers.settings import setting

log = logging.getLogger("robotd.ur5")

_NS_PER_S = 1_000_000_000
RTDE_PORT = 30004
DASHBOARD_PORT = 29999
# RTDE robot modes and safety modes (RTDE guide).
ROBOT_MODE_RUNNING = 7
SAFETY_MODE_NORMAL = 1
SAFETY_MODE_REDUCED = 2
SAFETY_MODE_PROTECTIVE_STOP = 3
SAFETY_MODES_SAFEGUARD = (5, 12, 13)       # SAFEGUARD_STOP, AUTOMATIC_MODE_SAFEGUARD_STOP, three-position stop
SAFETY_MODES_EMERGENCY = (6, 7)            # SYSTEM_EMERGENCY_STOP, ROBOT_EMERGENCY_STOP
RUNTIME_STATES = {0: "STOPPING", 1: "STOPPED", 2: "PLAYING", 3: "PAUSING", 4: "PAUSED", 5: "RESUMING"}
_RTDE_REQUEST_PROTOCOL_VERSION = 86       # 'V'
_SETTLED_RAD_S = 0.02                     # joints slower than this are at rest
_HOME_TOLERANCE_RAD = 0.01                # a move home has arrived when every joint is this close
ROBOT_MODES = {-1: "NO_CONTROLLER", 0: "DISCONNECTED", 1: "CONFIRM_SAFETY", 2: "BOOTING", 3: "POWER_OFF",
               4: "POWER_ON", 5: "IDLE", 6: "BACKDRIVE", 7: "RUNNING", 8: "UPDATING_FIRMWARE"}
SAFETY_MODES = {1: "NORMAL", 2: "REDUCED", 3: "PROTECTIVE_STOP", 4: "RECOVERY", 5: "SAFEGUARD_STOP",
                6: "SYSTEM_EMERGENCY_STOP", 7: "ROBOT_EMERGENCY_STOP", 8: "VIOLATION", 9: "FAULT",
                10: "VALIDATE_JOINT_ID", 11: "UNDEFINED_SAFETY_MODE", 12: "AUTOMATIC_MODE_SAFEGUARD_STOP",
                13: "SYSTEM_THREE_POSITION_ENABLING_STOP"}

# UR5 standard Denavit-Hartenberg parameters (T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)).
UR5_D_M = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
UR5_A_M = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
UR5_ALPHA_RAD = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
UR5_HOME_Q_RAD = (0.0, -1.57, 1.57, -1.57, -1.57, 0.0)
# Stored last joint first as (cos alpha, sin alpha, a, d): a point in the flange frame is mapped inwards.
_DH_REVERSED = tuple((math.cos(alpha), math.sin(alpha), a, d)
                     for alpha, a, d in reversed(list(zip(UR5_ALPHA_RAD, UR5_A_M, UR5_D_M))))


def ur5_point_m(q_rad, flange_point_m: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A point given in the UR5's flange frame, in the base frame (metres), by DH forward kinematics.

    ``flange_point_m = (0, 0, d)`` is a tool centre point d metres out along the flange's z axis."""
    x, y, z = (float(v) for v in flange_point_m)
    # Plain floats: six small transforms are several times faster than numpy 4x4 products.
    for (cos_alpha, sin_alpha, a_m, d_m), theta in zip(_DH_REVERSED, reversed([float(v) for v in q_rad])):
        y, z = y * cos_alpha - z * sin_alpha, y * sin_alpha + z * cos_alpha
        x += a_m
        z += d_m
        cos_theta, sin_theta = math.cos(theta), math.sin(theta)
        x, y = x * cos_theta - y * sin_theta, x * sin_theta + y * cos_theta
    return np.array([x, y, z])


def _import_rtde():
    """(rtde_receive, rtde_control), or a one-line error saying how to install them."""
    try:
        import rtde_control
        import rtde_receive
    except ImportError as exc:
        raise RuntimeError(f"the ur5 driver needs ur-rtde ({exc}): pip install 'robotd[ur5]'") from None
    return rtde_receive, rtde_control


class _Stuck(RuntimeError):
    """A library call that did not return within its bound; its thread is left to finish on its own."""


def _run_bounded(what: str, call, timeout_s: float):
    """call()'s result, computed on a daemon thread; raises _Stuck when it has not returned within timeout_s.

    The ur-rtde calls run here release the GIL while they wait, so the caller's deadline holds."""
    box: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"ur5 {what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise _Stuck(what)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _disconnect_quietly(owner: str, what: str, interface) -> None:
    """interface.disconnect(), logging a failure (runs on its own thread; the interface is destroyed there)."""
    try:
        interface.disconnect()
    except Exception as exc:  # noqa: BLE001 - closing must go on
        log.warning("%s: closing the %s: %s", owner, what, exc)


def _move_duration_s(distance_rad: float, speed: float, acc: float) -> float:
    """Duration of a trapezoidal joint move over distance_rad at speed and acc (a triangle when it is short)."""
    if distance_rad <= speed * speed / acc:
        return 2.0 * math.sqrt(distance_rad / acc)
    return distance_rad / speed + speed / acc


@register("ur5")
class UR5(Arm):
    """A UR5 / UR5e arm through ur-rtde (see the module docstring for what the driver checks).

    Config args (``robot.args``): the fields of :class:`UR5.Args`, each with its range and meaning; ``host``
    is required.
    """

    dof = 6

    @dataclass
    class Args:
        """The UR5 driver's settings (``robot.args``); ``host`` is required."""
        host: str | None = setting(None, help="the controller's IP address (required)")
        frequency_hz: float = setting(-1.0, range=(-1.0, 500.0),
                                      help="RTDE rate: -1 = the controller's own (125 Hz CB3, 500 Hz e-Series), or "
                                           "1..500")
        servo_lookahead_s: float = setting(0.1, range=(0.03, 0.2), help="servoJ lookahead time")
        servo_gain: float = setting(300.0, range=(100.0, 2000.0), help="servoJ proportional gain")
        servo_time_s: float | None = setting(None, range=(0.002, 1.0),
                                             help="how long a servoJ target is tracked (default: the control period, "
                                                  "set by the daemon)")
        joint_acc_rad_s2: float = setting(1.0, range=(0.01, 40.0), help="speedJ joint acceleration")
        tcp_acc_m_s2: float = setting(0.5, range=(0.01, 10.0), help="speedL tool acceleration")
        stop_acc: float = setting(2.0, range=(0.1, 40.0), help="deceleration of every stop (rad/s^2 or m/s^2)")
        home_q_rad: list[float] | None = setting(None, range=(-2 * math.pi, 2 * math.pi),
                                                 help="the joints reset() moves to (default: UR5_HOME_Q_RAD); inside "
                                                      "joint_limits_rad")
        home_speed_rad_s: float = setting(0.3, range=(0.01, 1.05), help="joint speed of the reset's moveJ home")
        home_acc_rad_s2: float = setting(0.5, range=(0.01, 1.4), help="joint acceleration of the reset's moveJ home")
        joint_limits_rad: list[list[float]] | None = setting(
            None, range=(-2 * math.pi, 2 * math.pi),
            help="(lower, upper) per joint, 6 rows, that servo targets are clipped to (default: +-2 pi)")
        tool_offset_m: float = setting(0.0, range=(0.0, 0.5), help="tool centre point along the flange's z axis")
        max_step_rad: float = setting(0.2, range=(0.001, 1.0), help="a servo target's largest distance from the "
                                                                    "measured joints")
        max_joint_vel_rad_s: float = setting(1.0, range=(0.01, 3.14), help="speedJ velocities are clipped to this")
        max_tcp_speed_m_s: float = setting(0.25, range=(0.001, 1.0), help="speedL speeds are clipped to this")
        freshness_s: float = setting(0.05, range=(0.005, 5.0),
                                     help="no new controller timestamp for this long is a lost link")
        unlock_protective_stop: bool = setting(False, help="clear a protective stop through the dashboard server "
                                                           "at the next reset")
        connect_timeout_s: float = setting(10.0, range=(0.5, 120.0),
                                           help="how long connect() waits for the RTDE and dashboard ports to answer")
        gripper: str | None = setting(None, choices=("robotiq",),
                                      help="robotiq (its URCap socket on the controller), or None for no gripper")
        gripper_port: int = setting(ROBOTIQ_PORT, range=(1, 65535), help="the Robotiq URCap's TCP port")
        command_timeout_s: float = setting(3.0, range=(0.5, 60.0),
                                           help="the bound of every call that waits for the controller")
        reset_timeout_s: float | None = setting(None, range=(1.0, 600.0),
                                                help="the bound of the reset's move home (default: derived from the "
                                                     "distance, home_speed_rad_s and home_acc_rad_s2)")
        script_start_timeout_s: float = setting(5.0, range=(0.5, 60.0),
                                                help="how long a re-uploaded control script may take to start")
        watchdog_hz: float = setting(10.0, range=(0.0, 100.0),
                                     help="the controller's RTDE watchdog rate: 0 (off) or 1..100")
        refused_limit: int = setting(5, range=(1, 10000),
                                     help="commands refused in a row before status() is not ok")

        def __post_init__(self) -> None:
            if not isinstance(self.host, str) or not self.host:
                raise ValueError(f"host = {self.host!r} is not an address: set robot.args.host to the controller's "
                                 f"IP address")
            if self.frequency_hz != -1.0 and self.frequency_hz < 1.0:
                raise ValueError(f"frequency_hz = {self.frequency_hz!r} must be -1 (the controller's rate) or 1..500")
            if 0.0 < self.watchdog_hz < 1.0:
                raise ValueError(f"watchdog_hz = {self.watchdog_hz!r} must be 0 (off) or 1..100")
            limits = ([[-2 * math.pi, 2 * math.pi]] * 6 if self.joint_limits_rad is None
                      else self.joint_limits_rad)
            if len(limits) != 6 or any(len(row) != 2 for row in limits):
                raise ValueError(f"joint_limits_rad = {limits!r} must be 6 rows of (lower, upper)")
            if any(lower >= upper for lower, upper in limits):
                raise ValueError(f"joint_limits_rad = {limits!r} needs lower < upper for every joint")
            home = list(UR5_HOME_Q_RAD) if self.home_q_rad is None else self.home_q_rad
            if len(home) != 6:
                raise ValueError(f"home_q_rad = {home!r} must have 6 values, one per joint")
            if any(not lower <= q <= upper for q, (lower, upper) in zip(home, limits)):
                raise ValueError(f"home_q_rad = {home!r} lies outside joint_limits_rad: move the home pose inside "
                                 f"the limits")
            self.limits_array = np.array(limits, dtype=np.float64)
            self.home_array = np.array(home, dtype=np.float64)

    def __init__(self, *, name: str = "arm", **args) -> None:
        self.name = name
        a = self.settings(args, f"UR5 {name!r}")
        self.host = a.host
        self.frequency_hz = a.frequency_hz
        self.servo_lookahead_s = a.servo_lookahead_s
        self.servo_gain = a.servo_gain
        self.servo_time_s = a.servo_time_s
        self.joint_acc_rad_s2 = a.joint_acc_rad_s2
        self.tcp_acc_m_s2 = a.tcp_acc_m_s2
        self.stop_acc = a.stop_acc
        self.home_speed_rad_s = a.home_speed_rad_s
        self.home_acc_rad_s2 = a.home_acc_rad_s2
        self.tool_offset_m = a.tool_offset_m
        self.max_step_rad = a.max_step_rad
        self.max_joint_vel_rad_s = a.max_joint_vel_rad_s
        self.max_tcp_speed_m_s = a.max_tcp_speed_m_s
        self.freshness_s = a.freshness_s
        self.connect_timeout_s = a.connect_timeout_s
        self.command_timeout_s = a.command_timeout_s
        self.reset_timeout_s = a.reset_timeout_s
        self.script_start_timeout_s = a.script_start_timeout_s
        self.watchdog_hz = a.watchdog_hz
        self.refused_limit = a.refused_limit
        self.unlock_protective_stop = a.unlock_protective_stop
        self.has_gripper = a.gripper is not None
        # Nothing connects here: the gripper's socket opens in connect().
        self._gripper = (RobotiqGripper(a.host, a.gripper_port, owner=f"UR5 {name!r} gripper") if self.has_gripper
                         else None)
        self.joint_limits_rad = a.limits_array
        self.home_q_rad = a.home_array
        self._receive = None
        self._control = None
        self._mode: str | None = None          # "servo", "speedj", "speedl" or None (holding)
        self._last_ts: float | None = None
        self._last_change_ns = 0
        self._lost: str | None = None
        self._refused_in_a_row = 0
        self._watchdog_armed = False
        self._arm_tried_at = -math.inf
        self._last_sent = 0.0               # monotonic time of the last package sent to the control script
        self.counters = {"readings": 0, "stale_reads": 0, "commands": 0, "command_failures": 0, "clipped": 0,
                         "skipped_while_lost": 0, "resets": 0, "script_restarts": 0, "watchdog_kicks": 0,
                         "kick_failures": 0, "abandoned_calls": 0}

    # ----------------------------------------------------------------------------------------
    @property
    def _owner(self) -> str:
        return f"UR5 {self.name!r} at {self.host}"

    def set_control_period(self, period_s: float) -> None:
        """The daemon's control period: servoJ tracks each target for it unless servo_time_s is set.

        With the watchdog on, the daemon must read or command at least twice per watchdog period."""
        if self.watchdog_hz > 0.0 and period_s > 0.5 / self.watchdog_hz:
            raise ValueError(f"UR5 {self.name!r}: a control period of {period_s:g} s is too slow for watchdog_hz "
                             f"{self.watchdog_hz:g} (at most {0.5 / self.watchdog_hz:g} s): raise control.rate_hz "
                             f"or lower robot.args.watchdog_hz")
        if self.servo_time_s is None:
            self.servo_time_s = float(period_s)

    # ----------------------------------------------------------------------------------------
    def _call(self, what: str, call, timeout_s: float | None = None):
        """A control-interface or dashboard call bounded by command_timeout_s (or timeout_s); one that misses its
        deadline is abandoned and the link counts as lost (nothing more is sent): raises _Stuck."""
        bound = self.command_timeout_s if timeout_s is None else timeout_s
        try:
            return _run_bounded(what, call, bound)
        except _Stuck:
            self.counters["abandoned_calls"] += 1
            if self._lost is None:
                self._lost = (f"{self._owner}: {what} did not return within {bound:g} s (command_timeout_s): the "
                              f"controller stopped answering; check the network cable and the controller")
                log.error("%s; the call is abandoned and no command is sent any more", self._lost)
            raise _Stuck(self._lost) from None

    def _probe(self, port: int) -> None:
        """Checks within connect_timeout_s that the controller answers on port (RTDE: a protocol version reply;
        dashboard: its greeting line); ur-rtde's constructors hold the GIL while they wait, unbounded."""
        what = "RTDE" if port == RTDE_PORT else "dashboard"
        deadline = time.monotonic() + self.connect_timeout_s
        try:
            with socket.create_connection((self.host, port), timeout=self.connect_timeout_s) as sock:
                if port == RTDE_PORT:
                    sock.sendall(struct.pack(">HBH", 5, _RTDE_REQUEST_PROTOCOL_VERSION, 2))

                def answered(data: bytes) -> bool:
                    return len(data) >= 3 if port == RTDE_PORT else b"\n" in data

                received = b""
                while not answered(received):
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = sock.recv(256)
                    if not chunk:
                        raise OSError("the controller closed the connection")
                    received += chunk
        except socket.timeout:
            raise RuntimeError(f"{self._owner}: the {what} port {port} accepted but did not answer within "
                               f"{self.connect_timeout_s:g} s (connect_timeout_s): the controller hangs or is "
                               f"booting; wait for it or restart it") from None
        except OSError as exc:
            raise RuntimeError(f"{self._owner}: cannot connect to {what} port {port} ({exc}): check "
                               f"robot.args.host, the cable and that the controller is on") from None

    # ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connects the receive interface, then the control interface (which uploads ur-rtde's control script)."""
        rtde_receive, rtde_control = _import_rtde()
        self._lost = None
        self._mode = None
        self._refused_in_a_row = 0
        self._watchdog_armed = False
        self._arm_tried_at = -math.inf
        self._probe(RTDE_PORT)
        try:
            self._receive = rtde_receive.RTDEReceiveInterface(self.host, self.frequency_hz)
        except RuntimeError as exc:
            raise RuntimeError(f"{self._owner}: cannot connect to RTDE port {RTDE_PORT} ({exc}): check robot.args.host, "
                               f"the cable and that the controller is on") from None
        try:
            self._probe(DASHBOARD_PORT)
        except RuntimeError:
            self._close_interfaces()
            raise
        try:
            self._control = rtde_control.RTDEControlInterface(self.host, self.frequency_hz)
        except RuntimeError as exc:
            self._close_interfaces()
            raise RuntimeError(f"{self._owner}: the control interface failed ({exc}): put the robot in remote "
                               f"control (e-Series), power it on, release the brakes and stop any running "
                               f"program") from None
        if self._gripper is not None:
            try:
                self._gripper.connect()
            except RuntimeError:
                self.disconnect()
                raise
        deadline = time.monotonic() + self.connect_timeout_s
        first = self._receive.getTimestamp()
        while self._receive.getTimestamp() == first:
            if time.monotonic() > deadline:
                self.disconnect()
                raise RuntimeError(f"{self._owner}: the controller timestamp did not advance within "
                                   f"{self.connect_timeout_s:g} s: the RTDE stream is not running")
            time.sleep(0.001)
        self._last_ts = None
        self._observe_timestamp(self._receive.getTimestamp())
        log.info("%s connected: RTDE at %s Hz, robot mode %s, safety mode %s, watchdog %s", self._owner,
                 "controller" if self.frequency_hz < 0 else f"{self.frequency_hz:g}",
                 ROBOT_MODES.get(self._receive.getRobotMode(), "?"), SAFETY_MODES.get(self._receive.getSafetyMode(), "?"),
                 f"{self.watchdog_hz:g} Hz" if self.watchdog_hz else "off")

    def disconnect(self) -> None:
        """Decelerates, stops the control script and closes both interfaces (idempotent, never raises); each step
        is bounded by command_timeout_s, a step that misses it is left to finish in the background."""
        if self._gripper is not None:
            self._gripper.close()
        if self._control is not None and self._lost is None and self._connected() and self._streaming():
            try:
                self.stop()
                if self._lost is None:
                    self._call("stopScript", self._control.stopScript)
            except Exception as exc:  # noqa: BLE001 - closing must go on
                log.warning("%s: stopping on disconnect: %s", self._owner, exc)
        self._close_interfaces()

    def _close_interfaces(self) -> None:
        """Disconnects both interfaces side by side on daemon threads, joined within command_timeout_s.

        ur-rtde's disconnect sleeps 0.5 s (seconds against a hung controller) and its destructors hold the GIL
        for as long: the threads hold the last references, so each interface is also destroyed there."""
        interfaces = [(what, interface) for what, interface in (("control interface", self._control),
                                                                ("receive interface", self._receive))
                      if interface is not None]
        self._control = self._receive = None
        self._watchdog_armed = False
        threads = []
        while interfaces:
            what, interface = interfaces.pop()
            thread = threading.Thread(target=_disconnect_quietly, args=(self._owner, what, interface),
                                      name=f"ur5 close {what}", daemon=True)
            del interface
            thread.start()
            threads.append((what, thread))
        deadline = time.monotonic() + self.command_timeout_s
        for what, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.counters["abandoned_calls"] += 1
                log.warning("%s: closing the %s did not finish within %g s (command_timeout_s); it goes on in the "
                            "background", self._owner, what, self.command_timeout_s)

    # ----------------------------------------------------------------------------------------
    def _connected(self) -> bool:
        return bool(self._receive is not None and self._receive.isConnected()
                    and self._control is not None and self._control.isConnected())

    def _observe_timestamp(self, ts: float) -> bool:
        """Records the controller timestamp; True when it has advanced since the last one."""
        now = time.monotonic_ns()
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = ts
            self._last_change_ns = now
            return True
        return False

    def _streaming(self) -> bool:
        """Whether a newer controller timestamp arrives within freshness_s (plus a 125 Hz period): the check before
        a stop that no recent read has vouched for. A silent stream is latched as a lost link."""
        first = self._receive.getTimestamp()
        deadline = time.monotonic() + self.freshness_s + 0.008
        while self._receive.getTimestamp() == first:
            if time.monotonic() > deadline:
                self._lost = (f"{self._owner}: the controller timestamp did not advance within "
                              f"{(self.freshness_s + 0.008) * 1000:.0f} ms (freshness_s {self.freshness_s:g}): the "
                              f"link is dead or the controller hung")
                log.error("%s; no command is sent any more", self._lost)
                return False
            time.sleep(0.001)
        return True

    def _check_link(self) -> str | None:
        """Why the link is lost (latched until the next connect), or None while it is fresh."""
        if self._lost is not None:
            return self._lost
        if self._receive is None:
            return None
        if not self._connected():
            self._lost = f"{self._owner}: the RTDE connection dropped"
        elif self._gripper is not None and self._gripper.lost is not None:
            self._lost = self._gripper.lost
        else:
            self._observe_timestamp(float(self._receive.getTimestamp()))
            silent_s = (time.monotonic_ns() - self._last_change_ns) / _NS_PER_S
            if silent_s > self.freshness_s:
                self._lost = (f"{self._owner}: the controller timestamp has not advanced for {silent_s * 1000:.0f} ms "
                              f"(freshness_s {self.freshness_s:g}): the link is dead or the controller hung")
        if self._lost is not None:
            log.error("%s; no command is sent any more", self._lost)
        return self._lost

    def read(self) -> Reading:
        """Joints, joint velocities and the tool centre point, stamped with the controller's timestamp.

        Over a fresh link it also kicks the controller's watchdog when nothing else went out for a while."""
        if self._receive is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        host_ns = time.monotonic_ns()
        ts = float(self._receive.getTimestamp())
        q = np.asarray(self._receive.getActualQ(), dtype=np.float64)
        qd = np.asarray(self._receive.getActualQd(), dtype=np.float64)
        self.counters["readings"] += 1
        self.counters["stale_reads"] += int(not self._observe_timestamp(ts))
        if (host_ns - self._last_change_ns) / _NS_PER_S <= self.freshness_s:
            self._kick_if_due()
        values = {"joint_pos": q.astype(np.float32), "joint_vel": qd.astype(np.float32),
                  "tcp_pos": self.tcp_position(q).astype(np.float32)}
        if self._gripper is not None:
            values["gripper_pos"] = np.array([self._gripper.closure()], np.float32)
        return Reading(values=values, hw_time_ns=round(ts * _NS_PER_S), host_time_ns=host_ns, domain="hardware_clock")

    def _safety_stop(self) -> DeviceStatus | None:
        """The status for a safety stop (protective, safeguard, emergency or any mode but NORMAL / REDUCED), or None."""
        protective = bool(self._receive.isProtectiveStopped())
        emergency = bool(self._receive.isEmergencyStopped())
        mode = int(self._receive.getSafetyMode())
        name = SAFETY_MODES.get(mode, str(mode))
        if emergency or mode in SAFETY_MODES_EMERGENCY:
            return DeviceStatus(ok=False, protective_stop=protective, emergency_stop=True,
                                fault=f"{self._owner} is in emergency stop (safety mode {name}): release the "
                                      f"emergency stop button, then reset the robot on the teach pendant")
        if protective or mode == SAFETY_MODE_PROTECTIVE_STOP:
            fault = (f"{self._owner} is in protective stop (safety mode {name}): clear it on the teach pendant"
                     + (" (or the next reset unlocks it through the dashboard)" if self.unlock_protective_stop else ""))
        elif mode in SAFETY_MODES_SAFEGUARD:
            fault = (f"{self._owner} is in a safeguard stop (safety mode {name}): close the safeguard (door, light "
                     f"curtain, enabling device) and reset it")
        elif mode in (SAFETY_MODE_NORMAL, SAFETY_MODE_REDUCED):
            return None
        else:
            fault = f"{self._owner} is stopped by its safety system (safety mode {name}): see the teach pendant"
        return DeviceStatus(ok=False, protective_stop=True, fault=fault)

    def status(self) -> DeviceStatus:
        """Link freshness, safety stops, the robot mode, whether the control script runs and whether the controller
        refuses commands."""
        if self._receive is None:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        lost = self._check_link()
        if lost is not None:
            return DeviceStatus(ok=False, fault=lost, link_lost=True)
        stopped = self._safety_stop()
        if stopped is not None:
            return stopped
        mode = int(self._receive.getRobotMode())
        if mode != ROBOT_MODE_RUNNING:
            return DeviceStatus(ok=False, fault=f"{self._owner}: robot mode {ROBOT_MODES.get(mode, mode)}, not "
                                                f"RUNNING: power on and release the brakes")
        if not self._control.isProgramRunning():
            self._watchdog_armed = False        # a stopped program takes its watchdog with it
            state = RUNTIME_STATES.get(int(self._receive.getRuntimeState()), "?")
            return DeviceStatus(ok=False, fault=f"{self._owner}: the control script is not running (runtime state "
                                                f"{state}) and every command is refused: the next reset re-uploads "
                                                f"it; if it stops again, read the pendant's log (a tripped watchdog "
                                                f"means the daemon went silent for over 1/watchdog_hz s)")
        if self._refused_in_a_row >= self.refused_limit:
            return DeviceStatus(ok=False, fault=f"{self._owner}: the controller refused the last "
                                                f"{self._refused_in_a_row} commands in a row (refused_limit "
                                                f"{self.refused_limit}): see the teach pendant; a reset re-uploads "
                                                f"the control script when it has stopped")
        return DeviceStatus()

    # ----------------------------------------------------------------------------------------
    def _measured_q(self) -> np.ndarray:
        return np.asarray(self._receive.getActualQ(), dtype=np.float64)

    def _ready(self) -> bool:
        """True when a command may go out: connected and the link fresh (else counted and skipped); arms the
        controller's watchdog first when it is not armed yet."""
        if self._control is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._check_link() is not None:
            self.counters["skipped_while_lost"] += 1
            return False
        try:
            self._arm_watchdog()
        except _Stuck:
            self.counters["skipped_while_lost"] += 1
            return False
        return True

    def _arm_watchdog(self, force: bool = False) -> None:
        """setWatchdog(watchdog_hz) on the running control script, unless it is armed or off; a refused attempt is
        tried again a second later at the earliest, unless force (raises _Stuck)."""
        if self.watchdog_hz <= 0.0 or self._watchdog_armed or not self._control.isProgramRunning():
            return
        now = time.monotonic()
        if not force and now - self._arm_tried_at < 1.0:
            return
        self._arm_tried_at = now
        if self._call("setWatchdog", lambda: self._control.setWatchdog(self.watchdog_hz)):
            self._watchdog_armed = True
            self._last_sent = time.monotonic()
            log.info("%s: controller watchdog armed at %g Hz", self._owner, self.watchdog_hz)
        else:
            log.warning("%s: the control script refused setWatchdog(%g)", self._owner, self.watchdog_hz)

    def _kick_if_due(self) -> None:
        """kickWatchdog when the watchdog is armed and nothing went to the control script for a quarter period."""
        if not self._watchdog_armed or self._control is None or self._lost is not None:
            return
        now = time.monotonic()
        if now - self._last_sent >= 0.25 / self.watchdog_hz:
            self._last_sent = now
            try:
                self._control.kickWatchdog()
            except RuntimeError as exc:         # the link check reports what is wrong with the connection
                self.counters["kick_failures"] += 1
                if self.counters["kick_failures"] <= 3:
                    log.warning("%s: kickWatchdog: %s", self._owner, exc)
                return
            self.counters["watchdog_kicks"] += 1

    def _sent(self, ok: bool, what: str) -> None:
        self.counters["commands"] += 1
        self._last_sent = time.monotonic()
        if ok:
            self._refused_in_a_row = 0
            return
        self._refused_in_a_row += 1
        self.counters["command_failures"] += 1
        if self.counters["command_failures"] <= 10:
            log.warning("%s: %s was refused by the controller", self._owner, what)

    @staticmethod
    def _vector(owner: str, what: str, value, n: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.shape != (n,) or not np.all(np.isfinite(array)):
            raise ValueError(f"{owner}: {what} must be {n} finite numbers, got {value!r}")
        return array

    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """servoJ towards q_rad (clipped to the joint limits and max_step_rad from the measured joints)."""
        target = self._vector(self._owner, "command_joint_position q_rad", q_rad, 6)
        if not self._ready() or not self._enter_mode("servo"):
            return
        q_now = self._measured_q()
        limited = np.clip(target, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        limited = np.clip(limited, q_now - self.max_step_rad, q_now + self.max_step_rad)
        self.counters["clipped"] += int(not np.allclose(limited, target))
        servo_time = self.servo_time_s if self.servo_time_s is not None else 0.008
        self._sent(self._control.servoJ(limited.tolist(), 0.0, 0.0, servo_time, self.servo_lookahead_s,
                                        self.servo_gain), "servoJ")

    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """speedJ at qd_rad_s (clipped to max_joint_vel_rad_s)."""
        qd = self._vector(self._owner, "command_joint_velocity qd_rad_s", qd_rad_s, 6)
        if not self._ready() or not self._enter_mode("speedj"):
            return
        limited = np.clip(qd, -self.max_joint_vel_rad_s, self.max_joint_vel_rad_s)
        self.counters["clipped"] += int(not np.allclose(limited, qd))
        self._sent(self._control.speedJ(limited.tolist(), self.joint_acc_rad_s2, 0.0), "speedJ")

    def command_tcp_velocity(self, v: np.ndarray) -> None:
        """speedL at v (linear m/s, angular rad/s, base frame); the linear speed is capped at max_tcp_speed_m_s."""
        velocity = self._vector(self._owner, "command_tcp_velocity v", v, 6)
        if not self._ready() or not self._enter_mode("speedl"):
            return
        speed = float(np.linalg.norm(velocity[:3]))
        if speed > self.max_tcp_speed_m_s:
            velocity[:3] *= self.max_tcp_speed_m_s / speed
            self.counters["clipped"] += 1
        self._sent(self._control.speedL(velocity.tolist(), self.tcp_acc_m_s2, 0.0), "speedL")

    def command_gripper(self, closure: float) -> None:
        """Sets the Robotiq gripper's target: 0 fully open .. 1 fully closed (clipped)."""
        if self._gripper is None:
            super().command_gripper(closure)
        if not np.isfinite(closure):
            raise ValueError(f"{self._owner}: command_gripper closure must be finite, got {closure!r}")
        if self._ready():
            self._gripper.command(float(closure))

    def _enter_mode(self, mode: str) -> bool:
        """Leaves the current mode for mode (a speed mode and servoing need a stop in between); False when the
        link was lost on the way."""
        speed_modes = ("speedj", "speedl")
        if self._mode not in (None, mode) and not (self._mode in speed_modes and mode in speed_modes):
            try:
                self._end_mode(self._mode)
            except _Stuck:
                self._mode = None
                self.counters["skipped_while_lost"] += 1
                return False
        self._mode = mode
        return True

    def _end_mode(self, mode: str | None) -> None:
        """Brings the arm to rest out of mode: zero velocity first in a speed mode, then, at rest, servoStop /
        speedStop. The blocking stop then takes a few ms, so the watched register is never silent for long."""
        self._mode = None
        if mode is None:
            return
        if mode in ("speedj", "speedl"):
            zero = [0.0] * 6
            send = self._control.speedJ if mode == "speedj" else self._control.speedL
            self._sent(send(zero, self.stop_acc, 0.0), f"{'speedJ' if mode == 'speedj' else 'speedL'} to rest")
            fastest = float(np.abs(np.asarray(self._receive.getActualQd(), dtype=np.float64)).max())
            self._settle(max(fastest, self.max_joint_vel_rad_s) / self.stop_acc + 0.25)
            if self._lost is None:
                self._sent(self._call("speedStop", lambda: self._control.speedStop(self.stop_acc)), "speedStop")
        else:
            self._settle(self.servo_lookahead_s + (self.servo_time_s or 0.008) + 0.25)
            if self._lost is None:
                self._sent(self._call("servoStop", lambda: self._control.servoStop(self.stop_acc)), "servoStop")

    def _settle(self, within_s: float) -> bool:
        """Waits up to within_s for every joint to slow below _SETTLED_RAD_S, kicking the watchdog; True at rest."""
        deadline = time.monotonic() + within_s
        while True:
            qd = np.asarray(self._receive.getActualQd(), dtype=np.float64)
            if float(np.abs(qd).max()) < _SETTLED_RAD_S:
                return True
            if time.monotonic() > deadline or self._check_link() is not None:
                return False
            self._kick_if_due()
            time.sleep(0.002)

    def stop(self) -> None:
        """Decelerates out of the current mode to rest (zero velocity, then servoStop / speedStop); nothing is sent
        over a lost link, and a stop the controller does not answer in time is abandoned (the link is then lost)."""
        if self._control is None or self._check_link() is not None:
            self._mode = None
            return
        try:
            self._end_mode(self._mode)
        except _Stuck:
            pass

    def reset(self) -> None:
        """Moves home with an asynchronous moveJ, watched until the arm arrives (within reset_timeout_s) while the
        watchdog is kicked; first unlocks a protective stop when unlock_protective_stop, and re-uploads the
        control script (waiting until it runs) when it is not running. Raises RuntimeError naming what to check."""
        if self._control is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._check_link() is not None or not self._streaming():
            raise RuntimeError(f"{self._lost}; reconnect before resetting")
        stopped = self._safety_stop()
        if stopped is not None:
            if stopped.emergency_stop:
                raise RuntimeError(f"{self._owner} is in emergency stop: release it, reset the robot on the teach "
                                   f"pendant and restart the session")
            if not self._receive.isProtectiveStopped():
                raise RuntimeError(stopped.fault)
            if not self.unlock_protective_stop:
                raise RuntimeError(f"{self._owner} is in protective stop: clear it on the teach pendant "
                                   f"(or set robot.args.unlock_protective_stop: true)")
            self._unlock()
        self.stop()
        if self._lost is not None:
            raise RuntimeError(f"{self._lost}; reconnect before resetting")
        try:
            if not self._control.isProgramRunning():
                self._restart_script()
            self._arm_watchdog(force=True)
            self._move_home()
        except _Stuck as exc:
            raise RuntimeError(f"{exc}; the reset did not finish") from None
        self._refused_in_a_row = 0
        self.counters["resets"] += 1

    def _restart_script(self) -> None:
        """reuploadScript, then waits (script_start_timeout_s) until the controller runs it."""
        self._watchdog_armed = False
        if not self._call("reuploadScript", self._control.reuploadScript):
            raise RuntimeError(f"{self._owner}: re-uploading the control script failed: check the teach pendant "
                               f"(remote control on an e-Series, no other program running)")
        started = time.monotonic()
        while not self._control.isProgramRunning():
            if self._check_link() is not None:
                raise RuntimeError(f"{self._lost}; the control script was re-uploaded but not seen running")
            if time.monotonic() - started > self.script_start_timeout_s:
                raise RuntimeError(f"{self._owner}: the re-uploaded control script was not running after "
                                   f"{self.script_start_timeout_s:g} s (script_start_timeout_s): read the pendant's "
                                   f"log for a script error, check remote control (e-Series) and the safety state")
            time.sleep(0.005)
        self.counters["script_restarts"] += 1
        log.warning("%s: the control script was not running; re-uploaded, running after %.2f s", self._owner,
                    time.monotonic() - started)

    def home_move_bound_s(self, q_from: np.ndarray) -> float:
        """The time a move home from q_from may take: reset_timeout_s, or the trapezoidal move's duration at
        home_speed_rad_s / home_acc_rad_s2 over the largest joint distance, times 1.5, plus 2 s."""
        if self.reset_timeout_s is not None:
            return self.reset_timeout_s
        distance = float(np.abs(self.home_q_rad - np.asarray(q_from, dtype=np.float64)).max())
        return 1.5 * _move_duration_s(distance, self.home_speed_rad_s, self.home_acc_rad_s2) + 2.0

    def _move_home(self) -> None:
        """The asynchronous moveJ home and its watch: arrival, or a stop, a lost link or the deadline (stopJ)."""
        bound = self.home_move_bound_s(self._measured_q())
        before = self._control.getAsyncOperationProgressEx().operationId()
        ok = self._call("moveJ home", lambda: self._control.moveJ(self.home_q_rad.tolist(), self.home_speed_rad_s,
                                                                  self.home_acc_rad_s2, True))
        self._sent(ok, "moveJ home")
        if not ok:
            raise RuntimeError(f"{self._owner}: moveJ to home_q_rad {self.home_q_rad.tolist()} was refused: check the "
                               f"pendant for the reason")
        started = time.monotonic()
        ended_away_since = None
        while True:
            elapsed = time.monotonic() - started
            if self._check_link() is not None:
                raise RuntimeError(f"{self._lost}: the move home was cut off {elapsed:.2f} s in; reconnect before "
                                   f"resetting")
            stopped = self._safety_stop()
            if stopped is not None:
                raise RuntimeError(f"{stopped.fault} ({elapsed:.2f} s into the move home)")
            if not self._control.isProgramRunning():
                raise RuntimeError(f"{self._owner}: the control script stopped {elapsed:.2f} s into the move home: "
                                   f"read the pendant's log (a tripped watchdog, a script error)")
            error = float(np.abs(self._measured_q() - self.home_q_rad).max())
            at_rest = float(np.abs(np.asarray(self._receive.getActualQd(), dtype=np.float64)).max()) < _SETTLED_RAD_S
            if error < _HOME_TOLERANCE_RAD and at_rest:
                return
            progress = self._control.getAsyncOperationProgressEx()
            if progress.operationId() != before and not progress.isAsyncOperationRunning() and at_rest:
                # The script says the move ended; the receive interface may lag it by a cycle or two.
                ended_away_since = ended_away_since if ended_away_since is not None else time.monotonic()
                if time.monotonic() - ended_away_since > 0.5:
                    raise RuntimeError(f"{self._owner}: the move home ended {error:.3f} rad from home_q_rad: check "
                                       f"the pendant and the joint limits")
            else:
                ended_away_since = None
            if elapsed > bound:
                self._stop_move()
                raise RuntimeError(f"{self._owner}: the move home did not arrive within {bound:.1f} s "
                                   f"(reset_timeout_s; {error:.3f} rad still to go), so it was stopped: check the "
                                   f"pendant for a stop or a popup, that the path is clear and home_speed_rad_s")
            self._kick_if_due()
            time.sleep(0.005)

    def _stop_move(self) -> None:
        """An asynchronous stopJ of a move, then waits until the arm is at rest (never raises)."""
        try:
            self._call("stopJ", lambda: self._control.stopJ(self.stop_acc, True))
            self._settle(self.home_speed_rad_s / self.stop_acc + 0.25)
        except Exception as exc:  # noqa: BLE001 - the error that follows says what happened
            log.error("%s: stopping the move home: %s", self._owner, exc)

    def _unlock(self) -> None:
        """Clears a protective stop through the dashboard server (controllers refuse within 5 s of the stop); each
        dashboard call is bounded by command_timeout_s, the whole unlock by 8 s."""
        from dashboard_client import DashboardClient

        dashboard = DashboardClient(self.host)
        refused = ""
        try:
            self._call("dashboard connect", lambda: dashboard.connect(int(self.command_timeout_s * 1000)))
            deadline = time.monotonic() + 8.0
            while self._receive.isProtectiveStopped():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self._owner}: the protective stop did not clear through the dashboard "
                                       f"({refused or 'no answer'}): clear it on the teach pendant")
                try:
                    self._call("dashboard close safety popup", dashboard.closeSafetyPopup)
                    self._call("dashboard unlock protective stop", dashboard.unlockProtectiveStop)
                except _Stuck:
                    raise
                except RuntimeError as exc:     # "Cannot unlock protective stop until 5s after occurrence"
                    refused = str(exc)
                time.sleep(0.5)
        except _Stuck as exc:
            raise RuntimeError(f"{exc}; the protective stop was not unlocked") from None
        finally:
            try:
                _run_bounded("dashboard disconnect", dashboard.disconnect, self.command_timeout_s)
            except Exception as exc:  # noqa: BLE001 - the unlock's own outcome matters more
                log.warning("%s: closing the dashboard connection: %s", self._owner, exc)
        log.warning("%s: protective stop unlocked through the dashboard server", self._owner)

    # ----------------------------------------------------------------------------------------
    def tcp_position(self, q_rad: np.ndarray) -> np.ndarray:
        """The tool centre point for joint angles q_rad: DH kinematics plus tool_offset_m along the flange z."""
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != (6,):
            raise ValueError(f"{self._owner}: tcp_position q_rad must have shape (6,), got {q.shape}")
        return ur5_point_m(q, (0.0, 0.0, self.tool_offset_m))

    def info(self, measure_s: float = 1.0) -> dict:
        """What ``robotd check`` prints: the stream rate measured over ``measure_s``, modes, the TCP comparison."""
        if self._receive is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        stamps = []
        host = []
        deadline = time.monotonic() + measure_s
        while time.monotonic() < deadline:
            ts = float(self._receive.getTimestamp())
            if not stamps or ts != stamps[-1]:
                stamps.append(ts)
                host.append(time.monotonic_ns())
            self._kick_if_due()
            time.sleep(0.0005)
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
        offsets = [h - round(s * _NS_PER_S) for s, h in zip(stamps, host)]
        q = self._measured_q()
        controller_tcp = np.asarray(self._receive.getActualTCPPose(), dtype=np.float64)[:3]
        return {
            "address": f"{self.host}:{RTDE_PORT}",
            "rtde_rate_hz": round(rate, 1),
            "clock_offset_s": round(min(offsets) / _NS_PER_S, 6) if offsets else None,
            "timestamp_domain": "hardware_clock (controller timestamp)",
            "robot_mode": ROBOT_MODES.get(int(self._receive.getRobotMode()), "?"),
            "safety_mode": SAFETY_MODES.get(int(self._receive.getSafetyMode()), "?"),
            "joint_pos_rad": [round(v, 4) for v in q.tolist()],
            "tcp_pos_m": [round(v, 4) for v in self.tcp_position(q).tolist()],
            "controller_tcp_pos_m": [round(v, 4) for v in controller_tcp.tolist()],
            "servo": f"lookahead {self.servo_lookahead_s:g} s, gain {self.servo_gain:g}, time "
                     f"{self.servo_time_s if self.servo_time_s is not None else 'control period'}",
            "limits": f"joint limits rad {self.joint_limits_rad.tolist()}, max step {self.max_step_rad:g} rad, "
                      f"max joint vel {self.max_joint_vel_rad_s:g} rad/s, max tcp speed {self.max_tcp_speed_m_s:g} m/s",
            "watchdog": (f"{self.watchdog_hz:g} Hz (armed before the first motion command)" if self.watchdog_hz
                         else "off"),
        }
