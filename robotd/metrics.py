"""Metrics: each process's scalar records, as JSON lines and as TensorBoard events.

Layout under a logdir::

    metrics/<process>.jsonl   one JSON object per line: {"process", "step", "time", **scalars}
    tb/<process>/events.out.tfevents.*   the same scalars, for TensorBoard

Every process writes only files named after it, so any number of processes can log
into one logdir without locks and without their lines interleaving; one writer per
process name. The JSON lines are the record: each goes to disk in a single write as
soon as it is made, so a killed process leaves at most its last line cut short, which
read_metrics skips and the next writer for that process truncates away. Non-finite
values are written as null, since JSON has no NaN or infinity. TensorBoard's event
writer flushes from a background thread every few seconds, so the events are a view
that may lack a killed process's last seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_RESERVED_KEYS = ("process", "step", "time")
_PROCESS_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_TENSORBOARD_FLUSH_S = 5


class MetricsWriter:
    """Appends scalar records to LOGDIR/metrics/<process>.jsonl (one JSON object per line, on disk per write) and to TensorBoard event files in LOGDIR/tb/<process>/."""

    def __init__(self, logdir: str | Path, *, process: str) -> None:
        if not isinstance(process, str) or not _PROCESS_NAME.fullmatch(process):
            raise ValueError(f"process name {process!r} cannot name a file; use letters, digits, '_', '-' and '.' (not first)")
        self._process = process
        self._path = Path(logdir) / "metrics" / f"{process}.jsonl"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _drop_cut_short_line(self._path)
        # Unbuffered, so each record is one write() that lands whole or is the cut-short last line.
        self._file = open(self._path, "ab", buffering=0)
        self._events = EventFileWriter(str(Path(logdir) / "tb" / process), flush_secs=_TENSORBOARD_FLUSH_S)

    @property
    def path(self) -> Path:
        """The JSON lines file this writer appends to."""
        return self._path

    def write(self, step: int, scalars: dict[str, float], *, wall_time: float | None = None) -> None:
        """Records scalars at step; wall_time (seconds since the epoch) defaults to now."""
        reserved = [name for name in scalars if name in _RESERVED_KEYS]
        if reserved:
            raise ValueError(f"metric names {reserved} clash with the record's own keys {list(_RESERVED_KEYS)}; rename them")
        values = {}
        for name, value in scalars.items():
            try:
                values[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metric {name!r} = {value!r} is not a number; pass a float") from None
        time_s = time.time() if wall_time is None else float(wall_time)
        record = {"process": self._process, "step": int(step), "time": time_s}
        record.update({name: value if math.isfinite(value) else None for name, value in values.items()})
        _write_all(self._file, (json.dumps(record, allow_nan=False) + "\n").encode())
        summary = Summary(value=[Summary.Value(tag=name, simple_value=value) for name, value in values.items()])
        self._events.add_event(Event(wall_time=time_s, step=int(step), summary=summary))

    def close(self) -> None:
        """Flushes the TensorBoard events and closes both files."""
        self._file.close()
        self._events.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Reads the records of one metrics .jsonl file, or of all processes in a logdir ordered by time.

    A last line without its newline, cut short by a killed writer, is skipped; a
    damaged line elsewhere raises ValueError naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        records = [record for file in sorted((path / "metrics").glob("*.jsonl")) for record in _read_file(file)]
        return sorted(records, key=lambda record: record["time"])
    return _read_file(path)


def _read_file(path: Path) -> list[dict[str, Any]]:
    # Whatever follows the last newline is a line still being written, or cut short.
    lines = path.read_bytes().split(b"\n")[:-1]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"metrics file {path} line {number} is not JSON ({error}); the file is damaged there") from None
        if not isinstance(record, dict):
            raise ValueError(f"metrics file {path} line {number} holds {type(record).__name__}, not a record; the file is damaged there")
        records.append(record)
    return records


def _drop_cut_short_line(path: Path) -> None:
    """Truncates a last line left without its newline, so new records start on a line of their own."""
    if not path.exists():
        return
    with path.open("r+b") as file:
        end = file.seek(0, os.SEEK_END)
        keep, block_end = 0, end
        while block_end > 0:
            block_start = max(0, block_end - 4096)
            file.seek(block_start)
            newline = file.read(block_end - block_start).rfind(b"\n")
            if newline >= 0:
                keep = block_start + newline + 1
                break
            block_end = block_start
        if keep < end:
            file.truncate(keep)


def _write_all(file: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]
