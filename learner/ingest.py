"""Ingest: receives experience chunks, checks them, de-duplicates them, stores them, acks them.

An actor must say hello first; its hello carries the step spec and the config digest, which
must agree with the learner's (the first accepted spec fixes the learner's model inputs). A
chunk is acked only after replay has stored it, so an ack means the data is safe; a chunk
seen before is acked again and dropped, and of a chunk that overlaps stored steps (one an actor
rebuilt from episode files, cut differently) only the steps not stored yet are stored. Gaps in a stream's step numbering that are never
filled are what ``lost_steps`` counts.

An actor whose steps this learner holds none of (after refilling from its own log directory) is asked, in the
answer to its hello, for up to ``history_steps`` of its logged steps: a learner started again on a machine
without the robot's episode files gets its replay back from the robot (see actor.stream).
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

import zmq

from learner.shards import actor_of
from robotd import steps, wire
from robotd.netutil import bind_or_explain

log = logging.getLogger("learner.ingest")


class _Intervals:
    """Disjoint half-open step intervals of one stream (what has been received)."""

    def __init__(self):
        self.spans: list[list[int]] = []

    def covers(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self.spans)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not covered, in order."""
        return steps.uncovered(self.spans, start, end)

    def covered_until(self, start: int) -> int:
        """The first step at or after ``start`` that is not covered."""
        for lo, hi in self.spans:
            if lo <= start < hi:
                return hi
        return start

    def add(self, start: int, end: int) -> None:
        self.spans.append([start, end])
        self.spans.sort()
        merged = [self.spans[0]]
        for lo, hi in self.spans[1:]:
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.spans = merged

    @property
    def covered(self) -> int:
        return sum(hi - lo for lo, hi in self.spans)

    @property
    def end(self) -> int:
        return self.spans[-1][1] if self.spans else 0


class IngestLedger:
    """Which chunks of which streams arrived: new or duplicate, and what is missing."""

    def __init__(self):
        self.streams: dict[str, _Intervals] = {}
        self.seqs: dict[str, set[int]] = {}
        self.bases: dict[str, int] = {}
        self.duplicate_chunks = 0

    def start_stream(self, stream: str, acked_through: int) -> None:
        """Steps of ``stream`` below ``acked_through`` were acknowledged before (by an earlier learner)."""
        self.bases.setdefault(stream, acked_through)

    def is_duplicate(self, stream: str, seq: int, stream_step: int, n_steps: int) -> bool:
        """True when this chunk (by sequence number or by its steps) was stored already."""
        if seq in self.seqs.get(stream, ()):
            return True
        intervals = self.streams.get(stream)
        return intervals is not None and intervals.covers(stream_step, stream_step + n_steps)

    def already_stored_until(self, stream: str, stream_step: int) -> int:
        """How far from ``stream_step`` on the stream's steps are stored already (a chunk may overlap data
        refilled from episode files)."""
        intervals = self.streams.get(stream)
        return intervals.covered_until(stream_step) if intervals else stream_step

    def missing(self, stream: str, stream_step: int, n_steps: int) -> list[tuple[int, int]]:
        """The step ranges [lo, hi) of a chunk not stored yet (a resent chunk may overlap stored steps anywhere)."""
        intervals = self.streams.get(stream)
        end = stream_step + n_steps
        return intervals.missing(stream_step, end) if intervals else [(stream_step, end)]

    def record(self, stream: str, seq: int | None, stream_step: int, n_steps: int) -> None:
        """Marks stored steps (``seq`` None for steps refilled from episode files). A stream that no hello named (an
        actor's history of an older stream) is counted from its first stored step."""
        self.bases.setdefault(stream, stream_step)
        if seq is not None:
            self.seqs.setdefault(stream, set()).add(seq)
        self.streams.setdefault(stream, _Intervals()).add(stream_step, stream_step + n_steps)

    @property
    def ingested_steps(self) -> int:
        """Unique steps stored."""
        return sum(i.covered for i in self.streams.values())

    def ingested_by_actor(self) -> dict[str, int]:
        """Unique steps stored per actor (a stream is named ACTOR_ID/STREAM)."""
        steps: dict[str, int] = {}
        for stream, intervals in self.streams.items():
            actor = actor_of(stream)
            steps[actor] = steps.get(actor, 0) + intervals.covered
        return steps

    @property
    def lost_steps(self) -> int:
        """Steps of each stream, from where this learner took it over to the newest received, that never arrived."""
        lost = 0
        for stream, intervals in self.streams.items():
            base = self.bases.get(stream, 0)
            if intervals.end > base:      # only what lies above the base: history below it is not a gap filled
                held = sum(hi - max(lo, base) for lo, hi in intervals.spans if hi > base)
                lost += intervals.end - base - held
        return lost

    def holds_actor(self, actor_id: str) -> bool:
        """True when some step of some stream of ``actor_id`` is stored."""
        return any(actor_of(stream) == actor_id and intervals.spans for stream, intervals in self.streams.items())


MAX_BATCH_CHUNKS = 64
"""Chunks the ingest takes at once before storing them (one replay call per shard for all of them)."""
MAX_BATCH_BYTES = 256 * 2**20
"""...or this many bytes of their steps, whichever comes first."""


@dataclass
class _Job:
    """A received chunk waiting in a batch: its new steps (``pieces``: (first step, end, arrays)), or none when it
    is a duplicate; acknowledged once the batch is stored."""
    identity: bytes
    stream: str
    chunk_stream: str
    seq: int
    pieces: list
    duplicate: bool
    exclude: object


class _Batch:
    """The chunks taken at once, and which of their steps and sequence numbers are waiting (a resent chunk that
    arrives in the same batch as its first copy is a duplicate of it)."""

    def __init__(self) -> None:
        self.jobs: list[_Job] = []
        self.reset()

    def reset(self) -> None:
        self._steps: dict[str, _Intervals] = {}
        self._seqs: set[tuple[str, int]] = set()
        self.nbytes = 0

    def empty(self) -> bool:
        return not self.jobs

    def full(self) -> bool:
        return len(self.jobs) >= MAX_BATCH_CHUNKS or self.nbytes >= MAX_BATCH_BYTES

    def holds(self, stream: str, seq: int) -> bool:
        return (stream, seq) in self._seqs

    def missing(self, stream: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """The part of [lo, hi) of ``stream`` not waiting in this batch."""
        waiting = self._steps.get(stream)
        return waiting.missing(lo, hi) if waiting else [(lo, hi)]

    def add(self, job: _Job) -> None:
        self.jobs.append(job)
        self._seqs.add((job.stream, job.seq))
        for lo, hi, arrays in job.pieces:
            self._steps.setdefault(job.stream, _Intervals()).add(lo, hi)
            self.nbytes += sum(array.nbytes for array in arrays.values())


class IngestServer(threading.Thread):
    """ROUTER thread of the experience channel."""

    def __init__(self, context: zmq.Context, address: str, *, config_digest: str, store: Callable[[str, int, dict], None],
                 weights_port: int, spec: dict | None, on_spec: Callable[[dict], None], max_bytes: int,
                 refill: Callable[[dict, "IngestLedger"], int] | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None,
                 exclude: Callable[[str, int, int], bool] | None = None,
                 store_many: Callable[[list[tuple[str, int, dict]]], None] | None = None,
                 history_steps: int = 0):
        """``store`` keeps one chunk's new steps in replay; ``store_many`` (default: ``store`` for each) keeps the
        new steps of every chunk waiting at once, e.g. one replay call per shard for all of them.
        ``history_steps``: asked of an actor whose steps this learner holds none of (0: never asked)."""
        super().__init__(name="ingest", daemon=True)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if secure is not None:
            secure(self.socket)
        self.address = bind_or_explain(self.socket, address, "experience channel (network.experience / --bind)")
        self.config_digest = config_digest
        self.store = store
        self.store_many = store_many or (lambda items: [store(stream, step, arrays) for stream, step, arrays in items])
        self.weights_port = weights_port
        self.spec = spec
        self.action_discrete: bool | None = None     # from the first accepted hello (one-hot actions)
        self.on_spec = on_spec
        self.refill = refill
        # Keeps a stream's step range out of training (a chunk's "exclude": an episode flagged for timing quality).
        self.exclude = exclude
        self.refilled_steps = 0
        self.history_steps = history_steps
        self.instance = uuid.uuid4().hex[:12]
        self.receiver = wire.Receiver("ingest", max_bytes=max_bytes)
        self.ledger = IngestLedger()
        self.peers: dict[bytes, dict] = {}
        self.counters = {"chunks": 0, "refused_chunks": 0, "refused_hellos": 0, "heartbeats": 0, "excluded_episodes": 0,
                         "chunks_before_hello": 0, "history_requests": 0}
        self._logged_refusals: set[bytes] = set()      # peers whose refusal was logged (once each, at most 1000)
        self._halt = threading.Event()
        self.lock = threading.Lock()
        # Set after new steps are stored: a learner holding at its train ratio wakes at once, not on its next poll.
        self.new_steps = threading.Event()

    def stop(self) -> None:
        """Ends the thread and closes the socket."""
        self._halt.set()
        self.join(5.0)

    def _first_refusal(self, identity: bytes) -> bool:
        """True the first time ``identity`` is refused (its refusals are logged once; all are counted)."""
        if identity in self._logged_refusals or len(self._logged_refusals) >= 1000:
            return False
        self._logged_refusals.add(identity)
        return True

    def _refill(self) -> None:
        """Loads what this session already logged (a restarted learner on the robot's log directory)."""
        if self.refill is not None and self.spec is not None:
            with self.lock:
                self.refilled_steps += self.refill(self.spec, self.ledger)
            self.refill = None

    def run(self) -> None:
        """Takes every message waiting (up to MAX_BATCH_CHUNKS chunks or MAX_BATCH_BYTES of them) at once: the
        chunks' new steps go to replay in one ``store_many`` (one replay call per shard however many streams
        sent them), and each chunk is acknowledged only once that returned. Any other message first stores what
        is waiting, so messages take effect in the order they came."""
        self._refill()
        try:
            while not self._halt.is_set():
                if not self.socket.poll(100):
                    continue
                batch = _Batch()
                while True:
                    frames = self.socket.recv_multipart(copy=False)
                    identity = frames[0].bytes
                    message = self.receiver.decode(frames[1:])
                    if message is not None:
                        try:
                            if message.kind == wire.Kind.CHUNK:
                                self._chunk(identity, message, batch)
                            else:
                                self._flush(batch)
                                self._handle(identity, message)
                        except Exception:  # noqa: BLE001 - one bad message must not stop ingest
                            log.exception("ingest: message %s from %r dropped", message.kind.name, identity)
                    if batch.full() or not self.socket.poll(0):
                        break
                self._flush(batch)
        finally:
            self.socket.close(0)

    def _flush(self, batch: "_Batch") -> None:
        """Stores the batch's new steps in one ``store_many``, records them and acknowledges its chunks; when the
        store fails nothing is recorded or acknowledged (the actors resend, nothing is lost)."""
        if batch.empty():
            return
        jobs, batch.jobs = batch.jobs, []
        batch.reset()
        try:
            self.store_many([(job.stream, lo, arrays) for job in jobs for lo, _, arrays in job.pieces])
        except Exception:  # noqa: BLE001 - the replay failed: nothing acknowledged, so the actors resend
            log.exception("ingest: storing %d chunks failed; not acknowledged, the actors resend them", len(jobs))
            return
        with self.lock:
            for job in jobs:
                if job.duplicate:
                    self.ledger.duplicate_chunks += 1
                    continue
                for lo, hi, _ in job.pieces:
                    self.ledger.record(job.stream, job.seq, lo, hi - lo)
                self.counters["chunks"] += 1
        if any(job.pieces for job in jobs):
            self.new_steps.set()
        for job in jobs:
            self._excluded(job.stream, job.exclude)
            self._reply(job.identity, wire.Kind.ACK, {"seq": job.seq, "stream": job.chunk_stream})

    def _reply(self, identity: bytes, kind: wire.Kind, meta: dict) -> None:
        try:
            wire.send_to(self.socket, identity, kind, meta, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _handle(self, identity: bytes, message: wire.Message) -> None:
        kind, meta = message.kind, message.meta
        if kind == wire.Kind.HELLO:
            self._hello(identity, meta)
        elif kind == wire.Kind.HEARTBEAT:
            self.counters["heartbeats"] += 1
            self._reply(identity, wire.Kind.HEARTBEAT, {"instance": self.instance})
        elif kind == wire.Kind.CHUNK:
            batch = _Batch()
            self._chunk(identity, message, batch)
            self._flush(batch)

    def _hello(self, identity: bytes, meta: dict) -> None:
        reason = None
        if meta.get("config_digest") != self.config_digest:
            # The reply never names the expected digest (a stranger could replay it); the log names both.
            reason = ("config digest differs from the learner's: start the actor and the learner with the same "
                      "robot, cameras, task and model config (the learner's log names both)")
        spec = meta.get("spec")
        if reason is None and not isinstance(spec, dict):
            reason = "hello has no step spec: upgrade the actor"
        if reason is None:
            spec = steps.parse_spec(spec)
            if spec is None:
                reason = "hello's step spec is not {key: [shape, dtype]}: upgrade the actor"
            elif self.spec is None:
                self.spec = spec
                self.action_discrete = bool(meta.get("action_discrete", False))
                self.on_spec(spec)
                self._refill()
            else:
                mismatch = steps.spec_mismatch(self.spec, spec)
                if mismatch:
                    reason = f"step spec differs from the learner's: {mismatch}: use the same robot, cameras and task"
        if reason is not None:
            self.counters["refused_hellos"] += 1
            if self._first_refusal(identity):
                log.warning("refused actor %s: %s (further refusals of this peer are counted, not logged)",
                            str(meta.get("actor_id"))[:60], reason)
                if meta.get("config_digest") != self.config_digest:
                    log.warning("actor %s sent config digest %s; this learner's is %s",
                                str(meta.get("actor_id"))[:60], str(meta.get("config_digest"))[:60], self.config_digest)
            self._reply(identity, wire.Kind.REFUSE, {"reason": reason})
            return
        peer = {"actor_id": meta.get("actor_id"), "stream": meta.get("stream")}
        acked_through = meta.get("acked_through", 0)
        previous = _previous_streams(meta.get("previous_streams"))
        with self.lock:
            self.ledger.start_stream(f"{peer['actor_id']}/{peer['stream']}",
                                     acked_through if isinstance(acked_through, int) else 0)
            for name, through in previous.items():       # chunks an earlier actor spilled, sent by this one
                self.ledger.start_stream(f"{peer['actor_id']}/{name}", through)
            history = self.history_steps if self.history_steps and not self.ledger.holds_actor(peer["actor_id"]) else 0
        if self.peers.get(identity) != peer:
            log.info("actor %s (stream %s) connected%s", meta.get("actor_id"), meta.get("stream"),
                     f"; none of its steps held here, so it is asked for up to {history} logged ones" if history else "")
            self.counters["history_requests"] += int(bool(history))
        self.peers[identity] = peer
        self._reply(identity, wire.Kind.HELLO, {"role": "learner", "session": meta.get("session", ""),
                                                "instance": self.instance, "weights_port": self.weights_port,
                                                "history_steps": history})

    def _chunk(self, identity: bytes, message: wire.Message, batch: "_Batch") -> None:
        """Checks a chunk and adds what it holds that is not stored yet (nor waiting in ``batch``) to the batch;
        it is acknowledged when the batch is stored."""
        meta = message.meta
        peer = self.peers.get(identity)
        if peer is None:
            self.counters["chunks_before_hello"] += 1
            if self._first_refusal(identity):
                log.warning("chunk from a peer that said no accepted hello (actor %s): refused, not stored",
                            str(meta.get("actor_id"))[:60])
            self._reply(identity, wire.Kind.REFUSE, {"reason": "say hello first", "code": "hello_required"})
            return
        chunk_stream = meta.get("stream", peer["stream"])
        stream = f"{meta['actor_id']}/{chunk_stream}"
        # Types and ranges of every field were checked by robotd.wire (FIELDS); the stream may come from the hello.
        stream_step, n_steps, seq = meta["stream_step"], meta["n_steps"], meta["seq"]
        problem = None if isinstance(chunk_stream, str) else "the actor's hello named no stream"
        problem = problem or steps.check_against(self.spec, message.arrays, n_steps)
        if problem:
            self.counters["refused_chunks"] += 1
            log.warning("chunk %s seq %d dropped: %s", stream, seq, problem)
            return
        with self.lock:
            duplicate = self.ledger.is_duplicate(stream, seq, stream_step, n_steps) or batch.holds(stream, seq)
            # Only the steps not stored yet (nor waiting): chunks rebuilt from episode files may be cut differently.
            ranges = [] if duplicate else [piece for lo, hi in self.ledger.missing(stream, stream_step, n_steps)
                                           for piece in batch.missing(stream, lo, hi)]
        # Views of the received frames, not copies: the replay copies what it keeps (a Ray actor's arguments are
        # serialised anyway), so a copy here would only be a second one.
        pieces = [(lo, hi, {key: value[lo - stream_step:hi - stream_step] for key, value in message.arrays.items()})
                  for lo, hi in ranges]
        batch.add(_Job(identity, stream, chunk_stream, seq, pieces, duplicate, meta.get("exclude")))

    def _excluded(self, stream: str, excluded) -> None:
        """A chunk's ``exclude`` (an episode flagged for timing quality): its steps kept out of training."""
        if self.exclude is not None and isinstance(excluded, dict):
            start, count = excluded.get("from"), excluded.get("n")
            if isinstance(start, int) and isinstance(count, int) and start >= 0 and 0 < count <= 10_000_000:
                if self.exclude(stream, start, count):
                    self.counters["excluded_episodes"] += 1
                    log.info("steps %d..%d of %s kept out of training: %s", start, start + count - 1, stream,
                             str(excluded.get("reasons", ""))[:300])

    def stats(self) -> dict:
        """Counters for status and the session summary."""
        with self.lock:
            return {**self.counters, "ingested_steps": self.ledger.ingested_steps, "refilled_steps": self.refilled_steps,
                    "duplicate_chunks": self.ledger.duplicate_chunks, "lost_steps": self.ledger.lost_steps,
                    "malformed": self.receiver.malformed, "actors": len(self.peers),
                    "ingested_steps_by_actor": self.ledger.ingested_by_actor()}


MAX_PREVIOUS_STREAMS = 64


def _previous_streams(value) -> dict[str, int]:
    """A hello's ``previous_streams`` ({stream: acked_through}, what an earlier actor left to send), checked: an
    entry that is not a short string mapped to an int >= 0 is left out, and at most MAX_PREVIOUS_STREAMS are taken."""
    if not isinstance(value, dict):
        return {}
    taken = {}
    for name, through in list(value.items())[:MAX_PREVIOUS_STREAMS]:
        if isinstance(name, str) and 0 < len(name) <= 64 and isinstance(through, int) \
                and not isinstance(through, bool) and through >= 0:
            taken[name] = through
    return taken
