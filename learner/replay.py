"""Replay: experience chunks kept as contiguous segments per actor stream, sampled as sequences.

A chunk that continues where its stream's last segment ends extends that segment; a chunk
after a gap (or arriving out of order) starts a new segment, so a sampled sequence never
silently joins steps that were not consecutive on the robot. Sequences may cross episode
boundaries inside a segment; ``is_first`` marks them, as in DreamerV3. Capacity is in steps;
the oldest chunks go first. Ranges of a stream can be excluded (the steps of an episode flagged for
timing quality): sampled sequences avoid them. Plain Python: the learner wraps it in a Ray actor.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class _Segment:
    __slots__ = ("chunks", "start", "length")

    def __init__(self, start: int):
        self.chunks: deque[dict[str, np.ndarray]] = deque()
        self.start = start          # stream step index of the first stored step
        self.length = 0

    @property
    def end(self) -> int:
        return self.start + self.length


# Draws per sequence before one overlapping an excluded range is taken anyway.
EXCLUDED_TRIES = 64


class ReplayBuffer:
    """Uniform sampling of fixed-length sequences from everything collected so far."""

    def __init__(self, capacity_steps: int, seed: int = 0):
        self.capacity_steps = capacity_steps
        self.rng = np.random.default_rng(seed)
        self.segments: dict[str, list[_Segment]] = {}
        self._order: deque[tuple[_Segment, int]] = deque()   # (segment, n_steps) in arrival order, for eviction
        self.steps = 0
        self.added_steps = 0
        self.evicted_steps = 0
        # Stream step ranges [start, end) kept out of training (episodes flagged for timing quality).
        self.excluded: dict[str, list[tuple[int, int]]] = {}
        self.excluded_steps = 0
        self.fallback_sequences = 0

    def add(self, stream: str, stream_step: int, arrays: dict[str, np.ndarray]) -> int:
        """Stores a chunk of consecutive steps starting at ``stream_step`` of ``stream``; returns steps stored."""
        n_steps = len(next(iter(arrays.values())))
        segments = self.segments.setdefault(stream, [])
        segment = next((s for s in segments if s.end == stream_step and s.length > 0), None)
        if segment is None:
            segment = _Segment(stream_step)
            segments.append(segment)
        segment.chunks.append({key: np.asarray(value) for key, value in arrays.items()})
        segment.length += n_steps
        self._order.append((segment, n_steps))
        self.steps += n_steps
        self.added_steps += n_steps
        while self.steps > self.capacity_steps and self._order:
            self._evict_oldest()
        return n_steps

    def _evict_oldest(self) -> None:
        segment, _ = self._order.popleft()
        chunk = segment.chunks.popleft()
        n_steps = len(next(iter(chunk.values())))
        segment.start += n_steps
        segment.length -= n_steps
        self.steps -= n_steps
        self.evicted_steps += n_steps
        if segment.length == 0:
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

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray] | None:
        """A batch of ``batch_size`` sequences of ``length`` consecutive steps, (B, T, ...) per key; None if too little data."""
        candidates = [(stream, s) for stream, segments in self.segments.items() for s in segments if s.length >= length]
        if not candidates:
            return None
        weights = np.array([s.length - length + 1 for _, s in candidates], np.float64)
        weights /= weights.sum()
        sequences = []
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
            sequences.append(self._slice(segment, offset, length))
        return {key: np.stack([seq[key] for seq in sequences]) for key in sequences[0]}

    @staticmethod
    def _slice(segment: _Segment, offset: int, length: int) -> dict[str, np.ndarray]:
        parts, position = [], 0
        for chunk in segment.chunks:
            n = len(next(iter(chunk.values())))
            if position + n > offset and position < offset + length:
                lo, hi = max(0, offset - position), min(n, offset + length - position)
                parts.append({key: value[lo:hi] for key, value in chunk.items()})
            position += n
            if position >= offset + length:
                break
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def stats(self) -> dict:
        """Counters for status and summaries."""
        return {"replay_steps": self.steps, "added_steps": self.added_steps, "evicted_steps": self.evicted_steps,
                "excluded_steps": self.excluded_steps, "fallback_sequences": self.fallback_sequences,
                "streams": len(self.segments),
                "segments": sum(len(segments) for segments in self.segments.values())}
