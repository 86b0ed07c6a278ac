"""The learner process: Ray, the replay actor, ingest, the trainer loop and weight publishing.

Ray starts locally, on loopback only, unless ``learner.ray_address`` names a cluster (joined with Ray's token
auth; see learner.ray_start). The replay lives in Ray
actors (``learner.replay_shards``, one by default; see learner.shards), its shard 0 in this process with
``learner.replay_in_learner``; the ingest thread stores acknowledged
chunks in them; the main thread trains. A restarted
learner resumes from ``checkpoints/latest.pt`` in its log directory: its weights version,
update count and optimiser state continue.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
import zmq

from learner.dreamer import describe_parameters, model_summary
from learner.ingest import IngestServer
from learner.ray_start import StartStopped, start_ray
from learner.refill import refill_from_episodes
from learner.replay import available_memory_bytes, capacity_warning
from learner.shards import ShardedReplay
from learner.trainer import CHECKPOINT_FILE, Prefetcher, Trainer, WeightPublisher, read_checkpoint, resolve_device
from robotd import session
from robotd.config import Config
from robotd.metrics import MetricsWriter
from robotd.netutil import bind_or_explain
from robotd.security import CurveServer, SecurityError, client_securer, needs_auth
from robotd.status import StatusPublisher

log = logging.getLogger("learner")


def _curve_server(config: Config, context: zmq.Context):
    """A CurveZMQ authenticator when the learner's sockets need one (see robotd.security), else None."""
    network = config.network
    if not needs_auth(network.auth, network.experience, network.weights):
        return None
    if not network.keys_dir:
        raise SecurityError(f"network.experience {network.experience} is reachable from other machines: make keys with "
                            f"`robotd keys DIR` and set network.keys_dir=DIR (or network.auth=never on a trusted network)")
    server = CurveServer(context, network.keys_dir)
    server.start()
    log.info("CurveZMQ on: admitting actors %s", ", ".join(server.actors))
    return server


class Learner:
    """Wires Ray replay, ingest, trainer and publisher together for one session."""

    def __init__(self, config: Config, *, logdir: str):
        self.config = config
        self.on_ray_started = lambda: None
        self.logdir = session.prepare(logdir)
        self.stop_requested = threading.Event()
        self.trainer: Trainer | None = None
        self.ray = None
        self.rank_results: dict | None = None
        self.spec_ready = threading.Event()
        self.device = resolve_device(config.learner.device)
        self.ingested_steps = lambda: 0

    def run(self) -> dict:
        """Runs until a stop is requested; returns the final stats."""
        config = self.config
        torch.set_num_threads(config.learner_threads())
        max_bytes = int(config.network.max_message_mb * 2**20)
        # The status channel's keys are checked before any socket is bound or Ray started: missing keys fail at once.
        status_secure = client_securer(config.network, "learner")
        context = zmq.Context()
        self.curve = _curve_server(config, context)
        secure = self.curve.configure if self.curve else None
        weights_socket = context.socket(zmq.PUB)
        weights_socket.setsockopt(zmq.LINGER, 0)
        weights_socket.setsockopt(zmq.SNDHWM, 4)
        if secure:
            secure(weights_socket)
        weights_address = bind_or_explain(weights_socket, config.network.weights, "weights channel (network.weights)")
        publisher = WeightPublisher(weights_socket)
        checkpoint = read_checkpoint(self.logdir / session.CHECKPOINTS / CHECKPOINT_FILE)
        spec = None
        if checkpoint is not None:
            spec = {key: (tuple(shape), dtype) for key, (shape, dtype) in checkpoint["spec"].items()}
        try:
            ray = start_ray(config, sleep=self.stop_requested.wait, stopped=self.stop_requested.is_set)
        except (StartStopped, RuntimeError) as exc:
            self._close_network(weights_socket, context)
            if not (isinstance(exc, StartStopped) or self.stop_requested.is_set()):
                raise
            # Stopped before Ray was up (a session shorter than the start, a Ctrl-C): a clean stop, not a failure.
            log.info("stopped while Ray was starting: no update made, nothing to checkpoint")
            stats = {"learner_updates": 0, "replayed_steps": 0, "ingested_steps": 0, "replay_steps": 0,
                     "published_version": 0, "device": self.device, "stopped_while_starting": True,
                     "refused_connections": self.curve.rejected if self.curve else 0, "parameters": 0,
                     "last_losses": {}}
            session.write_stats(self.logdir, "learner", stats)
            return stats
        self.on_ray_started()
        self.ray = ray
        try:
            # learner.replay_shards actors (one by default), placed by learner.replay_node_resources.
            replay = ShardedReplay.create(ray, config.learner.replay_capacity_steps, config.seed,
                                          config.learner.replay_shards, config.learner.replay_node_resources,
                                          in_learner=config.learner.replay_in_learner)
            if replay.in_process:
                log.info("replay shard 0 in the learner's process (learner.replay_in_learner)")
            if len(replay) > 1:
                log.info("replay in %d shards of about %d steps each%s", len(replay),
                         config.learner.replay_capacity_steps // len(replay),
                         f" on nodes declaring {', '.join(config.learner.replay_node_resources)}"
                         if config.learner.replay_node_resources else "")

            def store(stream, step, arrays):
                replay.add(stream, step, arrays)

            def exclude(stream, start, n_steps):
                return replay.exclude(stream, start, n_steps)
            ingest = IngestServer(context, config.network.experience, config_digest=config.digest(), store=store,
                                  store_many=replay.add_many,
                                  weights_port=int(weights_address.rsplit(":", 1)[1]), spec=spec,
                                  on_spec=lambda s: self.spec_ready.set(), max_bytes=max_bytes,
                                  refill=lambda spec, ledger: refill_from_episodes(self.logdir, spec, ledger, store,
                                                                                   exclude),
                                  secure=secure, exclude=exclude,
                                  history_steps=config.learner.replay_capacity_steps
                                  if config.learner.history_from_actors else 0)
            if spec is not None:
                self.spec_ready.set()
            ingest.start()
            self.ingested_steps = lambda: ingest.ledger.ingested_steps
            status = StatusPublisher(context, config.network.status, "learner",
                                     secure=status_secure)
            metrics = MetricsWriter(self.logdir, process="learner")
            log.info("learner up: experience %s, weights %s, device %s, Ray %s", ingest.address, weights_address,
                     self.device, config.learner.ray_address or "local")
            try:
                self._train_loop(replay, ingest, publisher, status, metrics, checkpoint)
            finally:
                ingest.stop()
                stats = self._final_stats(replay, ingest, publisher)
                status.publish({"replay_steps": stats["replay_steps"], "updates": stats["learner_updates"],
                                "updates_per_s": 0.0, "published_version": publisher.version}, force=True)
                status.close()
                metrics.close()
                session.write_stats(self.logdir, "learner", stats)
        finally:
            ray.shutdown()
            self._close_network(weights_socket, context)
        return stats

    def _close_network(self, weights_socket, context) -> None:
        weights_socket.close(0)
        if self.curve:
            self.curve.stop()
        context.term()

    def _train_loop(self, replay, ingest, publisher, status, metrics, checkpoint) -> None:
        config = self.config.learner
        while not self.spec_ready.wait(0.2):
            status.publish({"replay_steps": 0, "updates": 0, "updates_per_s": 0.0, "published_version": 0})
            if self.stop_requested.is_set():
                return
        discrete = ingest.action_discrete if ingest.action_discrete is not None else bool(
            (checkpoint or {}).get("action_discrete", False))
        self.trainer = trainer = Trainer(self.config, ingest.spec, self.device, self.logdir, action_discrete=discrete)
        # The memory of this machine: shards placed on other nodes (learner.replay_node_resources) are not checked.
        warning = None if config.replay_node_resources else capacity_warning(
            ingest.spec, config.replay_capacity_steps, available_memory_bytes())
        if warning is not None:
            log.warning("%s", warning)
        log.info("agent built (%s preset): %s", config.model.preset,
                 describe_parameters(trainer.agent.parameter_counts()))
        log.info("model: %s; precision %s, compiled %s", model_summary(trainer.agent.config),
                 trainer.agent.autocast_dtype or "float32", trainer.agent.compiled)
        if checkpoint is not None:
            publisher.version = trainer.load(checkpoint)
            log.info("resumed from checkpoint: %d updates, weights v%d", trainer.updates, publisher.version)
        elif config.init_checkpoint:
            self._start_from(trainer, publisher, config.init_checkpoint)
        context = trainer.replay_context
        ranks, rank_runs = None, []
        if config.data_parallel_ranks > 1:
            from learner.parallel import start_ranks
            ranks, rank_runs = start_ranks(self.ray, self.config, ingest.spec, discrete, replay, self.device,
                                           trainer.agent)
            trainer.ranks = config.data_parallel_ranks

        filled = False

        def sample():
            # The replay only grows to its capacity: once it holds min_replay_steps it is not asked again
            # (a stats call is a round trip to every shard).
            nonlocal filled
            if not filled:
                filled = replay.stats()["replay_steps"] >= config.min_replay_steps
                if not filled:
                    return None
            batch = replay.sample(config.batch_size, config.batch_length, context)
            return trainer.prepare(batch) if batch is not None else None
        prefetch = Prefetcher(sample)
        prefetch.start()
        last_checkpoint = time.monotonic()
        last_report = time.monotonic()
        window_start, window_updates = time.monotonic(), 0
        updates_per_s = 0.0
        batch_steps = config.batch_size * config.batch_length
        try:
            while not self.stop_requested.is_set():
                publisher.republish()
                # As in DreamerV3, the ratio counts collected steps from the start of training (the
                # first min_replay_steps fill the replay), so the learner never has to catch up with them.
                collected = max(0, ingest.ledger.ingested_steps - config.min_replay_steps)
                if config.train_ratio > 0 and trainer.replayed_steps + batch_steps > config.train_ratio * collected + batch_steps:
                    # Ahead of the ratio: wait for new steps (ingest sets the event after storing them; a stop is
                    # seen within 50 ms). Cleared after waking, before the ratio is checked again.
                    ingest.new_steps.wait(0.05)
                    ingest.new_steps.clear()
                    self._status(status, replay, trainer, publisher, updates_per_s)
                    continue
                batch = prefetch.get(timeout_s=0.2)
                if batch is None:
                    self._status(status, replay, trainer, publisher, updates_per_s)
                    continue
                if ranks is not None and not ranks.go():
                    log.error("a data-parallel rank stopped: training ends")
                    break
                result = trainer.train(batch)
                writeback = trainer.latent_writeback()
                if writeback is not None:
                    # Fire and forget: each replay actor applies it before the next sample it serves.
                    replay.update_latents(*writeback)
                window_updates += 1
                if trainer.updates % config.publish_every_updates == 0:
                    publisher.publish(trainer.agent.policy_state_dict(), trainer.replayed_steps)
                now = time.monotonic()
                if now - window_start >= 2.0:
                    updates_per_s = window_updates / (now - window_start)
                    window_start, window_updates = now, 0
                    metrics.write(trainer.updates, {**result, "updates_per_s": updates_per_s,
                                                    "weights_version": publisher.version,
                                                    "ingested_steps": ingest.ledger.ingested_steps})
                if config.report_every_s and now - last_report >= config.report_every_s:
                    trainer.write_report(batch, metrics)
                    last_report = time.monotonic()      # the period runs from the report's end: never all reports
                if now - last_checkpoint >= config.checkpoint_every_s:
                    trainer.save(publisher.version)
                    last_checkpoint = now
                self._status(status, replay, trainer, publisher, updates_per_s)
        finally:
            prefetch.stop()
            if ranks is not None:
                self.rank_results = self._stop_ranks(ranks, rank_runs, trainer)
            if trainer.updates > 0:
                trainer.save(publisher.version)

    def _stop_ranks(self, ranks, runs, trainer) -> dict:
        """Stops the other data-parallel ranks with this one and checks that every rank ended with the same
        weights after the same updates (figures for stats/learner.json)."""
        from learner.parallel import weights_digest
        try:
            ranks.stop()
        except Exception as exc:  # noqa: BLE001 - a rank that died makes the stop fail; the session goes on ending
            log.error("data-parallel: stopping the ranks failed: %s", exc)
        results = []
        for run in runs:
            try:
                results.append(self.ray.get(run, timeout=60))
            except Exception as exc:  # noqa: BLE001
                log.error("data-parallel: a rank failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        mine = weights_digest(trainer.agent)
        agree = len(results) == len(runs) and all(result["weights"] == mine for result in results)
        if not agree:
            log.error("data-parallel: the ranks' weights differ at the end (%s against rank 0's %s)",
                      [result.get("weights") for result in results], mine)
        return {"ranks": len(runs) + 1, "rank_updates": [trainer.updates, *(r["updates"] for r in results)],
                "weights_agree": agree}

    def _start_from(self, trainer, publisher, path: str) -> None:
        """Loads ``learner.init_checkpoint`` (e.g. from robotd replay) and publishes its policy at once."""
        state = read_checkpoint(Path(path))
        if state is None:
            raise RuntimeError(f"learner.init_checkpoint {path!r}: no such checkpoint file")
        publisher.version = trainer.start_from(state, f"learner.init_checkpoint {path!r}")
        publisher.publish(trainer.agent.policy_state_dict(), trainer.replayed_steps)
        log.info("started from %s: %d updates, weights v%d published", path, trainer.updates, publisher.version)

    def _status(self, status, replay, trainer, publisher, updates_per_s) -> None:
        if not status.due():
            return
        replay_steps = replay.stats()["replay_steps"]
        # Replayed per collected step since training started, the quantity learner.train_ratio holds.
        collected = self.ingested_steps() - self.config.learner.min_replay_steps
        ratio = trainer.replayed_steps / collected if collected > 0 else 0.0
        status.publish({"replay_steps": replay_steps, "updates": trainer.updates, "updates_per_s": updates_per_s,
                        "published_version": publisher.version, "train_ratio": round(ratio, 1)})

    def _final_stats(self, replay, ingest, publisher) -> dict:
        trainer = self.trainer
        replay_stats = replay.stats()
        return {**ingest.stats(), **replay_stats, "learner_updates": trainer.updates if trainer else 0,
                "replayed_steps": trainer.replayed_steps if trainer else 0,
                "published_version": publisher.version, "device": self.device,
                "refused_connections": self.curve.rejected if self.curve else 0,
                "parameters": trainer.parameter_count() if trainer else 0,
                "last_losses": trainer.last_metrics if trainer else {},
                "replay_in_learner": replay.in_process,
                **({"data_parallel": self.rank_results} if self.rank_results else {})}
