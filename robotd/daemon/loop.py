"""The robot daemon: owns the hardware and runs the fixed-rate control loop.

Every tick it reads each device with its hardware timestamp, maps the device clock to host
time, sends the observation to the actor, waits for the action until the action deadline,
passes the action (or the configured fallback when it is late) through the safety layer, and
commands the robot. It never waits on the learner. An actor silent for longer than the
watchdog, a stop signal, or a protective stop bring the robot to a safe stop.

With ``control.pacing: lockstep`` (simulated devices only) there is no deadline: the daemon
waits for each action as long as the watchdog allows and steps as soon as it arrives, on a
simulated clock that advances one control period per step (see robotd.daemon.clock.LockstepClock).

The connection to the actor is one state machine, :class:`ActorLink`, shared by both pacings.
"""
from __future__ import annotations

import enum
import logging
import math
import threading
import time

import zmq

from robotd import session, wire
from robotd.daemon.clock import FixedRateClock, LockstepClock, PeriodStats, try_realtime
from robotd.config import Config, check_lockstep
from robotd.netutil import bind_or_explain
from robotd.security import SecurityError, client_securer, daemon_key_name, is_loopback, server_for_every_channel
from robotd.daemon.robot_io import RobotIO
from robotd.daemon.safety import ActionWatchdog
from robotd.status import StatusPublisher, process_name

log = logging.getLogger("robotd.daemon")

# While the robot resets, the actor gets a heartbeat this often instead of observations (it knows the daemon lives).
RESET_BEAT_S = 0.2
# How long the daemon waits for a reset still running when it exits, before it stops the robot anyway.
RESET_JOIN_S = 120.0


class LinkState(enum.Enum):
    """Where the daemon stands with its actor (see ActorLink)."""

    NONE = "none"
    SERVING = "serving"
    RESETTING = "resetting"


class ActorLink:
    """The daemon's one actor connection: who it is, its watchdog, and every transition, in one place.

    States and what the robot does in each:

    ==========  =====================================================================================
    NONE        no actor: no observations go out; the robot was stopped when the last actor left
    SERVING     an actor with the session's config: every tick it gets an observation and owes an action
    RESETTING   the actor asked for a reset at an episode's end: the robot moves to its start outside
                the control tick (a thread in real time, at once in lockstep), the actor gets heartbeats
                instead of observations, and the watchdog waits (its silence starts when the reset ends)
    ==========  =====================================================================================

    Transitions: a hello with the session's config digest makes its sender the actor (SERVING, or still
    RESETTING: a new actor's first observation comes after the reset); a bye from the actor, or its
    silence for longer than the watchdog while SERVING (the one watchdog stop), stops the robot and
    leaves NONE (during a reset the robot is stopped as soon as the reset ends: nothing else may command
    it meanwhile); a reset request goes SERVING -> RESETTING -> SERVING (or NONE when the actor left).
    """

    def __init__(self, io: RobotIO, watchdog_s: float, counters: dict, *, threaded_reset: bool):
        self.io = io
        self.counters = counters
        self.watchdog = ActionWatchdog(watchdog_s)
        self.threaded_reset = threaded_reset
        self.state = LinkState.NONE
        self.identity: bytes | None = None
        # Bumped by every change of actor (hello, leave): a wait for an action ends when it moves.
        self.generation = 0
        self._reset_thread: threading.Thread | None = None
        self._reset_done: bool | None = None
        self._stop_after_reset: str | None = None
        self._last_beat = 0.0

    # -- transitions --------------------------------------------------------------------------
    def hello(self, identity: bytes) -> None:
        """An actor with the session's config said hello: it is served from the next tick."""
        self.identity = identity
        self.generation += 1
        self.watchdog.feed()
        self._stop_after_reset = None
        if self.state is not LinkState.RESETTING:
            self.state = LinkState.SERVING

    def leave(self, reason: str) -> None:
        """The actor is gone (bye, watchdog): the robot stops now, or when a running reset ends."""
        self.identity = None
        self.generation += 1
        if self.state is LinkState.RESETTING:
            self._stop_after_reset = reason
        else:
            self.state = LinkState.NONE
            self.io.safe_stop(reason)

    def heard(self, identity: bytes) -> None:
        """A message from the actor: it is alive."""
        if identity == self.identity and identity is not None:
            self.watchdog.feed()

    def check_watchdog(self) -> bool:
        """The one watchdog stop: the actor silent for longer than the watchdog while served. True when it fired."""
        if self.state is not LinkState.SERVING or not self.watchdog.expired():
            return False
        self.counters["watchdog_stops"] += 1
        self.leave(f"actor silent for {self.watchdog.silent_for_s():.2f} s (watchdog {self.watchdog.timeout_s} s)")
        return True

    def start_reset(self) -> None:
        """SERVING -> RESETTING: the robot moves to its start state outside the control tick."""
        self.state = LinkState.RESETTING
        self._reset_done = None
        if not self.threaded_reset:
            self._run_reset()
            return
        self._reset_thread = threading.Thread(target=self._run_reset, name="robot reset", daemon=True)
        self._reset_thread.start()

    def _run_reset(self) -> None:
        self._reset_done = self.io.reset()          # RobotIO.reset never raises: a failure stops the robot

    def finish_reset(self) -> bool | None:
        """While RESETTING: None while the reset runs; once it ended, whether it succeeded (the link is then
        SERVING again, or NONE with the robot stopped when the actor left meanwhile)."""
        if self._reset_thread is not None:
            if self._reset_thread.is_alive():
                return None
            self._reset_thread = None
        done = bool(self._reset_done)
        self.watchdog.feed()        # the actor had nothing to answer during the reset: its silence starts now
        if self.identity is None:
            self.state = LinkState.NONE
            self.io.safe_stop(self._stop_after_reset or "actor left during the reset")
        else:
            self.state = LinkState.SERVING
        self._stop_after_reset = None
        return done

    def beat(self, socket) -> None:
        """While RESETTING: tells the actor, every RESET_BEAT_S, that the daemon is alive and resetting."""
        now = time.monotonic()
        if self.identity is not None and now - self._last_beat >= RESET_BEAT_S:
            self._last_beat = now
            wire.send_to(socket, self.identity, wire.Kind.HEARTBEAT, {"resetting": True}, flags=zmq.NOBLOCK)

    def close(self) -> None:
        """The daemon is exiting: lets a running reset end (bounded by the driver's own reset bound)."""
        thread = self._reset_thread
        if thread is not None and thread.is_alive():
            log.info("waiting for the robot's reset to end before stopping it")
            thread.join(RESET_JOIN_S)
            if thread.is_alive():
                log.error("the robot's reset did not end within %.0f s; stopping the robot anyway", RESET_JOIN_S)


class Daemon:
    """The control loop of one robot and its cameras."""

    def __init__(self, config: Config, *, logdir: str | None = None, robot: str | None = None):
        """``robot`` names this robot in a fleet: status and stats go out as ``daemon.ROBOT``."""
        self.config = config
        self.logdir = logdir
        self.process_name = process_name("daemon", robot)
        self.robot_id = robot
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
                         "reset_ticks": 0, "robot_faults": 0, "malformed": 0, "refused_actors": 0,
                         "refused_connections": 0, "link_losses": 0}
        self.io = RobotIO(config, host_clock=host_clock, counters=self.counters)
        self.robot, self.cameras, self.devices = self.io.robot, self.io.cameras, self.io.devices
        self.kind, self.action_dim, self.action_discrete = self.io.kind, self.io.action_dim, self.io.action_discrete
        self.link = ActorLink(self.io, config.control.watchdog_s, self.counters, threaded_reset=not self.lockstep)
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
        network = self.config.network
        # Status is CurveZMQ by the experience channel's rule (robotd.security.secures); unusable keys fail here,
        # before any socket is open.
        status_secure = client_securer(network, daemon_key_name(network.keys_dir, network.actor_key, self.robot_id))
        context = zmq.Context()
        # network.auth=always (robotd train's per-session keys): only holders of the session's keys get in.
        self.curve = server_for_every_channel(network, context)
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.curve is not None:
            self.curve.configure(socket)
        bind_or_explain(socket, network.control, "control channel (network.control)")
        status = StatusPublisher(context, network.status, self.process_name, secure=status_secure)
        self.receiver = receiver = wire.Receiver("daemon", max_bytes=int(self.config.network.max_message_mb * 2**20))
        self.io.connect()
        link = self.link
        clock = self.sim_clock if self.lockstep else FixedRateClock(control.rate_hz, realtime=realtime)
        deadline_ns = int(control.action_deadline_ms * 1e6)
        self._prev = {"tick": -1, "late": False, "clipped": False, "reset_done": False, "policy_version": 0}
        log.info("daemon up: %s robot %s at %.1f Hz, %s, control on %s", self.kind, self.config.robot.driver,
                 control.rate_hz, self.scheduling, self.config.network.control)
        clock.start()
        try:
            while not self.stop_requested.is_set():
                if self.lockstep and link.state is LinkState.NONE:
                    socket.poll(max(1, min(100, int(self.period_s * 1000))))   # idle until an actor says hello
                tick, tick_deadline_ns = clock.wait_next()
                t_tick_ns = tick_deadline_ns if self.lockstep else time.monotonic_ns()
                self.counters["ticks"] += 1
                self._take_messages(socket, receiver, tick)
                if link.state is LinkState.RESETTING:
                    done = link.finish_reset()
                    if done is None:                # still moving: nothing else touches the robot meanwhile
                        self.counters["reset_ticks"] += 1
                        link.beat(socket)
                        status.publish(self._status_counters(clock))
                        continue
                    self._prev["reset_done"] = done
                arrays, timing = self.io.read_all(t_tick_ns)
                robot_status = self.io.check_status()
                if self.io.link_lost is not None:
                    # A robot or camera that stopped answering cannot be driven safely: the session ends here.
                    self.stop_reason = f"link lost: {self.io.link_lost}"
                    break
                link.check_watchdog()
                if link.state is not LinkState.SERVING:
                    status.publish(self._status_counters(clock))
                    continue
                meta = {"tick": tick, "t_tick_ns": t_tick_ns, "devices": timing, "prev": self._prev,
                        "robot_status": robot_status}
                wire.send_to(socket, link.identity, wire.Kind.OBS, meta,
                             {**arrays, "prev_action": self.io.prev_action,
                              "prev_applied_action": self.io.applied_action})
                self.counters["actor_ticks"] += 1
                generation = link.generation
                if self.lockstep:
                    act = self._wait_action(socket, receiver, tick, None)
                    if act is None:                 # stop requested, actor gone or replaced, or watchdog expired
                        link.check_watchdog()
                        status.publish(self._status_counters(clock))
                        continue
                    clock.stepped()
                else:
                    act = self._wait_action(socket, receiver, tick, t_tick_ns + deadline_ns)
                    if link.state is not LinkState.SERVING:     # the actor said bye while we waited: robot stopped
                        status.publish(self._status_counters(clock))
                        continue
                    if link.generation != generation:
                        act = None                  # another actor's hello: its first tick is the next one
                self._command_robot(act, arrays, tick)
                if self._prev["policy_version"] > 0 and not self.lockstep:
                    self.training_stats.add(max(0, t_tick_ns - tick_deadline_ns))
                status.publish(self._status_counters(clock))
        finally:
            link.close()
            self.safe_stop("daemon exiting")
            if link.identity is not None:
                try:
                    wire.send_to(socket, link.identity, wire.Kind.STOP, {"reason": "daemon stopped"}, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self.io.disconnect()
            self.counters["malformed"] = receiver.malformed
            if self.curve is not None:
                self.counters["refused_connections"] = self.curve.rejected
            stats = self.final_stats(clock)
            status.publish(self._status_counters(clock, final=True), force=True)
            status.close()
            socket.close(0)
            if self.curve is not None:
                self.curve.stop()
            context.term()
            if self.logdir:
                session.write_stats(self.logdir, self.process_name, stats)
        return stats

    def _command_robot(self, act: wire.Message | None, arrays: dict, tick: int) -> None:
        """Applies the actor's action (or the fallback when it is late) through the safety layer, or starts the
        reset it asks for, and records what was applied for the next observation."""
        clipped = False
        if act is None:
            self.counters["late_steps"] += 1
            clipped = self.io.act(None, arrays, fallback=self.config.control.fallback).clipped
            late, version = True, self._prev["policy_version"]
        else:
            late, version = False, int(act.meta["policy_version"])
            if act.meta.get("reset") is True:
                self.link.start_reset()     # reported in the first observation after it (prev.reset_done)
            else:
                clipped = self.io.act(act.arrays["action"], arrays).clipped
        self._prev = {"tick": tick, "late": late, "clipped": bool(clipped), "reset_done": False,
                      "policy_version": version}

    def _take_messages(self, socket, receiver, tick) -> None:
        """Handles waiting control messages (hello, bye, stray actions) without blocking."""
        while socket.poll(0):
            frames = socket.recv_multipart(copy=False)
            identity, message = frames[0].bytes, receiver.decode(frames[1:])
            if message is not None:
                self._handle(socket, identity, message, tick)

    def _handle(self, socket, identity: bytes, message: wire.Message, tick: int) -> None:
        """One control message other than the awaited action: the link's transitions happen here."""
        link, kind = self.link, message.kind
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
                return
            wire.send_to(socket, identity, wire.Kind.HELLO, {
                "role": "daemon", "session": self.config.session, "robot": self.kind, "action_dim": self.action_dim,
                "rate_hz": self.config.control.rate_hz, "reading_spec": self.reading_spec(),
                "robot_name": self.robot.name, "cameras": [c.name for c in self.cameras],
                "action_discrete": self.action_discrete, "pacing": self.config.control.pacing})
            link.hello(identity)
            log.info("actor %s connected", str(message.meta.get("actor_id", "?"))[:60])
        elif kind == wire.Kind.BYE and identity == link.identity:
            link.leave(f"actor said bye ({message.meta['reason'][:200]})")
        elif kind == wire.Kind.ACT:
            self.counters["late_actions"] += int(message.meta["tick"] < tick)
            link.heard(identity)
        elif kind == wire.Kind.HEARTBEAT and self.lockstep:
            link.heard(identity)            # a lockstep actor holding the simulation for its learner is alive

    def _wait_action(self, socket, receiver, tick: int, until_ns: int | None) -> wire.Message | None:
        """Waits for the actor's action of ``tick`` until ``until_ns`` (real time), or with ``None`` (lockstep) as
        long as the watchdog allows; other messages are handled meanwhile. Returns the action, or None when it is
        late, the watchdog expired, a stop was requested, or the actor left or was replaced."""
        link = self.link
        generation = link.generation
        while not self.stop_requested.is_set():
            if until_ns is None:
                remaining_s = link.watchdog.timeout_s - link.watchdog.silent_for_s()
                timeout_ms = max(1, min(100, math.ceil(remaining_s * 1000)))
            else:
                remaining_s = (until_ns - time.monotonic_ns()) / 1e9
                timeout_ms = max(1, int(remaining_s * 1000))
            if remaining_s <= 0:
                return None
            if not socket.poll(timeout_ms):
                continue
            while socket.poll(0):
                frames = socket.recv_multipart(copy=False)
                identity, message = frames[0].bytes, receiver.decode(frames[1:])
                if message is None:
                    continue
                if (message.kind == wire.Kind.ACT and identity == link.identity and message.meta["tick"] == tick
                        and message.arrays["action"].shape == (self.action_dim,)):
                    link.heard(identity)
                    return message
                self._handle(socket, identity, message, tick)
                if link.generation != generation:
                    return None             # bye, or another actor's hello: it is served from the next tick
        return None

    def _status_counters(self, clock, *, final: bool = False) -> dict:
        summary = clock.stats.summary()
        return {"rate_hz": summary.get("rate_hz") or 0.0, "error_p99_ms": summary["period_error_ms"]["p99"] or 0.0,
                "late_steps": self.counters["late_steps"], "ticks": self.counters["ticks"],
                "stale_readings": self.counters["stale_readings"],
                "actor_connected": self.link.identity is not None and not final}

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
