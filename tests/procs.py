"""Processes as /proc shows them, for tests that check what a session started, left running or killed (Linux)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str          # R, S, D, Z (zombie), ...
    argv: tuple[str, ...]

    @property
    def cmdline(self) -> str:
        return " ".join(self.argv)


def processes() -> list[Proc]:
    """Every process this user can see, but this one; those that vanish while read are left out."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        found.append(Proc(int(entry.name), int(fields[1]), fields[0].decode(),
                          tuple(arg.decode(errors="replace") for arg in argv if arg)))
    return found


def live_naming(marker: str, *, unless: tuple[str, ...] = ()) -> list[str]:
    """Command lines of live (not zombie) processes that name ``marker`` and none of ``unless``."""
    return [p.cmdline for p in processes()
            if p.state != "Z" and marker in p.cmdline and not any(word in p.cmdline for word in unless)]


def module_pid(module: str, marker: str) -> int | None:
    """The live process running ``python -m MODULE`` whose command line names ``marker`` (a log directory)."""
    for p in processes():
        if p.state != "Z" and marker in p.cmdline and "-m" in p.argv and module in p.argv:
            return p.pid
    return None


def ray_of_session(logdir) -> tuple[list[str], list[str]]:
    """The temporary directories of the local Rays a session's learner started (its log names each) and the command
    lines of live Ray processes (GCS, raylet, monitors) that name one of them. Other sessions' Rays, such as those
    of tests running beside this one, are not counted."""
    text = "".join(path.read_text(errors="replace") for path in sorted(Path(logdir).glob("logs/learner*.log")))
    dirs = sorted(set(re.findall(r"its files in (\S+)", text)))
    left = [p.cmdline for p in processes()
            if p.state != "Z" and any(folder in p.cmdline for folder in dirs)
            and any(name in p.cmdline for name in ("raylet", "gcs_server", "ray/"))]
    return dirs, left


def pids() -> set[int]:
    return {int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()}


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for p in processes():
        children.setdefault(p.ppid, []).append(p.pid)
    found, frontier = {root}, [root]
    while frontier:
        for pid in children.get(frontier.pop(), []):
            if pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie that a non-reaping parent keeps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
