"""Replay: experience chunks kept as contiguous segments per actor stream, sampled as sequences.

A chunk that continues where its stream's last segment ends extends that segment; a chunk
after a gap (or arriving out of order) starts a new segment, so a sampled sequence never
silently joins steps that were not consecutive on the robot. Sequences may cross episode
boundaries inside a segment; ``is_first`` marks them, as in DreamerV3. Capacity is in steps;
the oldest chunks go first. Ranges of a stream can be excluded (the steps of an episode flagged for
timing quality): sampled sequences avoid them. Plain Python: the learner wraps it in a Ray actor.

Replay context (DreamerV3's ``replay_context``): the learner writes back the posterior latent it
computed for every step of a trained sequence (:meth:`ReplayBuffer.update_latents`), and
``sample(..., context=True)`` hands each sequence the stored latent and the action of the step
just before it, so training can continue from that state instead of starting cold. Latents are
kept per chunk, allocated at the chunk's first write-back (deter as float16, stoch as class indices).
"""
from __future__ import annotations

from bisect import bisect_right
from collections import deque

import numpy as np

from robotd.steps import ACTION, CONTEXT_KEYS, IS_FIRST

__all__ = ["CONTEXT_KEYS", "ReplayBuffer"]


class _Latents:
    """The latent slots of one chunk's steps: written back by the learner, read as replay context."""
    __slots__ = ("deter", "stoch", "written")

    def __init__(self, n_steps: int, deter: int, stoch: int, stoch_dtype: np.dtype):
        self.deter = np.zeros((n_steps, deter), np.float16)
        self.stoch = np.zeros((n_steps, stoch), stoch_dtype)
        self.written = np.zeros(n_steps, bool)


class _Segment:
    __slots__ = ("id", "chunks", "latents", "starts", "head", "start", "length")

    def __init__(self, segment_id: int, start: int):
        self.id = segment_id
        # Chunks, their latent slots (None until written) and the stream step each chunk starts at,
        # oldest first; entries before ``head`` are evicted (dropped in bulk now and then).
        self.chunks: list[dict[str, np.ndarray] | None] = []
        self.latents: list[_Latents | None] = []
        self.starts: list[int] = []
        self.head = 0
        self.start = start          # stream step index of the first stored step
        self.length = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    def chunk_length(self, index: int) -> int:
        return (self.starts[index + 1] if index + 1 < len(self.starts) else self.end) - self.starts[index]

    def append(self, chunk: dict[str, np.ndarray], n_steps: int) -> None:
        self.starts.append(self.end)
        self.chunks.append(chunk)
        self.latents.append(None)
        self.length += n_steps

    def pop_oldest(self) -> int:
        """Drops the oldest chunk; returns its steps."""
        n_steps = self.chunk_length(self.head)
        self.chunks[self.head] = self.latents[self.head] = None
        self.head += 1
        self.start += n_steps
        self.length -= n_steps
        if self.head >= 64 and 2 * self.head >= len(self.chunks):
            del self.chunks[:self.head], self.latents[:self.head], self.starts[:self.head]
            self.head = 0
        return n_steps

    def pieces(self, step: int, n_steps: int) -> list[tuple[int, int, int]]:
        """``(chunk index, lo, hi)`` of the stored stream steps ``[step, step + n_steps)``, chunk by chunk."""
        index = bisect_right(self.starts, step, self.head) - 1
        pieces = []
        while n_steps > 0:
            lo = step - self.starts[index]
            hi = min(self.chunk_length(index), lo + n_steps)
            pieces.append((index, lo, hi))
            n_steps -= hi - lo
            step += hi - lo
            index += 1
        return pieces


# Draws per sequence before one overlapping an excluded range is taken anyway.
EXCLUDED_TRIES = 64


def step_bytes(spec: dict) -> int:
    """Bytes one step of a step spec ({key: (shape, dtype)}) takes in replay."""
    return int(sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in spec.values()))


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable of this machine, or None where it cannot be read."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def capacity_warning(spec: dict, capacity_steps: int, available: int | None) -> str | None:
    """One line when a full replay of ``capacity_steps`` steps would need more than 80% of the memory available
    now (a long session would then swap or be killed when the replay fills), else None."""
    needed = step_bytes(spec) * capacity_steps
    if available is None or needed <= 0.8 * available:
        return None
    fits = max(1, int(0.8 * available // max(1, step_bytes(spec))))
    return (f"learner.replay_capacity_steps {capacity_steps:,} at {step_bytes(spec):,} bytes a step needs "
            f"{needed / 2**30:.1f} GiB when full, more than 80% of the {available / 2**30:.1f} GiB available: the "
            f"replay fills after that many steps and memory runs out; set learner.replay_capacity_steps={fits} or "
            f"less (or give the learner more memory)")


class ReplayBuffer:
    """Uniform sampling of fixed-length sequences from everything collected so far."""

    def __init__(self, capacity_steps: int, seed: int = 0):
        self.capacity_steps = capacity_steps
        self.rng = np.random.default_rng(seed)
        self.segments: dict[str, list[_Segment]] = {}
        self._by_id: dict[int, _Segment] = {}
        self._next_id = 0
        self._order: deque[tuple[_Segment, int]] = deque()   # (segment, n_steps) in arrival order, for eviction
        self.steps = 0
        self.added_steps = 0
        self.evicted_steps = 0
        # Stream step ranges [start, end) kept out of training (episodes flagged for timing quality).
        self.excluded: dict[str, list[tuple[int, int]]] = {}
        self.excluded_steps = 0
        self.fallback_sequences = 0
        # (deter, stoch, classes) of the written-back latents, known from the first write-back.
        self.latent_sizes: tuple[int, int, int] | None = None
        self.latent_writes = 0

    def add_many(self, items: list[tuple[str, int, dict[str, np.ndarray]]]) -> int:
        """Stores several chunks, in order, in one call: (stream, stream_step, arrays) each; returns steps stored."""
        return sum(self.add(stream, stream_step, arrays) for stream, stream_step, arrays in items)

    def add(self, stream: str, stream_step: int, arrays: dict[str, np.ndarray]) -> int:
        """Stores a chunk of consecutive steps starting at ``stream_step`` of ``stream``; returns steps stored."""
        n_steps = len(next(iter(arrays.values())))
        segments = self.segments.setdefault(stream, [])
        segment = next((s for s in segments if s.end == stream_step and s.length > 0), None)
        if segment is None:
            segment = _Segment(self._next_id, stream_step)
            self._by_id[segment.id] = segment
            self._next_id += 1
            segments.append(segment)
        # Copies: as a Ray actor its arguments arrive as read-only views of the object store, and a view kept here
        # would pin the caller's object there for as long as the step stays in replay (the store, not the
        # capacity, would then bound the replay, and its pages count in the learner's memory as well).
        segment.append({key: np.array(value, copy=True) for key, value in arrays.items()}, n_steps)
        self._order.append((segment, n_steps))
        self.steps += n_steps
        self.added_steps += n_steps
        while self.steps > self.capacity_steps and self._order:
            self._evict_oldest()
        return n_steps

    def _evict_oldest(self) -> None:
        segment, _ = self._order.popleft()
        n_steps = segment.pop_oldest()
        self.steps -= n_steps
        self.evicted_steps += n_steps
        if segment.length == 0:
            self._by_id.pop(segment.id, None)
            for segments in self.segments.values():
                if segment in segments:
                    segments.remove(segment)

    def exclude(self, stream: str, start: int, n_steps: int) -> bool:
        """Keeps stream steps [start, start + n_steps) out of sampled sequences; False when already excluded."""
        ranges = self.excluded.setdefault(stream, [])
        if (start, start + n_steps) in ranges or n_steps <= 0:
            return False
        ranges.append((start, start + n_steps))
        self.excluded_steps += n_steps
        return True

    def _overlaps_excluded(self, stream: str, start: int, length: int) -> bool:
        return any(lo < start + length and start < hi for lo, hi in self.excluded.get(stream, ()))

    def can_sample(self, length: int) -> bool:
        """True when some segment holds at least ``length`` steps."""
        return any(s.length >= length for segments in self.segments.values() for s in segments)

    def sequences(self, length: int) -> int:
        """How many sequences of ``length`` consecutive steps :meth:`sample` draws from (uniformly): the weight
        of this replay when several are sampled as one (learner.shards)."""
        return sum(s.length - length + 1 for segments in self.segments.values() for s in segments
                   if s.length >= length)

    def sample(self, batch_size: int, length: int, context: bool = False) -> dict[str, np.ndarray] | None:
        """A batch of ``batch_size`` sequences of ``length`` consecutive steps, (B, T, ...) per key; None if too little data.

        With ``context`` the batch also holds, per sequence, the replay context of the step just before
        it: ``context_deter`` (B, deter) float32 and ``context_stoch`` (B, stoch, classes) float32 one-hot,
        the latent last written back for that step (both absent until the first write-back tells the
        sizes), ``context_action`` (B, A), the action taken at that step, ``context_valid`` (B,) bool,
        false where the sequence starts a segment, starts an episode (``is_first``) or no latent was
        written for the step yet (the others' context entries are zeros), and ``replay_keys`` (B, 2)
        int64 (segment id, stream step of the first step) for :meth:`update_latents`.
        """
        candidates = [(stream, s) for stream, segments in self.segments.items() for s in segments if s.length >= length]
        if not candidates:
            return None
        weights = np.array([s.length - length + 1 for _, s in candidates], np.float64)
        weights /= weights.sum()
        sequences, contexts = [], []
        while len(sequences) < batch_size:
            # A sequence touching an excluded range is drawn again; when nothing clean turns up in
            # EXCLUDED_TRIES draws (almost everything excluded), one is taken anyway so training goes on.
            for _ in range(EXCLUDED_TRIES):
                stream, segment = candidates[int(self.rng.choice(len(candidates), p=weights))]
                offset = int(self.rng.integers(0, segment.length - length + 1))
                if not self._overlaps_excluded(stream, segment.start + offset, length):
                    break
            else:
                self.fallback_sequences += 1
            if context:
                sequence, found = self._slice_with_context(segment, offset, length)
                contexts.append(found)
            else:
                sequence = self._slice(segment, offset, length)
            sequences.append(sequence)
        batch = {key: np.stack([seq[key] for seq in sequences]) for key in sequences[0]}
        if context:
            batch.update(self._context_batch(batch, contexts))
        return batch

    def update_latents(self, replay_keys: np.ndarray, deter: np.ndarray, stoch: np.ndarray, classes: int) -> int:
        """Writes back the learner's posterior latents of a batch sampled with ``context``; returns steps written.

        ``replay_keys`` (B, 2) as :meth:`sample` returned them, ``deter`` (B, T, deter), ``stoch`` (B, T,
        stoch) class indices out of ``classes``. Steps evicted meanwhile are skipped.
        """
        keys = np.asarray(replay_keys, np.int64)
        deter, stoch = np.asarray(deter), np.asarray(stoch)
        sizes = (int(deter.shape[2]), int(stoch.shape[2]), int(classes))
        if self.latent_sizes is None:
            self.latent_sizes = sizes
        elif sizes != self.latent_sizes:
            raise ValueError(f"latents of sizes (deter, stoch, classes) {sizes} do not match the stored "
                             f"{self.latent_sizes}: one replay serves one model")
        stoch_dtype = np.uint8 if sizes[2] <= 256 else np.int16
        length = deter.shape[1]
        written = 0
        for row, (segment_id, first) in enumerate(keys.tolist()):
            segment = self._by_id.get(segment_id)
            if segment is None:
                continue
            lo_step, hi_step = max(first, segment.start), min(first + length, segment.end)
            if lo_step >= hi_step:
                continue
            t = lo_step - first
            for index, lo, hi in segment.pieces(lo_step, hi_step - lo_step):
                latents = segment.latents[index]
                if latents is None:
                    latents = segment.latents[index] = _Latents(segment.chunk_length(index), sizes[0], sizes[1],
                                                                stoch_dtype)
                latents.deter[lo:hi] = deter[row, t:t + hi - lo]
                latents.stoch[lo:hi] = stoch[row, t:t + hi - lo]
                latents.written[lo:hi] = True
                t += hi - lo
            written += hi_step - lo_step
        self.latent_writes += written
        return written

    @staticmethod
    def _gather(segment: _Segment, pieces: list[tuple[int, int, int]]) -> dict[str, np.ndarray]:
        parts = [{key: value[lo:hi] for key, value in segment.chunks[index].items()} for index, lo, hi in pieces]
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _slice(self, segment: _Segment, offset: int, length: int) -> dict[str, np.ndarray]:
        return self._gather(segment, segment.pieces(segment.start + offset, length))

    def _slice_with_context(self, segment: _Segment, offset: int, length: int) -> tuple[dict[str, np.ndarray], tuple]:
        """The sequence and ``(segment id, first step, action, latents, row)`` of the step before it (None, None,
        0 when the sequence starts the segment), from one look-up."""
        first = segment.start + offset
        if offset == 0:
            return self._slice(segment, offset, length), (segment.id, first, None, None, 0)
        pieces = segment.pieces(first - 1, length + 1)
        index, row, hi = pieces[0]
        chunk = segment.chunks[index]
        found = (segment.id, first, chunk[ACTION][row] if ACTION in chunk else None, segment.latents[index], row)
        pieces = ([(index, row + 1, hi)] if row + 1 < hi else []) + pieces[1:]
        return self._gather(segment, pieces), found

    def _context_batch(self, batch: dict[str, np.ndarray], contexts: list[tuple]) -> dict[str, np.ndarray]:
        size = len(contexts)
        keys = np.array([(segment_id, first) for segment_id, first, *_ in contexts], np.int64).reshape(size, 2)
        valid = np.array([latents is not None and bool(latents.written[row])
                          for _, _, _, latents, row in contexts], bool)
        if IS_FIRST in batch:
            valid &= ~batch[IS_FIRST][:, 0].astype(bool)
        out = {"replay_keys": keys, "context_valid": valid}
        if ACTION in batch:
            action = np.zeros_like(batch[ACTION][:, 0])
            for b, (_, _, step_action, _, _) in enumerate(contexts):
                if valid[b] and step_action is not None:
                    action[b] = step_action
            out["context_action"] = action
        if self.latent_sizes is not None:
            deter_size, stoch_size, classes = self.latent_sizes
            deter = np.zeros((size, deter_size), np.float32)
            stoch = np.zeros((size, stoch_size, classes), np.float32)
            for b, (_, _, _, latents, row) in enumerate(contexts):
                if valid[b]:
                    deter[b] = latents.deter[row]
                    stoch[b, np.arange(stoch_size), latents.stoch[row]] = 1.0
            out["context_deter"] = deter
            out["context_stoch"] = stoch
        return out

    def stats(self) -> dict:
        """Counters for status and summaries."""
        return {"replay_steps": self.steps, "added_steps": self.added_steps, "evicted_steps": self.evicted_steps,
                "excluded_steps": self.excluded_steps, "fallback_sequences": self.fallback_sequences,
                "streams": len(self.segments),
                "segments": sum(len(segments) for segments in self.segments.values()),
                "latent_writes": self.latent_writes}
