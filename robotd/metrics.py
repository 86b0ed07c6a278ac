"""Metrics: one JSON object per line in LOGDIR/metrics/<process>.jsonl, and TensorBoard events in LOGDIR/tb/<process>/."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricsWriter:
    """Appends scalar records of one process (flushed per write) to jsonl and TensorBoard."""

    def __init__(self, logdir, *, process: str):
        root = Path(logdir)
        (root / "metrics").mkdir(parents=True, exist_ok=True)
        self.path = root / "metrics" / f"{process}.jsonl"
        self.process = process
        self._file = open(self.path, "a")
        self._events = EventFileWriter(str(root / "tb" / process))

    def write(self, step: int, scalars: dict[str, float], *, wall_time: float | None = None) -> None:
        """Writes one record; NaN and infinities become null in JSON."""
        now = time.time() if wall_time is None else wall_time
        record = {"process": self.process, "step": int(step), "time": now}
        values = []
        for key, value in scalars.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else None
            values.append(Summary.Value(tag=key, simple_value=value))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._events.add_event(Event(wall_time=now, step=int(step), summary=Summary(value=values)))
        self._events.flush()

    def close(self) -> None:
        """Flushes and closes both outputs."""
        self._file.close()
        self._events.close()


def read_metrics(path) -> list[dict]:
    """Every complete record of a jsonl file (a truncated last line from a killed writer is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
