"""The robot daemon: owns the hardware and runs the fixed-rate control loop.

Every tick it reads each device with its hardware timestamp, maps the device clock to host
time, sends the observation to the actor, waits for the action until the action deadline,
passes the action (or the configured fallback when it is late) through the safety layer, and
commands the robot. It never waits on the learner. An actor silent for longer than the
watchdog, a stop signal, or a protective stop bring the robot to a safe stop.

With ``control.pacing: lockstep`` (simulated devices only) there is no deadline: the daemon
waits for each action as long as the watchdog allows and steps as soon as it arrives, on a
simulated clock that advances one control period per step (see robotd.clock.LockstepClock).
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time

import numpy as np
import zmq

from drivers import registry as driver_registry
from drivers.base import Arm, Legged, SteppedEnv
from robotd import session, wire
from robotd.clock import FixedRateClock, LockstepClock, PeriodStats, try_realtime
from robotd.config import Config, DeviceConfig, check_lockstep
from robotd.netutil import bind_or_explain
from robotd.security import SecurityError, is_loopback
from robotd.safety import ActionWatchdog, ArmLimits, ArmSafety, LeggedLimits, LeggedSafety, SafeCommand, SimSafety
from robotd.status import StatusPublisher
from robotd.timesync import ClockOffsetEstimator

log = logging.getLogger("robotd.daemon")


def make_device(device: DeviceConfig, seed: int, host_clock=None):
    """Builds a driver from its config entry; bad driver arguments fail with one clear line.

    Simulated drivers get the config's seed, and under lockstep pacing ``host_clock`` (the simulated clock)."""
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


class Daemon:
    """The control loop of one robot and its cameras."""

    def __init__(self, config: Config, *, logdir: str | None = None):
        self.config = config
        self.logdir = logdir
        if not is_loopback(config.network.control) and config.network.auth != "never":
            raise SecurityError(f"network.control {config.network.control} is reachable from other machines: the "
                                f"daemon takes actions only from this machine; use tcp://127.0.0.1:PORT or ipc://PATH")
        self.period_s = 1.0 / config.control.rate_hz
        self.lockstep = config.control.pacing == "lockstep"
        self.sim_clock = None
        if self.lockstep:
            check_lockstep(config)
            self.sim_clock = LockstepClock(config.control.rate_hz)
        host_clock = self.sim_clock.now_ns if self.sim_clock is not None else None
        self.robot = make_device(config.robot, config.seed, host_clock)
        self.robot.name = config.robot.name
        self.cameras = []
        for index, camera_config in enumerate(config.cameras):
            camera = make_device(camera_config, config.seed + 1 + index, host_clock)
            camera.name = camera_config.name
            self.cameras.append(camera)
        self.devices = [self.robot] + self.cameras
        if isinstance(self.robot, Arm):
            self.kind = "arm"
            self.action_dim = self.robot.dof
            self._max_delta_rad = config.safety.arm.max_delta_rad
        elif isinstance(self.robot, Legged):
            self.kind = "legged"
            self.action_dim = self.robot.n_motors
        elif isinstance(self.robot, SteppedEnv):
            self.kind = "sim"
            self.action_dim = int(self.robot.action_dim)
        else:
            raise ValueError(f"robot driver {config.robot.driver!r} is neither an arm, a legged robot nor a simulated "
                             f"environment: use an Arm, Legged or SteppedEnv driver for robot.driver")
        self.action_discrete = bool(getattr(self.robot, "action_discrete", False))
        self.estimators = {device.name: ClockOffsetEstimator() for device in self.devices}
        self.stop_requested = threading.Event()
        self.counters = {"ticks": 0, "actor_ticks": 0, "late_steps": 0, "late_actions": 0, "stale_readings": 0,
                         "safety_clipped": 0, "watchdog_stops": 0, "protective_stops": 0, "resets": 0,
                         "malformed": 0, "refused_actors": 0}
        self.training_stats = PeriodStats()
        self.scheduling = "SCHED_OTHER"

    # ----------------------------------------------------------------------------------------
    def _build_safety(self):
        if self.kind == "sim":
            return SimSafety(self.action_dim, self.action_discrete)
        if self.kind == "arm":
            arm = self.config.safety.arm
            limits = ArmLimits(joint_limits_rad=np.asarray(self.robot.joint_limits_rad, np.float64),
                               max_joint_vel_rad_s=arm.max_joint_vel_rad_s, max_delta_rad=arm.max_delta_rad,
                               workspace_min_m=np.asarray(arm.workspace_min_m, np.float64),
                               workspace_max_m=np.asarray(arm.workspace_max_m, np.float64))
            return ArmSafety(limits, self.robot.tcp_position, self.period_s)
        legged = self.config.safety.legged
        limits = LeggedLimits(joint_limits_rad=np.asarray(self.robot.joint_limits_rad, np.float64),
                              action_scale_rad=legged.action_scale_rad, max_delta_rad=legged.max_delta_rad,
                              kp_max=legged.kp_max, kd_max=legged.kd_max, tau_max_nm=legged.tau_max_nm,
                              kp=legged.kp, kd=legged.kd, max_tilt_rad=legged.max_tilt_rad)
        return LeggedSafety(limits, np.asarray(self.robot.stand_q_rad, np.float64), self.period_s)

    def reading_spec(self) -> dict:
        """What each device delivers: {device: {key: [shape, dtype]}} (sent to the actor in hello)."""
        return {device.name: {key: [list(shape), dtype] for key, (shape, dtype) in device.reading_spec().items()}
                for device in self.devices}

    # ----------------------------------------------------------------------------------------
    def _read_all(self, t_tick_ns: int):
        """Reads every device; returns arrays for the obs message and per-device timing."""
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

    def _effective_action(self, command: SafeCommand, base_q: np.ndarray | None) -> np.ndarray:
        """The command expressed back in the policy's normalised action space (what the data records)."""
        if self.kind == "sim":
            return np.asarray(command.values["action"], np.float32)
        if command.kind == "joint_position" and base_q is not None:
            delta = (command.values["q_rad"] - base_q) / self._max_delta_rad
            return np.clip(delta, -1.0, 1.0).astype(np.float32)
        if command.kind == "motors":
            scale = self.config.safety.legged.action_scale_rad
            offset = (command.values["q_rad"] - np.asarray(self.robot.stand_q_rad)) / scale
            return np.clip(offset, -1.0, 1.0).astype(np.float32)
        if command.kind == "hold" and self.kind == "legged" and "q_rad" in command.values:
            scale = self.config.safety.legged.action_scale_rad
            offset = (command.values["q_rad"] - np.asarray(self.robot.stand_q_rad)) / scale
            return np.clip(offset, -1.0, 1.0).astype(np.float32)
        return np.zeros(self.action_dim, np.float32)

    def _apply(self, command: SafeCommand) -> None:
        """Sends a safety-checked command to the robot driver."""
        values = command.values
        if self.kind == "sim":
            self.robot.command_action(values["action"])
            self._last_target = np.asarray(values["action"], np.float64)
            return
        if command.kind in ("joint_position", "hold") and self.kind == "arm":
            if "q_rad" in values:
                self.robot.command_joint_position(values["q_rad"])
                self._last_target = np.asarray(values["q_rad"], np.float64)
        elif command.kind in ("motors", "hold") and self.kind == "legged":
            if "q_rad" in values and "kp" in values:
                self.robot.command_motors(values["q_rad"], values["dq_rad_s"], values["kp"], values["kd"],
                                          values["tau_nm"])
                self._last_target = np.asarray(values["q_rad"], np.float64)
            elif "q_rad" in values:
                legged = self.config.safety.legged
                n = self.action_dim
                self.robot.command_motors(values["q_rad"], np.zeros(n), np.full(n, legged.kp),
                                          np.full(n, legged.kd), np.zeros(n))
                self._last_target = np.asarray(values["q_rad"], np.float64)
        elif command.kind == "damp" and self.kind == "legged":
            self.robot.damp()
        else:
            self.robot.stop()
            self._last_target = None

    def safe_stop(self, reason: str) -> None:
        """Brings the robot to a stop (never raises: this is the path of last resort)."""
        try:
            if self.kind == "legged" and reason in ("fall",):
                self.robot.damp()
            else:
                self.robot.stop()
        except Exception as exc:  # noqa: BLE001 - the stop path must not die on a driver error
            log.error("safe stop (%s): driver raised %s: %s", reason, type(exc).__name__, exc)
        self._last_target = None
        log.info("robot stopped: %s", reason)

    # ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Runs the control loop until a stop is requested; returns the final stats."""
        control = self.config.control
        if self.lockstep:
            self.scheduling = "SCHED_OTHER (lockstep pacing)"
        elif control.realtime == "off":
            self.scheduling = "SCHED_OTHER (realtime off in config)"
        else:
            self.scheduling = try_realtime()
            if control.realtime == "on" and not self.scheduling.startswith("SCHED_FIFO"):
                raise RuntimeError(f"control.realtime = on but {self.scheduling}: run as root or set control.realtime=auto")
        realtime = self.scheduling.startswith("SCHED_FIFO")
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        bind_or_explain(socket, self.config.network.control, "control channel (network.control)")
        status = StatusPublisher(context, self.config.network.status, "daemon")
        self.receiver = receiver = wire.Receiver("daemon", max_bytes=int(self.config.network.max_message_mb * 2**20))
        for device in self.devices:
            device.connect()
        if hasattr(self.cameras[0] if self.cameras else None, "set_scene") and self.kind == "arm":
            self._link_mock_scene()
        safety = self._build_safety()
        watchdog = ActionWatchdog(control.watchdog_s)
        clock = self.sim_clock if self.lockstep else FixedRateClock(control.rate_hz, realtime=realtime)
        deadline_ns = int(control.action_deadline_ms * 1e6)
        self._last_hw: dict[str, int] = {}
        self._last_target = None
        actor: bytes | None = None
        self._prev = {"tick": -1, "late": False, "clipped": False, "reset_done": False, "policy_version": 0}
        self._prev_action = np.zeros(self.action_dim, np.float32)
        self._stopped_for_pstop = False
        log.info("daemon up: %s robot %s at %.1f Hz, %s, control on %s", self.kind, self.config.robot.driver,
                 control.rate_hz, self.scheduling, self.config.network.control)
        clock.start()
        try:
            while not self.stop_requested.is_set():
                if self.lockstep and actor is None:
                    socket.poll(max(1, min(100, int(self.period_s * 1000))))   # idle until an actor says hello
                tick, tick_deadline_ns = clock.wait_next()
                t_tick_ns = tick_deadline_ns if self.lockstep else time.monotonic_ns()
                self.counters["ticks"] += 1
                arrays, timing = self._read_all(t_tick_ns)
                robot_status = self._check_robot_status()
                actor = self._take_messages(socket, receiver, actor, watchdog, tick)
                if actor is not None and watchdog.expired():
                    self.counters["watchdog_stops"] += 1
                    self.safe_stop(f"actor silent for {watchdog.silent_for_s():.2f} s (watchdog {control.watchdog_s} s)")
                    actor = None
                if actor is None:
                    status.publish(self._status_counters(clock, actor_connected=False))
                    continue
                meta = {"tick": tick, "t_tick_ns": t_tick_ns, "devices": timing, "prev": self._prev,
                        "robot_status": robot_status}
                wire.send_to(socket, actor, wire.Kind.OBS, meta, {**arrays, "prev_action": self._prev_action})
                self.counters["actor_ticks"] += 1
                if self.lockstep:
                    act, actor = self._wait_action_lockstep(socket, receiver, actor, tick, watchdog)
                    if act is None:                     # stop requested, actor gone, or watchdog expired
                        if actor is not None and watchdog.expired():
                            self.counters["watchdog_stops"] += 1
                            self.safe_stop(f"actor silent for {watchdog.silent_for_s():.2f} s "
                                           f"(watchdog {control.watchdog_s} s)")
                            actor = None
                        status.publish(self._status_counters(clock, actor_connected=actor is not None))
                        continue
                    clock.stepped()
                else:
                    act = self._wait_action(socket, receiver, actor, tick, t_tick_ns + deadline_ns, clock, watchdog)
                self._command_robot(act, arrays, safety, tick)
                if self._prev["policy_version"] > 0 and not self.lockstep:
                    self.training_stats.add(max(0, t_tick_ns - tick_deadline_ns))
                status.publish(self._status_counters(clock, actor_connected=True))
        finally:
            self.safe_stop("daemon exiting")
            if actor is not None:
                try:
                    wire.send_to(socket, actor, wire.Kind.STOP, {"reason": "daemon stopped"}, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            for device in self.devices:
                try:
                    device.disconnect()
                except Exception as exc:  # noqa: BLE001 - keep closing the others
                    log.error("disconnecting %s: %s", device.name, exc)
            self.counters["malformed"] = receiver.malformed
            stats = self.final_stats(clock)
            status.publish(self._status_counters(clock, actor_connected=False), force=True)
            status.close()
            socket.close(0)
            context.term()
            if self.logdir:
                session.write_stats(self.logdir, "daemon", stats)
        return stats

    def _check_robot_status(self) -> dict:
        """The robot's status for the observation; a new protective or emergency stop stops the robot."""
        robot_status = self.robot.status()
        stopped = robot_status.protective_stop or robot_status.emergency_stop
        if stopped and not self._stopped_for_pstop:
            self.counters["protective_stops"] += 1
            self.safe_stop("protective stop reported by the robot")
        self._stopped_for_pstop = stopped
        return {"ok": bool(robot_status.ok), "protective_stop": bool(robot_status.protective_stop),
                "emergency_stop": bool(robot_status.emergency_stop), "fallen": bool(robot_status.fallen),
                "fault": robot_status.fault}

    def _command_robot(self, act: wire.Message | None, arrays: dict, safety, tick: int) -> None:
        """Applies the actor's action (or the fallback when it is late) through the safety layer, and records
        what was applied for the next observation."""
        q_now = self._robot_q(arrays)
        base_q = self._last_target if self._last_target is not None else q_now
        reset_done = False
        if act is None:
            self.counters["late_steps"] += 1
            command = safety.fallback(self.config.control.fallback, q_now, self._last_target)
            late, version = True, self._prev["policy_version"]
        else:
            late, version = False, int(act.meta["policy_version"])
            if act.meta.get("reset") is True:
                reset_done = self._reset_robot(safety)
                command = None
            elif self.kind in ("arm", "sim"):
                command = safety.command(act.arrays["action"], q_now, self._last_target)
            else:
                command = safety.command(act.arrays["action"], q_now, self._last_target,
                                         arrays[f"{self.robot.name}/imu_rpy"])
        if self._stopped_for_pstop and command is not None:
            command = safety.fallback("stop", q_now, self._last_target)   # nothing moves until a reset
        if command is not None:
            self.counters["safety_clipped"] += int(command.clipped)
            self._apply(command)
            self._prev_action = self._effective_action(command, base_q)
        else:
            self._prev_action = np.zeros(self.action_dim, np.float32)
        self._prev = {"tick": tick, "late": late, "clipped": bool(command is not None and command.clipped),
                      "reset_done": reset_done, "policy_version": version}

    def _robot_q(self, arrays: dict) -> np.ndarray | None:
        if self.kind == "sim":
            return None                     # a simulated environment has no joint state for the safety layer
        return np.asarray(arrays[f"{self.robot.name}/joint_pos"], np.float64)

    def _link_mock_scene(self) -> None:
        """Mock cameras draw the arm's tool position, so images carry task information."""
        robot = self.robot

        def scene():
            tcp = robot.tcp_position(np.asarray(robot.read().values["joint_pos"], np.float64))
            return float(np.clip(0.5 + tcp[1], 0, 1)), float(np.clip(0.5 - tcp[0] - 0.5, 0, 1))
        for camera in self.cameras:
            camera.set_scene(scene)

    def _reset_robot(self, safety) -> bool:
        """Moves the robot to its start state (the episode boundary asked for by the actor)."""
        try:
            self.robot.reset()
        except Exception as exc:  # noqa: BLE001 - a failed reset stops the robot and is reported, not fatal
            log.error("robot reset failed: %s: %s", type(exc).__name__, exc)
            self.safe_stop("reset failed")
            return False
        self._last_target = None
        self.counters["resets"] += 1
        return True

    def _take_messages(self, socket, receiver, actor, watchdog, tick):
        """Handles waiting control messages (hello, bye, stray actions) without blocking."""
        while socket.poll(0):
            frames = socket.recv_multipart(copy=False)
            identity, message = frames[0].bytes, receiver.decode(frames[1:])
            if message is None:
                continue
            actor = self._handle(socket, identity, message, actor, watchdog, tick)
        return actor

    def _handle(self, socket, identity, message, actor, watchdog, tick):
        kind = message.kind
        if kind == wire.Kind.HELLO:
            digest = message.meta.get("config_digest")
            if digest != self.config.digest():
                self.counters["refused_actors"] += 1
                wire.send_to(socket, identity, wire.Kind.REFUSE, {
                    "reason": f"config digest {digest!r} differs from the daemon's {self.config.digest()!r}: "
                              f"start actor and daemon with the same robot, cameras, task and model config"})
                return actor
            wire.send_to(socket, identity, wire.Kind.HELLO, {
                "role": "daemon", "session": self.config.session, "robot": self.kind, "action_dim": self.action_dim,
                "rate_hz": self.config.control.rate_hz, "reading_spec": self.reading_spec(),
                "robot_name": self.robot.name, "cameras": [c.name for c in self.cameras],
                "action_discrete": self.action_discrete, "pacing": self.config.control.pacing})
            watchdog.feed()
            log.info("actor %s connected", message.meta.get("actor_id", "?"))
            return identity
        if kind == wire.Kind.BYE and identity == actor:
            self.safe_stop(f"actor said bye ({message.meta['reason']})")
            return None
        if kind == wire.Kind.ACT:
            self.counters["late_actions"] += int(message.meta["tick"] < tick)
            if identity == actor:
                watchdog.feed()
        if kind == wire.Kind.HEARTBEAT and identity == actor and self.lockstep:
            watchdog.feed()                 # a lockstep actor holding the simulation for its learner is alive
        return actor

    def _wait_action(self, socket, receiver, actor, tick, until_ns, clock, watchdog):
        """Waits for the action of ``tick`` until ``until_ns``; other messages are handled meanwhile."""
        while True:
            remaining_ms = (until_ns - time.monotonic_ns()) / 1e6
            if remaining_ms <= 0:
                return None
            if not socket.poll(max(1, int(remaining_ms))) and time.monotonic_ns() >= until_ns:
                return None
            message, _ = self._drain_until_action(socket, receiver, actor, tick, watchdog)
            if message is not None:
                return message

    def _drain_until_action(self, socket, receiver, actor, tick, watchdog):
        """Handles the messages waiting on ``socket``. Returns (the action of ``tick`` from ``actor``, actor) as
        soon as it comes, else (None, the actor after the messages: another one after its hello, None after a bye)."""
        while socket.poll(0):
            frames = socket.recv_multipart(copy=False)
            identity, message = frames[0].bytes, receiver.decode(frames[1:])
            if message is None:
                continue
            if (message.kind == wire.Kind.ACT and identity == actor and message.meta["tick"] == tick
                    and message.arrays["action"].shape == (self.action_dim,)):
                watchdog.feed()
                return message, actor
            handled = self._handle(socket, identity, message, actor, watchdog, tick)
            if handled != actor:
                return None, handled
        return None, actor

    def _wait_action_lockstep(self, socket, receiver, actor, tick, watchdog):
        """Lockstep: waits for the action of ``tick`` as long as the watchdog allows (no deadline, so never late).

        Returns (the action message, actor); (None, actor) when the watchdog expired or a stop was
        requested; (None, the new actor) when another actor said hello; (None, None) on the actor's bye."""
        while not self.stop_requested.is_set():
            remaining_s = watchdog.timeout_s - watchdog.silent_for_s()
            if remaining_s <= 0:
                return None, actor
            if not socket.poll(max(1, min(100, math.ceil(remaining_s * 1000)))):
                continue
            message, handled = self._drain_until_action(socket, receiver, actor, tick, watchdog)
            if message is not None:
                return message, actor
            if handled != actor:
                return None, handled        # bye (None) or another actor's hello: serve it from the next tick
        return None, actor

    def _status_counters(self, clock, *, actor_connected: bool) -> dict:
        summary = clock.stats.summary()
        return {"rate_hz": summary.get("rate_hz") or 0.0, "error_p99_ms": summary["period_error_ms"]["p99"] or 0.0,
                "late_steps": self.counters["late_steps"], "ticks": self.counters["ticks"],
                "stale_readings": self.counters["stale_readings"], "actor_connected": actor_connected}

    def final_stats(self, clock) -> dict:
        """The daemon's counters and timing for summary.json."""
        summary = clock.stats.summary()
        training = self.training_stats.summary()
        return {**self.counters, "control_rate_hz": summary.get("rate_hz") or 0.0,
                "target_rate_hz": self.config.control.rate_hz,
                "period_error_ms": summary["period_error_ms"], "overruns": summary.get("overruns", 0),
                "period_error_ms_while_training": training["period_error_ms"],
                "ticks_while_training": training["count"], "scheduling": self.scheduling,
                "pacing": self.config.control.pacing}


def run(config: Config, *, logdir: str | None = None) -> dict:
    """Entry point of ``robotd daemon``: runs until SIGINT/SIGTERM, then stops the robot."""
    daemon = Daemon(config, logdir=logdir)

    def request_stop(signum, _frame):
        daemon.stop_requested.set()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return daemon.run()
