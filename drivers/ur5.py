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
- **Stops.** A protective or emergency stop is reported in ``status()``; the daemon ends the
  episode and the robot is not moved again until the stop is cleared: on the teach pendant, or
  (``unlock_protective_stop: true``) through the dashboard server when the next episode resets.
  Nothing here retries motion by itself.
- **Last-line limits.** Servo targets are clipped to the joint limits and to ``max_step_rad`` from
  the measured position; velocities to ``max_joint_vel_rad_s`` / ``max_tcp_speed_m_s``. The safety
  layer (robotd/safety.py: workspace box, per-step deltas) has already limited every command; this
  only catches what should never get past it, and counts it.
- **A clean stop.** disconnect() decelerates (servoStop / speedStop), stops the control script and
  closes both interfaces.

``tcp_pos`` is the tool centre point by the UR5's DH kinematics plus ``tool_offset_m`` along the
flange's z axis, from the measured joints: the same function the safety layer uses for its
workspace box. ``robotd check`` shows it beside the controller's own TCP pose.

ur-rtde is imported when the driver connects, so ``import drivers`` never needs it.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from drivers.base import Arm, DeviceStatus, Reading
from drivers.registry import register
from drivers.robotiq import ROBOTIQ_PORT, RobotiqGripper

log = logging.getLogger("robotd.ur5")

_NS_PER_S = 1_000_000_000
RTDE_PORT = 30004
DASHBOARD_PORT = 29999
# RTDE robot modes and safety modes (RTDE guide).
ROBOT_MODE_RUNNING = 7
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


@register("ur5")
class UR5(Arm):
    """A UR5 / UR5e arm through ur-rtde (see the module docstring for what the driver checks).

    Config args (``robot.args``): ``host`` (the controller's address; required), ``frequency_hz``
    (RTDE rate; -1 = the controller's own, 125 or 500), ``servo_lookahead_s`` (0.03-0.2) and
    ``servo_gain`` (100-2000) of servoJ, ``servo_time_s`` (how long a servoJ target is tracked;
    default: the control period, set by the daemon), accelerations for speedJ/speedL and stops,
    ``home_q_rad`` with ``home_speed_rad_s`` / ``home_acc_rad_s2`` (the reset move), ``joint_limits_rad``,
    ``tool_offset_m``, ``max_step_rad``, ``max_joint_vel_rad_s``, ``max_tcp_speed_m_s``, ``freshness_s``,
    ``unlock_protective_stop`` and ``connect_timeout_s``.
    """

    dof = 6

    def __init__(self, *, host: str | None = None, name: str = "arm", frequency_hz: float = -1.0,
                 servo_lookahead_s: float = 0.1, servo_gain: float = 300.0, servo_time_s: float | None = None,
                 joint_acc_rad_s2: float = 1.0, tcp_acc_m_s2: float = 0.5, stop_acc: float = 2.0,
                 home_q_rad=None, home_speed_rad_s: float = 0.3, home_acc_rad_s2: float = 0.5,
                 joint_limits_rad=None, tool_offset_m: float = 0.0, max_step_rad: float = 0.2,
                 max_joint_vel_rad_s: float = 1.0, max_tcp_speed_m_s: float = 0.25, freshness_s: float = 0.05,
                 unlock_protective_stop: bool = False, connect_timeout_s: float = 10.0, gripper: str | None = None,
                 gripper_port: int = ROBOTIQ_PORT) -> None:
        self.name = name
        if not isinstance(host, str) or not host:
            raise ValueError(f"UR5 {name!r}: host is {host!r}; set robot.args.host to the controller's IP address")
        self.host = host
        self.frequency_hz = self._number("frequency_hz", frequency_hz, -1.0, 500.0)
        if self.frequency_hz != -1.0 and self.frequency_hz < 1.0:
            raise ValueError(f"UR5 {name!r}: frequency_hz {frequency_hz!r} must be -1 (the controller's rate) "
                             f"or 1..500")
        self.servo_lookahead_s = self._number("servo_lookahead_s", servo_lookahead_s, 0.03, 0.2)
        self.servo_gain = self._number("servo_gain", servo_gain, 100.0, 2000.0)
        self.servo_time_s = None if servo_time_s is None else self._number("servo_time_s", servo_time_s, 0.002, 1.0)
        self.joint_acc_rad_s2 = self._number("joint_acc_rad_s2", joint_acc_rad_s2, 0.01, 40.0)
        self.tcp_acc_m_s2 = self._number("tcp_acc_m_s2", tcp_acc_m_s2, 0.01, 10.0)
        self.stop_acc = self._number("stop_acc", stop_acc, 0.1, 40.0)
        self.home_speed_rad_s = self._number("home_speed_rad_s", home_speed_rad_s, 0.01, 1.05)
        self.home_acc_rad_s2 = self._number("home_acc_rad_s2", home_acc_rad_s2, 0.01, 1.4)
        self.tool_offset_m = self._number("tool_offset_m", tool_offset_m, 0.0, 0.5)
        self.max_step_rad = self._number("max_step_rad", max_step_rad, 0.001, 1.0)
        self.max_joint_vel_rad_s = self._number("max_joint_vel_rad_s", max_joint_vel_rad_s, 0.01, 3.14)
        self.max_tcp_speed_m_s = self._number("max_tcp_speed_m_s", max_tcp_speed_m_s, 0.001, 1.0)
        self.freshness_s = self._number("freshness_s", freshness_s, 0.005, 5.0)
        self.connect_timeout_s = self._number("connect_timeout_s", connect_timeout_s, 0.5, 120.0)
        if not isinstance(unlock_protective_stop, bool):
            raise ValueError(f"UR5 {name!r}: unlock_protective_stop {unlock_protective_stop!r} must be true or false")
        self.unlock_protective_stop = unlock_protective_stop
        if gripper not in (None, "robotiq"):
            raise ValueError(f"UR5 {name!r}: gripper {gripper!r} is unknown; use robotiq (its URCap socket) or leave "
                             f"it out")
        self.has_gripper = gripper is not None
        # Nothing connects here: the gripper's socket opens in connect().
        self._gripper = RobotiqGripper(host, gripper_port, owner=f"UR5 {name!r} gripper") if self.has_gripper else None
        limits = np.tile([-2 * math.pi, 2 * math.pi], (6, 1)) if joint_limits_rad is None else joint_limits_rad
        self.joint_limits_rad = self._array("joint_limits_rad", limits, (6, 2))
        if np.any(self.joint_limits_rad[:, 0] >= self.joint_limits_rad[:, 1]):
            raise ValueError(f"UR5 {name!r}: joint_limits_rad {self.joint_limits_rad.tolist()} needs lower < upper "
                             f"for every joint")
        self.home_q_rad = self._array("home_q_rad", UR5_HOME_Q_RAD if home_q_rad is None else home_q_rad, (6,))
        outside = (self.home_q_rad < self.joint_limits_rad[:, 0]) | (self.home_q_rad > self.joint_limits_rad[:, 1])
        if np.any(outside):
            raise ValueError(f"UR5 {name!r}: home_q_rad {self.home_q_rad.tolist()} lies outside joint_limits_rad; "
                             f"move the home pose inside the limits")
        self._receive = None
        self._control = None
        self._mode: str | None = None          # "servo", "speedj", "speedl" or None (holding)
        self._last_ts: float | None = None
        self._last_change_ns = 0
        self._lost: str | None = None
        self.counters = {"readings": 0, "stale_reads": 0, "commands": 0, "command_failures": 0, "clipped": 0,
                         "skipped_while_lost": 0, "resets": 0}

    # ----------------------------------------------------------------------------------------
    @property
    def _owner(self) -> str:
        return f"UR5 {self.name!r} at {self.host}"

    def _number(self, what: str, value: object, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
            raise ValueError(f"UR5 {self.name!r}: {what} {value!r} must be a number in [{low:g}, {high:g}]; "
                             f"fix robot.args.{what}")
        return float(value)

    def _array(self, what: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != shape or not np.all(np.isfinite(array)):
            raise ValueError(f"UR5 {self.name!r}: {what} {value!r} must be finite numbers of shape {shape}; "
                             f"fix robot.args.{what}")
        return array

    def set_control_period(self, period_s: float) -> None:
        """The daemon's control period: servoJ tracks each target for it unless servo_time_s is set."""
        if self.servo_time_s is None:
            self.servo_time_s = float(period_s)

    # ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connects the receive interface, then the control interface (which uploads ur-rtde's control script)."""
        rtde_receive, rtde_control = _import_rtde()
        self._lost = None
        self._mode = None
        try:
            self._receive = rtde_receive.RTDEReceiveInterface(self.host, self.frequency_hz)
        except RuntimeError as exc:
            raise RuntimeError(f"{self._owner}: cannot connect to RTDE port {RTDE_PORT} ({exc}): check robot.args.host, "
                               f"the cable and that the controller is on") from None
        try:
            self._control = rtde_control.RTDEControlInterface(self.host, self.frequency_hz)
        except RuntimeError as exc:
            self._close_receive()
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
        log.info("%s connected: RTDE at %s Hz, robot mode %s, safety mode %s", self._owner,
                 "controller" if self.frequency_hz < 0 else f"{self.frequency_hz:g}",
                 ROBOT_MODES.get(self._receive.getRobotMode(), "?"), SAFETY_MODES.get(self._receive.getSafetyMode(), "?"))

    def disconnect(self) -> None:
        """Decelerates, stops the control script and closes both interfaces (idempotent, never raises)."""
        if self._gripper is not None:
            self._gripper.close()
        if self._control is not None:
            if self._lost is None and self._connected():
                try:
                    self.stop()
                    self._control.stopScript()
                except Exception as exc:  # noqa: BLE001 - closing must go on
                    log.warning("%s: stopping on disconnect: %s", self._owner, exc)
            try:
                self._control.disconnect()
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: closing the control interface: %s", self._owner, exc)
            self._control = None
        self._close_receive()

    def _close_receive(self) -> None:
        if self._receive is not None:
            try:
                self._receive.disconnect()
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: closing the receive interface: %s", self._owner, exc)
            self._receive = None

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
        """Joints, joint velocities and the tool centre point, stamped with the controller's timestamp."""
        if self._receive is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        host_ns = time.monotonic_ns()
        ts = float(self._receive.getTimestamp())
        q = np.asarray(self._receive.getActualQ(), dtype=np.float64)
        qd = np.asarray(self._receive.getActualQd(), dtype=np.float64)
        self.counters["readings"] += 1
        self.counters["stale_reads"] += int(not self._observe_timestamp(ts))
        values = {"joint_pos": q.astype(np.float32), "joint_vel": qd.astype(np.float32),
                  "tcp_pos": self.tcp_position(q).astype(np.float32)}
        if self._gripper is not None:
            values["gripper_pos"] = np.array([self._gripper.closure()], np.float32)
        return Reading(values=values, hw_time_ns=round(ts * _NS_PER_S), host_time_ns=host_ns, domain="hardware_clock")

    def status(self) -> DeviceStatus:
        """Link freshness, protective and emergency stops and the robot mode, from the controller."""
        if self._receive is None:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        lost = self._check_link()
        if lost is not None:
            return DeviceStatus(ok=False, fault=lost, link_lost=True)
        protective = bool(self._receive.isProtectiveStopped())
        emergency = bool(self._receive.isEmergencyStopped())
        if protective or emergency:
            kind = "emergency" if emergency else "protective"
            return DeviceStatus(ok=False, protective_stop=protective, emergency_stop=emergency,
                                fault=f"{self._owner} is in {kind} stop (safety mode "
                                      f"{SAFETY_MODES.get(self._receive.getSafetyMode(), '?')}): clear it on the "
                                      f"teach pendant")
        mode = int(self._receive.getRobotMode())
        if mode != ROBOT_MODE_RUNNING:
            return DeviceStatus(ok=False, fault=f"{self._owner}: robot mode {ROBOT_MODES.get(mode, mode)}, not "
                                                f"RUNNING: power on and release the brakes")
        return DeviceStatus()

    # ----------------------------------------------------------------------------------------
    def _measured_q(self) -> np.ndarray:
        return np.asarray(self._receive.getActualQ(), dtype=np.float64)

    def _ready(self) -> bool:
        """True when a command may go out: connected and the link fresh (else counted and skipped)."""
        if self._control is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._check_link() is not None:
            self.counters["skipped_while_lost"] += 1
            return False
        return True

    def _sent(self, ok: bool, what: str) -> None:
        self.counters["commands"] += 1
        if not ok:
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
        if not self._ready():
            return
        q_now = self._measured_q()
        limited = np.clip(target, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])
        limited = np.clip(limited, q_now - self.max_step_rad, q_now + self.max_step_rad)
        self.counters["clipped"] += int(not np.allclose(limited, target))
        if self._mode not in (None, "servo"):
            self._control.speedStop(self.stop_acc)
        self._mode = "servo"
        servo_time = self.servo_time_s if self.servo_time_s is not None else 0.008
        self._sent(self._control.servoJ(limited.tolist(), 0.0, 0.0, servo_time, self.servo_lookahead_s,
                                        self.servo_gain), "servoJ")

    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """speedJ at qd_rad_s (clipped to max_joint_vel_rad_s)."""
        qd = self._vector(self._owner, "command_joint_velocity qd_rad_s", qd_rad_s, 6)
        if not self._ready():
            return
        limited = np.clip(qd, -self.max_joint_vel_rad_s, self.max_joint_vel_rad_s)
        self.counters["clipped"] += int(not np.allclose(limited, qd))
        if self._mode == "servo":
            self._control.servoStop(self.stop_acc)
        self._mode = "speedj"
        self._sent(self._control.speedJ(limited.tolist(), self.joint_acc_rad_s2, 0.0), "speedJ")

    def command_tcp_velocity(self, v: np.ndarray) -> None:
        """speedL at v (linear m/s, angular rad/s, base frame); the linear speed is capped at max_tcp_speed_m_s."""
        velocity = self._vector(self._owner, "command_tcp_velocity v", v, 6)
        if not self._ready():
            return
        speed = float(np.linalg.norm(velocity[:3]))
        if speed > self.max_tcp_speed_m_s:
            velocity[:3] *= self.max_tcp_speed_m_s / speed
            self.counters["clipped"] += 1
        if self._mode == "servo":
            self._control.servoStop(self.stop_acc)
        self._mode = "speedl"
        self._sent(self._control.speedL(velocity.tolist(), self.tcp_acc_m_s2, 0.0), "speedL")

    def command_gripper(self, closure: float) -> None:
        """Sets the Robotiq gripper's target: 0 fully open .. 1 fully closed (clipped)."""
        if self._gripper is None:
            super().command_gripper(closure)
        if not np.isfinite(closure):
            raise ValueError(f"{self._owner}: command_gripper closure must be finite, got {closure!r}")
        if self._ready():
            self._gripper.command(float(closure))

    def stop(self) -> None:
        """Decelerates out of the current mode (servoStop / speedStop); nothing is sent over a lost link."""
        if self._control is None or self._check_link() is not None:
            self._mode = None
            return
        if self._mode == "servo":
            self._control.servoStop(self.stop_acc)
        elif self._mode in ("speedj", "speedl"):
            self._control.speedStop(self.stop_acc)
        self._mode = None

    def reset(self) -> None:
        """Moves home with moveJ (blocking); in a protective stop, first unlocks it when unlock_protective_stop."""
        if self._control is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._check_link() is not None:
            raise RuntimeError(f"{self._lost}; reconnect before resetting")
        if self._receive.isEmergencyStopped():
            raise RuntimeError(f"{self._owner} is in emergency stop: release it and restart the session")
        if self._receive.isProtectiveStopped():
            if not self.unlock_protective_stop:
                raise RuntimeError(f"{self._owner} is in protective stop: clear it on the teach pendant "
                                   f"(or set robot.args.unlock_protective_stop: true)")
            self._unlock()
        self.stop()
        if not self._control.isProgramRunning():
            self._control.reuploadScript()
        ok = self._control.moveJ(self.home_q_rad.tolist(), self.home_speed_rad_s, self.home_acc_rad_s2)
        self._sent(ok, "moveJ home")
        if not ok:
            raise RuntimeError(f"{self._owner}: moveJ to home_q_rad {self.home_q_rad.tolist()} failed: check the "
                               f"pendant for the reason")
        self.counters["resets"] += 1

    def _unlock(self) -> None:
        """Clears a protective stop through the dashboard server (controllers refuse within 5 s of the stop)."""
        from dashboard_client import DashboardClient

        dashboard = DashboardClient(self.host)
        try:
            dashboard.connect()
            deadline = time.monotonic() + 8.0
            while self._receive.isProtectiveStopped():
                dashboard.closeSafetyPopup()
                dashboard.unlockProtectiveStop()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self._owner}: the protective stop did not clear through the dashboard: "
                                       f"clear it on the teach pendant")
                time.sleep(0.5)
        finally:
            dashboard.disconnect()
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
        }
