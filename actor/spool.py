"""Chunks kept until the learner acknowledges them: in memory, spilling the oldest to disk.

A chunk is stored as the encoded wire frames it is sent as, so a resend is byte-identical and
the learner can drop it as a duplicate. Spilled chunks are plain files of length-prefixed
frames written and read only by this process (nothing is unpickled).
"""
from __future__ import annotations

import os
import struct
from collections import OrderedDict
from pathlib import Path

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class ChunkSpool:
    """Unacknowledged chunks by sequence number, with the time each was last sent."""

    def __init__(self, spill_dir: str | Path, memory_chunks: int):
        self.spill_dir = Path(spill_dir)
        self.memory_chunks = memory_chunks
        self._memory: OrderedDict[int, list[bytes]] = OrderedDict()
        self._spilled: dict[int, Path] = {}
        self._sent_at: dict[int, float | None] = {}
        self._steps: dict[int, int] = {}
        self._first_step: dict[int, int] = {}
        self.spilled_total = 0

    def __len__(self) -> int:
        return len(self._sent_at)

    @property
    def pending_steps(self) -> int:
        """Steps in chunks not yet acknowledged."""
        return sum(self._steps.values())

    def add(self, seq: int, frames: list, n_steps: int, stream_step: int) -> None:
        """Keeps a new chunk (its frames are copied to bytes here)."""
        self._memory[seq] = [bytes(frame) for frame in frames]
        self._sent_at[seq] = None
        self._steps[seq] = n_steps
        self._first_step[seq] = stream_step
        while len(self._memory) > self.memory_chunks:
            self._spill_oldest()

    def _spill_oldest(self) -> None:
        seq, frames = self._memory.popitem(last=False)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{seq:012d}.chunk"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(_COUNT.pack(len(frames)))
            for frame in frames:
                handle.write(_LENGTH.pack(len(frame)))
                handle.write(frame)
        os.replace(tmp, path)
        self._spilled[seq] = path
        self.spilled_total += 1

    def frames(self, seq: int) -> list[bytes]:
        """The frames of chunk ``seq`` (read back from disk if it was spilled)."""
        if seq in self._memory:
            return self._memory[seq]
        data = self._spilled[seq].read_bytes()
        (count,) = _COUNT.unpack_from(data, 0)
        offset, frames = _COUNT.size, []
        for _ in range(count):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            frames.append(data[offset:offset + length])
            offset += length
        return frames

    def ack(self, seq: int) -> bool:
        """Forgets an acknowledged chunk; False when it was not pending (a repeated ack)."""
        if seq not in self._sent_at:
            return False
        del self._sent_at[seq]
        del self._steps[seq]
        del self._first_step[seq]
        self._memory.pop(seq, None)
        path = self._spilled.pop(seq, None)
        if path is not None:
            path.unlink(missing_ok=True)
        return True

    def lowest_pending_step(self) -> int | None:
        """The first stream step of the oldest unacknowledged chunk (None when all are acked)."""
        return min(self._first_step.values(), default=None)

    def due(self, now_s: float, resend_after_s: float, limit: int = 64) -> list[int]:
        """Chunks never sent, or sent longer than ``resend_after_s`` ago, oldest first."""
        out = []
        for seq, sent in self._sent_at.items():
            if sent is None or now_s - sent >= resend_after_s:
                out.append(seq)
                if len(out) >= limit:
                    break
        return out

    def was_sent(self, seq: int) -> bool:
        """True when ``seq`` went out at least once since it was added or made due again."""
        return self._sent_at.get(seq) is not None

    def mark_sent(self, seq: int, now_s: float) -> None:
        """Records that ``seq`` went out at ``now_s``."""
        if seq in self._sent_at:
            self._sent_at[seq] = now_s

    def resend_all(self) -> None:
        """Makes every pending chunk due at once (after the learner reconnected or restarted)."""
        for seq in self._sent_at:
            self._sent_at[seq] = None
