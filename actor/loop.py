"""The actor process: policy, episodes, session log and experience streaming.

Each observation from the daemon is answered first (random actions until the first weights
arrive and the prefill is done, then the policy network), and only then is the previous step
completed with what the daemon really applied, written to the episode file, and added to the
current chunk. New weights are swapped in between steps.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket as pysocket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import zmq

from actor.recorder import StepRecorder
from actor.spool import ChunkSpool, history_chunks, resend_from_episodes
from actor.stream import ExperienceStream
from actor.weights import WeightSubscriber
from learner.dreamer import Policy
from learner.sizes import model_config
from robotd import session, steps, tasks, wire
from robotd.config import Config
from robotd.metrics import MetricsWriter
from robotd.security import SecurityError, client_securer, configure_client, needs_auth, own_key_name
from robotd.status import StatusPublisher, process_name

log = logging.getLogger("actor")


class DaemonError(RuntimeError):
    """The daemon cannot be reached or refused this actor."""


def parse_daemon_hello(hello: dict) -> dict:
    """The reading spec per device from the daemon's hello, after checking the fields the actor builds on
    (robot_name, cameras, action_dim, reading_spec); a malformed hello raises DaemonError naming the field."""
    spec = hello.get("reading_spec")
    if not isinstance(spec, dict) or not spec:
        raise DaemonError(f"its hello has no reading_spec ({wire.shown(spec)}): run a daemon of this robotd version")
    reading_spec = {}
    for device, device_spec in spec.items():
        parsed = steps.parse_spec(device_spec)
        if parsed is None:
            raise DaemonError(f"its hello's reading_spec for device {device!r} is not {{key: [shape, dtype]}} "
                              f"({wire.shown(device_spec)}): run a daemon of this robotd version")
        reading_spec[device] = parsed
    robot = hello.get("robot_name")
    if not isinstance(robot, str) or robot not in reading_spec:
        raise DaemonError(f"its hello names robot {wire.shown(robot)}, which is not among the devices of its "
                          f"reading_spec {sorted(reading_spec)}: run a daemon of this robotd version")
    cameras = hello.get("cameras", [])
    if not isinstance(cameras, list) or not all(isinstance(c, str) and c in reading_spec for c in cameras):
        raise DaemonError(f"its hello names cameras {wire.shown(cameras)}, not all among the devices of its "
                          f"reading_spec {sorted(reading_spec)}: run a daemon of this robotd version")
    if not isinstance(hello.get("action_dim"), int):
        raise DaemonError(f"its hello has no action_dim ({wire.shown(hello.get('action_dim'))}): run a daemon of this "
                          f"robotd version")
    return reading_spec


class Actor:
    """Runs episodes against a daemon and streams them to a learner."""

    def __init__(self, config: Config, *, logdir: str, learner_address: str | None = None,
                 max_steps: int | None = None, actor_id: str | None = None, robot: str | None = None):
        """``robot`` names this robot in a fleet: status and stats go out as ``actor.ROBOT``, and it is the
        actor's id unless ``actor_id`` is given."""
        self.config = config
        self.logdir = Path(logdir)
        self.max_steps = max_steps
        self.process_name = process_name("actor", robot)
        self.actor_id = actor_id or robot or f"{pysocket.gethostname()}-{os.getpid()}"
        key = own_key_name(config.network.keys_dir, config.network.actor_key, actor_id or robot)
        if key != config.network.actor_key:
            log.info("actor %s: using its own key pair %r in %s (network.actor_key)", self.actor_id, key,
                     config.network.keys_dir)
            self.config = config = dataclasses.replace(
                config, network=dataclasses.replace(config.network, actor_key=key))
        self.stream_id = uuid.uuid4().hex[:12]
        self.learner_address = learner_address or config.network.experience
        self.stop_requested = threading.Event()
        self.stop_reason: str | None = None
        self.rng = np.random.default_rng(config.seed + 7)
        self.counters = {"env_steps": 0, "episodes": 0, "late_steps": 0, "chunks": 0, "weight_swaps": 0,
                         "policy_version_max": 0, "network_steps": 0, "random_steps": 0, "stopped_ticks": 0, "flagged_episodes": 0,
                         "daemon_timeouts": 0, "act_ms_max": 0.0, "malformed_obs": 0,
                         "learner_waits": 0, "learner_wait_s": 0.0}
        self.policy_version = 0
        self.published_at = 0.0
        self.learner_replayed = 0          # the learner's replayed steps when it published the weights in use
        self.recorder: StepRecorder | None = None      # made once the daemon's hello gives the step spec

    # ----------------------------------------------------------------------------------------
    def _curve_client(self):
        """CurveZMQ client setup for the learner's sockets when they leave this machine, else None."""
        network = self.config.network
        if not needs_auth(network.auth, self.learner_address):
            return None
        if not network.keys_dir:
            raise SecurityError(f"learner {self.learner_address} is on another machine: copy its keys here and set "
                                f"network.keys_dir (see `robotd keys`), or network.auth=never on a trusted network")
        keys_dir, actor_key = network.keys_dir, network.actor_key
        probe_context = zmq.Context()
        probe = probe_context.socket(zmq.DEALER)
        try:
            configure_client(probe, keys_dir, actor_key)     # unusable keys fail here, in one line, before threads start
        finally:
            probe.close(0)
            probe_context.term()
        return lambda socket: configure_client(socket, keys_dir, actor_key)

    def _connect_daemon(self, context):
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        secure = client_securer(self.config.network, self.config.network.actor_key, self.config.network.control)
        if secure is not None:
            secure(socket)
        socket.connect(self.config.network.control)
        self.daemon_hello = {"role": "actor", "session": self.config.session, "actor_id": self.actor_id,
                             "config_digest": self.config.digest()}
        wire.send(socket, wire.Kind.HELLO, self.daemon_hello)
        timeout_s = self.config.actor.daemon_timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if socket.poll(100):
                message = self.receiver.decode(socket.recv_multipart(copy=False))
                if message is None:
                    continue
                if message.kind == wire.Kind.REFUSE:
                    raise DaemonError(f"daemon at {self.config.network.control} refused this actor: {message.meta['reason']}")
                if message.kind == wire.Kind.HELLO:
                    return socket, message.meta
        socket.close(0)
        raise DaemonError(f"daemon at {self.config.network.control} did not answer within {timeout_s:g} s: "
                          f"start `robotd daemon` first or fix network.control")

    def run(self) -> dict:
        """Runs until max_steps, a stop signal or the daemon stopping; returns the final stats."""
        config = self.config
        session.prepare(self.logdir)
        max_bytes = int(config.network.max_message_mb * 2**20)
        self.receiver = wire.Receiver("actor", max_bytes=max_bytes)
        import torch
        torch.set_num_threads(config.actor.threads)
        # Status is CurveZMQ by the experience channel's rule (robotd.security.secures), with this actor's key.
        status_secure = client_securer(config.network, config.network.actor_key)
        context = zmq.Context()
        daemon, hello = self._connect_daemon(context)
        try:
            reading_spec = parse_daemon_hello(hello)
        except DaemonError as exc:
            daemon.close(0)
            context.term()
            raise DaemonError(f"daemon at {config.network.control}: {exc}") from None
        self.devices = list(reading_spec)
        self.reading_spec = reading_spec
        self.task = tasks.make(config.task.name, robot=hello["robot_name"], cameras=hello.get("cameras", []),
                               episode_steps=config.task.episode_steps, seed=config.seed, args=config.task.args)
        self.obs_spec = self.task.observation_spec(reading_spec)
        self.action_dim = int(hello["action_dim"])
        self.action_discrete = bool(hello.get("action_discrete", False))   # one-hot actions (a discrete simulator)
        self.step_spec = steps.step_spec(self.obs_spec, self.action_dim, self.devices)
        self.policy = Policy(self.obs_spec, self.action_dim, model_config(config.learner.model),
                             discrete=self.action_discrete)
        hello_meta = {"role": "actor", "session": config.session, "actor_id": self.actor_id,
                      "stream": self.stream_id, "config_digest": config.digest(),
                      "action_discrete": self.action_discrete,
                      "spec": {key: [list(shape), dtype] for key, (shape, dtype) in self.step_spec.items()}}
        spool = ChunkSpool(self.logdir / "spool" / self.actor_id, config.actor.spool_memory_chunks,
                           stream=self.stream_id, max_spill_bytes=int(config.actor.spool_max_mb * 2**20))
        adopted = spool.adopt(max_bytes)
        self.first_episode_id = session.next_episode_id(self.logdir, self.actor_id)
        self.secure = self._curve_client()
        self.stream = ExperienceStream(context, self.learner_address, hello_meta, spool,
                                       resend_after_s=config.actor.resend_after_s, max_bytes=max_bytes,
                                       secure=self.secure, spool_full=config.actor.spool_full,
                                       first_episode_id=self.first_episode_id, history=self._history)
        rebuilt = resend_from_episodes(spool, self.stream.markers, self.logdir / session.EPISODES, self.actor_id,
                                       self.step_spec, config.actor.chunk_steps)
        self._log_resent(adopted, rebuilt, spool)
        self.stream.write_markers()         # before any step: a kill from here on leaves this stream's marker
        self.stream.start()
        self.weights = None
        self.metrics = MetricsWriter(self.logdir, process=self.process_name)
        self.recorder = StepRecorder(config, logdir=self.logdir, actor_id=self.actor_id, stream_id=self.stream_id,
                                     task_name=self.task.name, step_spec=self.step_spec, devices=self.devices,
                                     first_episode_id=self.first_episode_id, emit=self.stream.put,
                                     metrics=self.metrics, counters=self.counters)
        self.status = StatusPublisher(context, config.network.status, self.process_name, secure=status_secure)
        log.info("actor %s up: task %s, obs %s, action dim %d, learner %s", self.actor_id, self.task.name,
                 sorted(self.obs_spec), self.action_dim, self.learner_address)
        try:
            self._loop(daemon, context, max_bytes)
        finally:
            self._finish(daemon)
            daemon.close(0)
            context.term()
        return self.stats

    def _history(self, limit_steps: int, until: dict[str, int]):
        """What a learner holding none of this actor's steps asks for: chunks rebuilt from the episode files."""
        return history_chunks(self.logdir / session.EPISODES, self.actor_id, self.step_spec,
                              self.config.actor.chunk_steps, limit_steps, until)

    def _log_resent(self, adopted: int, rebuilt: dict[str, dict], spool: ChunkSpool) -> None:
        """One line saying what earlier actors left unacknowledged that this one sends first."""
        rebuilt_steps = sum(entry["steps"] for entry in rebuilt.values())
        rebuilt_chunks = sum(entry["chunks"] for entry in rebuilt.values())
        streams = ", ".join(f"{name} from step {entry['from']}" for name, entry in sorted(rebuilt.items()))
        from_files = (f"{rebuilt_steps} steps they logged but never had acknowledged, rebuilt from "
                      f"{self.logdir / session.EPISODES} as {rebuilt_chunks} chunk{'s' if rebuilt_chunks != 1 else ''} "
                      f"(stream{'s' if len(rebuilt) > 1 else ''} {streams})")
        if adopted:
            log.info("sending %d chunks an earlier actor left unacknowledged in %s (streams %s)%s", adopted,
                     spool.spill_dir, ", ".join(sorted(spool.other_streams())),
                     f", and {from_files}" if rebuilt else "")
        elif rebuilt:
            log.info("sending %s", from_files)

    # ----------------------------------------------------------------------------------------
    def silence_policy(self) -> tuple[float, bool]:
        """How long a silent daemon is waited for before this actor acts on it, and whether the episode ends then.

        In real time a silent daemon means the robot stopped: after ``max(1 s, 20 periods)`` the episode
        ends there. In lockstep the daemon steps only when the action arrives, so a silence is a busy
        machine and the episode goes on (only the environment ends or splits episodes); just a daemon whose
        watchdog gave up on this actor (after ``control.watchdog_s``) needs the hello again."""
        control = self.config.control
        if control.pacing == "lockstep":
            return control.watchdog_s + 1.0, False
        return max(1.0, 20.0 / control.rate_hz), True

    def _loop(self, daemon, context, max_bytes) -> None:
        silence_s, silence_ends_episode = self.silence_policy()
        recorder = self.recorder
        self._zmq = (context, max_bytes)
        last_obs_s = last_hello_s = time.monotonic()
        while not self.stop_requested.is_set():
            if self.stream.spool_full_event.is_set():
                self.stop_reason = "spool full"
                return
            if self.weights is None and self.stream.accepted.is_set():
                self._subscribe_weights(context, max_bytes)
            if not daemon.poll(50):
                silent_s = time.monotonic() - last_obs_s
                if silent_s > silence_s and recorder.pending is not None and silence_ends_episode:
                    self.counters["daemon_timeouts"] += 1
                    log.warning("no observation from the daemon for %.1f s: ending the episode", silence_s)
                    recorder.complete(None, None, force_last=True)
                if silent_s > silence_s and time.monotonic() - last_hello_s > 1.0:
                    # The daemon stops serving an actor its watchdog gave up on; a hello brings it back.
                    wire.send(daemon, wire.Kind.HELLO, self.daemon_hello)
                    last_hello_s = time.monotonic()
                continue
            message = self.receiver.decode(daemon.recv_multipart(copy=False))
            if message is None:
                continue
            if message.kind == wire.Kind.STOP:
                log.info("daemon stopped: %s", message.meta["reason"])
                return
            if message.kind == wire.Kind.HEARTBEAT:
                last_obs_s = time.monotonic()       # the daemon is resetting the robot: alive, no observation yet
                continue
            if message.kind != wire.Kind.OBS:
                continue
            last_obs_s = time.monotonic()
            problem = self._obs_problem(message)
            if problem is not None:
                self.counters["malformed_obs"] += 1
                if self.counters["malformed_obs"] <= 10:
                    log.warning("observation dropped: %s", problem)
                continue
            if self._on_observation(daemon, message):
                return
            self._maybe_swap_weights()
            self._publish_status()

    def _obs_problem(self, message: wire.Message) -> str | None:
        """Why an observation cannot be used (checked before anything is changed), or None."""
        meta, arrays = message.meta, message.arrays
        prev, devices = meta.get("prev"), meta.get("devices")
        if not isinstance(prev, dict) or not isinstance(prev.get("tick"), int):
            return "meta.prev missing or without an integer tick"
        if not isinstance(devices, dict) or set(devices) != set(self.devices):
            return f"meta.devices should name {sorted(self.devices)}"
        for device, timing in devices.items():
            if not isinstance(timing, dict) or any(not isinstance(timing.get(f), (int, bool)) for f in steps.DEVICE_FIELDS):
                return f"meta.devices.{device} lacks one of {sorted(steps.DEVICE_FIELDS)}"
            for key, (shape, dtype) in self.reading_spec[device].items():
                value = arrays.get(f"{device}/{key}")
                if value is None or value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
                    return f"array {device}/{key} missing or not {tuple(shape)} {dtype}"
        for key in ("prev_action", "prev_applied_action"):
            value = arrays.get(key)
            if value is not None and value.shape != (self.action_dim,):
                return f"{key} has shape {value.shape}, expected ({self.action_dim},)"
        return None

    def _on_observation(self, daemon, message: wire.Message) -> bool:
        """Answers one observation and completes the previous step; True when max_steps is reached."""
        meta, arrays = message.meta, message.arrays
        recorder = self.recorder
        reported = (meta["prev"], arrays.get("prev_action"), arrays.get("prev_applied_action"))
        if self._learner_behind():
            # Lockstep: the simulation waits for the learner. Everything collected goes out first, so the
            # learner's own train_ratio wait (on ingested steps) cannot hold it back in turn.
            recorder.complete(*reported)
            recorder.flush()
            self._wait_for_learner(daemon)
        readings = {device: {} for device in self.devices}
        for name, value in arrays.items():
            device, _, key = name.partition("/")
            if device in readings:
                readings[device][key] = value
        is_first = recorder.next_is_first
        status = meta.get("robot_status", {})
        stopped = bool(status.get("protective_stop") or status.get("emergency_stop"))
        if is_first and stopped:
            # The robot is still stopped after its episode ended (a protective or emergency stop that a person
            # must clear on a real robot): no episode starts; the reset is asked for again (the daemon tries it
            # at most once a second) and nothing is recorded until the robot is free again.
            wire.send(daemon, wire.Kind.ACT, {"tick": meta["tick"], "policy_version": self.policy_version,
                                              "reset": True}, {"action": np.zeros(self.action_dim, np.float32)})
            recorder.complete(*reported)
            self.counters["stopped_ticks"] += 1
            return False
        if is_first:
            self.task.new_episode()
        obs = self.task.observe(readings)
        reward = 0.0 if is_first else self.task.reward(obs)
        terminal = self.task.is_terminal(obs)
        truncated = self.task.is_truncated(obs)
        episode_step = 0 if is_first else recorder.episode_step
        at_max = self.max_steps is not None and recorder.steps_begun + 1 >= self.max_steps
        time_limit = episode_step + 1 >= self.task.episode_steps
        is_last = terminal or truncated or stopped or time_limit or at_max
        t0 = time.perf_counter()
        action, version = self._choose_action(obs, is_first)
        self.counters["act_ms_max"] = max(self.counters["act_ms_max"], (time.perf_counter() - t0) * 1000)
        reset = bool(is_last and (self.task.reset_request or terminal or truncated or stopped))
        wire.send(daemon, wire.Kind.ACT, {"tick": meta["tick"], "policy_version": version, "reset": reset},
                  {"action": action})
        # The action is out; everything below is bookkeeping off the robot's critical path.
        recorder.complete(*reported)
        # How a finished episode ended (an episode cut by the end of the session has none of these).
        flags = [flag for flag, happened in (("protective_stop", stopped), ("terminated", terminal),
                                             ("truncated", truncated), ("time_limit", time_limit)) if happened]
        recorder.begin(tick=meta["tick"], t_tick_ns=meta["t_tick_ns"], devices=meta["devices"], obs=obs,
                       reward=reward, is_first=is_first, is_last=is_last, terminal=terminal,
                       success=self.task.is_success(obs), policy_version=version, sent_action=action, flags=flags)
        return at_max

    def _learner_behind(self) -> bool:
        """Lockstep pacing with learner.train_ratio > 0: True while collecting more would exceed the ratio.

        The learner's replayed steps come with its weights (it publishes every publish_every_updates
        updates of batch_size x batch_length); one more publish interval of slack lets the learner
        (which stops at the ratio itself) always publish far enough to release the actor. Nothing waits before prefill_steps and min_replay_steps are collected.
        A session started from a checkpoint (learner.init_checkpoint) also waits for its first weights."""
        learner = self.config.learner
        if self.config.control.pacing != "lockstep":
            return False
        if learner.init_checkpoint and self.policy_version == 0:
            return True
        if learner.train_ratio <= 0:
            return False
        collected = self.counters["env_steps"] + (self.recorder is not None and self.recorder.pending is not None)
        if collected < max(self.config.actor.prefill_steps, learner.min_replay_steps):
            return False
        per_update = learner.batch_size * learner.batch_length
        replayed = self.learner_replayed
        # The learner counts collected steps from min_replay_steps on, when its training starts.
        since_training = collected - learner.min_replay_steps
        return learner.train_ratio * since_training > replayed + (learner.publish_every_updates + 1) * per_update

    def _wait_for_learner(self, daemon) -> None:
        """Holds the simulation until the learner has trained enough; heartbeats keep the daemon's watchdog fed."""
        started = last_beat = time.monotonic()
        beat_s = self.config.control.watchdog_s / 4
        while self._learner_behind() and not self.stop_requested.is_set():
            if self.weights is None and self.stream.accepted.is_set():
                self._subscribe_weights(*self._zmq)
            self._maybe_swap_weights()
            self._publish_status()
            if time.monotonic() - last_beat >= beat_s:
                wire.send(daemon, wire.Kind.HEARTBEAT, {"actor_id": self.actor_id})
                last_beat = time.monotonic()
            time.sleep(0.005)
        self.counters["learner_waits"] += 1
        self.counters["learner_wait_s"] += time.monotonic() - started

    def _choose_action(self, obs, is_first) -> tuple[np.ndarray, int]:
        use_network = self.policy_version > 0 and self.counters["env_steps"] >= self.config.actor.prefill_steps
        if use_network:
            self.counters["network_steps"] += 1
            return np.asarray(self.policy.act(obs, is_first), np.float32), self.policy_version
        self.counters["random_steps"] += 1
        if self.policy_version > 0:
            self.policy.act(obs, is_first)  # keep the recurrent state in step for when the network takes over
        return random_action(self.rng, self.action_dim, self.action_discrete), 0

    def rolling(self) -> tuple[float, float]:
        """Mean return and success rate of the last finished episodes (see StepRecorder.rolling)."""
        return self.recorder.rolling() if self.recorder is not None else (0.0, 0.0)

    # ----------------------------------------------------------------------------------------
    def _subscribe_weights(self, context, max_bytes) -> None:
        port = self.stream.learner_reply.get("weights_port")
        if port is None:
            return
        host = self.learner_address.rsplit(":", 1)[0]
        self.weights = WeightSubscriber(context, f"{host}:{port}", max_bytes=max_bytes, secure=self.secure)
        self.weights.start()

    def _maybe_swap_weights(self) -> None:
        if self.weights is None:
            return
        newest = self.weights.take()
        if newest is None:
            return
        try:
            self.policy.load(newest.arrays)
        except ValueError as exc:
            log.error("weights v%d not usable: %s", newest.version, exc)
            return
        self.policy_version, self.published_at = newest.version, newest.published_at
        self.learner_replayed = newest.replayed_steps
        self.counters["weight_swaps"] += 1

    def _publish_status(self, *, force: bool = False) -> None:
        if not force and not self.status.due():
            return
        age = time.time() - self.published_at if self.published_at else -1.0
        return_mean, success_rate = self.rolling()
        self.status.publish({"env_steps": self.counters["env_steps"], "episodes": self.counters["episodes"],
                             "policy_version": self.policy_version, "policy_age_s": age,
                             "last_return": self.recorder.last_return,
                             "last_success": int(self.recorder.last_success),
                             "finished_episodes": self.recorder.finished_episodes, "return_mean20": return_mean,
                             "success_rate": success_rate,
                             "unacked_chunks": self.stream.pending,
                             "learner_connected": self.stream.accepted.is_set()}, force=force)

    def _finish(self, daemon) -> None:
        """Closes the episode, says bye to the daemon, drains the stream and writes the stats."""
        recorder = self.recorder
        if recorder.pending is not None:
            message = None
            if daemon.poll(int(2000 / self.config.control.rate_hz) + 50):
                message = self.receiver.decode(daemon.recv_multipart(copy=False))
            if message is not None and message.kind == wire.Kind.OBS and self._obs_problem(message) is None:
                recorder.complete(message.meta["prev"], message.arrays.get("prev_action"),
                                  message.arrays.get("prev_applied_action"), force_last=True)
        recorder.close()
        try:
            wire.send(daemon, wire.Kind.BYE, {"reason": "actor finished"}, flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        drained = self.stream.close(self.config.actor.drain_timeout_s)
        spool = self.stream.spool
        if drained and not self.stream.is_alive():
            try:
                self.stream.markers.remove(self.stream_id)   # every step logged was emitted and acknowledged
            except OSError as exc:
                log.warning("acknowledgement marker of stream %s not removed: %s", self.stream_id, exc)
        if not drained:
            kept = spool.spill_all()
            log.warning("%d chunks (%d steps) not acknowledged by the learner at exit: kept in %s, and the next "
                        "actor started on this log directory sends them (%d spilled now); every step is in the "
                        "episode files too", len(spool), spool.pending_steps, spool.spill_dir, kept)
        if self.weights is not None:
            self.weights.stop()
        return_mean, success_rate = self.rolling()
        self.stats = {**self.counters, "actor_id": self.actor_id, "unacked_chunks": self.stream.pending,
                      "finished_episodes": recorder.finished_episodes,
                      "succeeded_episodes": recorder.succeeded_episodes,
                      "return_mean20": return_mean, "success_rate20": success_rate,
                      "sent_chunks": self.stream.sent_chunks, "resent_chunks": self.stream.resent_chunks,
                      "acked_chunks": self.stream.acked_chunks, "learner_restarts": self.stream.reconnects,
                      "history_sent_chunks": self.stream.history_sent_chunks,
                      "history_acked_steps": self.stream.history_acked_steps,
                      "spilled_chunks": spool.spilled_total, "unacked_steps": spool.pending_steps,
                      "spool_dropped_chunks": spool.dropped_chunks, "spool_dropped_steps": spool.dropped_steps,
                      "adopted_chunks": spool.adopted_chunks, "stop_reason": self.stop_reason,
                      "refused_by_learner": self.stream.refused_reason, "malformed": self.receiver.malformed}
        self._publish_status(force=True)
        self.status.close()
        self.metrics.close()
        session.write_stats(self.logdir, self.process_name, self.stats)


def random_action(rng: np.random.Generator, action_dim: int, discrete: bool) -> np.ndarray:
    """A prefill action: uniform in [-1, 1], or a uniformly chosen one-hot for a discrete action."""
    if discrete:
        action = np.zeros(action_dim, np.float32)
        action[rng.integers(action_dim)] = 1.0
        return action
    return rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
