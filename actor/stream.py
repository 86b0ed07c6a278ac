"""Streams numbered experience chunks to the learner, off the control loop.

A background thread owns the DEALER socket. The control loop only puts encoded chunks on a
queue (never blocks). The thread keeps every chunk in the spool until the learner acks it,
resends chunks not acked in time (backing off, see actor.spool), and after the learner restarts
(a new instance id in its hello or heartbeat) says hello again and resends everything pending. The
learner drops duplicates, so resending is always safe. When the disk spill reaches its bound the
stream applies ``spool_full``: "stop" raises ``spool_full_event`` for the actor to stop collecting,
"drop_oldest" drops the oldest spilled chunks (counted in ``spool.dropped_steps``).

The thread also keeps each stream's acknowledged-through marker in the spool directory (see
actor.spool.AckMarkers): this actor's own stream and every earlier stream it sends, written when it
changed at most once every MARKER_EVERY_S and at exit; an earlier stream's marker goes once all of it
is acknowledged. A chunk the learner dropped under ``drop_oldest`` counts as settled there, as in the hello.

A learner that holds none of this actor's steps (one started again on a machine without this log directory)
asks in its hello answer for up to ``history_steps`` of them; the thread then sends, beside the live chunks and
after them, chunks rebuilt from the episode files (``history``, see actor.spool.history_chunks), a few at a time,
each until acknowledged. They are not spooled: a learner that restarts again asks again.

A chunk put on the queue wakes the thread at once (an eventfd it polls beside the socket), so it leaves within
microseconds rather than at the thread's next poll timeout.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time

import zmq

from actor.spool import AckMarkers, ChunkSpool
from robotd import wire

log = logging.getLogger("actor.stream")

HELLO_RETRY_S = 1.0
HEARTBEAT_S = 1.0
UNREACHABLE_WARN_S = 5.0
SPOOL_FULL_POLICIES = ("stop", "drop_oldest")
MARKER_EVERY_S = 1.0
HISTORY_WINDOW = 4
"""History chunks sent and not yet acknowledged, at most."""


class ExperienceStream(threading.Thread):
    """The actor's side of the experience channel."""

    def __init__(self, context: zmq.Context, address: str, hello_meta: dict, spool: ChunkSpool, *,
                 resend_after_s: float, max_bytes: int, secure=None, spool_full: str = "stop",
                 first_episode_id: int = 0, history=None):
        """``history(limit_steps, until)``: the chunks a learner that holds none of this actor's steps asks for,
        as an iterator of (stream, seq, frames, n_steps) (actor.spool.history_chunks); None sends none."""
        super().__init__(name="experience-stream", daemon=True)
        self.context = context
        self.address = address
        self.hello_meta = hello_meta
        self.spool = spool
        if not spool.stream:
            spool.stream = str(hello_meta.get("stream", ""))      # chunks and acks name this actor's stream
        self.resend_after_s = resend_after_s
        self.receiver = wire.Receiver("actor-stream", max_bytes=max_bytes)
        self.secure = secure
        if spool_full not in SPOOL_FULL_POLICIES:
            raise ValueError(f"spool_full {spool_full!r}: use one of {', '.join(SPOOL_FULL_POLICIES)}")
        self.spool_full = spool_full
        self.spool_full_event = threading.Event()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.accepted = threading.Event()
        self.refused_reason: str | None = None
        self.learner_reply: dict = {}
        self.instance: str | None = None
        self.sent_chunks = 0
        self.acked_chunks = 0
        self.resent_chunks = 0
        self.reconnects = 0
        self.history = history
        self.history_sent_chunks = 0
        self.history_acked_steps = 0
        self._history = None                       # the iterator of the history being sent
        self._history_flight: dict[tuple[str, int], list] = {}     # key -> [frames, n_steps, sent at or None]
        self._hello_acked = 0                      # acked_through of the last hello: below it, earlier learners'
        self._halt = threading.Event()
        self._drain_deadline: float | None = None
        self._lock = threading.Lock()
        self.last_heard_s = time.monotonic()
        self.emitted_steps = 0
        self.markers = AckMarkers(spool.spill_dir)
        self._last_episode = first_episode_id        # the episode of the newest chunk taken (a lower bound of the next)
        self._marked: dict[str, tuple[int, int] | None] = {}
        self._marker_s = 0.0
        self._marker_failed = False
        self._wake: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()

    def put(self, seq: int, frames: list, n_steps: int, stream_step: int, episode_id: int | None = None) -> None:
        """Hands a chunk to the stream (called by the control loop; returns at once)."""
        self.inbox.put((seq, frames, n_steps, stream_step, episode_id))
        self._signal()

    def _signal(self) -> None:
        """Wakes the thread (a no-op once the stream is closed)."""
        with self._wake_lock:
            if self._wake is not None:
                try:
                    os.eventfd_write(self._wake, 1)
                except OSError:          # the counter is full: the thread has plenty of wake-ups waiting already
                    pass

    def write_markers(self) -> None:
        """Writes the acknowledged-through marker of each stream whose value changed since the last write: this
        actor's own (its oldest pending chunk, else everything emitted) and every earlier stream with chunks in
        the spool; removes the marker of an earlier stream that has none left. A marker that cannot be written is
        logged once; the stream goes on."""
        with self._lock:
            oldest = self.spool.oldest_pending()
            state = {self.spool.stream: (self.emitted_steps, self._last_episode) if oldest is None
                     else (oldest[0], self._last_episode if oldest[1] is None else oldest[1])}
            for stream in set(self._marked) | set(self.spool.other_streams()):
                if stream != self.spool.stream:
                    found = self.spool.oldest_pending(stream)
                    state[stream] = None if found is None else (found[0], found[1] or 0)
        for stream, value in state.items():
            if stream in self._marked and self._marked[stream] == value:
                continue
            try:
                if value is None:
                    self.markers.remove(stream)
                else:
                    self.markers.write(stream, *value)
            except (OSError, ValueError) as exc:
                if not self._marker_failed:
                    log.warning("acknowledgement marker of stream %s not written (%s): after a kill, the next actor "
                                "resends only what the spool holds", stream, exc)
                    self._marker_failed = True
                continue
            self._marked[stream] = value

    @property
    def pending(self) -> int:
        """Chunks not yet acknowledged (queued or in the spool)."""
        with self._lock:
            return len(self.spool) + self.inbox.qsize()

    def close(self, drain_timeout_s: float) -> bool:
        """Stops after every chunk is acked or ``drain_timeout_s`` passes; True if all were acked."""
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._halt.set()
        self._signal()
        self.join(drain_timeout_s + 5.0)
        if not self.is_alive():
            with self._wake_lock:
                if self._wake is not None:
                    os.close(self._wake)
                    self._wake = None
        return self.pending == 0

    def run(self) -> None:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 10_000)
        if self.secure is not None:
            self.secure(socket)
        socket.connect(self.address)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        last_hello = last_heartbeat = 0.0
        warned = False
        try:
            while True:
                now = time.monotonic()
                self._take_inbox()
                if now - self._marker_s >= MARKER_EVERY_S:
                    self.write_markers()
                    self._marker_s = now
                if self._halt.is_set() and (self.pending == 0 or now >= self._drain_deadline):
                    break
                if not self.accepted.is_set():
                    if now - last_hello >= HELLO_RETRY_S and self.refused_reason is None:
                        self._try_send(socket, wire.Kind.HELLO, self._hello())
                        last_hello = now
                else:
                    self._send_due(socket, now)
                    self._send_history(socket, now)
                    if now - last_heartbeat >= HEARTBEAT_S:
                        self._try_send(socket, wire.Kind.HEARTBEAT, {"actor_id": self.hello_meta["actor_id"]})
                        last_heartbeat = now
                if not warned and now - self.last_heard_s > UNREACHABLE_WARN_S:
                    log.warning("learner at %s not answering for %.0f s: is `robotd learner` running there? "
                                "Experience is kept and sent when it answers", self.address, now - self.last_heard_s)
                    warned = True
                events = dict(poller.poll(10))
                if self._wake in events:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                if socket in events:
                    while socket.poll(0):
                        message = self.receiver.decode(socket.recv_multipart(copy=False))
                        if message is not None:
                            self.last_heard_s = time.monotonic()
                            warned = False
                            self._on_message(message)
        finally:
            socket.close(0)
            self._take_inbox()
            self.write_markers()

    @staticmethod
    def _try_send(socket, kind: wire.Kind, meta: dict) -> None:
        """Sends a hello or heartbeat without blocking; a full send buffer skips it (the next one follows)."""
        try:
            wire.send(socket, kind, meta, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("experience send buffer full: %s skipped", kind.name)

    def _hello(self) -> dict:
        """Hello with ``acked_through``: every stream step below it was acknowledged by some learner."""
        with self._lock:
            lowest = self.spool.lowest_pending_step()
            previous = self.spool.other_streams()
        hello = {**self.hello_meta, "acked_through": self.emitted_steps if lowest is None else lowest}
        self._hello_acked = hello["acked_through"]
        if previous:
            hello["previous_streams"] = previous
        return hello

    def _take_inbox(self) -> None:
        while True:
            try:
                seq, frames, n_steps, stream_step, episode_id = self.inbox.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self.spool.add(seq, frames, n_steps, stream_step, episode_id=episode_id)
                self.emitted_steps = max(self.emitted_steps, stream_step + n_steps)
                if episode_id is not None:
                    self._last_episode = max(self._last_episode, episode_id)
                if self.spool.full:
                    self._on_full()

    def _on_full(self) -> None:
        """The disk spill reached its bound: apply the policy (the lock is held)."""
        bound_mb = (self.spool.max_spill_bytes or 0) / 2**20
        if self.spool_full == "drop_oldest":
            dropped = 0
            while self.spool.full and self.spool.drop_oldest_spilled():
                dropped += 1
            if dropped and self.spool.dropped_chunks == dropped:
                log.error("spool full (%.0f MB of unacknowledged experience, actor.spool_max_mb): dropping the oldest "
                          "spilled chunks (actor.spool_full drop_oldest); they stay in the episode files but this "
                          "learner will not get them", bound_mb)
        elif not self.spool_full_event.is_set():
            log.error("spool full (%.0f MB of unacknowledged experience, actor.spool_max_mb): the learner at %s has "
                      "not acknowledged it; stopping collection (actor.spool_full stop)", bound_mb, self.address)
            self.spool_full_event.set()

    def _send_due(self, socket, now: float) -> None:
        for key in self.spool.due(now, self.resend_after_s):
            first_time = not self.spool.was_sent(key)
            try:
                socket.send_multipart(self.spool.frames(key), flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except (OSError, ValueError) as exc:     # a spilled file gone or damaged: what it held is lost
                log.error("spooled chunk %s/%d unreadable (%s): dropped", key[0], key[1], exc)
                with self._lock:
                    self.spool.drop(key)
                continue
            self.spool.mark_sent(key, now)
            self.sent_chunks += 1
            self.resent_chunks += int(not first_time)

    def _start_history(self, limit_steps: int) -> None:
        """A new learner answered: drops a history still being sent to an earlier one, and starts one when this
        learner asks for it. Of this actor's own stream only what earlier learners acknowledged is history, and of
        an earlier stream with chunks in the spool, what lies below them."""
        self._history, self._history_flight = None, {}
        if self.history is None or not limit_steps:
            return
        with self._lock:
            pending = {stream: self.spool.oldest_pending(stream) for stream in self.spool.other_streams()}
        until = {stream: found[0] for stream, found in pending.items() if found is not None}
        until[self.spool.stream] = self._hello_acked
        try:
            self._history = iter(self.history(limit_steps, until))
        except Exception as exc:  # noqa: BLE001 - the live stream goes on without it
            log.warning("learner asked for this actor's history; not sent: %s", exc)
            return
        log.info("learner holds none of this actor's steps: sending up to %d of them from the episode files",
                 limit_steps)

    def _send_history(self, socket, now: float) -> None:
        """Sends history chunks after the live ones: up to HISTORY_WINDOW unacknowledged, each again after
        ``resend_after_s`` until acknowledged."""
        while self._history is not None and len(self._history_flight) < HISTORY_WINDOW:
            try:
                stream, seq, frames, n_steps = next(self._history)
            except StopIteration:
                self._history = None
                log.info("history sent: %d chunks", self.history_sent_chunks)
                break
            except Exception as exc:  # noqa: BLE001 - a damaged episode file ends the history, not the stream
                self._history = None
                log.warning("history stopped after %d chunks: %s", self.history_sent_chunks, exc)
                break
            self._history_flight[(stream, seq)] = [frames, n_steps, None]
        for entry in self._history_flight.values():
            if entry[2] is None or now - entry[2] >= self.resend_after_s:
                try:
                    socket.send_multipart(entry[0], flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                self.history_sent_chunks += int(entry[2] is None)
                entry[2] = now

    def _on_message(self, message: wire.Message) -> None:
        kind, meta = message.kind, message.meta
        if kind == wire.Kind.ACK:
            stream = meta.get("stream")
            with self._lock:
                self.acked_chunks += int(self.spool.ack(meta["seq"], stream if isinstance(stream, str) else None))
            entry = self._history_flight.pop((stream, meta["seq"]), None)
            if entry is not None:
                self.history_acked_steps += entry[1]
        elif kind == wire.Kind.HELLO:
            self.learner_reply = meta
            instance = meta.get("instance")
            if self.accepted.is_set() and instance == self.instance:
                return                      # the answer to a repeated hello: nothing new
            if self.instance is not None and instance != self.instance:
                self.reconnects += 1
                log.warning("learner restarted (instance %s -> %s): resending %d unacknowledged chunks",
                            self.instance, instance, len(self.spool))
            self.instance = instance
            self.accepted.set()
            with self._lock:
                self.spool.resend_all()
            self._start_history(meta.get("history_steps", 0))
        elif kind == wire.Kind.HEARTBEAT:
            instance = meta.get("instance")
            if self.instance is not None and instance != self.instance:
                self.accepted.clear()       # a new learner: say hello again
        elif kind == wire.Kind.REFUSE:
            if meta.get("code") == "hello_required":
                self.accepted.clear()
                return
            self.refused_reason = meta["reason"]
            log.error("learner refused this actor: %s", meta["reason"])
