"""The session directory: where every process of a session writes, and the summary of it.

```
LOGDIR/
  config.yaml            resolved config
  episodes/*.h5          one file per episode (layout in robotd.episodes and the README)
  checkpoints/           learner checkpoints (latest.pt)
  metrics/<process>.jsonl, tb/<process>/   metrics (robotd.metrics)
  stats/<process>.json   final counters of each process, written when it exits
  summary.json           the session's summary, written by `robotd train` at exit
```
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

EPISODES = "episodes"
CHECKPOINTS = "checkpoints"
STATS = "stats"
SUMMARY = "summary.json"
CONFIG = "config.yaml"


class LogdirError(RuntimeError):
    """The log directory cannot be used; one line saying which and what to do."""


def prepare(logdir: str | Path) -> Path:
    """Creates the session directory tree and proves it is writable."""
    root = Path(logdir)
    try:
        for sub in ("", EPISODES, CHECKPOINTS, STATS):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # A probe of its own (processes of one session prepare the same directory at once: a shared name
        # let one process unlink another's probe).
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LogdirError(f"log directory {str(root)!r} is not writable ({exc.strerror}): "
                          f"choose another --logdir or fix its permissions") from None
    return root


def write_json(path: str | Path, data: dict) -> None:
    """Writes JSON atomically (temporary file, then rename), so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=_jsonable)
        handle.write("\n")
    os.replace(tmp, path)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_stats(logdir: str | Path, process: str, stats: dict) -> None:
    """Saves a process's final counters as stats/<process>.json."""
    write_json(Path(logdir) / STATS / f"{process}.json", stats)


def read_stats(logdir: str | Path, process: str) -> dict:
    """Reads stats/<process>.json, or {} when the process wrote none."""
    path = Path(logdir) / STATS / f"{process}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def next_episode_id(logdir: str | Path, actor_id: str) -> int:
    """The first episode number of ``actor_id`` not used yet in this log directory (an actor restarted into
    the same directory continues the numbering instead of touching earlier files)."""
    used = [int(path.name[len(actor_id) + 1:].split(".")[0]) for path in (Path(logdir) / EPISODES).glob(f"{actor_id}-*.h5*")
            if path.name[len(actor_id) + 1:].split(".")[0].isdigit()]
    return max(used, default=-1) + 1


def holds_session(logdir: str | Path) -> bool:
    """True when the directory already has a session's episodes or summary."""
    root = Path(logdir)
    return (root / SUMMARY).exists() or any((root / EPISODES).glob("*.h5*"))


def episode_path(logdir: str | Path, actor_id: str, episode_id: int) -> Path:
    """Where episode ``episode_id`` of ``actor_id`` is written."""
    return Path(logdir) / EPISODES / f"{actor_id}-{episode_id:06d}.h5"
