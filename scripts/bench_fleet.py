"""Fleet ingest benchmark (issue 15): simulated robots stream experience chunks into sharded replay on a local
two-node Ray cluster; plus learner updates/s with 1 and 2 data-parallel ranks.

    python scripts/bench_fleet.py --robots 1,2,4,8 --out benchmarks/fleet/bench_fleet.json
    python scripts/bench_fleet.py --robots 1,2 --seconds 2 --learner-ranks none --out /tmp/quick.json

Everything on the wire and in replay is the real thing:

* each robot is its own process holding one ``actor.stream.ExperienceStream`` (its own actor id, stream, key pair
  and ``actor.spool.ChunkSpool``) that sends ``robotd.wire`` CHUNK messages of ``--chunk-steps`` steps of the step
  spec ``robotd.steps.step_spec`` builds for a 64x64x3 uint8 camera image, 12 float32 joint values, a 12-d action,
  reward, the flags and the timing fields of two devices (about 12.5 kB a step);
* the channel is CurveZMQ, as ``robotd train`` runs it (``network.auth=always``): ``robotd.security`` keys (one
  pair per robot, ``init_keys``), a ``CurveServer`` admitting them, each robot a CURVE client;
* the learner side is a real ``learner.ingest.IngestServer`` whose store callback is ``ShardedReplay.add`` of a
  ``learner.shards.ShardedReplay`` with 2 shards, placed one per node of a ``ray.cluster_utils.Cluster`` (a head
  and one more node, both on 127.0.0.1) by the custom resources ``replay_a`` / ``replay_b``
  (``learner.replay_node_resources``). Each robot's streams go to one shard, robots spread evenly over the
  shards (the replay places them: learner.shards).

A robot sends as fast as its stream takes chunks: it keeps at most ``--window`` chunks unacknowledged (queued or in
its spool) and builds the next one as soon as one is acknowledged. Each step is stamped with its tick time
(``timing/t_tick_ns`` = ``time.monotonic_ns()`` when the chunk's steps were made, in one burst of microseconds;
CLOCK_MONOTONIC is one clock for every process on the machine). The store callback records, per stored step, ``tick_to_replay`` = the moment
``ShardedReplay.add`` returned (the chunk is in its shard; the ack leaves right after) minus the step's tick time.

Per robot count (one row each):

* ``ingest_steps_per_s``: steps stored in replay while the robots sent (``--seconds``), per second;
* ``tick_to_replay_ms_p50`` / ``_p99``: over every step of the run;
* ``lost``: steps the robots sent (put into their streams) minus unique steps stored, after the robots drained
  their streams (every chunk acknowledged, or ``--drain-s`` passed); exact;
* ``load_avg``: ``os.getloadavg()`` at the start and end of the measurement (other work on the machine counts);
* ``where_time_goes``: the ingest thread's wall time split into waiting for a message, decoding/checking/copying,
  and ``ShardedReplay.add`` (a Ray actor call: serialisation, object store, the shard's copy, the reply); the CPU
  seconds every process and thread of the benchmark used during the run (robots, ingest thread, ZeroMQ I/O
  threads where CURVE encrypts, Ray's raylets, GCS and shard actors); and the tick-to-replay latency split into
  tick -> the ingest starting to store the chunk, and the store itself.

Then ``ray_micro``: single-chunk costs measured from the learner process with nothing else running (a chunk into
an in-process ReplayBuffer, ``ray.put`` of a chunk, ``add`` into the shard on the driver's node and into the one on
the other node, an empty actor call). ``--profile`` adds a cProfile of the ingest thread during one more run of
the largest robot count (cProfile slows it, so that run is not a row).

``learner``: updates/s of ``learner.dreamer.Dreamer.train_step`` with 1 and 2 data-parallel ranks
(``learner.parallel.Ranks``, gloo on CPU, each rank its own process and its own random batches of the replay
layout), preset ``--learner-preset``, ``--batch`` x ``--length`` sequences of 64x64 images. With 2 ranks each rank
has ``cpu_count // 2`` torch threads; with 1 rank all of them.

Only loopback is used: the ingest binds 127.0.0.1, Ray is made single-node-addressed
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported, node address 127.0.0.1), and the listening
sockets of every process of the benchmark are checked once with ``ss -ltnp`` while the robots stream (``listeners``
in the JSON; the script fails if any is off loopback).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from robotd import steps, wire  # noqa: E402

IMAGE = (64, 64, 3)
JOINTS = 12
ACTION_DIM = 12
DEVICES = ["legs", "camera"]
OBS_SPEC = {"image": (IMAGE, "uint8"), "joints": ((JOINTS,), "float32")}
EPISODE_STEPS = 1000
CONFIG_DIGEST = "bench-fleet"
MAX_BYTES = 64 * 2**20
RESOURCES = ["replay_a", "replay_b"]
TARGET_STEPS_PER_S = 20_000
TARGET_P99_MS = 100.0


def step_spec() -> steps.Spec:
    return steps.step_spec(OBS_SPEC, ACTION_DIM, DEVICES)


def step_bytes(spec: steps.Spec) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())


# ------------------------------------------------------------------------------------------------
# A robot: one process, one ExperienceStream.

class ChunkMaker:
    """Chunks of consecutive steps of one robot, every step stamped with its tick time when it is made."""

    def __init__(self, actor_id: str, stream: str, chunk_steps: int, seed: int):
        self.actor_id, self.stream, self.chunk_steps = actor_id, stream, chunk_steps
        self.spec = step_spec()
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (64, *IMAGE), dtype=np.uint8)       # a pool: no RNG cost per step
        self.rng = rng
        self.seq = 0
        self.stream_step = 0

    def make(self) -> tuple[int, list, int, int, int]:
        """(seq, frames, n_steps, stream_step, episode_id) of the next chunk."""
        n = self.chunk_steps
        index = np.arange(self.stream_step, self.stream_step + n)
        in_episode = index % EPISODE_STEPS
        arrays = {key: np.zeros((n, *shape), dtype) for key, (shape, dtype) in self.spec.items()}
        ticks = arrays[steps.T_TICK_NS]
        images = arrays[steps.OBS_PREFIX + "image"]
        # A chunk's steps are made in one burst (microseconds apart), so they share one tick time: the time the
        # last of them was made, which is what the latency from the last tick to replay is measured from.
        images[:] = self.images[self.rng.integers(0, len(self.images), n)]
        ticks[:] = time.monotonic_ns()
        arrays[steps.OBS_PREFIX + "joints"][:] = self.rng.standard_normal((n, JOINTS), dtype=np.float32)
        arrays[steps.ACTION][:] = self.rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32)
        arrays[steps.APPLIED_ACTION][:] = arrays[steps.ACTION]
        arrays[steps.REWARD][:] = self.rng.standard_normal(n, dtype=np.float32)
        arrays[steps.IS_FIRST][:] = in_episode == 0
        arrays[steps.IS_LAST][:] = in_episode == EPISODE_STEPS - 1
        arrays[steps.TICK][:] = index
        arrays[steps.STREAM_STEP][:] = index
        for device in DEVICES:
            arrays[f"timing/{device}/host_time_ns"][:] = ticks
            arrays[f"timing/{device}/hw_time_ns"][:] = ticks
            arrays[f"timing/{device}/frame_number"][:] = index
        episode = int(self.stream_step // EPISODE_STEPS)
        meta = {"actor_id": self.actor_id, "stream": self.stream, "episode_id": episode, "seq": self.seq,
                "n_steps": n, "stream_step": self.stream_step}
        chunk = (self.seq, wire.encode(wire.Kind.CHUNK, meta, arrays), n, self.stream_step, episode)
        self.seq += 1
        self.stream_step += n
        return chunk


def robot_main(settings: dict) -> int:
    """A robot process: says hello, prints ``ready``, waits for ``go T_END_NS`` on stdin, streams until then,
    drains, prints its counts as one JSON line."""
    import zmq

    from actor.spool import ChunkSpool
    from actor.stream import ExperienceStream
    from robotd import security

    actor_id, stream_id, window = settings["actor_id"], settings["stream"], settings["window"]
    context = zmq.Context()
    spool = ChunkSpool(Path(settings["spool_dir"]) / actor_id, memory_chunks=max(256, 4 * window), stream=stream_id)
    spec = step_spec()
    hello = {"role": "actor", "session": "bench-fleet", "actor_id": actor_id, "stream": stream_id,
             "config_digest": CONFIG_DIGEST, "action_discrete": False,
             "spec": {key: [list(shape), dtype] for key, (shape, dtype) in spec.items()}}
    keys_dir = settings["keys_dir"]
    acked = threading.Condition()

    class RobotStream(ExperienceStream):
        """The real stream; wakes the robot when an ack frees room in its window (no busy waiting)."""

        def _on_message(self, message):
            super()._on_message(message)
            with acked:
                acked.notify_all()

    stream = RobotStream(context, settings["address"], hello, spool, resend_after_s=settings["resend_after_s"],
                              max_bytes=MAX_BYTES,
                              secure=lambda socket: security.configure_client(socket, keys_dir, actor_id))
    stream.start()
    if not stream.accepted.wait(60.0):
        print(json.dumps({"error": f"not accepted: {stream.refused_reason}"}), flush=True)
        return 1
    maker = ChunkMaker(actor_id, stream_id, settings["chunk_steps"], settings["seed"])
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    end_ns = int(line[1])
    sent_steps = sent_chunks = waits = 0
    started = time.monotonic()
    cpu0 = time.process_time()
    while time.monotonic_ns() < end_ns:
        if stream.pending >= window:
            waits += 1
            with acked:
                if stream.pending >= window:
                    acked.wait(max(0.0, min(0.05, (end_ns - time.monotonic_ns()) / 1e9)))
            continue
        seq, frames, n, stream_step, episode = maker.make()
        stream.put(seq, frames, n, stream_step, episode)
        sent_steps += n
        sent_chunks += 1
    sent_s = time.monotonic() - started
    drained = stream.close(settings["drain_s"])
    print(json.dumps({"actor_id": actor_id, "stream": stream_id, "sent_steps": sent_steps, "sent_chunks": sent_chunks,
                      "sent_s": sent_s, "drained": drained, "pending_after_drain": stream.pending,
                      "stream_sent_chunks": stream.sent_chunks, "acked_chunks": stream.acked_chunks,
                      "resent_chunks": stream.resent_chunks, "window_waits": waits, "reconnects": stream.reconnects,
                      "cpu_s": time.process_time() - cpu0}), flush=True)
    context.term()
    return 0


# ------------------------------------------------------------------------------------------------
# CPU accounting from /proc (no psutil): every process of the benchmark, and the learner process's threads.

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(path: str) -> tuple[str, int, float] | None:
    """(name, parent pid, CPU seconds) from a /proc stat file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
    fields = data[data.rindex(b")") + 2:].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _process_label(pid: int, name: str, robots: dict[int, str]) -> str:
    if pid == os.getpid():
        return "learner process (ingest + driver)"
    if pid in robots:
        return "robots"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if "ReplayBuffer" in cmdline or "ReplayBuffer" in name:
        return "ray: replay shard actors"
    if name.startswith("raylet"):
        return "ray: raylets"
    if name.startswith("gcs_server"):
        return "ray: gcs_server"
    if "ray::" in cmdline or "ray::" in name:
        return "ray: other workers"
    return "other (ray agents, reapers)"


def cpu_snapshot(robots: dict[int, str], ingest_tid: int | None) -> dict:
    """CPU seconds so far of every descendant process of this one (and of it), by label, and of this process's
    threads by kind."""
    parents, stats = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(f"/proc/{entry}/stat")
            if stat is not None:
                parents[int(entry)] = stat[1]
                stats[int(entry)] = stat
    me = os.getpid()

    def mine(pid: int) -> bool:
        seen = 0
        while pid in parents and seen < 64:
            if pid == me:
                return True
            pid, seen = parents[pid], seen + 1
        return False

    by_label: dict[str, float] = {}
    for pid, (name, _, cpu) in stats.items():
        if mine(pid):
            label = _process_label(pid, name, robots)
            by_label[label] = by_label.get(label, 0.0) + cpu
    threads: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{me}/task"):
        stat = _stat(f"/proc/{me}/task/{tid}/stat")
        if stat is None:
            continue
        name = stat[0]
        if ingest_tid is not None and int(tid) == ingest_tid:
            kind = "ingest thread (Python)"
        elif name.startswith("ZMQbg/IO"):
            kind = "ZeroMQ I/O threads (CURVE crypto, TCP)"
        elif name.startswith("ZMQbg"):
            kind = "ZeroMQ other threads"
        elif int(tid) == me:
            kind = "main thread"
        else:
            kind = "other threads (Ray core worker, ZAP handler, ...)"
        threads[kind] = threads.get(kind, 0.0) + stat[2]
    return {"processes": by_label, "learner_threads": threads}


def cpu_delta(before: dict, after: dict, seconds: float) -> dict:
    out = {}
    for part in ("processes", "learner_threads"):
        out[part] = {key: {"cpu_s": round(after[part][key] - before[part].get(key, 0.0), 2),
                           "cores": round((after[part][key] - before[part].get(key, 0.0)) / seconds, 2)}
                     for key in sorted(after[part], key=lambda k: -(after[part][k] - before[part].get(k, 0.0)))}
    return out


# ------------------------------------------------------------------------------------------------
# Ray: a head and one more node, both on 127.0.0.1.

class LocalCluster:
    def __init__(self, object_store_mb: int):
        from learner.ray_start import RAY_SINGLE_NODE_VAR
        # As learner.ray_start does for a local Ray: before Ray is imported, so every server binds loopback.
        os.environ[RAY_SINGLE_NODE_VAR] = "0"
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        self.top = tempfile.mkdtemp(prefix="robotd-ray-")
        os.environ["RAY_TMPDIR"] = self.top          # Cluster writes its address file under RAY_TMPDIR/ray
        temp_dir = os.path.join(self.top, "ray")
        os.makedirs(temp_dir)
        import ray
        from ray.cluster_utils import Cluster

        from learner.ray_start import LOOPBACK, start_reaper
        common = dict(node_ip_address=LOOPBACK, include_dashboard=False, temp_dir=temp_dir,
                      object_store_memory=object_store_mb * 2**20)
        started = time.monotonic()
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, resources={RESOURCES[0]: 1},
                                                                         **common))
        self.cluster.add_node(num_cpus=1, resources={RESOURCES[1]: 1}, **common)
        ray.init(address=self.cluster.address, log_to_driver=False, configure_logging=False,
                 _node_ip_address=LOOPBACK)
        start_reaper(self.top)             # a killed benchmark leaves no Ray behind
        self.ray = ray
        self.start_s = time.monotonic() - started
        nodes = [node for node in ray.nodes() if node["Alive"]]
        self.nodes = [{"address": node["NodeManagerAddress"],
                       "resources": sorted(k for k in node["Resources"] if k in RESOURCES)} for node in nodes]

    def shutdown(self) -> None:
        self.ray.shutdown()
        self.cluster.shutdown()


def listeners(robot_pids: set[int]) -> dict:
    """Listening TCP sockets of this process's tree (``ss -ltnp``), and whether every one is on loopback."""
    try:
        text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"ss failed: {exc}"}
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(f"/proc/{entry}/stat")
            if stat is not None:
                parents[int(entry)] = stat[1]

    def mine(pid: int) -> bool:
        for _ in range(64):
            if pid == os.getpid() or pid in robot_pids:
                return True
            if pid not in parents:
                return False
            pid = parents[pid]
        return False

    ours, outside = [], []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or "pid=" not in line:
            continue
        pids = [int(part.split("=")[1].rstrip(",)")) for part in line.split(",") if part.startswith("pid=")]
        if not any(mine(pid) for pid in pids):
            continue
        local = fields[3]
        host = local.rsplit(":", 1)[0].strip("[]")
        host = host.removeprefix("::ffff:")
        ours.append(local)
        if not (host.startswith("127.") or host == "::1"):
            outside.append(line)
    return {"count": len(ours), "all_loopback": not outside, "not_loopback": outside, "addresses": sorted(ours)}


# ------------------------------------------------------------------------------------------------
# The learner side of one run.

def make_ingest_class():
    from learner.ingest import IngestServer

    class TimedIngest(IngestServer):
        """The real IngestServer, with its thread's wall time split into waiting, handling and storing."""

        profile = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.handle_ns = 0
            self.decode_ns = 0
            decode = self.receiver.decode

            def timed_decode(frames, expect=None):
                t0 = time.perf_counter_ns()
                try:
                    return decode(frames, expect)
                finally:
                    self.decode_ns += time.perf_counter_ns() - t0
            self.receiver.decode = timed_decode

        def _handle(self, identity, message):
            t0 = time.perf_counter_ns()
            try:
                super()._handle(identity, message)
            finally:
                self.handle_ns += time.perf_counter_ns() - t0

        def _chunk(self, identity, message, batch):
            t0 = time.perf_counter_ns()
            try:
                super()._chunk(identity, message, batch)
            finally:
                self.handle_ns += time.perf_counter_ns() - t0

        def run(self):
            if self.profile is None:
                return super().run()
            self.profile.enable()
            try:
                return super().run()
            finally:
                self.profile.disable()

    return TimedIngest


class StoreRecorder:
    """The ingest's store callback: ShardedReplay.add, timed, recording each stored step's tick-to-replay."""

    def __init__(self, replay):
        self.replay = replay
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.stored_steps = 0
        self.latencies: list[np.ndarray] = []        # ns, per step
        self.chunks: list[tuple[int, int, int, int]] = []   # (last tick, store start, store end, n)
        self.store_ns = 0
        self.store_cpu_ns = 0
        self.per_shard = [0] * len(self.replay)

    def __call__(self, stream: str, stream_step: int, arrays: dict) -> None:
        self.many([(stream, stream_step, arrays)])

    def many(self, items: list) -> None:
        """The ingest's store_many: every chunk taken at once, one replay call per shard (ShardedReplay.add_many)."""
        t0 = time.monotonic_ns()
        c0 = time.thread_time_ns()
        self.replay.add_many(items)
        t1 = time.monotonic_ns()
        self.store_cpu_ns += time.thread_time_ns() - c0
        self.store_ns += t1 - t0
        for stream, _, arrays in items:
            ticks = arrays[steps.T_TICK_NS]
            n = len(ticks)
            self.latencies.append(t1 - ticks)
            self.chunks.append((int(ticks[-1]), t0, t1, n))
            self.stored_steps += n
            self.per_shard[self.replay.shard_of(stream)] += n


def robot_streams(count: int, run: int) -> list[tuple[str, str]]:
    """(actor id, stream) of each robot in run ``run``: a new stream each run, the same actor ids, so the replay
    keeps each robot in the shard it placed it in (learner.shards: robots spread evenly over the shards)."""
    return [(f"robot{index}", f"r{run}") for index in range(count)]


def percentile_ms(values_ns: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values_ns, q)) / 1e6, 2) if len(values_ns) else None


def fleet_run(count: int, run: int, args, replay, recorder: StoreRecorder, context, curve, keys_dir: Path,
              spool_dir: Path, check_listeners: bool, profile=None) -> dict:
    TimedIngest = make_ingest_class()
    recorder.reset()
    ingest = TimedIngest(context, "tcp://127.0.0.1:*", config_digest=CONFIG_DIGEST, store=recorder,
                         store_many=recorder.many, weights_port=1,
                         spec=None, on_spec=lambda spec: None, max_bytes=MAX_BYTES, secure=curve.configure)
    ingest.profile = profile
    ingest.start()
    robots: list[subprocess.Popen] = []
    try:
        return _fleet_run(count, run, args, replay, recorder, ingest, robots, keys_dir, spool_dir, check_listeners,
                          profile)
    finally:
        for robot in robots:
            if robot.poll() is None:
                robot.kill()
                robot.wait()
        ingest.stop()


def _fleet_run(count, run, args, replay, recorder, ingest, robots, keys_dir, spool_dir, check_listeners, profile):
    before_stats = replay.stats()
    for index, (actor, stream) in enumerate(robot_streams(count, run)):
        settings = {"actor_id": actor, "stream": stream, "address": ingest.address, "keys_dir": str(keys_dir),
                    "spool_dir": str(spool_dir / f"run{run}"), "window": args.window, "chunk_steps": args.chunk_steps,
                    "seed": 1000 * run + index, "drain_s": args.drain_s, "resend_after_s": args.resend_after_s}
        robots.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--robot-child",
                                        json.dumps(settings)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, cwd=str(ROOT)))
    for robot in robots:
        line = robot.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"robot did not start: {line!r} (exit {robot.poll()})")
    robot_pids = {robot.pid: "robot" for robot in robots}
    recorder.reset()
    load_start = os.getloadavg()
    cpu0 = cpu_snapshot(robot_pids, ingest.native_id)
    handle0, decode0 = ingest.handle_ns, ingest.decode_ns
    start_ns = time.monotonic_ns()
    end_ns = start_ns + int(args.seconds * 1e9)
    for robot in robots:
        robot.stdin.write(f"go {end_ns}\n")
        robot.stdin.flush()
    seen_listeners = None
    if check_listeners:
        time.sleep(min(1.0, args.seconds / 2))
        seen_listeners = listeners(set(robot_pids))
    time.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
    window_s = (time.monotonic_ns() - start_ns) / 1e9
    cpu1 = cpu_snapshot(robot_pids, ingest.native_id)
    load_end = os.getloadavg()
    handle_ns, decode_ns, store_ns_window = ingest.handle_ns - handle0, ingest.decode_ns - decode0, recorder.store_ns
    store_cpu_window = recorder.store_cpu_ns
    with recorder.lock:
        in_window = sum(n for _, _, stored, n in list(recorder.chunks) if stored <= end_ns)
    results = []
    for robot in robots:
        out, _ = robot.communicate(timeout=args.drain_s + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
    drained_at = time.monotonic_ns()
    ingest.stop()
    stats = ingest.stats()
    after_stats = replay.stats()
    sent = sum(result["sent_steps"] for result in results)
    latencies = np.concatenate(recorder.latencies) if recorder.latencies else np.zeros(0, np.int64)
    chunks = np.array(recorder.chunks, np.int64).reshape(-1, 4)
    wait_ns = chunks[:, 1] - chunks[:, 0]
    store_each_ns = chunks[:, 2] - chunks[:, 1]
    ingest_wall = window_s * 1e9
    row = {
        "robots": count,
        "ingest_steps_per_s": round(in_window / window_s, 1),
        "tick_to_replay_ms_p50": percentile_ms(latencies, 50),
        "tick_to_replay_ms_p99": percentile_ms(latencies, 99),
        "tick_to_replay_ms_max": percentile_ms(latencies, 100),
        "lost": int(sent - recorder.stored_steps),
        "sent_steps": int(sent),
        "stored_steps": int(recorder.stored_steps),
        "stored_in_window": int(in_window),
        "replay_added_steps": int(after_stats["added_steps"] - before_stats["added_steps"]),
        "ingest_ingested_steps": stats["ingested_steps"],
        "ingest_lost_steps": stats["lost_steps"],
        "duplicate_chunks": stats["duplicate_chunks"],
        "resent_chunks": sum(result["resent_chunks"] for result in results),
        "refused_chunks": stats["refused_chunks"],
        "malformed": stats["malformed"],
        "all_drained": all(result["drained"] for result in results),
        "drain_s": round((drained_at - end_ns) / 1e9, 2),
        "replay_shards": len(replay),
        "steps_per_shard": recorder.per_shard,
        "seconds": round(window_s, 2),
        "chunk_steps": args.chunk_steps,
        "window_chunks_per_robot": args.window,
        "per_robot_steps_per_s": [round(result["sent_steps"] / result["sent_s"], 1) for result in results],
        "load_avg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
        "where_time_goes": {
            "ingest_thread_share_of_wall": {
                "handling_messages": round(handle_ns / ingest_wall, 3),
                "of_which_ShardedReplay_add": round(store_ns_window / ingest_wall, 3),
                "of_which_ShardedReplay_add_on_cpu": round(store_cpu_window / ingest_wall, 3),
                "decode_and_validate": round(decode_ns / ingest_wall, 3),
                "waiting_or_receiving": round(1 - (handle_ns + decode_ns) / ingest_wall, 3),
            },
            "per_chunk_ms": {
                "ShardedReplay_add_p50": percentile_ms(store_each_ns, 50),
                "ShardedReplay_add_p99": percentile_ms(store_each_ns, 99),
                "last_tick_to_store_start_p50": percentile_ms(wait_ns, 50),
                "last_tick_to_store_start_p99": percentile_ms(wait_ns, 99),
            },
            "cpu": cpu_delta(cpu0, cpu1, window_s),
        },
    }
    # CPU the whole pipeline (robots, ZeroMQ, ingest, Ray) spends per chunk stored, and the cores that would take
    # at the target rate if it scaled linearly.
    cores = sum(part["cores"] for part in row["where_time_goes"]["cpu"]["processes"].values())
    chunks_per_s = row["ingest_steps_per_s"] / args.chunk_steps
    if chunks_per_s > 0:
        per_chunk = cores / chunks_per_s
        row["where_time_goes"]["cpu_ms_per_chunk_all_processes"] = round(per_chunk * 1e3, 2)
        row["where_time_goes"]["cores_needed_at_target_rate"] = round(
            per_chunk * TARGET_STEPS_PER_S / args.chunk_steps, 1)
    if seen_listeners is not None:
        row["listeners"] = seen_listeners
    if profile is not None:
        row["profile_note"] = "cProfile on the ingest thread: slower than the rows"
    return row


# ------------------------------------------------------------------------------------------------
# Single-chunk costs from the learner process.

def ray_micro(ray, replay, chunk_steps: int, repeats: int) -> dict:
    from learner.replay import ReplayBuffer
    maker = ChunkMaker("micro", "m", chunk_steps, 7)
    frames = maker.make()[1]
    arrays = {key: np.array(value) for key, value in wire.decode(frames).arrays.items()}
    out = {"chunk_bytes": int(sum(value.nbytes for value in arrays.values())), "repeats": repeats,
           "load_avg": [round(x, 2) for x in os.getloadavg()]}

    def timed(fn) -> dict:
        fn(0)
        times = []
        for i in range(1, repeats + 1):
            t0 = time.perf_counter_ns()
            fn(i)
            times.append(time.perf_counter_ns() - t0)
        values = np.array(times)
        return {"p50_ms": percentile_ms(values, 50), "p99_ms": percentile_ms(values, 99),
                "chunks_per_s_serial": round(1e9 / values.mean(), 1)}

    local = ReplayBuffer(10 * repeats * chunk_steps)
    out["in_process_ReplayBuffer_add"] = timed(lambda i: local.add("m", i * chunk_steps, arrays))
    out["wire_decode_chunk"] = timed(lambda i: wire.decode(frames))
    out["ingest_copy_chunk"] = timed(lambda i: {key: np.array(value) for key, value in arrays.items()})
    out["ray_put_chunk"] = timed(lambda i: ray.put(arrays))
    shards = replay.shards
    node_of = ray.get([ray.remote(num_cpus=0, resources={name: 0.001})(
        lambda: ray.get_runtime_context().get_node_id()).remote() for name in RESOURCES])
    driver_node = ray.get_runtime_context().get_node_id()
    out["shard_nodes"] = ["driver's node" if node == driver_node else "other node" for node in node_of]
    out["empty_actor_call_shard0"] = timed(lambda i: ray.get(shards[0].can_sample.remote(10**9)))
    for index, shard in enumerate(shards):
        where = "same_node" if node_of[index] == driver_node else "other_node"
        out[f"actor_add_shard{index}_{where}"] = timed(
            lambda i, shard=shard: ray.get(shard.add.remote(f"micro{index}", i * chunk_steps, arrays)))
    # What-if: the same adds with 8 in flight at once (4 per shard), as an ingest that did not wait for each chunk's
    # store before the next could have; one ray.get per group of 8.
    groups = max(1, repeats // 8)
    t0 = time.perf_counter_ns()
    for group in range(groups):
        refs = [shards[k % len(shards)].add.remote(f"pipe{k % len(shards)}", (group * 8 + k) * chunk_steps, arrays)
                for k in range(8)]
        ray.get(refs)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    out["actor_add_8_in_flight_both_shards"] = {"chunks_per_s": round(groups * 8 / elapsed, 1),
                                                "steps_per_s": round(groups * 8 * chunk_steps / elapsed, 1)}
    return out


# ------------------------------------------------------------------------------------------------
# Learner updates/s with data-parallel ranks.

def random_batch(rng, batch: int, length: int, image: int) -> dict[str, np.ndarray]:
    """Random sequences in the replay layout (as tests/test_dreamer.py's make_batch, at the benchmark's sizes)."""
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {"image": rng.integers(0, 256, (batch, length, image, image, 3), dtype=np.uint8),
            "joints": rng.standard_normal((batch, length, JOINTS), dtype=np.float32),
            "action": rng.uniform(-1, 1, (batch, length, ACTION_DIM)).astype(np.float32),
            "reward": rng.standard_normal((batch, length), dtype=np.float32),
            "is_first": is_first, "is_last": np.zeros((batch, length), bool),
            "is_terminal": np.zeros((batch, length), bool)}


def rank_main(rank: int, world: int, address: str, settings: dict, out: str) -> None:
    import torch

    from learner.dreamer import Dreamer, preset
    from learner.parallel import Ranks
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(rank)
    image = settings["image"]
    agent = Dreamer({"image": ((image, image, 3), "uint8"), "joints": ((JOINTS,), "float32")}, ACTION_DIM,
                    preset(settings["preset"]))
    ranks = Ranks(rank, world, address, timeout_s=300)
    ranks.attach(agent)
    rng = np.random.default_rng(rank)
    ends = []
    if rank == 0:
        timed_from = None
        while timed_from is None or ends[-1] - timed_from < settings["seconds"]:
            if not ranks.go():
                break
            agent.train_step(random_batch(rng, settings["batch"], settings["length"], image))
            ends.append(time.monotonic())
            if len(ends) == settings["warmup"]:
                timed_from = ends[-1]
        ranks.stop()
    else:
        while ranks.go():
            agent.train_step(random_batch(rng, settings["batch"], settings["length"], image))
            ends.append(time.monotonic())
        ranks.close()
    with open(out, "w") as handle:
        json.dump({"rank": rank, "ends": ends, "updates": agent.updates}, handle)


def learner_bench(world: int, args, workdir: Path) -> dict:
    import torch.multiprocessing as mp

    rendezvous = workdir / f"rendezvous-{world}"          # as the learner's ranks meet: through a file
    rendezvous.unlink(missing_ok=True)
    threads = max(1, (os.cpu_count() or 1) // world)
    settings = {"threads": threads, "preset": args.learner_preset, "batch": args.batch, "length": args.length,
                "image": 64, "seconds": args.learner_seconds, "warmup": 1}
    outs = [str(workdir / f"rank{world}-{rank}.json") for rank in range(world)]
    context = mp.get_context("spawn")
    load_start = os.getloadavg()
    workers = [context.Process(target=rank_main, args=(rank, world, f"file://{rendezvous}", settings, outs[rank]))
               for rank in range(world)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(args.learner_seconds * 6 + 120)
    load_end = os.getloadavg()
    if any(worker.exitcode != 0 for worker in workers):
        return {"ranks": world, "error": f"rank exit codes {[worker.exitcode for worker in workers]}"}
    results = [json.load(open(out)) for out in outs]
    per_rank = []
    for result in results:
        ends = result["ends"][settings["warmup"] - 1:]      # from the end of the last warm-up update
        timed = len(ends) - 1
        per_rank.append(round(timed / (ends[-1] - ends[0]), 3) if timed > 0 else None)
    rate = min(r for r in per_rank if r is not None)
    return {"ranks": world, "preset": args.learner_preset, "batch": args.batch, "length": args.length,
            "image": [64, 64, 3], "torch_threads_per_rank": threads, "backend": "gloo",
            "updates": [result["updates"] for result in results], "warmup_updates": settings["warmup"],
            "updates_per_s_per_rank": per_rank,
            "sequences_per_s": round(world * args.batch * rate, 2),
            "samples_per_s": round(world * args.batch * args.length * rate, 1),
            "load_avg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]}}


# ------------------------------------------------------------------------------------------------

def placement(args) -> list[str]:
    """The node resources of the shards that are Ray actors: one per node, in order; the learner's own shard (on
    the head node, where the benchmark's learner process runs) takes none."""
    if args.shards == 1 and not args.replay_in_learner:
        return []
    return RESOURCES[1:args.shards] if args.replay_in_learner else RESOURCES[:args.shards]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", default="1,2,4,8", help="robot counts, comma-separated (one run each)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the robots send in each run")
    parser.add_argument("--out", help="JSON file to write (required)")
    parser.add_argument("--chunk-steps", type=int, default=32)
    parser.add_argument("--window", type=int, default=4, help="chunks a robot keeps unacknowledged at most")
    parser.add_argument("--ingest-batch", type=int, default=None,
                        help="chunks the ingest stores at once (learner.ingest.MAX_BATCH_CHUNKS; 1: one Ray call per "
                             "chunk, as before batching)")
    parser.add_argument("--replay-capacity", type=int, default=60_000, help="replay steps over all shards")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--replay-in-learner", action="store_true",
                        help="shard 0 in the learner's process (learner.replay_in_learner), the others Ray actors on "
                             "the other node")
    parser.add_argument("--object-store-mb", type=int, default=300, help="per Ray node")
    parser.add_argument("--drain-s", type=float, default=30.0)
    parser.add_argument("--resend-after-s", type=float, default=2.0, help="actor.resend_after_s (its default)")
    parser.add_argument("--micro-repeats", type=int, default=100, help="chunks per single-chunk measurement; 0: skip")
    parser.add_argument("--profile", action="store_true", help="one more run of the largest count under cProfile")
    parser.add_argument("--learner-ranks", default="1,2", help="data-parallel rank counts, or 'none'")
    parser.add_argument("--learner-preset", default="tiny")
    parser.add_argument("--learner-seconds", type=float, default=12.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--robot-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.robot_child is None:
        if not args.out:
            parser.error("--out FILE.json is required")
        try:
            args.robot_counts = [int(x) for x in args.robots.split(",") if x.strip()]
            args.rank_counts = [] if args.learner_ranks.strip().lower() in ("", "none") else \
                [int(x) for x in args.learner_ranks.split(",") if x.strip()]
        except ValueError:
            parser.error("--robots and --learner-ranks take comma-separated integers")
        if not args.robot_counts or min(args.robot_counts) < 1 or any(r < 1 for r in args.rank_counts):
            parser.error("robot and rank counts must be >= 1")
        if args.seconds <= 0 or args.window < 1 or args.chunk_steps < 1:
            parser.error("--seconds, --window and --chunk-steps must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.robot_child is not None:
        return robot_main(json.loads(args.robot_child))
    import cProfile
    import io
    import pstats

    import zmq

    from learner.shards import ShardedReplay
    from robotd import security

    from learner import ingest as ingest_module
    if args.ingest_batch is not None:
        ingest_module.MAX_BATCH_CHUNKS = max(1, args.ingest_batch)
    spec = step_spec()
    report = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "settings": {"robots": args.robot_counts, "seconds": args.seconds, "chunk_steps": args.chunk_steps,
                           "ingest_batch_chunks": ingest_module.MAX_BATCH_CHUNKS,
                           "window_chunks_per_robot": args.window, "step_bytes": step_bytes(spec),
                           "chunk_bytes": step_bytes(spec) * args.chunk_steps,
                           "step_spec": {key: [list(shape), dtype] for key, (shape, dtype) in spec.items()},
                           "replay_capacity_steps": args.replay_capacity, "replay_shards": args.shards,
                           "replay_node_resources": placement(args),
                           "replay_in_learner": args.replay_in_learner, "transport": "CurveZMQ over tcp 127.0.0.1",
                           "resend_after_s": args.resend_after_s},
              "targets": {"ingest_steps_per_s": TARGET_STEPS_PER_S, "tick_to_replay_ms_p99": TARGET_P99_MS,
                          "lost": 0}}
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    keys_dir = work / "keys"
    security.init_keys(keys_dir, actors=[f"robot{i}" for i in range(max(args.robot_counts))])
    for directory in (keys_dir, keys_dir / security.ACTORS_DIR):
        directory.chmod(0o700)
    cluster = LocalCluster(args.object_store_mb)
    ray = cluster.ray
    report["ray"] = {"version": ray.__version__, "nodes": cluster.nodes, "start_s": round(cluster.start_s, 1)}
    context = zmq.Context()
    curve = security.CurveServer(context, keys_dir)
    curve.start()
    rows = []
    try:
        replay = ShardedReplay.create(ray, args.replay_capacity, seed=0, shards=args.shards,
                                      node_resources=placement(args), in_learner=args.replay_in_learner)
        replay.stats()                     # the shard actors are up before the first run
        idle0 = cpu_snapshot({}, None)
        time.sleep(2.0)
        report["idle_cpu_2s"] = {"note": "CPU of the benchmark's processes with Ray and the replay up, nothing sent",
                                 **cpu_delta(idle0, cpu_snapshot({}, None), 2.0)["processes"]}
        recorder = StoreRecorder(replay)
        for run, count in enumerate(args.robot_counts):
            row = fleet_run(count, run, args, replay, recorder, context, curve, keys_dir, work / "spool",
                            check_listeners=(run == 0))
            if "listeners" in row:
                report["listeners"] = row.pop("listeners")
            row["targets_met"] = {"steps_per_s": row["ingest_steps_per_s"] >= TARGET_STEPS_PER_S,
                                  "p99": (row["tick_to_replay_ms_p99"] or 1e9) < TARGET_P99_MS,
                                  "no_loss": row["lost"] == 0}
            rows.append(row)
            print(f"robots {count}: {row['ingest_steps_per_s']:,.0f} steps/s into replay, tick-to-replay p50 "
                  f"{row['tick_to_replay_ms_p50']} ms p99 {row['tick_to_replay_ms_p99']} ms, lost {row['lost']}, "
                  f"load {row['load_avg']['end'][0]}", flush=True)
        if args.profile:
            profile = cProfile.Profile()
            row = fleet_run(max(args.robot_counts), len(args.robot_counts), args, replay, recorder, context, curve,
                            keys_dir, work / "spool", check_listeners=False, profile=profile)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(18)
            report["profile"] = {"robots": row["robots"], "ingest_steps_per_s_under_cprofile": row["ingest_steps_per_s"],
                                 "ingest_thread_top_by_tottime": [line.rstrip() for line in text.getvalue().splitlines()
                                                                  if line.strip()][-22:]}
        if args.micro_repeats > 0 and not replay.in_process:
            report["ray_micro"] = ray_micro(ray, replay, args.chunk_steps, args.micro_repeats)
    finally:
        curve.stop()
        context.term()
        cluster.shutdown()
        shutil.rmtree(cluster.top, ignore_errors=True)
    report["rows"] = rows
    if report.get("listeners", {}).get("all_loopback") is False:
        print(f"a socket of the benchmark listens off loopback: {report['listeners']['not_loopback']}", flush=True)
    learner_rows = []
    for world in args.rank_counts:
        result = learner_bench(world, args, work)
        learner_rows.append(result)
        if "error" in result:
            print(f"learner {world} rank(s): {result['error']}", flush=True)
        else:
            print(f"learner {world} rank(s): {result['updates_per_s_per_rank']} updates/s per rank, "
                  f"{result['samples_per_s']:,.0f} samples/s overall ({result['preset']}, batch {args.batch}x"
                  f"{args.length}, 64x64)", flush=True)
    if learner_rows:
        report["learner"] = learner_rows
    met = {"ingest_steps_per_s >= 20000": any(r["targets_met"]["steps_per_s"] for r in rows),
           "no loss in every run": all(r["targets_met"]["no_loss"] for r in rows),
           "p99 < 100 ms in every run": all(r["targets_met"]["p99"] for r in rows),
           "20000 steps/s with no loss and p99 < 100 ms in one run": any(all(r["targets_met"].values()) for r in rows)}
    report["targets_met"] = met
    for name, ok in met.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}", flush=True)
    shutil.rmtree(work, ignore_errors=True)          # the session's keys and spools
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0 if report.get("listeners", {}).get("all_loopback", True) else 1


if __name__ == "__main__":
    sys.exit(main())
