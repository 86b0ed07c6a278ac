"""The robot side of a control step, shared by the daemon and the in-process Gymnasium environments.

``RobotIO`` builds the configured drivers and the safety layer, reads every device with its
hardware timestamp (mapped to host time), turns a normalised policy action into a safe command
and applies it, resets and stops the robot. The daemon wraps it in a fixed-rate loop served over
ZeroMQ; ``robotd.gym_envs`` wraps it in a Gymnasium ``step``. Both therefore drive the robot
through exactly the same code, safety layer included.

Arm action modes (``safety.arm.action_mode``):
  - ``joint_delta``: ``dof`` values; the joint target moves ``max_delta_rad`` per unit per step.
  - ``tcp_delta``: 3 values; the tool centre point is sent toward its current position plus
    ``max_tcp_delta_m`` per unit per axis (inside the workspace box) with a Cartesian velocity
    command (speedL on a UR), the tool keeping its orientation.
With ``safety.arm.gripper`` one more value follows: -1 fully open .. +1 fully closed.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import time

import numpy as np

from drivers import registry as driver_registry
from robotd.config import Config, DeviceConfig
from robotd.daemon.robot_kinds import UNCHANGED, kind_of
from robotd.daemon.safety import SafeCommand
from robotd.daemon.timesync import ClockOffsetEstimator

log = logging.getLogger("robotd.robot")

COUNTERS = ("stale_readings", "safety_clipped", "protective_stops", "resets", "link_losses")
# How often a reset is tried while the robot still reports a stop.
RESET_RETRY_S = 1.0


# With this environment variable set to 1 (the test suite sets it), a device whose address is not a loopback
# address is refused before anything connects: no test can reach a lab robot through a config it forgot to override.
LOOPBACK_ONLY_ENV = "ROBOTD_LOOPBACK_ONLY"
# Driver args that hold a network address.
ADDRESS_ARGS = ("host", "robot_ip")


def check_loopback_only(device: DeviceConfig) -> None:
    """Under ROBOTD_LOOPBACK_ONLY=1, refuses a device configured with a non-loopback address (one line)."""
    if os.environ.get(LOOPBACK_ONLY_ENV) != "1":
        return
    for key in ADDRESS_ARGS:
        value = device.args.get(key)
        if value is None:
            continue
        try:
            loopback = ipaddress.ip_address(str(value)).is_loopback
        except ValueError:
            loopback = str(value) == "localhost"
        if not loopback:
            raise ValueError(f"device {device.name!r}: args.{key} = {value!r} is not a loopback address and "
                             f"{LOOPBACK_ONLY_ENV}=1: override it, e.g. --set robot.args.{key}=127.0.0.2 (or the camera's)")


def make_device(device: DeviceConfig, seed: int, host_clock=None):
    """Builds a driver from its config entry; bad driver arguments fail with one clear line.

    Simulated drivers get the config's seed, and under lockstep pacing ``host_clock`` (the simulated clock)."""
    check_loopback_only(device)
    args = dict(device.args)
    if device.driver.startswith("mock_") or driver_registry.is_simulated(device.driver):
        args.setdefault("seed", seed)
    if host_clock is not None:
        args.setdefault("host_clock", host_clock)
    try:
        return driver_registry.make(device.driver, **args)
    except TypeError as exc:
        raise ValueError(f"device {device.name!r}: driver {device.driver!r} rejects args {device.args!r} ({exc}): "
                         f"fix the config's args for this driver") from None


class RobotIO:
    """The configured robot and cameras, their clock alignment and the safety layer.

    ``counters`` (a dict, shared with the caller when given) counts stale readings, clipped
    commands, protective stops and resets.

    ``prev_action`` is what the data records as the action of the last step: the policy's own
    action (clipped to [-1, 1]; one-hot for a discrete robot) whenever a well-formed one came, even
    where the safety layer then limited it, and otherwise (late, malformed) the fallback that was
    applied. The world model must learn what the policy's own outputs do, the safety layer's limits
    included: had it been shown only the limited action, pushing into a limit would look like a
    small move, a consequence it never sees, which the policy learns to exploit. ``applied_action``
    is the command that reached the robot, in the same normalised units (recorded alongside).
    """

    def __init__(self, config: Config, *, host_clock=None, counters: dict | None = None):
        self.config = config
        self.period_s = 1.0 / config.control.rate_hz
        self.counters = counters if counters is not None else {}
        for key in COUNTERS:
            self.counters.setdefault(key, 0)
        self.robot = make_device(config.robot, config.seed, host_clock)
        self.robot.name = config.robot.name
        self.cameras = []
        for index, camera_config in enumerate(config.cameras):
            camera = make_device(camera_config, config.seed + 1 + index, host_clock)
            camera.name = camera_config.name
            self.cameras.append(camera)
        self.devices = [self.robot] + self.cameras
        self.robot_kind = kind_of(self.robot, config, self.period_s)
        self.kind = self.robot_kind.name
        self.action_dim = self.robot_kind.action_dim
        self.action_discrete = self.robot_kind.action_discrete
        self.estimators = {device.name: ClockOffsetEstimator() for device in self.devices}
        self.safety = None
        self._last_hw: dict[str, int] = {}
        self.last_target = None
        self.prev_action = np.zeros(self.action_dim, np.float32)
        self.applied_action = np.zeros(self.action_dim, np.float32)
        self.protective_stop = False
        self._last_stopped_reset = -float("inf")
        self._fault: str | None = None                # the robot's current fault (status not ok), logged once
        self.link_lost: str | None = None
        # A driver that paces its own motion commands (a UR's servoJ time) learns the control period.
        self.robot.set_control_period(self.period_s)

    # ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connects every device and builds the safety layer (it needs the drivers' limits)."""
        for device in self.devices:
            device.connect()
        if self.robot_kind.links_scene(self.cameras):
            self._link_mock_scene()
        self.safety = self.robot_kind.build_safety()
        self._last_hw = {}
        self.last_target = None
        self.prev_action = np.zeros(self.action_dim, np.float32)
        self.applied_action = np.zeros(self.action_dim, np.float32)

    def disconnect(self) -> None:
        """Disconnects every device (each one's failure is logged, the others still close)."""
        for device in self.devices:
            try:
                device.disconnect()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                log.error("disconnecting %s: %s", device.name, exc)

    def reading_spec(self) -> dict:
        """What each device delivers: {device: {key: [shape, dtype]}} (sent to the actor in hello)."""
        return {device.name: {key: [list(shape), dtype] for key, (shape, dtype) in device.reading_spec().items()}
                for device in self.devices}

    # ----------------------------------------------------------------------------------------
    def read_all(self, t_tick_ns: int):
        """Reads every device; returns ({"device/key": array}, {device: timing}) for the tick at ``t_tick_ns``."""
        arrays, timing = {}, {}
        for device in self.devices:
            reading = device.read()
            estimator = self.estimators[device.name]
            previous = self._last_hw.get(device.name)
            if previous is None or reading.hw_time_ns != previous:
                estimator.update(reading.hw_time_ns, reading.host_time_ns)
            self._last_hw[device.name] = reading.hw_time_ns
            age_ns = max(0, t_tick_ns - estimator.to_host_ns(reading.hw_time_ns))
            stale = age_ns > self.config.control.max_age_ms * 1e6
            self.counters["stale_readings"] += int(stale)
            timing[device.name] = {"hw_time_ns": int(reading.hw_time_ns), "host_time_ns": int(reading.host_time_ns),
                                   "age_ns": int(age_ns), "domain": reading.domain, "stale": bool(stale),
                                   "frame_number": -1 if reading.frame_number is None else int(reading.frame_number)}
            for key, value in reading.values.items():
                arrays[f"{device.name}/{key}"] = np.ascontiguousarray(value)
        return arrays, timing

    @staticmethod
    def split(arrays: dict) -> dict[str, dict[str, np.ndarray]]:
        """{"device/key": array} -> {device: {key: array}} (the layout tasks read)."""
        readings: dict[str, dict[str, np.ndarray]] = {}
        for name, value in arrays.items():
            device, key = name.split("/", 1)
            readings.setdefault(device, {})[key] = value
        return readings

    def check_status(self) -> dict:
        """The robot's status for the observation; a new protective or emergency stop stops the robot."""
        robot_status = self.robot.status()
        stopped = robot_status.protective_stop or robot_status.emergency_stop
        if stopped and not self.protective_stop:
            self.counters["protective_stops"] += 1
            self.safe_stop("protective stop reported by the robot")
        self.protective_stop = stopped
        lost = self._lost_link(robot_status)
        if lost is not None and self.link_lost is None:
            self.counters["link_losses"] += 1
            log.error("%s", lost)
            self.safe_stop("link lost")
        self.link_lost = lost
        self._note_fault(robot_status, lost)
        return {"ok": bool(robot_status.ok), "protective_stop": bool(robot_status.protective_stop),
                "emergency_stop": bool(robot_status.emergency_stop), "fallen": bool(robot_status.fallen),
                "fault": robot_status.fault, "link_lost": lost is not None}

    def _note_fault(self, robot_status, lost: str | None) -> None:
        """Logs once, and counts in ``robot_faults``, each time the robot starts reporting a fault that is neither a
        stop nor a lost link (a UR5 whose control script stopped or that refuses commands, an A1 whose inner loop
        falls behind), and logs when it clears. Stops and lost links have their own counters and stop the robot;
        these faults are for the person watching (the commands go on, the driver refuses what it cannot do)."""
        fault = None
        if not robot_status.ok and lost is None and not self.protective_stop:
            fault = robot_status.fault or "status not ok"
        if fault is not None and self._fault is None:
            self.counters["robot_faults"] = self.counters.get("robot_faults", 0) + 1
            log.warning("robot %r reports a fault: %s", self.robot.name, fault)
        elif fault is None and self._fault is not None:
            log.info("robot %r: the fault cleared (%s)", self.robot.name, self._fault)
        self._fault = fault

    def _lost_link(self, robot_status) -> str | None:
        """Why the robot or a camera can no longer be used (its link is gone), or None."""
        if robot_status.link_lost:
            return f"robot {self.robot.name!r}: {robot_status.fault or 'link lost'}"
        for camera in self.cameras:
            camera_status = camera.status()
            if camera_status.link_lost:
                return f"camera {camera.name!r}: {camera_status.fault or 'link lost'}"
        return None

    # ----------------------------------------------------------------------------------------
    def act(self, action: np.ndarray | None, arrays: dict, *, fallback: str = "hold") -> SafeCommand:
        """Applies ``action`` (or, when it is None, the ``fallback``) through the safety layer.

        During a protective stop nothing moves until a reset. Returns the command applied."""
        q_now = self._robot_q(arrays)
        base_q = self.last_target if self.last_target is not None else q_now
        if action is None:
            command = self.safety.fallback(fallback, q_now, self.last_target)
        else:
            command = self.robot_kind.command(self.safety, action, q_now, self.last_target, arrays)
        if self.protective_stop:
            command = self.safety.fallback("stop", q_now, self.last_target)   # nothing moves until a reset
        self.counters["safety_clipped"] += int(command.clipped)
        self._apply(command)
        self.applied_action = self._effective_action(command, base_q)
        own = self._own_action(action, command)
        self.prev_action = own if own is not None else self.applied_action
        return command

    def _own_action(self, action: np.ndarray | None, command) -> np.ndarray | None:
        """The policy's action as the data records it, or None when there was none or it was malformed."""
        if action is None or "invalid_action" in command.reasons:
            return None
        vector = np.asarray(action, np.float64).reshape(-1)
        if vector.shape != (self.action_dim,) or not np.all(np.isfinite(vector)):
            return None
        if self.action_discrete:
            one_hot = np.zeros(self.action_dim, np.float32)
            one_hot[int(np.argmax(vector))] = 1.0
            return one_hot
        return np.clip(vector, -1.0, 1.0).astype(np.float32)

    def reset(self) -> bool:
        """Moves the robot to its start state (an episode boundary); a failed reset stops it and returns False.

        While the robot still reports a protective or emergency stop (a real robot's is cleared by a
        person), a reset is tried at most once every RESET_RETRY_S; the others return False at once."""
        self.prev_action = np.zeros(self.action_dim, np.float32)
        self.applied_action = np.zeros(self.action_dim, np.float32)
        if self.protective_stop:
            now = time.monotonic()
            if now - self._last_stopped_reset < RESET_RETRY_S:
                return False
            self._last_stopped_reset = now
        try:
            self.robot.reset()
        except Exception as exc:  # noqa: BLE001 - a failed reset stops the robot and is reported, not fatal
            log.error("robot reset failed: %s: %s", type(exc).__name__, exc)
            self.safe_stop("reset failed")
            return False
        self.last_target = None
        self.counters["resets"] += 1
        return True

    def safe_stop(self, reason: str) -> None:
        """Brings the robot to a stop (never raises: this is the path of last resort)."""
        try:
            self.robot_kind.stop(reason)
        except Exception as exc:  # noqa: BLE001 - the stop path must not die on a driver error
            log.error("safe stop (%s): driver raised %s: %s", reason, type(exc).__name__, exc)
        self.last_target = None
        log.info("robot stopped: %s", reason)

    # ----------------------------------------------------------------------------------------
    def _robot_q(self, arrays: dict) -> np.ndarray | None:
        return self.robot_kind.joint_q(arrays)

    def _effective_action(self, command: SafeCommand, base_q: np.ndarray | None) -> np.ndarray:
        """The command expressed back in the policy's normalised action space (what the data records)."""
        return self.robot_kind.normalised(self.safety, command, base_q)

    def _apply(self, command: SafeCommand) -> None:
        """Sends a safety-checked command to the robot driver."""
        target = self.robot_kind.apply(command)
        if target is not UNCHANGED:
            self.last_target = target

    def _link_mock_scene(self) -> None:
        """Mock cameras draw the arm's tool position, so images carry task information."""
        robot = self.robot

        def scene():
            tcp = robot.tcp_position(np.asarray(robot.read().values["joint_pos"], np.float64))
            return float(np.clip(0.5 + tcp[1], 0, 1)), float(np.clip(0.5 - tcp[0] - 0.5, 0, 1))
        for camera in self.cameras:
            camera.set_scene(scene)

