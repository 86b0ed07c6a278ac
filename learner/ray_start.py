"""Ray for the learner: a local Ray bound to loopback only, or a cluster joined with Ray's token auth, each start
retried within ``learner.ray_start_timeout_s``.

A local Ray is made single-node (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported), so its node address
is 127.0.0.1 and the GCS, raylet, object manager, workers and agents all bind to loopback; only then is Ray's token
auth left off. Joining a cluster always sets ``RAY_AUTH_MODE=token``.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from robotd.config import Config, LearnerConfig
from robotd.security import SecurityError

log = logging.getLogger("learner.ray")
T = TypeVar("T")


LOOPBACK = "127.0.0.1"
# Ray takes 127.0.0.1 as the node address only where it treats the machine as a single node (its default
# on macOS and Windows); this variable asks for that on Linux too. With a loopback node address every Ray
# server (GCS, raylet, object manager, workers, agents) binds to loopback instead of all interfaces.
RAY_SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's own start-up waits: the GCS port file and GCS connection (its Python side) and the raylet's
# registration with the GCS (its C++ side). Each attempt sets them to the time left of
# learner.ray_start_timeout_s (at most JOIN_ATTEMPT_S when joining a cluster), unless the environment sets them.
RAY_WAIT_VARS = ("RAY_gcs_server_port_wait_time_s", "RAY_raylet_start_wait_time_s")
MIN_ATTEMPT_S = 10.0
# Ray's GCS wait for one attempt at joining a cluster: Ray spends all of it retrying a refused token before it
# reports one, and an attempt that fails for being early (a head still starting) is retried anyway.
JOIN_ATTEMPT_S = 15.0
MAX_PAUSE_S = 8.0


def _token_file(path: str, what: str) -> str:
    """Checks that ``path`` is a non-empty token file only its owner can read; returns it with ``~`` expanded."""
    expanded = os.path.expanduser(path)
    try:
        info = os.stat(expanded)
    except OSError as exc:
        raise SecurityError(f"{what} {path!r} cannot be read ({exc.strerror}): write the cluster's Ray token there "
                            f"(`ray get-auth-token` on the head prints it) and chmod 600 it") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        raise SecurityError(f"{what} {path!r} is not a file holding a token: write the cluster's Ray token there "
                            f"(`ray get-auth-token` on the head prints it)")
    if os.name == "posix" and info.st_mode & 0o077:
        raise SecurityError(f"{what} {path!r} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}): "
                            f"chmod 600 {path}")
    return expanded


def ray_env(learner: LearnerConfig, environ: Mapping[str, str]) -> dict[str, str | None]:
    """The environment Ray must start under for ``learner.ray_address``: names to set (None: to remove).

    A local Ray (empty address) is made single-node, so that it binds to loopback only; token auth stays
    off there (``RAY_AUTH_MODE=disabled``) unless the environment names a mode. Joining a cluster always
    uses Ray's token auth (``RAY_AUTH_MODE=token``) with the token from ``learner.ray_token_file``, else
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, in that order. No token, a token
    file others can read, or ``RAY_AUTH_MODE`` naming another mode raises a SecurityError.
    """
    address = learner.ray_address
    if not address:
        return {RAY_SINGLE_NODE_VAR: "0", "RAY_AUTH_MODE": environ.get("RAY_AUTH_MODE") or "disabled"}
    if address.strip().lower() == "local":
        raise SecurityError(f"learner.ray_address={address} is not a cluster address: leave it empty to start Ray "
                            f"locally (on loopback only)")
    mode = environ.get("RAY_AUTH_MODE", "")
    if mode and mode.lower() != "token":
        raise SecurityError(f"RAY_AUTH_MODE={mode} turns off Ray's token auth, which learner.ray_address={address} "
                            f"needs: unset RAY_AUTH_MODE and give the cluster's token in learner.ray_token_file")
    env: dict[str, str | None] = {"RAY_AUTH_MODE": "token"}
    if learner.ray_token_file:
        # Ray prefers RAY_AUTH_TOKEN to a token file; the configured file wins here.
        env["RAY_AUTH_TOKEN_PATH"] = _token_file(learner.ray_token_file, "learner.ray_token_file")
        env["RAY_AUTH_TOKEN"] = None
    elif environ.get("RAY_AUTH_TOKEN", "").strip():
        pass
    elif environ.get("RAY_AUTH_TOKEN_PATH"):
        _token_file(environ["RAY_AUTH_TOKEN_PATH"], "RAY_AUTH_TOKEN_PATH")
    else:
        default = Path(environ.get("HOME") or Path.home()) / ".ray" / "auth_token"
        if not default.exists():
            raise SecurityError(f"learner.ray_address={address} joins a Ray cluster, which needs its auth token: "
                                f"put the token in a file only you can read (chmod 600) and set "
                                f"learner.ray_token_file to it, or set RAY_AUTH_TOKEN "
                                f"(`ray get-auth-token` on the head prints it)")
        _token_file(str(default), "Ray's token file")
    return env


def _first_line(error: BaseException) -> str:
    """The error's type and the first line of its message (Ray's start errors span many lines)."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def retry_start(attempt: Callable[[float], T], timeout_s: float, *, what: str, fix: str,
                fatal: tuple[type[BaseException], ...] = (), clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], object] = time.sleep, stopped: Callable[[], bool] = lambda: False) -> T:
    """Calls ``attempt(seconds_left)`` until it returns, retrying failures within ``timeout_s`` seconds.

    Every attempt and every failure is logged; the pause between attempts doubles from 1 s up to 8 s.
    Exceptions in ``fatal`` pass through at once. Once too little time is left for another attempt
    (10 s), or ``stopped()`` is true, the last failure becomes a one-line RuntimeError naming
    ``learner.ray_start_timeout_s``, the attempts, the last error and ``fix``.
    """
    deadline = clock() + timeout_s
    number = 0
    while True:
        number += 1
        left = deadline - clock()
        log.info("%s: attempt %d, %.0f s of learner.ray_start_timeout_s=%g left", what, number, left, timeout_s)
        try:
            return attempt(left)
        except fatal:
            raise
        except Exception as exc:
            error = _first_line(exc)
            left = deadline - clock()
            if stopped():
                raise RuntimeError(f"{what}: stopped after attempt {number} failed ({error})") from exc
            if left < MIN_ATTEMPT_S:
                raise RuntimeError(f"{what}: {number} attempt(s) failed within learner.ray_start_timeout_s="
                                   f"{timeout_s:g} s (last: {error}): {fix}") from exc
            pause = min(2.0 ** (number - 1), MAX_PAUSE_S, left - MIN_ATTEMPT_S)
            log.warning("%s: attempt %d failed (%s); trying again in %.0f s", what, number, error, pause)
            sleep(pause)
            if stopped():
                raise RuntimeError(f"{what}: stopped after attempt {number} failed ({error})") from exc


@contextlib.contextmanager
def _ray_waits(seconds: float):
    """Sets Ray's start-up waits (RAY_WAIT_VARS) the environment leaves unset to ``seconds`` meanwhile."""
    added = [name for name in RAY_WAIT_VARS if name not in os.environ]
    for name in added:
        os.environ[name] = str(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def kill_descendants_naming(marker: str, *, of_anyone: bool = False) -> list[int]:
    """Kills this process's descendants whose command line contains ``marker``, and theirs; returns their ids.
    With ``of_anyone``, every such process of this user, wherever it hangs in the process tree (Ray's
    processes outlive a killed learner, adopted by init).

    A local Ray start that fails leaves its GCS and raylet running (Ray forgets them); they all name the
    attempt's own temporary directory. Needs /proc (Linux); elsewhere nothing is killed.
    """
    parents: dict[int, int] = {}
    named: set[int] = set()
    try:
        entries = [entry for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                parent = int(file.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry.name}/cmdline", "rb") as file:
                cmdline = file.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry.name)] = parent
        if marker in cmdline and (not of_anyone or entry.stat().st_uid == os.getuid()):
            named.add(int(entry.name))
    me = os.getpid()

    def ancestors(pid: int):
        seen = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            yield pid

    victims = sorted(pid for pid in parents if pid != me and (of_anyone or me in ancestors(pid))
                     and any(p in named for p in (pid, *ancestors(pid))))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in victims:
        if parents.get(pid) == me:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return victims


_reaper_pipes: list[int] = []     # write ends held open for the life of this process


def start_reaper(marker: str) -> subprocess.Popen | None:
    """Starts a watcher that outlives this process by a moment: when this process ends in any way (a SIGKILL too),
    it kills every process of this user whose command line names ``marker`` (a local Ray's temporary directory:
    its GCS, raylet and workers), so a killed learner leaves no Ray behind. Linux only (/proc); else None."""
    if not os.path.isdir("/proc"):
        return None
    read_end, write_end = os.pipe()             # both close-on-exec: only the watcher's stdin keeps the read end
    try:
        watcher = subprocess.Popen([sys.executable, "-m", "learner.ray_start", "--reap-when-parent-dies", marker],
                                   stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
    except OSError as exc:
        os.close(write_end)
        log.warning("no watcher for Ray's processes (%s): if this learner is killed, stop Ray with `ray stop`", exc)
        return None
    finally:
        os.close(read_end)
    _reaper_pipes.append(write_end)
    return watcher


def _reap_when_parent_dies(marker: str) -> int:
    """The watcher's side of start_reaper: waits for end of file on stdin, then kills what names ``marker``."""
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    time.sleep(0.2)             # a clean shutdown stops Ray itself; the watcher only mops up after a kill
    kill_descendants_naming(marker, of_anyone=True)
    return 0


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class StartStopped(Exception):
    """A stop signal (SIGTERM, SIGINT) arrived while ``ray.init`` ran: Ray's own handler, in force meanwhile,
    turns it into SystemExit; the learner takes it as the stop it is."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stopped_by_signal(exc: SystemExit) -> bool:
    return exc.code in STOP_SIGNALS or exc.code in tuple(-s for s in STOP_SIGNALS)


def _start_local_ray(ray, seconds: float) -> None:
    """One attempt at a local, loopback-only Ray; a failed one leaves no Ray process behind, and one cut short by
    a stop signal raises StartStopped."""
    temp_dir = tempfile.mkdtemp(prefix="robotd-ray-")
    log.info("starting a local Ray on %s, its files in %s", LOOPBACK, temp_dir)
    try:
        with _ray_waits(seconds):
            ray.init(address="local", num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False, configure_logging=False, _temp_dir=temp_dir, _node_ip_address=LOOPBACK)
    except BaseException as exc:
        ray.shutdown()
        killed = kill_descendants_naming(temp_dir)
        log.info("Ray start failed: stopped the %d process(es) it left; its logs are in %s", len(killed), temp_dir)
        if isinstance(exc, SystemExit) and _stopped_by_signal(exc):
            raise StartStopped(f"a stop signal arrived while Ray was starting (exit {exc.code})") from None
        raise
    start_reaper(temp_dir)
    node_ip = ray.util.get_node_ip_address()
    if not _is_loopback_ip(node_ip):
        ray.shutdown()
        raise SecurityError(f"local Ray came up on {node_ip}, not loopback: set {RAY_SINGLE_NODE_VAR}=0 before "
                            f"anything imports Ray, or join a cluster with learner.ray_address")


def _auth_refusal(error: BaseException | None) -> str | None:
    """Ray's words when the cluster refused this driver's token, else None. Ray's ``AuthenticationError`` reaches
    ``ray.init``'s caller only as text: a RuntimeError quoting its traceback, wrapped in a ConnectionError."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ == "AuthenticationError":
            return _first_line(error).split(": ", 1)[-1]
        match = re.search(r"AuthenticationError: ([^\n]*)", str(error))
        if match:
            return match.group(1).split(". ")[0].strip()
        error = error.__cause__ or error.__context__
    return None


def _token_source(learner: LearnerConfig) -> str:
    if learner.ray_token_file:
        return f"the token in learner.ray_token_file={learner.ray_token_file}"
    return "the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def _join_ray(ray, address: str, seconds: float, token_source: str = "its token") -> None:
    """One attempt at joining the Ray cluster at ``address``, of at most JOIN_ATTEMPT_S seconds; a token the
    cluster refuses raises a one-line SecurityError (Ray itself retries it, then reports a ConnectionError)."""
    try:
        with _ray_waits(min(seconds, JOIN_ATTEMPT_S)):
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except BaseException as exc:
        ray.shutdown()
        if isinstance(exc, SystemExit) and _stopped_by_signal(exc):
            raise StartStopped(f"a stop signal arrived while joining Ray (exit {exc.code})") from None
        refusal = _auth_refusal(exc)
        if refusal:
            raise SecurityError(f"the Ray cluster at {address} refused {token_source} ({refusal}): use the "
                                f"cluster's token (`ray get-auth-token` on the head prints it)") from None
        raise


def start_ray(config: Config, *, sleep: Callable[[float], object] = time.sleep,
               stopped: Callable[[], bool] = lambda: False):
    """Starts a local Ray bound to loopback, or joins ``learner.ray_address`` with token auth; returns ``ray``.

    Failed attempts are retried for up to ``learner.ray_start_timeout_s``; an auth setup that cannot be
    used safely, or a local Ray that would not stay on loopback, raises a SecurityError before Ray starts.
    """
    learner = config.learner
    for name, value in ray_env(learner, os.environ).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    import ray
    address = learner.ray_address
    auth_error = getattr(ray.exceptions, "AuthenticationError", None)
    fatal: tuple[type[BaseException], ...] = (SecurityError, ValueError, TypeError, StartStopped)
    if address:
        if auth_error is None:
            raise SecurityError(f"the installed Ray {ray.__version__} has no token auth, which learner.ray_address="
                                f"{address} needs: install a Ray with RAY_AUTH_MODE=token support")
        fatal += (auth_error,)
        what = f"joining Ray at {address} with token auth"
        source = _token_source(learner)
        retry_start(lambda left: _join_ray(ray, address, left, source), learner.ray_start_timeout_s, what=what,
                    fix="check that the cluster is up at learner.ray_address, or raise learner.ray_start_timeout_s",
                    fatal=fatal, sleep=sleep, stopped=stopped)
        return ray
    if learner.ray_token_file:
        log.warning("learner.ray_token_file is not used: Ray starts locally, on loopback only")
    node_ip = ray.util.get_node_ip_address()
    if not _is_loopback_ip(node_ip):
        raise SecurityError(f"local Ray would listen on {node_ip}, not loopback (Ray was imported before "
                            f"{RAY_SINGLE_NODE_VAR}=0 was set): set it before anything imports Ray")
    retry_start(lambda left: _start_local_ray(ray, left), learner.ray_start_timeout_s,
                what=f"starting Ray locally on {LOOPBACK}", fatal=fatal, sleep=sleep, stopped=stopped,
                fix="raise learner.ray_start_timeout_s or free some CPU")
    return ray


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reap-when-parent-dies" and "robotd-ray-" in sys.argv[2]:
        sys.exit(_reap_when_parent_dies(sys.argv[2]))
    sys.exit("usage: python -m learner.ray_start --reap-when-parent-dies /tmp/robotd-ray-XXXX (started by the learner)")
