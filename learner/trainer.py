"""The trainer loop: sample replay, update the agent, publish versioned weights, checkpoint.

Batches are prefetched by a thread so sampling (a Ray call) overlaps the update. The loop runs
free (as fast as it can, DayDreamer style) or, with ``train_ratio > 0``, holds replayed steps
at that multiple of collected steps by waiting, never by slowing the robot.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zmq

from learner.dreamer import Dreamer
from learner.report import write_report_videos
from learner.sizes import model_config
from robotd import session, steps, wire
from robotd.config import Config

log = logging.getLogger("learner.trainer")

CHECKPOINT_FILE = "latest.pt"
REPUBLISH_S = 2.0


class Prefetcher(threading.Thread):
    """Keeps up to ``depth`` training batches ready."""

    def __init__(self, sample: Callable[[], dict | None], depth: int = 2):
        super().__init__(name="prefetch", daemon=True)
        self.sample = sample
        self.batches: queue.Queue = queue.Queue(maxsize=depth)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            batch = self.sample()
            if batch is None:
                time.sleep(0.05)
                continue
            while not self._halt.is_set():
                try:
                    self.batches.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def get(self, timeout_s: float) -> dict | None:
        """The next batch, or None if none came within ``timeout_s``."""
        try:
            return self.batches.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Ends the thread."""
        self._halt.set()
        self.join(5.0)


class WeightPublisher:
    """PUB socket that sends the policy weights with a version number (latest only)."""

    def __init__(self, socket: zmq.Socket):
        self.socket = socket
        self.version = 0
        self._last: list | None = None
        self._last_sent = 0.0

    def publish(self, state: dict[str, torch.Tensor], replayed_steps: int) -> int:
        """Publishes a new version with the learner's replayed steps (a lockstep actor paces itself by them);
        returns the version."""
        self.version += 1
        arrays = {name: tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype).numpy()
                  for name, tensor in state.items()}
        self._last = wire.encode(wire.Kind.WEIGHTS, {"version": self.version, "published_at": time.time(),
                                                      "replayed_steps": int(replayed_steps)}, arrays)
        self._send()
        return self.version

    def republish(self) -> None:
        """Sends the latest version again so actors that joined late get it."""
        if self._last is not None and time.monotonic() - self._last_sent > REPUBLISH_S:
            self._send()

    def _send(self) -> None:
        try:
            self.socket.send_multipart(self._last, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass
        self._last_sent = time.monotonic()


class Trainer:
    """Owns the agent; built once the step spec is known (first actor hello or a checkpoint)."""

    def __init__(self, config: Config, spec: dict, device: str, logdir: Path, *, action_discrete: bool = False):
        self.config = config
        self.spec = spec
        self.device = device
        self.logdir = logdir
        self.action_discrete = bool(action_discrete)
        obs_spec = steps.obs_spec_of(spec)
        self.action_dim = int(spec[steps.ACTION][0][0])
        self.agent = Dreamer(obs_spec, self.action_dim, model_config(config.learner.model), device=device,
                             discrete=self.action_discrete)
        self.replayed_steps = 0
        # Data-parallel: every update trains on this many batches, one per rank (learner.parallel).
        self.ranks = 1
        self.last_metrics: dict[str, float] = {}
        self._replay_keys: np.ndarray | None = None

    @property
    def replay_context(self) -> bool:
        """Whether batches should be sampled with replay context (``replay.sample(..., context=True)``) and the
        posterior latents written back after each update (:meth:`latent_writeback`)."""
        return bool(self.agent.config.replay_context)

    @property
    def updates(self) -> int:
        """Updates done, resumed ones included."""
        return self.agent.updates

    def parameter_count(self) -> int:
        """Trainable parameters of the whole agent."""
        return sum(p.numel() for p in self.agent.parameters())

    def prepare(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A replay batch as the tensors ``train_step`` takes, in pinned memory when the agent is on a GPU.

        Runs in the prefetch thread, so the copies (Ray hands back read-only arrays) and the
        pinning happen off the update's critical path, and the host-to-device copy can overlap.
        """
        tensors = {key: torch.from_numpy(np.require(value, requirements="W"))
                   for key, value in steps.training_batch(batch).items()}
        if self.agent.device.type == "cuda":
            tensors = {key: value.pin_memory() for key, value in tensors.items()}
        return tensors

    def train(self, batch: dict[str, np.ndarray] | dict[str, torch.Tensor]) -> dict[str, float]:
        """One full update (world model + actor + critic) on a replay batch or one made by :meth:`prepare`."""
        tensors = batch if isinstance(batch.get("reward"), torch.Tensor) else self.prepare(batch)
        metrics = self.agent.train_step(tensors)
        keys = tensors.get("replay_keys")
        self._replay_keys = keys.numpy() if keys is not None and self.replay_context else None
        self.replayed_steps += int(tensors["reward"].numel()) * self.ranks
        self.last_metrics = metrics
        return metrics

    def latent_writeback(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """Arguments for ``ReplayBuffer.update_latents`` after :meth:`train` on a batch sampled with context:
        ``(replay_keys, deter (float16), stoch classes, classes)``; None when there is nothing to write back."""
        if self._replay_keys is None:
            return None
        keys, self._replay_keys = self._replay_keys, None
        deter, stoch = self.agent.posterior_arrays(np.float16)
        return keys, deter, stoch, self.agent.config.classes

    def report(self, batch: dict[str, np.ndarray] | dict[str, torch.Tensor]
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The agent's world-model report (losses and open-loop videos) on a batch; does not train."""
        tensors = batch if isinstance(batch.get("reward"), torch.Tensor) else self.prepare(batch)
        return self.agent.report(tensors)

    def save(self, version: int) -> Path:
        """Writes checkpoints/latest.pt atomically (loadable with weights_only=True)."""
        path = self.logdir / session.CHECKPOINTS / CHECKPOINT_FILE
        tmp = path.with_suffix(".tmp")
        torch.save({"agent": self.agent.checkpoint(), "version": version, "replayed_steps": self.replayed_steps,
                    "action_discrete": self.action_discrete,
                    "spec": {key: [list(shape), dtype] for key, (shape, dtype) in self.spec.items()}}, tmp)
        os.replace(tmp, path)
        return path

    def start_from(self, state: dict, what: str) -> int:
        """Restores from a checkpoint made elsewhere (``what`` names it in errors), refusing one trained on other
        steps than this trainer's; returns its weights version."""
        mismatch = steps.spec_mismatch(self.spec, {key: (tuple(shape), dtype)
                                                   for key, (shape, dtype) in state["spec"].items()})
        if mismatch:
            raise ValueError(f"{what} was trained on other steps than these ({mismatch}): use a checkpoint trained "
                             f"with the same robot, cameras and task")
        return self.load(state)

    def write_report(self, batch, metrics=None) -> list[Path]:
        """The world-model report on a batch: scalars to ``metrics`` (when given), open-loop videos as GIFs in
        the log directory's reports/. Never raises: a report must not stop training."""
        try:
            scalars, videos = self.report(batch)
            if metrics is not None:
                metrics.write(self.updates, scalars)
            written = write_report_videos(self.logdir, self.updates, videos)
        except Exception:  # noqa: BLE001 - a report must never stop training
            log.exception("world-model report failed; training goes on")
            return []
        for path in written:
            log.info("world-model report: %s", path)
        return written

    def load(self, state: dict) -> int:
        """Restores from a checkpoint dict; returns its weights version."""
        self.agent.load_checkpoint(state["agent"])
        self.replayed_steps = int(state.get("replayed_steps", 0))
        return int(state.get("version", 0))


def resolve_device(choice: str) -> str:
    """The torch device for learner.device: auto picks cuda when torch sees one; cuda without one is an error."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device = cuda but torch sees no CUDA device: set learner.device=cpu or auto")
    return choice


def read_checkpoint(path: Path) -> dict | None:
    """A checkpoint saved by Trainer.save, or None when there is none."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
