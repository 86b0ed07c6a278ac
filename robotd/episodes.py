"""Episode files: one HDF5 file per episode, written step by step and read back offline.

Layout (LAYOUT_VERSION = 1), defined here and nowhere else::

    <path>.h5
      attrs    layout_version, session, actor_id, episode_id, robot, task,
               control_rate_hz, started_at (ISO 8601 str), any extra attrs given,
               closed (bool, False until close() succeeds), flags (list of str, set by close())
      n_steps  scalar int64: how many leading rows of every steps/ dataset hold whole steps
      steps/<key>  (T, *shape) one dataset per step key, resizable and chunked along time;
               uint8 arrays with ndim >= 3 per step (images) are compressed, one frame per chunk
      stats/   attrs: the per-episode stats given to close()

Durability. HDF5 is not crash safe by itself: a file open for ordinary writing is
marked open in its superblock and cannot be opened after its writer dies, and the
library writes metadata in no particular order. The writer therefore uses HDF5's
single-writer/multiple-reader (SWMR) mode, whose flush orders every metadata write
so that the file on disk is consistent at every instant. Each append writes the step,
flushes, then bumps ``n_steps`` and flushes again, so ``n_steps`` never counts a step
whose data is not on disk; readers trust ``n_steps``, not the dataset extents (which
grow ahead in blocks). A file appears under its final name only once it is in SWMR
mode, and close() finishes a copy of the file and renames it over the original, so a
process killed at any instant, during close() included, leaves a readable file
holding every step whose append() returned. A replay of every write the writer makes,
cut after each write and at each page boundary within a write, opened and verified
at every cut, is how this scheme was chosen. The guarantee covers the process dying,
not the machine losing power: that would need an fsync per step.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

LAYOUT_VERSION = 1

REQUIRED_ATTRS = ("session", "actor_id", "episode_id", "robot", "task", "control_rate_hz")
_WRITER_ATTRS = ("layout_version", "closed", "flags")

_STEPS = "steps"
_STATS = "stats"
_COUNT = "n_steps"

# Datasets grow this many steps at a time: a resize rewrites every dataset's header,
# which is the slowest part of an append, and readers go by n_steps anyway.
_GROW_STEPS = 256
# Small per-step arrays are rewritten in place at every flush, so their chunks stay
# uncompressed (a compressed chunk changes size and moves) and about this big.
_SMALL_CHUNK_BYTES = 8192
_MAX_CHUNK_STEPS = 1024
# gzip is readable by every HDF5 tool; level 1 keeps a 64x64x3 frame well under 1 ms.
_IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}


class LayoutVersionError(ValueError):
    """An episode file written with a layout this build does not read."""


class EpisodeData(NamedTuple):
    """Everything read back from one episode file."""

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
    The file is created at ``path`` and is never overwritten.
    """

    def __init__(self, path: str | Path, spec: dict[str, tuple[tuple[int, ...], str]], attrs: dict) -> None:
        self._path = Path(path)
        if self._path.exists():
            raise FileExistsError(f"episode file {self._path} already exists; give each episode its own path")
        self._spec = _checked_spec(spec)
        file_attrs = _checked_attrs(attrs)
        self._n_steps = 0
        self._capacity_steps = 0
        self._closed = False
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(self._path)
        # Built under a temporary name, so the final name only ever names a file in
        # SWMR mode: a file killed before that is marked open and cannot be read.
        # 8-byte alignment keeps n_steps inside one page, so no write of it is torn.
        self._file = h5py.File(tmp, "w", libver="latest", alignment_threshold=8, alignment_interval=8)
        try:
            self._count = self._file.create_dataset(_COUNT, data=np.int64(0))
            self._file.attrs.update(file_attrs)
            self._file.create_group(_STATS)
            self._rows = {key: _RowWriter(_create_step_dataset(self._file, key, shape, dtype)) for key, (shape, dtype) in self._spec.items()}
            self._file.swmr_mode = True
            self._file.flush()
            os.replace(tmp, self._path)
        except BaseException:
            self._file.close()
            tmp.unlink(missing_ok=True)
            raise

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
        row = self._n_steps
        if row >= self._capacity_steps:
            self._capacity_steps += _GROW_STEPS
            for rows in self._rows.values():
                rows.resize(self._capacity_steps)
        for key, value in values.items():
            self._rows[key].write(row, value)
        # The step must be on disk before n_steps counts it, hence two flushes.
        self._file.flush()
        self._count[()] = row + 1
        self._file.flush()
        self._n_steps = row + 1

    def close(self, stats: dict | None = None, flags: list[str] | None = None) -> None:
        """Marks the episode complete, storing its stats and flags (e.g. "timeout").

        The finished file replaces the open one in a single rename, so a kill
        during close() leaves either of them, each with every step.
        """
        if self._closed:
            raise ValueError(f"episode {self._path} is already closed")
        stored_stats = {name: _storable("stat", name, value) for name, value in (stats or {}).items()}
        stored_flags = _checked_flags(flags or [])
        self._closed = True
        self._file.close()
        tmp = _tmp_path(self._path)
        shutil.copyfile(self._path, tmp)
        with h5py.File(tmp, "r+", libver="latest") as file:
            for dataset in _step_datasets(file).values():
                dataset.resize(self._n_steps, axis=0)
            file[_STATS].attrs.update(stored_stats)
            file.attrs["flags"] = stored_flags
            file.attrs["closed"] = True
        os.replace(tmp, self._path)

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


def read_episode(path: str | Path) -> EpisodeData:
    """Reads every whole step of an episode, whether it was closed or its writer died.

    Raises ValueError naming the file when it cannot be read, and
    LayoutVersionError when it was written with another layout.
    """
    with _open_episode(path) as (file, n_steps):
        try:
            steps = {}
            for key, dataset in _step_datasets(file).items():
                if dataset.shape[0] < n_steps:
                    raise ValueError(f"episode file {path}: steps/{key} holds {dataset.shape[0]} steps but n_steps is {n_steps}; the file is damaged")
                steps[key] = dataset[:n_steps]
            attrs = {name: _plain(value) for name, value in file.attrs.items()}
            stats = {name: _plain(value) for name, value in file[_STATS].attrs.items()} if _STATS in file else {}
        except (OSError, KeyError, RuntimeError) as error:
            raise ValueError(f"episode file {path} cannot be read: {error}") from error
    return EpisodeData(steps=steps, attrs=attrs, stats=stats, complete=bool(attrs.get("closed", False)))


def count_steps(path: str | Path) -> int:
    """Whole steps in an episode file, read without touching the step data."""
    with _open_episode(path) as (_, n_steps):
        return n_steps


@contextlib.contextmanager
def _open_episode(path: str | Path) -> Iterator[tuple[h5py.File, int]]:
    """Opens an episode read-only, checks its layout version and yields it with its n_steps."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"episode file {path} does not exist")
    try:
        file = h5py.File(path, "r")
    except OSError as plain_error:
        # A file still being written, or whose writer died, is open for SWMR writing
        # in its superblock, and only a SWMR reader may open it.
        try:
            file = h5py.File(path, "r", swmr=True)
        except OSError:
            raise ValueError(f"episode file {path} cannot be opened: {plain_error}") from plain_error
    with file:
        version = _plain(file.attrs.get("layout_version"))
        if version != LAYOUT_VERSION:
            raise LayoutVersionError(
                f"episode file {path} has layout_version {version}, but this build reads layout_version {LAYOUT_VERSION}; "
                "read it with the robotd version that wrote it"
            )
        try:
            n_steps = int(file[_COUNT][()])
        except (OSError, KeyError) as error:
            raise ValueError(f"episode file {path} has no readable {_COUNT}: {error}") from error
        yield file, n_steps


def _tmp_path(path: Path) -> Path:
    # Not ending in .h5, so a directory scan for episodes never picks it up.
    return path.with_name(path.name + ".tmp")


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
    """Turns an attribute as h5py returns it into plain Python values where one fits."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [item.decode() if isinstance(item, bytes) else str(item) for item in value.tolist()]
    return value


def _create_step_dataset(file: h5py.File, key: str, shape: tuple[int, ...], dtype: np.dtype) -> h5py.Dataset:
    is_image = dtype == np.uint8 and len(shape) >= 3
    if is_image:
        # One frame per chunk: each frame is compressed once and never rewritten.
        chunk_steps, compression = 1, _IMAGE_COMPRESSION
    else:
        row_bytes = math.prod(shape) * dtype.itemsize
        chunk_steps, compression = max(1, min(_MAX_CHUNK_STEPS, _SMALL_CHUNK_BYTES // row_bytes)), {}
    return file.create_dataset(
        f"{_STEPS}/{key}",
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=dtype,
        chunks=(chunk_steps, *shape),
        **compression,
    )


def _step_datasets(file: h5py.File) -> dict[str, h5py.Dataset]:
    datasets = {}

    def collect(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            datasets[name] = item

    file[_STEPS].visititems(collect)
    return datasets
