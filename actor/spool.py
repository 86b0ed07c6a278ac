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

What an actor killed with SIGKILL held in memory (chunks not yet acknowledged, and the steps of its
next chunk, logged but not yet emitted) is in its episode files only. The stream keeps, per stream, an
acknowledged-through marker (``acked-<stream>.json``, ``AckMarkers``): every step of the stream below
it was acknowledged. An actor started again on the same log directory with the same actor id rebuilds
chunks from the episode files for every step of such a stream at or beyond its marker that no adopted
chunk holds (``resend_from_episodes``) and sends them under that stream.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

from robotd import episodes, quality, steps, wire

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
MAX_BACKOFF_S = 30.0
RESEND_SEQ_BASE = 1 << 48
"""Sequence numbers of chunks rebuilt from episode files start here, above any a stream numbers itself."""
RESEND_SEQ_SPAN = 1 << 13
"""A rebuilt chunk of ``n`` steps from stream step ``s`` is numbered ``RESEND_SEQ_BASE + s * RESEND_SEQ_SPAN + n``
(n < RESEND_SEQ_SPAN): the same steps always get the same number, and different steps never share one."""
MARKER_PREFIX = "acked-"
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

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
        self._episode: dict[Key, int | None] = {}
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

    def add(self, seq: int, frames: list, n_steps: int, stream_step: int, *, stream: str | None = None,
            episode_id: int | None = None) -> None:
        """Keeps a new chunk of ``stream`` (this actor's own when None; its frames are copied to bytes here).
        ``episode_id`` is the episode its steps belong to, when known."""
        key = self.key(seq, stream)
        self._memory[key] = [bytes(frame) for frame in frames]
        self._register(key, n_steps, stream_step, episode_id)
        while len(self._memory) > self.memory_chunks:
            self._spill_oldest()

    def _register(self, key: Key, n_steps: int, stream_step: int, episode_id: int | None) -> None:
        self._sent_at[key] = None
        self._tries[key] = 0
        self._steps[key] = n_steps
        self._first_step[key] = stream_step
        self._episode[key] = episode_id

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
        for table in (self._sent_at, self._tries, self._steps, self._first_step, self._episode):
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

    def oldest_pending(self, stream: str | None = None) -> tuple[int, int | None] | None:
        """The first stream step of the oldest unacknowledged chunk of ``stream`` (this actor's own when None) and
        the episode it belongs to (None when unknown); None when all are acked."""
        wanted = self.stream if stream is None else stream
        found = min(((step, key) for key, step in self._first_step.items() if key[0] == wanted), default=None)
        return None if found is None else (found[0], self._episode.get(found[1]))

    def pending_chunks(self, stream: str) -> list[tuple[int, int, int | None]]:
        """The pending chunks of ``stream``: (first stream step, steps, episode id or None) each."""
        return [(step, self._steps[key], self._episode.get(key))
                for key, step in self._first_step.items() if key[0] == stream]

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
            self._register(key, meta["n_steps"], step, meta["episode_id"])
            self._spilled[key] = path
            size = path.stat().st_size
            self._spill_size[key] = size
            self.spilled_bytes += size
            adopted += 1
        self.adopted_chunks += adopted
        return adopted


class AckMarkers:
    """Acknowledged-through markers, one small JSON file per stream (``acked-<stream>.json``) in the spool
    directory: every step of the stream below ``acked_through`` was acknowledged by a learner, and the steps
    from there on are in episode ``episode_id`` of this actor id or in later ones. Each is written aside and
    renamed over the old one, so a reader finds the old marker or the new one, never half of one."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, stream: str) -> Path:
        """The marker file of ``stream``."""
        if not isinstance(stream, str) or not _STREAM_NAME.fullmatch(stream):
            raise ValueError(f"stream {stream!r} cannot name a marker file: use at most 64 letters, digits, "
                             f"'_' or '-'")
        return self.directory / f"{MARKER_PREFIX}{stream}.json"

    def write(self, stream: str, acked_through: int, episode_id: int) -> None:
        """Records that every step of ``stream`` below ``acked_through`` was acknowledged."""
        path = self.path(stream)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"stream": stream, "acked_through": int(acked_through),
                                   "episode_id": int(episode_id)}))
        os.replace(tmp, path)

    def remove(self, stream: str) -> None:
        """Deletes the marker of ``stream`` (all of it acknowledged); nothing happens when there is none."""
        self.path(stream).unlink(missing_ok=True)

    def read(self) -> dict[str, tuple[int, int]]:
        """Every marker: ``{stream: (acked_through, episode_id)}``. A file that is not a marker is renamed
        ``*.unreadable`` and logged."""
        found: dict[str, tuple[int, int]] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"{MARKER_PREFIX}*.json")):
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                stream, values = data.get("stream"), (data.get("acked_through"), data.get("episode_id"))
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                    raise ValueError("acked_through and episode_id must be whole numbers, 0 or more")
                if self.path(stream) != path:
                    raise ValueError(f"it names stream {str(stream)[:70]!r}")
            except (OSError, ValueError) as exc:
                log.warning("spool: %s is not an acknowledgement marker (%s): kept as %s.unreadable", path,
                            str(exc)[:200], path.name)
                path.rename(path.with_name(path.name + ".unreadable"))
                continue
            found[stream] = values
        return found


def resend_seq(stream_step: int, n_steps: int) -> int:
    """The sequence number of a chunk rebuilt from episode files (see RESEND_SEQ_SPAN)."""
    if not 0 < n_steps < RESEND_SEQ_SPAN:
        raise ValueError(f"a rebuilt chunk holds 1 to {RESEND_SEQ_SPAN - 1} steps, not {n_steps}")
    return RESEND_SEQ_BASE + stream_step * RESEND_SEQ_SPAN + n_steps


def _merged(spans) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        elif hi > lo:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _episode_files(folder: Path, actor_id: str) -> list[tuple[int, Path]]:
    """The episode files of ``actor_id`` in ``folder`` by episode id, those only a journal holds included."""
    prefix, found = f"{actor_id}-", []
    for path in episodes.episode_files(folder):
        number = path.name[len(prefix):-len(".h5")] if path.name.startswith(prefix) else ""
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def resend_from_episodes(spool: ChunkSpool, markers: AckMarkers, episodes_dir: str | Path, actor_id: str,
                         spec: dict, chunk_steps: int) -> dict[str, dict]:
    """Puts in ``spool`` chunks rebuilt from the episode files of ``actor_id`` for every step of an earlier stream,
    at or beyond the point up to which it was acknowledged, that no pending chunk of the spool holds.

    That point is the stream's marker; a stream without a marker whose spilled chunks were adopted uses its oldest
    adopted chunk (everything before it was acknowledged: the spill holds the oldest chunks). A stream with
    neither is not looked for: its steps stay in the episode files, where a learner restarted on this log
    directory refills them from. Only episodes from the marker's episode on are read, and none whose steps the
    pending chunks hold entirely. Chunks are cut as the actor cuts them (at most ``chunk_steps``, counted from the
    episode's first step), carry the episode's quality exclusion when it was closed flagged, and are numbered by
    ``resend_seq``. Markers of streams with nothing left to send are removed. Returns, per stream given chunks,
    ``{"from": first stream step, "steps": n, "chunks": c}``."""
    points = {stream: value for stream, value in markers.read().items() if stream != spool.stream}
    for stream in spool.other_streams():
        if stream not in points:
            step, episode = spool.oldest_pending(stream)
            points[stream] = (step, episode or 0)
    covered = {stream: _merged((s, s + n) for s, n, _ in spool.pending_chunks(stream)) for stream in points}
    by_episode: dict[int, list[tuple[int, int]]] = {}
    for stream in points:
        for step, n_steps, episode in spool.pending_chunks(stream):
            if episode is not None:
                by_episode.setdefault(episode, []).append((step, step + n_steps))
    rebuilt: dict[str, dict] = {}
    first_episode = min((episode for _, episode in points.values()), default=0)
    files = _episode_files(Path(episodes_dir), actor_id) if points else []
    for episode_id, path in files:
        if episode_id < first_episode:
            continue
        try:
            held = sum(hi - lo for lo, hi in _merged(by_episode.get(episode_id, ())))
            if held and held >= episodes.count_steps(path):
                continue                                  # every step is in a pending chunk already
        except (OSError, ValueError) as exc:
            log.warning("spool: episode %s not read for resending (%s)", path.name, str(exc).splitlines()[0][:200])
            continue
        found = _resendable(path, spec, streams=points)
        if found is None:
            continue
        episode, stream, start, end = found
        for lo, hi in steps.uncovered(covered[stream], max(start, points[stream][0]), end):
            for meta, frames in _cut(episode, spec, actor_id, episode_id, stream, start, end, lo, hi, chunk_steps):
                spool.add(meta["seq"], frames, meta["n_steps"], meta["stream_step"], stream=stream,
                          episode_id=episode_id)
                entry = rebuilt.setdefault(stream, {"from": meta["stream_step"], "steps": 0, "chunks": 0})
                entry["from"] = min(entry["from"], meta["stream_step"])
                entry["steps"] += meta["n_steps"]
                entry["chunks"] += 1
    for stream in points:
        if spool.oldest_pending(stream) is None:
            try:
                markers.remove(stream)
            except (OSError, ValueError) as exc:
                log.warning("spool: marker of stream %s not removed (%s)", stream, exc)
    return rebuilt


def _resendable(path: Path, spec: dict, streams=None) -> tuple | None:
    """(episode, stream, first stream step, end) of an episode file whose steps can be sent again, or None (logged):
    unreadable, another step spec, stream steps not consecutive, no steps, or a stream not in ``streams``."""
    try:
        episode = episodes.read_episode(path)
    except (OSError, ValueError) as exc:
        log.warning("spool: episode %s not read for resending (%s)", path.name, str(exc).splitlines()[0][:200])
        return None
    stream = episode.attrs.get("stream")
    if not isinstance(stream, str) or (streams is not None and stream not in streams):
        return None
    data = episode.steps
    n_steps = len(data.get(steps.STREAM_STEP, ()))
    problem = steps.check_against(spec, {key: data[key] for key in spec if key in data}, n_steps) if n_steps else None
    if problem is None and n_steps and np.any(np.diff(data[steps.STREAM_STEP]) != 1):
        problem = "its stream steps are not consecutive"
    if problem:
        log.warning("spool: episode %s not resent: %s", path.name, problem)
        return None
    if not n_steps:
        return None
    start = int(data[steps.STREAM_STEP][0])
    return episode, stream, start, start + n_steps


def _cut(episode, spec: dict, actor_id: str, episode_id: int, stream: str, start: int, end: int, lo: int, hi: int,
         chunk_steps: int):
    """Chunks of the episode's stream steps [lo, hi), cut as the actor cuts them (at most ``chunk_steps``, counted
    from the episode's first step ``start``), numbered by ``resend_seq``; the one holding the episode's last step
    carries its quality exclusion when it was closed flagged. Yields (meta, frames)."""
    chunk_steps = min(int(chunk_steps), RESEND_SEQ_SPAN - 1)
    data = episode.steps
    flags = quality.quality_flags(episode.attrs.get("flags", ())) if episode.complete else []
    at = lo
    while at < hi:
        stop = min(hi, start + ((at - start) // chunk_steps + 1) * chunk_steps)
        arrays = {key: np.ascontiguousarray(data[key][at - start:stop - start]) for key in spec}
        meta = {"actor_id": actor_id, "stream": stream, "episode_id": episode_id,
                "seq": resend_seq(at, stop - at), "n_steps": stop - at, "stream_step": at}
        if flags and stop == end:
            meta["exclude"] = {"from": start, "n": end - start, "reasons": flags}
        yield meta, wire.encode(wire.Kind.CHUNK, meta, arrays)
        at = stop


def history_chunks(episodes_dir: str | Path, actor_id: str, spec: dict, chunk_steps: int, limit_steps: int,
                   until: dict[str, int]):
    """Chunks rebuilt from the episode files of ``actor_id`` for a learner that holds none of its steps (one
    started again on a machine without this log directory asks for them in its hello answer, ``history_steps``):
    the steps of the newest episodes, at most ``limit_steps`` of them (the learner's replay capacity), oldest first,
    so the learner's replay holds what it held before. Of a stream named in ``until`` only the steps below that
    point are sent (the rest is pending in the spool or still to come). Episodes are read one at a time, when the
    next chunk is asked for. Yields (stream, seq, frames, n_steps)."""
    files = _episode_files(Path(episodes_dir), actor_id)
    chosen, total = [], 0
    for episode_id, path in reversed(files):
        if total >= limit_steps:
            break
        try:
            count = episodes.count_steps(path)
        except (OSError, ValueError):
            continue
        chosen.append((episode_id, path))
        total += count
    skip = max(0, total - limit_steps)            # of the oldest chosen episode's steps, the first ones
    for episode_id, path in reversed(chosen):
        found = _resendable(path, spec)
        if found is None:
            continue
        episode, stream, start, end = found
        lo, hi = start + skip, min(end, until.get(stream, end))
        skip = 0
        for meta, frames in _cut(episode, spec, actor_id, episode_id, stream, start, end, lo, hi, chunk_steps):
            yield stream, meta["seq"], frames, meta["n_steps"]
