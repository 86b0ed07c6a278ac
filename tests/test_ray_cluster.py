"""``robotd learner --ray-address`` against a real two-node Ray cluster (a head and a worker node, both on
loopback) with Ray's token auth: the learner's join path (learner.ray_start.start_ray) connects, sees both
nodes, places a replay actor on the node that declares its custom resource (a bare one, and the learner's
sharded replay through learner.replay_node_resources with shard 0 in its own process), and a wrong or missing
token is refused in one line.

Ray's worker node takes the machine's own address for a ``127.0.0.1`` head address (it asks the routing table),
so the whole cluster runs in its own network namespace with only loopback up, and in its own PID namespace:
when the scenario ends, the kernel ends every process the cluster started. Needs ``unshare`` (root, or
unprivileged user namespaces) and /proc; skipped otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import procs

ROOT = Path(__file__).resolve().parent.parent
PORT = 6379     # a fresh network namespace: nothing else listens there
RAY_BIN = Path(sys.executable).parent / "ray"

# Runs as PID 1 of a new PID and network namespace: argv = work dir (tokens, logs), Ray's temp dir.
_SCENARIO = r"""
import json, os, subprocess, sys
from pathlib import Path

work, temp = Path(sys.argv[1]), sys.argv[2]
RAY, PORT = sys.argv[3], int(sys.argv[4])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
home = work / "head-home"
home.mkdir()
env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
# The cluster's token: made by Ray itself on the head, in ~/.ray/auth_token.
token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                       check=True).stdout.strip()
env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(home / ".ray" / "auth_token"))
common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp, "--disable-usage-stats"]


def ray(*args):
    result = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=120)
    (work / "ray-start.log").open("a").write(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"ray {args[0]} {args[1]} failed: see {work}/ray-start.log")


ray("start", "--head", "--port", str(PORT), "--include-dashboard", "false",
    *common)
ray("start", "--address", f"127.0.0.1:{PORT}", "--resources", json.dumps({"replay_node": 1}), *common)

def token_file(name, text):
    path = work / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def join(*overrides):
    # The learner's side: no token anywhere but what its config names (an empty HOME, no RAY_* variables).
    learner_home = work / "learner-home"
    learner_home.mkdir(exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    child_env.update(HOME=str(learner_home), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", JOIN, *overrides], env=child_env, capture_output=True,
                            text=True, timeout=150)
    (work / "join.log").open("a").write(f"--- {overrides}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {
        "rc": result.returncode, "stderr": result.stderr[-1500:]}


JOIN = sys.argv[5]
address = f"learner.ray_address=127.0.0.1:{PORT}"
results = {
    "right": join(address, "learner.ray_token_file=" + token_file("right_token", token)),
    "wrong": join(address, "learner.ray_token_file=" + token_file("wrong_token", "0" * len(token))),
    "none": join(address),
}
listening = []
for name in ("tcp", "tcp6"):
    for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":
            listening.append(fields[1])
results["listening"] = listening
(work / "results.json").write_text(json.dumps(results, indent=1))
print(json.dumps(results), flush=True)
sys.stdin.readline()
subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=60)
print("stopped", flush=True)
"""

# The learner's join path, as `robotd learner --ray-address 127.0.0.1:PORT` runs it; argv = config overrides.
_JOIN = r"""
import json, sys, time
from learner import ray_start
from learner.replay import ReplayBuffer
from robotd import config
started = time.monotonic()
try:
    ray = ray_start.start_ray(config.load(None, ["learner.ray_start_timeout_s=60", *sys.argv[1:]]))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - started}))
    sys.exit(0)
nodes = [n for n in ray.nodes() if n["Alive"]]


class PlacedReplay(ReplayBuffer):
    def node_id(self):
        return ray.get_runtime_context().get_node_id()


replay = ray.remote(num_cpus=0, resources={"replay_node": 1})(PlacedReplay).remote(1000, 0)
stats = ray.get(replay.stats.remote(), timeout=90)
placed_node = ray.get(replay.node_id.remote(), timeout=30)
ray.kill(replay)
# The learner's own path: learner.replay_shards=2, learner.replay_in_learner=true and
# learner.replay_node_resources=[replay_node]: shard 0 in this process, shard 1 a Ray actor on the declaring node.
import numpy as np
from learner.shards import ShardedReplay, shard_of
sharded = ShardedReplay.create(ray, 2000, seed=0, shards=2, node_resources=["replay_node"], in_learner=True)
streams = [next(f"arm{i}/0" for i in range(100) if shard_of(f"arm{i}/0", 2) == k) for k in (0, 1)]
for k, stream in enumerate(streams):
    sharded.add_many([(stream, start, {"x": np.full(50, k, np.int64)}) for start in range(0, 300, 50)])
drawn = np.concatenate([sharded.sample(8, 10)["x"][:, 0] for _ in range(10)])
shard_node = ray.get(sharded.shards[1].__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id()),
                     timeout=30)
print(json.dumps({
    "alive_nodes": len(nodes),
    "worker_node": [n["NodeID"] for n in nodes if n["Resources"].get("replay_node")],
    "head_node": [n["NodeID"] for n in nodes if not n["Resources"].get("replay_node")],
    "driver_node": ray.get_runtime_context().get_node_id(),
    "replay_node": placed_node,
    "replay_steps": stats["replay_steps"],
    "sharded": {"steps_per_shard": sharded.stats()["replay_steps_per_shard"], "shard1_node": shard_node,
                "drawn_from": sorted(set(drawn.tolist())), "in_process": sharded.in_process},
    "auth": __import__("os").environ.get("RAY_AUTH_MODE"),
}))
ray.shutdown()
"""


def _unshare_command() -> list[str] | None:
    """unshare's command line for a new network + PID namespace, or None where that is not allowed here."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not (unshare and ip and RAY_BIN.exists() and Path("/proc/net/tcp").exists()):
        return None
    command = [unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        command.insert(1, "--map-root-user")
    try:
        probe = subprocess.run([*command, ip, "link", "set", "lo", "up"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if probe.returncode == 0 else None


def _is_loopback(hex_address: str) -> bool:
    host = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(host[i:i + 4][::-1] for i in range(0, len(host), 4))     # /proc/net: host-order words
    if len(words) == 4:
        return words[0] == 127
    return words == bytes(15) + b"\1" or (words[:12] == bytes(10) + b"\xff\xff" and words[12] == 127)


@pytest.fixture
def isolated():
    command = _unshare_command()
    if command is None:
        pytest.skip("needs unshare with network and PID namespaces (root or user namespaces), ip and /proc")
    return command


@pytest.mark.slow  # 45 s on a quiet 2-core machine (two Ray nodes in a namespace); the refusal is unit-tested below
def test_learner_joins_a_two_node_cluster_with_token_auth(tmp_path, isolated):
    # Ray's sockets live under its temp dir, and a Unix socket path is at most 107 bytes: a short one in /tmp.
    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    started = time.monotonic()
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen([*isolated, sys.executable, "-c", _SCENARIO, str(tmp_path), temp, str(RAY_BIN),
                                str(PORT), _JOIN], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=stderr)
    ray_pids: set[int] = set()
    started_pids: set[int] = set()
    try:
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=60)
            stderr.seek(0)
            pytest.fail(f"the cluster scenario ended early: {stderr.read()[-3000:]}")
        results = json.loads(line)
        started_pids = procs.descendants(process.pid)
        ray_pids = {p.pid for p in procs.processes() if p.pid in started_pids
                    and any(name in p.cmdline for name in ("raylet", "gcs_server"))}
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "stopped"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()          # unshare --kill-child: the namespace's PID 1 dies, and the kernel kills the rest
            process.wait()
        stderr.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(procs.running(pid) for pid in started_pids):
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
    assert len(ray_pids) >= 3, "expected a GCS and two raylets"     # gcs_server + a raylet per node
    assert not [pid for pid in started_pids if procs.running(pid)], "a Ray process outlived the test"

    right = results["right"]
    assert "error" not in right, right
    assert right["alive_nodes"] == 2
    assert len(right["worker_node"]) == 1 and len(right["head_node"]) == 1
    worker = right["worker_node"][0]
    assert right["replay_node"] == worker                    # the replay actor sits on the declaring node
    # learner.replay_node_resources through ShardedReplay.create: shard 1 on the declaring node, shard 0 in the
    # learner's process; batches draw from both.
    sharded = right["sharded"]
    assert sharded["shard1_node"] == worker and sharded["in_process"] is True
    assert sharded["steps_per_shard"] == [300, 300] and sharded["drawn_from"] == [0, 1]
    assert right["driver_node"] == right["head_node"][0]     # the learner drives from this machine's node
    assert right["auth"] == "token"

    wrong, none = results["wrong"], results["none"]
    for refused in (wrong, none):
        assert "error" in refused, refused
        assert "\n" not in refused["error"]
    assert wrong["error"].startswith("SecurityError: the Ray cluster at 127.0.0.1:6379 refused the token in "
                                     "learner.ray_token_file="), wrong
    assert "Authentication token is missing or incorrect" in wrong["error"]
    assert wrong["seconds"] < 30            # refused at once, not retried as a cluster that is not up
    assert "needs its auth token" in none["error"] and "learner.ray_token_file" in none["error"]

    assert results["listening"], "nothing listened in the cluster's namespace"
    assert [a for a in results["listening"] if not _is_loopback(a)] == []
    assert time.monotonic() - started < 150


# ---- a refused token, as Ray reports it (no Ray needed) ---------------------------------------------------

_RAY_REFUSAL = ("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n  File "
                "\"python/ray/includes/common.pxi\", line 119, in ray._raylet.check_status\n"
                "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or "
                "incorrect. Ensure that the token for the cluster is available in a local file\n")


class _RayRefusing:
    """A stand-in for the ray module whose init fails the way Ray 2.5x+ fails on a wrong token (or otherwise)."""

    def __init__(self, cause):
        self.cause, self.shutdowns = cause, 0

    def init(self, **kwargs):
        try:
            raise self.cause
        except Exception as exc:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from exc

    def shutdown(self):
        self.shutdowns += 1


def test_a_refused_token_is_a_one_line_security_error_not_a_cluster_that_is_down():
    from learner import ray_start
    from robotd.security import SecurityError
    fake = _RayRefusing(RuntimeError(_RAY_REFUSAL))
    with pytest.raises(SecurityError) as info:
        ray_start._join_ray(fake, "127.0.0.1:6379", 60.0, "the token in learner.ray_token_file=/k/t")
    assert str(info.value) == ("the Ray cluster at 127.0.0.1:6379 refused the token in learner.ray_token_file=/k/t "
                               "(RPC error: InvalidAuthToken: Authentication token is missing or incorrect): use "
                               "the cluster's token (`ray get-auth-token` on the head prints it)")
    assert fake.shutdowns == 1
    other = _RayRefusing(RuntimeError("Failed to connect to GCS. Last connection error: timed out"))
    with pytest.raises(ConnectionError):             # a cluster not (yet) up stays a retried failure
        ray_start._join_ray(other, "127.0.0.1:6379", 60.0)


def test_one_join_attempt_waits_for_the_gcs_at_most_join_attempt_s(monkeypatch):
    from learner import ray_start
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    seen = []

    class Fake:
        def init(self, **kwargs):
            seen.append(os.environ["RAY_gcs_server_port_wait_time_s"])

    ray_start._join_ray(Fake(), "127.0.0.1:6379", 300.0)
    ray_start._join_ray(Fake(), "127.0.0.1:6379", 11.5)
    assert seen == [str(int(ray_start.JOIN_ATTEMPT_S)), "12"]
