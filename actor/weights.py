"""Receives versioned policy weights in the background; the control loop swaps them in between steps."""
from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import numpy as np
import zmq

from robotd import wire

log = logging.getLogger("actor.weights")


class Weights(NamedTuple):
    """One published version of the policy, with the learner's count of replayed steps when it was published."""

    version: int
    published_at: float
    replayed_steps: int
    arrays: dict[str, np.ndarray]


class WeightSubscriber(threading.Thread):
    """SUB socket thread that keeps only the newest weights newer than what the actor runs."""

    def __init__(self, context: zmq.Context, address: str, *, max_bytes: int, secure=None):
        super().__init__(name="weights", daemon=True)
        self.context = context
        self.address = address
        self.receiver = wire.Receiver("actor-weights", max_bytes=max_bytes)
        self.secure = secure
        self._lock = threading.Lock()
        self._newest: Weights | None = None
        self._seen_version = 0
        self._halt = threading.Event()
        self.received = 0

    def take(self) -> Weights | None:
        """The newest unseen weights, or None; never blocks long."""
        with self._lock:
            newest, self._newest = self._newest, None
        return newest

    def stop(self) -> None:
        """Ends the thread."""
        self._halt.set()
        self.join(2.0)

    def run(self) -> None:
        socket = self.context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 4)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        if self.secure is not None:
            self.secure(socket)
        socket.connect(self.address)
        try:
            while not self._halt.is_set():
                if not socket.poll(100):
                    continue
                message = self.receiver.decode(socket.recv_multipart(copy=False), expect=[wire.Kind.WEIGHTS])
                if message is None or message.meta["version"] <= self._seen_version:
                    continue
                arrays = {name: np.array(value) for name, value in message.arrays.items()}
                self._seen_version = message.meta["version"]
                self.received += 1
                with self._lock:
                    self._newest = Weights(message.meta["version"], float(message.meta.get("published_at", 0.0)),
                                           message.meta["replayed_steps"], arrays)
        finally:
            socket.close(0)
