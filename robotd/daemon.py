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

import zmq

from robotd import session, wire
from robotd.clock import FixedRateClock, LockstepClock, PeriodStats, try_realtime
from robotd.config import Config, check_lockstep
from robotd.netutil import bind_or_explain
from robotd.security import SecurityError, client_securer, is_loopback, server_for_every_channel
from robotd.robot_io import RobotIO
from robotd.safety import ActionWatchdog
from robotd.status import StatusPublisher

log = logging.getLogger("robotd.daemon")


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
        self._refused_peers: set[bytes] = set()       # logged once each
        self.counters = {"ticks": 0, "actor_ticks": 0, "late_steps": 0, "late_actions": 0, "stale_readings": 0,
                         "safety_clipped": 0, "watchdog_stops": 0, "protective_stops": 0, "resets": 0,
                         "malformed": 0, "refused_actors": 0, "refused_connections": 0, "link_losses": 0}
        self.io = RobotIO(config, host_clock=host_clock, counters=self.counters)
        self.robot, self.cameras, self.devices = self.io.robot, self.io.cameras, self.io.devices
        self.kind, self.action_dim, self.action_discrete = self.io.kind, self.io.action_dim, self.io.action_discrete
        self.stop_requested = threading.Event()
        # Why the daemon ended the session by itself (a lost link), or None when it was asked to stop.
        self.stop_reason: str | None = None
        self.training_stats = PeriodStats()
        self.scheduling = "SCHED_OTHER"

    def reading_spec(self) -> dict:
        """What each device delivers: {device: {key: [shape, dtype]}} (sent to the actor in hello)."""
        return self.io.reading_spec()

    def safe_stop(self, reason: str) -> None:
        """Brings the robot to a stop (never raises: this is the path of last resort)."""
        self.io.safe_stop(reason)

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
        network = self.config.network
        # network.auth=always (robotd train's per-session keys): only holders of the session's keys get in.
        self.curve = server_for_every_channel(network, context)
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.curve is not None:
            self.curve.configure(socket)
        bind_or_explain(socket, network.control, "control channel (network.control)")
        status = StatusPublisher(context, network.status, "daemon", secure=client_securer(network, "daemon"))
        self.receiver = receiver = wire.Receiver("daemon", max_bytes=int(self.config.network.max_message_mb * 2**20))
        self.io.connect()
        watchdog = ActionWatchdog(control.watchdog_s)
        clock = self.sim_clock if self.lockstep else FixedRateClock(control.rate_hz, realtime=realtime)
        deadline_ns = int(control.action_deadline_ms * 1e6)
        actor: bytes | None = None
        self._prev = {"tick": -1, "late": False, "clipped": False, "reset_done": False, "policy_version": 0}
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
                arrays, timing = self.io.read_all(t_tick_ns)
                robot_status = self.io.check_status()
                if self.io.link_lost is not None:
                    # A robot or camera that stopped answering cannot be driven safely: the session ends here.
                    self.stop_reason = f"link lost: {self.io.link_lost}"
                    break
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
                wire.send_to(socket, actor, wire.Kind.OBS, meta, {**arrays, "prev_action": self.io.prev_action,
                                                                       "prev_applied_action": self.io.applied_action})
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
                    act, actor = self._wait_action(socket, receiver, actor, tick, t_tick_ns + deadline_ns, clock,
                                                   watchdog)
                    if actor is None:               # the actor said bye while we waited: the robot is stopped
                        status.publish(self._status_counters(clock, actor_connected=False))
                        continue
                self._command_robot(act, arrays, tick)
                if act is not None and act.meta.get("reset") is True:
                    # A reset (a real arm's moveJ home) can take seconds, during which the actor had nothing to
                    # answer: its silence started when the reset ended, not when it was asked for.
                    watchdog.feed()
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
            self.io.disconnect()
            self.counters["malformed"] = receiver.malformed
            if self.curve is not None:
                self.counters["refused_connections"] = self.curve.rejected
            stats = self.final_stats(clock)
            status.publish(self._status_counters(clock, actor_connected=False), force=True)
            status.close()
            socket.close(0)
            if self.curve is not None:
                self.curve.stop()
            context.term()
            if self.logdir:
                session.write_stats(self.logdir, "daemon", stats)
        return stats

    def _command_robot(self, act: wire.Message | None, arrays: dict, tick: int) -> None:
        """Applies the actor's action (or the fallback when it is late) through the safety layer, or the reset
        it asks for, and records what was applied for the next observation."""
        reset_done, clipped = False, False
        if act is None:
            self.counters["late_steps"] += 1
            clipped = self.io.act(None, arrays, fallback=self.config.control.fallback).clipped
            late, version = True, self._prev["policy_version"]
        else:
            late, version = False, int(act.meta["policy_version"])
            if act.meta.get("reset") is True:
                reset_done = self.io.reset()
            else:
                clipped = self.io.act(act.arrays["action"], arrays).clipped
        self._prev = {"tick": tick, "late": late, "clipped": bool(clipped), "reset_done": reset_done,
                      "policy_version": version}

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
                # The reply never names the expected digest: a stranger could replay it in its next hello.
                self.counters["refused_actors"] += 1
                if identity not in self._refused_peers and len(self._refused_peers) < 1000:
                    self._refused_peers.add(identity)
                    log.warning("refused actor %s: config digest %s, this daemon's %s",
                                str(message.meta.get("actor_id"))[:60], str(digest)[:60], self.config.digest())
                wire.send_to(socket, identity, wire.Kind.REFUSE, {
                    "reason": "config digest differs from the daemon's: start actor and daemon with the same robot, "
                              "cameras, task and model config (the daemon's log names both)"})
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
        """Waits for the action of ``tick`` until ``until_ns``; other messages are handled meanwhile.

        Returns (the action or None when late, the actor): None for the actor after its bye, another
        identity after another actor's hello (whose first tick is the next one)."""
        while True:
            remaining_ms = (until_ns - time.monotonic_ns()) / 1e6
            if remaining_ms <= 0:
                return None, actor
            if not socket.poll(max(1, int(remaining_ms))) and time.monotonic_ns() >= until_ns:
                return None, actor
            message, handled = self._drain_until_action(socket, receiver, actor, tick, watchdog)
            if message is not None:
                return message, actor
            if handled != actor:
                return None, handled

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
                "pacing": self.config.control.pacing, "stop_reason": self.stop_reason}


def run(config: Config, *, logdir: str | None = None) -> dict:
    """Entry point of ``robotd daemon``: runs until SIGINT/SIGTERM, then stops the robot."""
    daemon = Daemon(config, logdir=logdir)

    def request_stop(signum, _frame):
        daemon.stop_requested.set()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return daemon.run()
