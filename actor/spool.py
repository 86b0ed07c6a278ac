"""Chunks kept until the learner acknowledges them: in memory, spilling the oldest to disk.

A chunk is stored as the encoded wire frames it is sent as, so a resend is byte-identical and
the learner can drop it as a duplicate. Spilled chunks are plain files of length-prefixed
frames (``<stream>-<seq>.chunk``) written by this actor; nothing is unpickled. Chunks are keyed
by ``(stream, seq)``: an actor started again on the same log directory adopts the files an
earlier actor spilled (``adopt``) and sends them under their own stream.

The disk spill has a bound (``max_spill_bytes``); the stream applies the configured policy when
it is reached (stop collecting, or drop the oldest spilled chunks, counted). Resends back off:
a chunk sent k times waits ``resend_after_s * 2**(k-1)`` (at most ``max_backoff_s``) before the
next try, so a frozen learner is not flooded; a learner that says hello again gets everything at once.
"""
from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from pathlib import Path

from robotd import wire

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
MAX_BACKOFF_S = 30.0

log = logging.getLogger("actor.spool")

Key = tuple[str, int]


def _write_frames(path: Path, frames: list[bytes]) -> int:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(_COUNT.pack(len(frames)))
        for frame in frames:
            handle.write(_LENGTH.pack(len(frame)))
            handle.write(frame)
    os.replace(tmp, path)
    return path.stat().st_size


def _read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    (count,) = _COUNT.unpack_from(data, 0)
    offset, frames = _COUNT.size, []
    for _ in range(count):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ValueError(f"{path.name} is truncated")
        frames.append(data[offset:offset + length])
        offset += length
    return frames


class ChunkSpool:
    """Unacknowledged chunks by ``(stream, seq)``, with when each was last sent and how often."""

    def __init__(self, spill_dir: str | Path, memory_chunks: int, *, stream: str = "",
                 max_spill_bytes: int | None = None, max_backoff_s: float = MAX_BACKOFF_S):
        self.spill_dir = Path(spill_dir)
        self.memory_chunks = memory_chunks
        self.stream = stream
        self.max_spill_bytes = max_spill_bytes
        self.max_backoff_s = max_backoff_s
        self._memory: OrderedDict[Key, list[bytes]] = OrderedDict()
        self._spilled: OrderedDict[Key, Path] = OrderedDict()
        self._spill_size: dict[Key, int] = {}
        self._sent_at: dict[Key, float | None] = {}
        self._tries: dict[Key, int] = {}
        self._steps: dict[Key, int] = {}
        self._first_step: dict[Key, int] = {}
        self.spilled_total = 0
        self.spilled_bytes = 0
        self.dropped_chunks = 0
        self.dropped_steps = 0
        self.adopted_chunks = 0

    def __len__(self) -> int:
        return len(self._sent_at)

    def key(self, seq: int, stream: str | None = None) -> Key:
        """The key of chunk ``seq`` of ``stream`` (this actor's own stream when None)."""
        return (self.stream if stream is None else stream, seq)

    @property
    def pending_steps(self) -> int:
        """Steps in chunks not yet acknowledged."""
        return sum(self._steps.values())

    @property
    def full(self) -> bool:
        """True when the disk spill holds more than ``max_spill_bytes``."""
        return self.max_spill_bytes is not None and self.spilled_bytes > self.max_spill_bytes

    def add(self, seq: int, frames: list, n_steps: int, stream_step: int) -> None:
        """Keeps a new chunk of this actor's stream (its frames are copied to bytes here)."""
        key = self.key(seq)
        self._memory[key] = [bytes(frame) for frame in frames]
        self._register(key, n_steps, stream_step)
        while len(self._memory) > self.memory_chunks:
            self._spill_oldest()

    def _register(self, key: Key, n_steps: int, stream_step: int) -> None:
        self._sent_at[key] = None
        self._tries[key] = 0
        self._steps[key] = n_steps
        self._first_step[key] = stream_step

    def _spill_oldest(self) -> None:
        key, frames = self._memory.popitem(last=False)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{key[0]}-{key[1]:012d}.chunk"
        size = _write_frames(path, frames)
        self._spilled[key] = path
        self._spill_size[key] = size
        self.spilled_bytes += size
        self.spilled_total += 1

    def drop_oldest_spilled(self) -> int:
        """Forgets the oldest spilled chunk (its file is deleted); returns its steps (0 when none is spilled)."""
        if not self._spilled:
            return 0
        key = next(iter(self._spilled))
        steps = self._steps.get(key, 0)
        self._forget(key)
        self.dropped_chunks += 1
        self.dropped_steps += steps
        return steps

    def spill_all(self) -> int:
        """Writes every chunk still in memory to disk (at exit, for the next actor); returns how many."""
        count = 0
        while self._memory:
            self._spill_oldest()
            count += 1
        return count

    def drop(self, key: Key) -> None:
        """Forgets chunk ``key`` without an ack (counted as dropped)."""
        if key in self._sent_at:
            self.dropped_chunks += 1
            self.dropped_steps += self._steps.get(key, 0)
            self._forget(key)

    def frames(self, key: Key) -> list[bytes]:
        """The frames of chunk ``key`` (read back from disk if it was spilled)."""
        if key in self._memory:
            return self._memory[key]
        return _read_frames(self._spilled[key])

    def ack(self, seq: int, stream: str | None = None) -> bool:
        """Forgets an acknowledged chunk; False when it was not pending (a repeated ack)."""
        key = self.key(seq, stream)
        if key not in self._sent_at:
            return False
        self._forget(key)
        return True

    def _forget(self, key: Key) -> None:
        for table in (self._sent_at, self._tries, self._steps, self._first_step):
            table.pop(key, None)
        self._memory.pop(key, None)
        path = self._spilled.pop(key, None)
        self.spilled_bytes -= self._spill_size.pop(key, 0)
        if path is not None:
            path.unlink(missing_ok=True)

    def lowest_pending_step(self, stream: str | None = None) -> int | None:
        """The first stream step of the oldest unacknowledged chunk of ``stream`` (this actor's own when None);
        None when all are acked."""
        wanted = self.stream if stream is None else stream
        return min((step for (name, _), step in self._first_step.items() if name == wanted), default=None)

    def other_streams(self) -> dict[str, int]:
        """Adopted streams with chunks pending: their lowest pending stream step (everything of that stream
        before it was acknowledged, since the spill holds the oldest chunks)."""
        found: dict[str, int] = {}
        for (name, _), step in self._first_step.items():
            if name != self.stream:
                found[name] = min(step, found.get(name, step))
        return found

    def _wait_s(self, key: Key, resend_after_s: float) -> float:
        tries = self._tries.get(key, 0)
        return min(resend_after_s * 2.0 ** max(0, tries - 1), max(resend_after_s, self.max_backoff_s))

    def due(self, now_s: float, resend_after_s: float, limit: int = 64) -> list[Key]:
        """Chunks never sent, or sent long enough ago (with back-off), oldest first."""
        out = []
        for key, sent in self._sent_at.items():
            if sent is None or now_s - sent >= self._wait_s(key, resend_after_s):
                out.append(key)
                if len(out) >= limit:
                    break
        return out

    def was_sent(self, key: Key) -> bool:
        """True when ``key`` went out at least once since it was added or made due again."""
        return self._sent_at.get(key) is not None

    def mark_sent(self, key: Key, now_s: float) -> None:
        """Records that ``key`` went out at ``now_s``."""
        if key in self._sent_at:
            self._sent_at[key] = now_s
            self._tries[key] = self._tries.get(key, 0) + 1

    def resend_all(self) -> None:
        """Makes every pending chunk due at once, back-off reset (after the learner reconnected or restarted)."""
        for key in self._sent_at:
            self._sent_at[key] = None
            self._tries[key] = 0

    def adopt(self, max_bytes: int = wire.DEFAULT_MAX_BYTES) -> int:
        """Takes over the chunk files an earlier actor left in ``spill_dir`` (not this one's): each is decoded
        (a CHUNK with ``stream``, ``seq``, ``stream_step`` and ``n_steps``) and kept as a spilled chunk of its own
        stream. A file that is not such a chunk is renamed ``*.unreadable`` and logged. Returns how many were
        adopted."""
        if not self.spill_dir.is_dir():
            return 0
        receiver = wire.Receiver("spool", max_bytes=max_bytes)
        adopted = 0
        for path in sorted(self.spill_dir.glob("*.chunk")):
            try:
                message = receiver.decode(_read_frames(path), expect=[wire.Kind.CHUNK])
                meta = message.meta if message is not None else {}
                stream, step = meta.get("stream"), meta.get("stream_step")
                if not (isinstance(stream, str) and stream and isinstance(step, int) and not isinstance(step, bool)
                        and step >= 0):
                    raise ValueError("not a chunk with a stream and a stream_step")
            except (OSError, ValueError, struct.error) as exc:
                log.warning("spool: %s is not a chunk this actor can send (%s): kept as %s.unreadable",
                            path, exc, path.name)
                path.rename(path.with_name(path.name + ".unreadable"))
                continue
            key = (stream, meta["seq"])
            if key in self._sent_at:
                continue
            self._register(key, meta["n_steps"], step)
            self._spilled[key] = path
            size = path.stat().st_size
            self._spill_size[key] = size
            self.spilled_bytes += size
            adopted += 1
        self.adopted_chunks += adopted
        return adopted
