"""Episode files: one HDF5 file per episode, written step by step and read back offline.

Layout (LAYOUT_VERSION = 2), defined here and nowhere else::

    <name>.h5
      attrs    layout_version, session, actor_id, episode_id, robot, task,
               control_rate_hz, started_at (ISO 8601 str), any extra attrs given,
               closed (bool), flags (list of str, set by close() and recover())
      steps/<key>  (T, *shape) one dataset per step key, chunked along time;
               uint8 arrays with ndim >= 3 per step (images) are gzip-compressed, one frame per chunk
      stats/   attrs: the per-episode stats given to close()
    <name>.h5.journal   only while the episode is open, or after its writer died

Layout versions. Layout 2: every episode of a session has the step keys is_success and
applied_action (see robotd.steps). Layout 1 files, written before those keys existed,
still load: read_episode fills is_success with False and applied_action with a copy of
action where they are absent, returns attrs layout_version 2 with upgraded_from_layout 1
and filled_keys (the keys it made up), and leaves the file as it is. A file or journal of
a newer layout raises LayoutVersionError naming it, its version and the versions read here.

Durability. An HDF5 file is not crash safe: one killed while open for writing is
marked open in its superblock and no longer opens, and HDF5's SWMR mode, which keeps
the file consistent between writes, still leaves metadata blocks that a kill can cut
mid-write, after which a SWMR reader retries for many minutes and then fails. So the
durable record of an open episode is a sidecar journal: a header with the spec and
attrs, then one fixed-size record per step (step number, every key's raw bytes, a
CRC-32), each written with a single pwrite at its own offset. An append is in the
file (the kernel's page cache, which outlives the process) when it returns; a record
cut short by a kill fails its CRC and is the only one lost. The HDF5 file is written alongside without per-step
flushes, and close() finishes it and only then deletes the journal. Readers use the
HDF5 file once it is closed and the journal otherwise, so a process killed at any
instant, during close() included, leaves every step whose append() returned.
recover() turns a dead writer's journal into an ordinary HDF5 file. The guarantee
covers the process dying, not the machine losing power: that needs an fsync per step.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

LAYOUT_VERSION = 2
# Every layout read_episode loads; older ones are upgraded in memory by _upgraded().
READABLE_LAYOUT_VERSIONS = (1, 2)
# Layout 1 lacks these step keys: each is made from the steps the file has (None: from nothing).
_LAYOUT_1_FILLS = {"is_success": None, "applied_action": "action"}

REQUIRED_ATTRS = ("session", "actor_id", "episode_id", "robot", "task", "control_rate_hz")
_WRITER_ATTRS = ("layout_version", "closed", "flags")

_STEPS = "steps"
_STATS = "stats"
_JOURNAL_SUFFIX = ".journal"
_JOURNAL_MAGIC = b"RBTDJRN1"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_STEP_NUMBER = "/step_number"
_CRC = "/crc"

# Datasets grow this many steps at a time and are trimmed on close(), so most appends
# skip resizing, which touches the metadata of every dataset.
_GROW_STEPS = 256
_SMALL_CHUNK_BYTES = 65536
_MAX_CHUNK_STEPS = 4096
# gzip is readable by every HDF5 tool; level 1 compresses a 64x64x3 frame in well under 1 ms.
_IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}
_IMAGE_CACHE_FRAMES = 2


class LayoutVersionError(ValueError):
    """An episode file written with a layout this build does not read."""


class EpisodeData(NamedTuple):
    """Everything read back from one episode."""

    steps: dict[str, np.ndarray]
    attrs: dict[str, Any]
    stats: dict[str, Any]
    complete: bool


class EpisodeWriter:
    """Writes one episode step by step; each append is durable when it returns.

    ``spec`` maps each step key (a '/'-separated name such as "obs/image") to its
    per-step shape and dtype, e.g. ``{"obs/image": ((64, 64, 3), "uint8")}``.
    ``attrs`` must hold session, actor_id, episode_id, robot, task and
    control_rate_hz; started_at defaults to now (UTC); any other attrs are kept too.
    The file is created at ``path`` and never overwritten.
    """

    def __init__(self, path: str | Path, spec: dict[str, tuple[tuple[int, ...], str]], attrs: dict) -> None:
        self._path = Path(path)
        for existing in (self._path, _journal_path(self._path)):
            if existing.exists():
                raise FileExistsError(f"episode file {existing} already exists; give each episode its own path")
        self._spec = _checked_spec(spec)
        file_attrs = _checked_attrs(attrs)
        self._n_steps = 0
        self._capacity_steps = 0
        self._closed = False
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # The journal comes first, so an HDF5 file that exists always has its steps
        # somewhere readable until it is closed.
        self._journal = _JournalWriter(_journal_path(self._path), self._spec, file_attrs)
        try:
            self._file, datasets = _create_h5(self._path, self._spec, file_attrs)
        except BaseException:
            self._journal.discard()
            raise
        self._rows = {key: _RowWriter(dataset) for key, dataset in datasets.items()}

    @property
    def path(self) -> Path:
        """Where the episode file lives."""
        return self._path

    @property
    def n_steps(self) -> int:
        """Steps appended so far; all of them are on disk."""
        return self._n_steps

    def append(self, step: Mapping[str, np.ndarray | float | int | bool]) -> None:
        """Appends one step holding every spec key; it is on disk when this returns.

        A step that does not match the spec raises ValueError and writes nothing.
        """
        if self._closed:
            raise ValueError(f"episode {self._path} is closed; start a new EpisodeWriter for more steps")
        values = self._checked_step(step)
        index = self._n_steps
        if index >= self._capacity_steps:
            self._capacity_steps += _GROW_STEPS
            for rows in self._rows.values():
                rows.resize(self._capacity_steps)
        for key, value in values.items():
            self._rows[key].write(index, value)
        # Last, so the journal never holds a step whose append raised.
        self._journal.write(index, values)
        self._n_steps = index + 1

    def close(self, stats: dict | None = None, flags: list[str] | None = None) -> None:
        """Marks the episode complete, storing its stats and flags (e.g. "timeout").

        A kill during close() leaves the journal, so the steps survive; only the
        stats and flags would be lost.
        """
        if self._closed:
            raise ValueError(f"episode {self._path} is already closed")
        stored_stats = {name: _storable("stat", name, value) for name, value in (stats or {}).items()}
        stored_flags = _checked_flags(flags or [])
        self._closed = True
        for rows in self._rows.values():
            rows.resize(self._n_steps)
        self._file[_STATS].attrs.update(stored_stats)
        self._file.attrs["flags"] = stored_flags
        self._file.attrs["closed"] = True
        # HDF5 marks the file closed in its superblock only after everything else is written.
        self._file.close()
        self._journal.discard()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.close()

    def _checked_step(self, step: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [key for key in self._spec if key not in step]
        if missing:
            raise ValueError(f"step is missing key(s) {missing} of the spec; every step must give all of {sorted(self._spec)}")
        extra = [key for key in step if key not in self._spec]
        if extra:
            raise ValueError(f"step has key(s) {extra} that are not in the spec; add them to the spec or leave them out")
        values = {}
        for key, (shape, dtype) in self._spec.items():
            value = np.asarray(step[key])
            if value.shape != shape:
                raise ValueError(f"step key {key!r} has shape {value.shape}, expected {shape} from the spec")
            if value.dtype != dtype and not np.can_cast(value.dtype, dtype, "same_kind"):
                raise ValueError(f"step key {key!r} has dtype {value.dtype}, which does not fit the spec's {dtype}; convert the value first")
            values[key] = value
        return values


def read_episode(path: str | Path) -> EpisodeData:
    """Reads every whole step of an episode, whether it was closed or its writer died.

    A layout 1 episode comes back as layout 2 (see the module docstring: the missing
    keys are filled and attrs["upgraded_from_layout"] is 1). Raises ValueError naming
    the file when it cannot be read, and LayoutVersionError when it was written with a
    layout this build does not read.
    """
    path = Path(path)
    file = _open_closed_h5(path)
    if file is None:
        header, records = _read_journal(_journal_path(path))
        spec = _spec_from_header(header)
        steps = {key: records[key].astype(dtype) for key, (_, dtype) in spec.items()}
        return _upgraded(EpisodeData(steps=steps, attrs=dict(header["attrs"]), stats={}, complete=False))
    with file:
        try:
            steps = {key: dataset[()] for key, dataset in _step_datasets(file).items()}
            attrs = {name: _plain(value) for name, value in file.attrs.items()}
            stats = {name: _plain(value) for name, value in file[_STATS].attrs.items()} if _STATS in file else {}
        except (OSError, KeyError, RuntimeError) as error:
            raise ValueError(f"episode file {path} cannot be read: {error}") from error
    return _upgraded(EpisodeData(steps=steps, attrs=attrs, stats=stats, complete=bool(attrs.get("closed", False))))


def _upgraded(episode: EpisodeData) -> EpisodeData:
    """Returns a layout 1 episode as layout 2, filling the step keys layout 1 lacks; others as they are."""
    if episode.attrs.get("layout_version") != 1:
        return episode
    steps, attrs = dict(episode.steps), dict(episode.attrs)
    n_steps = len(next(iter(steps.values()))) if steps else 0
    filled = []
    for key, source in _LAYOUT_1_FILLS.items():
        if key in steps:
            continue
        if source is None:
            steps[key] = np.zeros(n_steps, dtype=bool)
        elif source in steps:
            steps[key] = steps[source].copy()
        else:
            continue
        filled.append(key)
    attrs.update(layout_version=LAYOUT_VERSION, upgraded_from_layout=1, filled_keys=filled)
    return episode._replace(steps=steps, attrs=attrs)


def count_steps(path: str | Path) -> int:
    """Whole steps in an episode, found without reading the step data."""
    path = Path(path)
    file = _open_closed_h5(path)
    if file is None:
        return _count_journal_steps(_journal_path(path))
    with file:
        lengths = {dataset.shape[0] for dataset in _step_datasets(file).values()}
    if len(lengths) != 1:
        raise ValueError(f"episode file {path} has step datasets of lengths {sorted(lengths)}; expected one common length")
    return lengths.pop()


def episode_files(folder: str | Path) -> list[Path]:
    """Every episode in ``folder`` by its ``.h5`` path, in name order: the closed files, the open or killed ones,
    and those only a journal holds (a writer killed between creating its journal and its HDF5 file)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = set(folder.glob("*.h5"))
    paths.update(journal.with_name(journal.name[: -len(_JOURNAL_SUFFIX)])
                 for journal in folder.glob(f"*.h5{_JOURNAL_SUFFIX}"))
    return sorted(paths)


def recover(path: str | Path) -> int:
    """Rewrites an episode whose writer died as an ordinary HDF5 file and returns its step count.

    The steps come from the journal; the file gets closed=False and flags
    ["recovered"], and the journal is removed. A closed episode is left as it is,
    apart from removing a journal that a close() cut short left behind.
    """
    path = Path(path)
    journal = _journal_path(path)
    file = _open_closed_h5(path)
    if file is not None:
        file.close()
        journal.unlink(missing_ok=True)
        return count_steps(path)
    header, records = _read_journal(journal)
    spec = _spec_from_header(header)
    attrs = {name: _storable("attr", name, value) for name, value in header["attrs"].items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    rebuilt, datasets = _create_h5(tmp, spec, attrs)
    with rebuilt:
        for key, dataset in datasets.items():
            dataset.resize(len(records), axis=0)
            dataset[...] = records[key]
        rebuilt.attrs["flags"] = _checked_flags(["recovered"])
    # The journal goes only once the rebuilt file is in place, so a kill here loses nothing.
    os.replace(tmp, path)
    journal.unlink()
    return len(records)


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + _JOURNAL_SUFFIX)


def _open_closed_h5(path: Path) -> h5py.File | None:
    """Opens the episode's HDF5 file, or returns None when its steps must come from the journal."""
    has_journal = _journal_path(path).exists()
    if not path.exists():
        if has_journal:
            return None
        raise FileNotFoundError(f"episode file {path} does not exist")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        if has_journal:
            return None
        raise ValueError(f"episode file {path} cannot be opened ({error}) and has no journal to read its steps from") from error
    try:
        _check_layout_version(path, file.attrs.get("layout_version"))
    except LayoutVersionError:
        file.close()
        raise
    # An unclosed file beside a journal is being written by this very process, or is a
    # recovery cut short; either way the journal has every step.
    if has_journal and not file.attrs.get("closed", False):
        file.close()
        return None
    return file


def _check_layout_version(path: Path, version: Any) -> None:
    version = _plain(version)
    if version in READABLE_LAYOUT_VERSIONS and not isinstance(version, bool):
        return
    readable = " or ".join(str(known) for known in READABLE_LAYOUT_VERSIONS)
    newer = isinstance(version, int) and not isinstance(version, bool) and version > LAYOUT_VERSION
    fix = "upgrade robotd to read it" if newer else "read it with the robotd version that wrote it"
    raise LayoutVersionError(f"episode file {path} has layout_version {version}, but this build reads layout_version {readable}; {fix}")


def _create_h5(
    path: Path, spec: dict[str, tuple[tuple[int, ...], np.dtype]], attrs: dict[str, Any]
) -> tuple[h5py.File, dict[str, h5py.Dataset]]:
    """Creates an episode file with its attrs and empty step datasets, open for writing.

    The datasets are returned as created: opened again they would lose their chunk cache settings.
    """
    # The latest format records "open for writing" in the superblock, so a file whose
    # writer died is refused by HDF5 instead of read half-written.
    file = h5py.File(path, "x", libver="latest")
    try:
        file.attrs.update(attrs)
        file.create_group(_STATS)
        datasets = {key: _create_step_dataset(file, key, shape, dtype) for key, (shape, dtype) in spec.items()}
    except BaseException:
        file.close()
        path.unlink()
        raise
    return file, datasets


def _create_step_dataset(file: h5py.File, key: str, shape: tuple[int, ...], dtype: np.dtype) -> h5py.Dataset:
    if dtype == np.uint8 and len(shape) >= 3:
        # An image per chunk, as replay samples frames one by one. A small chunk cache
        # compresses each frame as it is written rather than a backlog of them in close().
        frame_bytes = math.prod(shape)
        chunk_steps, options = 1, {**_IMAGE_COMPRESSION, "rdcc_nbytes": _IMAGE_CACHE_FRAMES * frame_bytes}
    else:
        row_bytes = math.prod(shape) * dtype.itemsize
        chunk_steps, options = max(1, min(_MAX_CHUNK_STEPS, _SMALL_CHUNK_BYTES // row_bytes)), {}
    return file.create_dataset(
        f"{_STEPS}/{key}",
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=(chunk_steps, *shape),
        **options,
    )


def _step_datasets(file: h5py.File) -> dict[str, h5py.Dataset]:
    if _STEPS not in file:
        raise ValueError(f"episode file {file.filename} has no '{_STEPS}' group; it is not an episode file")
    datasets = {}

    def collect(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            datasets[name] = item

    file[_STEPS].visititems(collect)
    return datasets


class _RowWriter:
    """Writes one step at a time into a step dataset through HDF5's low-level calls.

    h5py's indexing costs tens of microseconds per call in selection parsing, which
    across a step's keys would be most of an append.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self._id = dataset.id
        self._dtype = dataset.dtype
        self._step_shape = (1, *dataset.shape[1:])
        self._origin = (0,) * len(dataset.shape[1:])
        self._memory_space = h5py.h5s.create_simple(self._step_shape)
        self._file_space = self._id.get_space()

    def resize(self, n_steps: int) -> None:
        """Sets the dataset's length along time to n_steps."""
        self._id.set_extent((n_steps, *self._step_shape[1:]))
        self._file_space = self._id.get_space()

    def write(self, index: int, value: np.ndarray) -> None:
        """Writes value as step number index."""
        self._file_space.select_hyperslab((index, *self._origin), self._step_shape)
        data = np.ascontiguousarray(value, dtype=self._dtype).reshape(self._step_shape)
        self._id.write(self._memory_space, self._file_space, data)


class _JournalWriter:
    """Appends steps to an episode's journal: the durable record until close().

    Layout: magic, header length, JSON header (layout_version, spec, attrs), its CRC-32,
    then fixed-size records of step number, each key's bytes in spec order and a CRC-32.
    """

    def __init__(self, path: Path, spec: dict[str, tuple[tuple[int, ...], np.dtype]], attrs: dict[str, Any]) -> None:
        self._path = path
        header = _journal_header(spec, attrs)
        self._records_offset = len(header)
        self._record = np.zeros((), dtype=_record_dtype(spec, with_crc=False))
        self._record_size = self._record.itemsize + _U32.size
        # Written aside and renamed, so a journal never exists with half a header.
        tmp = path.with_name(path.name + ".tmp")
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(self._fd, header, 0)
            os.replace(tmp, path)
        except BaseException:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise

    def write(self, index: int, values: Mapping[str, np.ndarray]) -> None:
        """Writes step number index; rewriting an index replaces that record."""
        self._record[_STEP_NUMBER] = index
        for key, value in values.items():
            self._record[key] = value
        body = self._record.tobytes()
        _pwrite_all(self._fd, body + _U32.pack(zlib.crc32(body)), self._records_offset + index * self._record_size)

    def discard(self) -> None:
        """Closes and deletes the journal."""
        os.close(self._fd)
        self._path.unlink()


def _journal_header(spec: dict[str, tuple[tuple[int, ...], np.dtype]], attrs: dict[str, Any]) -> bytes:
    content = {
        "layout_version": LAYOUT_VERSION,
        "spec": {key: [list(shape), dtype.str] for key, (shape, dtype) in spec.items()},
        "attrs": {name: _plain(value) for name, value in attrs.items()},
    }
    text = json.dumps(content).encode()
    return _JOURNAL_MAGIC + _U32.pack(len(text)) + text + _U32.pack(zlib.crc32(text))


def _record_dtype(spec: dict[str, tuple[tuple[int, ...], np.dtype]], *, with_crc: bool) -> np.dtype:
    # Little-endian and packed, so a journal reads the same on any machine.
    # The extra fields' leading '/' keeps them apart from every valid step key.
    fields = [(_STEP_NUMBER, "<u8")] + [(key, dtype.newbyteorder("<"), shape) for key, (shape, dtype) in spec.items()]
    if with_crc:
        fields.append((_CRC, "<u4"))
    return np.dtype(fields)


def _spec_from_header(header: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {key: (tuple(shape), np.dtype(dtype).newbyteorder("=")) for key, (shape, dtype) in header["spec"].items()}


def _read_journal_header(path: Path, head: bytes) -> tuple[dict[str, Any], int]:
    """Parses the header at the start of a journal; returns it and where the records start."""
    start = len(_JOURNAL_MAGIC) + _U32.size
    if len(head) < start or not head.startswith(_JOURNAL_MAGIC):
        raise ValueError(f"episode journal {path} does not start with a robotd journal header; it is not a journal")
    (text_size,) = _U32.unpack_from(head, len(_JOURNAL_MAGIC))
    text = head[start : start + text_size]
    crc = head[start + text_size : start + text_size + _U32.size]
    if len(crc) < _U32.size or _U32.unpack(crc)[0] != zlib.crc32(text):
        raise ValueError(f"episode journal {path} has a damaged header; its steps cannot be read")
    header = json.loads(text)
    _check_layout_version(path, header.get("layout_version"))
    return header, start + text_size + _U32.size


def _read_journal(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """Returns a journal's header and its whole records, in order, up to the first damaged one."""
    data = path.read_bytes()
    header, offset = _read_journal_header(path, data)
    record_dtype = _record_dtype(_spec_from_header(header), with_crc=True)
    n_stored = (len(data) - offset) // record_dtype.itemsize
    records = np.frombuffer(data, dtype=record_dtype, count=n_stored, offset=offset)
    body_size = record_dtype.itemsize - _U32.size
    view = memoryview(data)
    n_whole = 0
    for index in range(n_stored):
        start = offset + index * record_dtype.itemsize
        if records[_STEP_NUMBER][index] != index or zlib.crc32(view[start : start + body_size]) != records[_CRC][index]:
            break
        n_whole += 1
    return header, records[:n_whole]


def _count_journal_steps(path: Path) -> int:
    """Counts a journal's whole records from its size, checking only the last one.

    Records are written one after another, so only the last can be cut short.
    """
    with path.open("rb") as journal:
        head = journal.read(len(_JOURNAL_MAGIC) + _U32.size)
        if head.startswith(_JOURNAL_MAGIC) and len(head) == len(_JOURNAL_MAGIC) + _U32.size:
            head += journal.read(_U32.unpack_from(head, len(_JOURNAL_MAGIC))[0] + _U32.size)
        header, offset = _read_journal_header(path, head)
        record_size = _record_dtype(_spec_from_header(header), with_crc=True).itemsize
        n_stored = (path.stat().st_size - offset) // record_size
        if n_stored == 0:
            return 0
        journal.seek(offset + (n_stored - 1) * record_size)
        last = journal.read(record_size)
    (index,) = _U64.unpack_from(last)
    (crc,) = _U32.unpack_from(last, record_size - _U32.size)
    last_is_whole = index == n_stored - 1 and crc == zlib.crc32(last[: record_size - _U32.size])
    return n_stored if last_is_whole else n_stored - 1


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _checked_spec(spec: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if not spec:
        raise ValueError("episode spec is empty; give at least one step key with its (shape, dtype)")
    checked = {}
    for key, entry in spec.items():
        _check_key(key)
        try:
            shape, dtype_name = entry
            shape = tuple(int(size) for size in shape)
            dtype = np.dtype(dtype_name)
        except (TypeError, ValueError) as error:
            raise ValueError(f"spec entry {key!r} = {entry!r} is not (shape, dtype), e.g. ((64, 64, 3), 'uint8'): {error}") from error
        if any(size <= 0 for size in shape):
            raise ValueError(f"spec key {key!r} has shape {shape}; every dimension must be at least 1")
        if dtype.kind not in "biuf":
            raise ValueError(f"spec key {key!r} has dtype {dtype}; steps hold bool, integer or float arrays")
        checked[key] = (shape, dtype)
    for key in checked:
        nested = [other for other in checked if other.startswith(key + "/")]
        if nested:
            raise ValueError(f"spec key {key!r} is also the group of {nested}; a key cannot be both a value and a group")
    return checked


def _check_key(key: object) -> None:
    parts = key.split("/") if isinstance(key, str) else []
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"step key {key!r} is not a '/'-separated name like 'obs/image'")


def _checked_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    missing = [name for name in REQUIRED_ATTRS if name not in attrs]
    if missing:
        raise ValueError(f"episode attrs lack {missing}; every episode records {list(REQUIRED_ATTRS)}")
    reserved = [name for name in _WRITER_ATTRS if name in attrs]
    if reserved:
        raise ValueError(f"episode attrs {reserved} are set by the writer; remove them from attrs")
    checked = {"layout_version": LAYOUT_VERSION, "closed": False}
    checked["started_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    checked.update({name: _storable("attr", name, value) for name, value in attrs.items()})
    return checked


def _checked_flags(flags: list[str]) -> np.ndarray:
    bad = [flag for flag in flags if not isinstance(flag, str)]
    if bad:
        raise ValueError(f"episode flags {bad} are not strings; flags are short names such as 'timeout'")
    return np.array(flags, dtype=h5py.string_dtype())


def _storable(kind: str, name: str, value: Any) -> Any:
    """Returns value in a form h5py stores as an attribute, or raises a readable ValueError."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return array
        if array.dtype.kind == "U":
            return array.astype(h5py.string_dtype())
    raise ValueError(f"{kind} {name!r} = {value!r} cannot be stored; use a str, a number, a bool, or a list of numbers or of strs")


def _plain(value: Any) -> Any:
    """Turns an attribute as h5py returns it into plain Python values (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [item.decode() if isinstance(item, bytes) else item for item in value.tolist()]
    return value
