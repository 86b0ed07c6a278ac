"""The learner's Ray: a local one listens on loopback only, a cluster is joined with token auth, and a
failed start is retried within learner.ray_start_timeout_s."""
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learner import ray_start
from robotd import config as cfg
from robotd.config import LearnerConfig
from robotd.security import SecurityError
from tests import procs
from tests.clocks import FakeClock

ROOT = Path(__file__).resolve().parent.parent


# ---- config ------------------------------------------------------------------------------------------

def test_ray_settings_default_to_local_with_a_generous_start_budget():
    learner = cfg.load(None).learner
    assert (learner.ray_address, learner.ray_token_file, learner.ray_start_timeout_s) == ("", "", 120.0)
    assert cfg.load(None, ["learner.ray_start_timeout_s=300", "learner.ray_token_file=~/t"]).learner \
        .ray_start_timeout_s == 300.0


@pytest.mark.parametrize("value", ["5", "4000"])
def test_ray_start_timeout_out_of_range_names_the_range(value):
    with pytest.raises(cfg.ConfigError, match=r"learner.ray_start_timeout_s = .* is out of range: allowed 10.0 to "
                                              r"3600.0"):
        cfg.load(None, [f"learner.ray_start_timeout_s={value}"])


# ---- auth decision -----------------------------------------------------------------------------------

def token_file(tmp_path, mode=0o600, text="secret-token") -> Path:
    path = tmp_path / "ray_token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_local_ray_is_single_node_and_only_then_without_token_auth(tmp_path):
    env = ray_start.ray_env(LearnerConfig(), {"HOME": str(tmp_path)})
    assert env == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    # An explicit mode from the environment is kept (token auth on a local Ray is stricter, not looser).
    assert ray_start.ray_env(LearnerConfig(), {"RAY_AUTH_MODE": "token"})["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "ray://head:10001", "127.0.0.1:6379"])
def test_cluster_without_a_token_is_refused_in_one_line(tmp_path, address):
    with pytest.raises(SecurityError) as info:
        ray_start.ray_env(LearnerConfig(ray_address=address), {"HOME": str(tmp_path)})
    message = str(info.value)
    assert "\n" not in message
    assert f"learner.ray_address={address}" in message and "learner.ray_token_file" in message
    assert "RAY_AUTH_TOKEN" in message


def test_local_is_not_a_cluster_address(tmp_path):
    with pytest.raises(SecurityError, match="learner.ray_address=local is not a cluster address: leave it empty"):
        ray_start.ray_env(LearnerConfig(ray_address="local"), {"RAY_AUTH_TOKEN": "t"})


def test_cluster_never_runs_with_auth_disabled(tmp_path):
    path = token_file(tmp_path)
    with pytest.raises(SecurityError, match=r"RAY_AUTH_MODE=disabled .* learner.ray_address=auto needs"):
        ray_start.ray_env(LearnerConfig(ray_address="auto", ray_token_file=str(path)),
                             {"RAY_AUTH_MODE": "disabled"})


def test_cluster_token_file_is_used_and_wins_over_the_environment(tmp_path):
    path = token_file(tmp_path)
    env = ray_start.ray_env(LearnerConfig(ray_address="ray://head:10001", ray_token_file=str(path)),
                               {"RAY_AUTH_TOKEN": "other", "HOME": str(tmp_path)})
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path), "RAY_AUTH_TOKEN": None}


@pytest.mark.parametrize("mode, text, expected", [
    (0o644, "secret", r"can be read by other users \(mode 644\): chmod 600"),
    (0o640, "secret", r"can be read by other users \(mode 640\): chmod 600"),
    (0o600, "", r"is not a file holding a token"),
])
def test_unsafe_or_empty_token_file_is_refused(tmp_path, mode, text, expected):
    path = token_file(tmp_path, mode, text)
    with pytest.raises(SecurityError, match=rf"learner.ray_token_file '.*ray_token' {expected}"):
        ray_start.ray_env(LearnerConfig(ray_address="auto", ray_token_file=str(path)), {})


def test_missing_token_file_is_refused(tmp_path):
    with pytest.raises(SecurityError, match=r"learner.ray_token_file '.*nope' cannot be read \(No such file"):
        ray_start.ray_env(LearnerConfig(ray_address="auto", ray_token_file=str(tmp_path / "nope")), {})


def test_cluster_token_from_rays_own_places(tmp_path):
    cluster = LearnerConfig(ray_address="auto")
    assert ray_start.ray_env(cluster, {"RAY_AUTH_TOKEN": "t", "HOME": str(tmp_path)}) == {"RAY_AUTH_MODE": "token"}
    path = token_file(tmp_path, 0o644)
    with pytest.raises(SecurityError, match=r"RAY_AUTH_TOKEN_PATH '.*' can be read by other users"):
        ray_start.ray_env(cluster, {"RAY_AUTH_TOKEN_PATH": str(path), "HOME": str(tmp_path)})
    (tmp_path / ".ray").mkdir()
    default = token_file(tmp_path / ".ray", 0o600)
    default.rename(tmp_path / ".ray" / "auth_token")
    assert ray_start.ray_env(cluster, {"HOME": str(tmp_path)}) == {"RAY_AUTH_MODE": "token"}


def test_start_ray_refuses_a_cluster_without_token_before_touching_ray(tmp_path, monkeypatch):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = cfg.load(None, ["learner.ray_address=ray://127.0.0.1:1"])
    with pytest.raises(SecurityError, match="needs its auth token"):
        ray_start.start_ray(config)
    assert "RAY_AUTH_MODE" not in os.environ


# ---- retries -----------------------------------------------------------------------------------------

def flaky(clock, failures, seconds_each, error=RuntimeError("The current node timed out during startup.\nmore")):
    calls = []

    def attempt(left):
        calls.append(left)
        clock.advance(seconds_each * 1e9)
        if len(calls) <= failures:
            raise error
        return "up"
    return attempt, calls


def test_failed_starts_are_retried_within_the_budget(caplog):
    clock = FakeClock(seconds=True, start_ns=1000 * 10**9)
    attempt, calls = flaky(clock, failures=2, seconds_each=20)
    with caplog.at_level(logging.INFO, logger="learner"):
        result = ray_start.retry_start(attempt, 120, what="starting Ray", fix="fix it", clock=clock,
                                          sleep=clock.sleep)
    assert result == "up"
    assert calls == [120, 99, 77]  # the time left is handed to each attempt
    assert clock.sleeps == [1, 2]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line.split(",")[0] for line in infos] == [f"starting Ray: attempt {n}" for n in (1, 2, 3)]
    assert len(warnings) == 2
    assert all("failed (RuntimeError: The current node timed out during startup.)" in line for line in warnings)


def test_retries_stop_when_the_budget_is_spent_with_a_one_line_error():
    clock = FakeClock(seconds=True, start_ns=1000 * 10**9)
    attempt, calls = flaky(clock, failures=99, seconds_each=25)
    with pytest.raises(RuntimeError) as info:
        ray_start.retry_start(attempt, 60, what="starting Ray", fix="raise learner.ray_start_timeout_s",
                                 clock=clock, sleep=clock.sleep)
    message = str(info.value)
    assert "\n" not in message
    assert message == ("starting Ray: 2 attempt(s) failed within learner.ray_start_timeout_s=60 s (last: RuntimeError:"
                       " The current node timed out during startup.): raise learner.ray_start_timeout_s")
    assert len(calls) == 2 and clock.now - 1000.0 <= 60 + 25


def test_fatal_errors_are_not_retried():
    clock = FakeClock(seconds=True, start_ns=1000 * 10**9)
    attempt, calls = flaky(clock, failures=5, seconds_each=1, error=SecurityError("bad token"))
    with pytest.raises(SecurityError, match="bad token"):
        ray_start.retry_start(attempt, 120, what="x", fix="y", fatal=(SecurityError,), clock=clock,
                                 sleep=clock.sleep)
    assert len(calls) == 1 and clock.sleeps == []


def test_a_stop_request_ends_the_retries():
    clock = FakeClock(seconds=True, start_ns=1000 * 10**9)
    attempt, calls = flaky(clock, failures=5, seconds_each=1)
    with pytest.raises(RuntimeError, match="stopped after attempt 1 failed"):
        ray_start.retry_start(attempt, 120, what="x", fix="y", clock=clock, sleep=clock.sleep,
                                 stopped=lambda: bool(clock.sleeps))
    assert len(calls) == 1


def test_ray_waits_follow_the_budget_unless_the_environment_sets_them(monkeypatch):
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "77")
    with ray_start._ray_waits(41.2):
        assert os.environ["RAY_gcs_server_port_wait_time_s"] == "42"
        assert os.environ["RAY_raylet_start_wait_time_s"] == "77"
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ
    assert os.environ["RAY_raylet_start_wait_time_s"] == "77"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_leftovers_of_a_failed_start_are_killed_and_nothing_else(tmp_path):
    marker = str(tmp_path / "robotd-ray-attempt")
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(60)"]
    left = subprocess.Popen([*sleeper, marker])
    other = subprocess.Popen(sleeper)
    try:
        killed = ray_start.kill_descendants_naming(marker)
        assert killed == [left.pid]
        assert not Path(f"/proc/{left.pid}").exists()  # killed and reaped
        assert other.poll() is None
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the watcher needs /proc (Linux)")
def test_the_watcher_kills_what_names_the_marker_once_its_starter_is_gone(tmp_path):
    marker = str(tmp_path / "robotd-ray-watched")
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(60)"]
    left = subprocess.Popen([*sleeper, marker])
    other = subprocess.Popen(sleeper)
    watcher = ray_start.start_reaper(marker)
    try:
        assert watcher is not None
        time.sleep(0.3)
        assert left.poll() is None, "the watcher acted while its starter was alive"
        os.close(ray_start._reaper_pipes.pop())         # what the starter's death does to the pipe
        assert left.wait(timeout=20) == -9
        assert watcher.wait(timeout=20) == 0
        assert other.poll() is None
    finally:
        for process in (left, other, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


# ---- a real local Ray --------------------------------------------------------------------------------

_LOCAL_RAY = """
import json, os, sys
from learner.ray_start import start_ray
from learner.replay import ReplayBuffer
from robotd import config
ray = start_ray(config.load(None))
replay = ray.remote(num_cpus=0.25)(ReplayBuffer).remote(1000, 0)
ray.get(replay.stats.remote())
print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "auth": os.environ.get("RAY_AUTH_MODE")}), flush=True)
sys.stdin.readline()
ray.shutdown()
print("down", flush=True)
"""



def _socket_inodes(pids: set[int]) -> dict[int, int]:
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[int(target[8:-1])] = pid
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = hex_address.split(":")[0]
    raw = bytes.fromhex(host)
    # /proc/net prints the address as 32-bit words in host (little-endian) order.
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_sockets(pids: set[int]) -> list[tuple[str, str, int]]:
    """(protocol, address, pid) of every listening TCP and bound UDP socket the processes hold."""
    inodes = _socket_inodes(pids)
    found = []
    for protocol, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == listening and int(fields[9]) in inodes:
                found.append((protocol, f"{_address(fields[1])}:{int(fields[1].split(':')[1], 16)}",
                              inodes[int(fields[9])]))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_local_ray_environment_gives_ray_a_loopback_node_address():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(ray_start.ray_env(LearnerConfig(), {}))
    result = subprocess.run([sys.executable, "-c", "import ray; print(ray.util.get_node_ip_address())"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "127.0.0.1"


@pytest.mark.slow  # 34 s on a loaded 2-core machine: Ray's start, a replay worker, Ray's shutdown
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net")
def test_local_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen([sys.executable, "-c", _LOCAL_RAY], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=60)
            pytest.fail((tmp_path / "stderr.txt").read_text()[-3000:])
        info = json.loads(line)
        pids = procs.descendants(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids if Path(f"/proc/{pid}").exists()}
        sockets = listening_sockets(pids)
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "down"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
    assert info == {"node_ip": "127.0.0.1", "auth": "disabled"}
    assert {"gcs_server", "raylet"} <= names
    # GCS, raylet (node manager and object manager), the driver's and the replay worker's gRPC servers.
    assert len(sockets) >= 5, sockets
    assert [s for s in sockets if not _is_loopback(s[1])] == []


@pytest.mark.slow  # Ray's start on a loaded 2-core machine takes 10-30 s
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_killed_learner_leaves_no_ray_process_behind(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    process = subprocess.Popen([sys.executable, "-c", _LOCAL_RAY], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout.readline(), "Ray did not start"
        ray_pids = {pid for pid in procs.descendants(process.pid)
                    if Path(f"/proc/{pid}/comm").read_text().strip() in ("gcs_server", "raylet")}
        assert len(ray_pids) == 2
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(procs.running(pid) for pid in ray_pids):
            time.sleep(0.2)
        assert not [pid for pid in ray_pids if procs.running(pid)], "Ray outlived its learner"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class _RayStoppedDuringInit:
    """A stand-in for the ray module whose init is cut short the way Ray's own SIGTERM handler cuts it."""

    def __init__(self, code):
        self.code, self.shutdowns = code, 0

    def init(self, **kwargs):
        raise SystemExit(self.code)

    def shutdown(self):
        self.shutdowns += 1


def test_a_stop_signal_during_rays_start_is_a_stop_not_a_failure():
    fake = _RayStoppedDuringInit(15)                     # Ray's handler: sys.exit(signum)
    with pytest.raises(ray_start.StartStopped, match="stop signal"):
        ray_start._start_local_ray(fake, 30.0)
    assert fake.shutdowns == 1
    other = _RayStoppedDuringInit(3)                     # any other exit passes through as it is
    with pytest.raises(SystemExit):
        ray_start._start_local_ray(other, 30.0)


def test_a_learner_stopped_while_ray_starts_exits_cleanly_with_its_stats(tmp_path, monkeypatch):
    import socket

    import learner.loop as learner_main
    from robotd import session

    def free_port():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def stopped_start(*args, **kwargs):
        raise ray_start.StartStopped("a stop signal arrived while Ray was starting (exit 15)")

    monkeypatch.setattr(learner_main, "start_ray", stopped_start)
    loaded = cfg.load(None, [f"network.experience=tcp://127.0.0.1:{free_port()}",
                                f"network.weights=tcp://127.0.0.1:{free_port()}"])
    stats = learner_main.Learner(loaded, logdir=str(tmp_path)).run()
    assert stats["stopped_while_starting"] and stats["learner_updates"] == 0
    assert session.read_stats(tmp_path, "learner")["stopped_while_starting"] is True
