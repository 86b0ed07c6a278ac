"""Replay sharded over Ray actors (learner.shards): a stream stays in one shard, batches are drawn uniformly over
all shards' data, latents go back to the shard they came from, counters sum, capacity is split, placement by
custom Ray resources; one shard behaves as the bare replay. A real local Ray on loopback."""
import os
import tempfile
import time

import numpy as np
import pytest

from learner import ray_start
from learner.replay import ReplayBuffer
from learner.shards import SHARD_BIT, InProcessShard, ShardedReplay, shard_capacities, shard_of
from robotd import config as cfg
from robotd.config import LearnerConfig

# CRC-32 of the stream name: arm0/0 -> shard 0, arm1/0 -> shard 1 of two, in every process and after restarts.
SMALL, LARGE = "arm0/0", "arm1/0"
DETER, STOCH, CLASSES = 4, 3, 5


@pytest.fixture(scope="module")
def ray():
    """A local Ray on loopback (as learner.ray_start starts one) whose node declares two custom resources."""
    saved = {name: os.environ.get(name) for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")}
    for name, value in ray_start.ray_env(LearnerConfig(), os.environ).items():
        os.environ[name] = value
    import ray as ray_module
    temp_dir = tempfile.mkdtemp(prefix="robotd-ray-")
    ray_module.init(address="local", num_cpus=2, resources={"replay_a": 1, "replay_b": 1}, include_dashboard=False,
                    log_to_driver=False, configure_logging=False, _temp_dir=temp_dir,
                    _node_ip_address=ray_start.LOOPBACK)
    ray_start.start_reaper(temp_dir)
    try:
        yield ray_module
    finally:
        ray_module.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def chunk(source: int, start: int, n: int) -> dict:
    """Steps that name their stream (``source``) and stream step (``index``; the action holds it too)."""
    index = np.arange(start, start + n)
    return {"index": index.astype(np.int64), "source": np.full(n, source, np.int8),
            "action": np.stack([index, -index], 1).astype(np.float32)}


def fill(replay, stream: str, source: int, n_steps: int, chunk_steps: int = 100) -> None:
    for start in range(0, n_steps, chunk_steps):
        assert replay.add(stream, start, chunk(source, start, min(chunk_steps, n_steps - start))) > 0


def latents_of(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Latents naming stream and step, exact in float16: deter = (source, step // 1024, step % 1024, 1)."""
    steps, source = batch["index"], batch["source"].astype(np.int64)
    deter = np.stack([source, steps // 1024, steps % 1024, np.ones_like(steps)], -1).astype(np.float16)
    stoch = np.repeat((steps % CLASSES)[..., None], STOCH, -1).astype(np.uint8)
    return deter, stoch


@pytest.fixture(scope="module")
def sharded(ray):
    """Two shards placed by custom resources: 1000 steps of one stream in shard 0, 3000 of another in shard 1."""
    replay = ShardedReplay.create(ray, 10_000, seed=3, shards=2, node_resources=["replay_a", "replay_b"])
    assert [replay.shard_of(SMALL), replay.shard_of(LARGE)] == [0, 1]
    fill(replay, SMALL, 0, 1000)
    fill(replay, LARGE, 1, 3000)
    yield replay
    for shard in replay.shards:
        ray.kill(shard)


def test_each_shard_actor_holds_its_custom_resource(ray, sharded):
    available = ray.available_resources()
    assert available["replay_a"] == pytest.approx(0.99) and available["replay_b"] == pytest.approx(0.99)


def test_a_stream_lives_in_one_shard_and_the_counters_sum(ray, sharded):
    each = ray.get([shard.stats.remote() for shard in sharded.shards])
    assert [(s["replay_steps"], s["streams"], s["segments"]) for s in each] == [(1000, 1, 1), (3000, 1, 1)]
    stats = sharded.stats()
    assert stats["replay_steps"] == stats["added_steps"] == 4000
    assert (stats["streams"], stats["segments"], stats["replay_shards"]) == (2, 2, 2)
    assert stats["replay_steps_per_shard"] == [1000, 3000]
    assert stats["replay_actors_per_shard"] == [1, 1]
    assert sharded.can_sample(1000) and not sharded.can_sample(3001)


def test_batches_are_uniform_over_all_data_of_all_shards(sharded):
    length, batches, size = 10, 150, 16
    from_large = 0
    for _ in range(batches):
        batch = sharded.sample(size, length, context=True)
        assert batch["index"].shape == (size, length) and np.all(np.diff(batch["index"], axis=1) == 1)
        # One stream per sequence, and the replay key names the shard that stream lives in.
        assert np.all(batch["source"] == batch["source"][:, :1])
        shard = batch["replay_keys"][:, 0] >> SHARD_BIT
        assert np.array_equal(shard, batch["source"][:, 0])
        assert np.array_equal(batch["replay_keys"][:, 1], batch["index"][:, 0])
        from_large += int(shard.sum())
    # 2991 of the 3982 sequences of 10 steps are in shard 1: 75.1%. Over 2400 draws one standard deviation is 0.9
    # points, so the 6-point bound is almost 7 of them (and the seeded draws give the same figure on every run).
    assert abs(from_large / (batches * size) - 2991 / 3982) < 0.06


def test_latents_go_back_to_the_shard_they_came_from(ray, sharded):
    length = 10
    batch = sharded.sample(32, length, context=True)
    # First only the rows of shard 0: shard 1 knows no latent sizes yet, and its rows come back as zeros.
    rows = np.flatnonzero(batch["replay_keys"][:, 0] >> SHARD_BIT == 0)
    deter, stoch = latents_of({key: value[rows] for key, value in batch.items()})
    assert sum(ray.get(sharded.update_latents(batch["replay_keys"][rows], deter, stoch, CLASSES))) == len(rows) * length
    mixed = sharded.sample(64, length, context=True)
    assert mixed["context_deter"].shape == (64, DETER) and mixed["context_stoch"].shape == (64, STOCH, CLASSES)
    from_large = mixed["source"][:, 0] == 1
    assert from_large.any() and not mixed["context_valid"][from_large].any()
    assert np.all(mixed["context_deter"][from_large] == 0)
    # Then a whole batch: every shard counts exactly the steps of its own rows.
    before = [s["latent_writes"] for s in ray.get([shard.stats.remote() for shard in sharded.shards])]
    batch = sharded.sample(32, length, context=True)
    deter, stoch = latents_of(batch)
    assert sum(ray.get(sharded.update_latents(batch["replay_keys"], deter, stoch, CLASSES))) == 32 * length
    after = [s["latent_writes"] for s in ray.get([shard.stats.remote() for shard in sharded.shards])]
    per_shard = [int((batch["source"][:, 0] == index).sum()) * length for index in (0, 1)]
    assert [b - a for a, b in zip(before, after)] == per_shard
    assert sharded.stats()["latent_writes"] == sum(after)
    # A valid context is the latent written for the step before the sequence, in that sequence's own stream.
    valid_seen = 0
    for _ in range(20):
        drawn = sharded.sample(64, length, context=True)
        valid = drawn["context_valid"]
        step, source = drawn["index"][:, 0] - 1, drawn["source"][:, 0]
        expected = np.stack([source, step // 1024, step % 1024, np.ones_like(step)], -1)
        assert np.array_equal(drawn["context_deter"][valid], expected[valid])
        assert np.all(drawn["context_stoch"][valid].argmax(-1) == (step[valid, None] % CLASSES))
        valid_seen += int(valid.sum())
    assert valid_seen > 0


def test_exclusion_goes_to_the_streams_shard(ray, sharded):
    assert sharded.exclude(LARGE, 0, 100) is True and sharded.exclude(LARGE, 0, 100) is False
    assert [s["excluded_steps"] for s in ray.get([shard.stats.remote() for shard in sharded.shards])] == [0, 100]


def test_capacity_is_split_over_the_shards(ray):
    assert shard_capacities(1001, 2) == [501, 500] and sum(shard_capacities(1_000_000, 7)) == 1_000_000
    replay = ShardedReplay.create(ray, 1000, seed=0, shards=2)
    try:
        fill(replay, SMALL, 0, 2000, chunk_steps=50)
        fill(replay, LARGE, 1, 2000, chunk_steps=50)
        stats = replay.stats()
        assert stats["replay_steps_per_shard"] == [500, 500] and stats["evicted_steps"] == 3000
    finally:
        for shard in replay.shards:
            ray.kill(shard)


def test_one_shard_is_the_bare_replay(ray):
    sharded, bare = ShardedReplay.create(ray, 5000, seed=11), ReplayBuffer(5000, seed=11)
    try:
        for replay in (sharded, bare):
            fill(replay, SMALL, 0, 700)
            fill(replay, LARGE, 1, 300)
        for _ in range(3):
            one, other = sharded.sample(8, 20, context=True), bare.sample(8, 20, context=True)
            assert set(one) == set(other)
            assert all(np.array_equal(one[key], other[key]) for key in one)
        assert sharded.stats() == bare.stats()
    finally:
        ray.kill(sharded.shards[0])


def test_a_shard_in_the_learners_process_behaves_as_its_ray_actor(ray):
    """learner.replay_in_learner: shard 0 is a ReplayBuffer of this process; with the same seeds the replay gives
    the same batches, counters, exclusions and latent write-backs as with shard 0 a Ray actor."""
    before = ray.available_resources()
    local = ShardedReplay.create(ray, 10_000, seed=5, shards=2, node_resources=["replay_b"], in_learner=True)
    actors = ShardedReplay.create(ray, 10_000, seed=5, shards=2)
    try:
        assert isinstance(local.shards[0], InProcessShard) and local.in_process and not actors.in_process
        # Ray's view of the free resources follows actor starts and kills with a delay: wait for it to settle.
        expected = {"replay_b": before["replay_b"] - 0.01, "replay_a": before["replay_a"]}   # no actor for shard 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = ray.available_resources()
            if all(after.get(name, 0) == pytest.approx(value) for name, value in expected.items()):
                break
            time.sleep(0.05)
        assert {name: after.get(name, 0) for name in expected} == pytest.approx(expected)
        for replay in (local, actors):
            fill(replay, SMALL, 0, 1000)
            fill(replay, LARGE, 1, 3000)
            assert replay.add_many([(SMALL, 1000, chunk(0, 1000, 50)), (LARGE, 3000, chunk(1, 3000, 50))]) == 100
            assert replay.exclude(SMALL, 0, 10) is True and replay.exclude(LARGE, 0, 10) is True
        assert local.shards[0].buffer.stats()["replay_steps"] == 1050
        assert local.stats() == actors.stats()
        assert local.can_sample(1050) and not local.can_sample(3051)
        for _ in range(3):
            one, other = local.sample(16, 10, context=True), actors.sample(16, 10, context=True)
            assert set(one) == set(other) and all(np.array_equal(one[key], other[key]) for key in one)
            assert set((one["replay_keys"][:, 0] >> SHARD_BIT).tolist()) == {0, 1}
            deter, stoch = latents_of(one)
            written = [sum(replay.written(replay.update_latents(one["replay_keys"], deter, stoch, CLASSES)))
                       for replay in (local, actors)]
            assert written == [16 * 10, 16 * 10]
        assert local.stats() == actors.stats() and local.stats()["latent_writes"] == 3 * 16 * 10
    finally:
        for replay in (local, actors):
            for shard in replay.shards:
                if not isinstance(shard, InProcessShard):
                    ray.kill(shard)


def test_an_in_process_shard_takes_chunks_and_batches_from_several_threads_at_once(ray):
    import threading
    replay = ShardedReplay.create(ray, 100_000, seed=1, shards=1, in_learner=True)
    errors, drawn = [], []

    def add(source):
        try:
            for start in range(0, 2000, 20):
                replay.add_many([(f"arm{source}/0", start, chunk(source, start, 20))])
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    def sample():
        try:
            while len(drawn) < 50:
                batch = replay.sample(8, 16)
                if batch is not None:
                    assert np.all(np.diff(batch["index"], axis=1) == 1)
                    assert np.all(batch["source"] == batch["source"][:, :1])
                    drawn.append(batch)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)
    threads = [threading.Thread(target=add, args=(source,)) for source in range(3)] + [threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(drawn) == 50
    stats = replay.stats()
    assert stats["replay_steps"] == stats["added_steps"] == 6000 and stats["streams"] == 3


def test_robots_spread_evenly_over_the_shards_and_keep_their_shard_across_streams(ray):
    # robot0..robot3 all hash to shard 0 of 2: by hash alone one shard would hold every robot.
    names = [f"robot{i}" for i in range(4)]
    assert {shard_of(name, 2) for name in names} == {0}
    replay = ShardedReplay.create(ray, 4000, seed=0, shards=2, in_learner=True)
    try:
        for name in names:
            fill(replay, f"{name}/s0", 0, 200)
        assert replay.actors_per_shard == [2, 2]
        assert replay.stats()["replay_steps_per_shard"] == [400, 400]
        assert [replay.shard_of(f"{name}/s0") for name in names] == [0, 1, 0, 1]
        # A restarted actor's new stream joins its old one, wherever the new name would hash.
        fill(replay, "robot1/s1", 0, 100)
        assert replay.shard_of("robot1/s1") == 1 and replay.actors_per_shard == [2, 2]
        assert replay.stats()["replay_steps_per_shard"] == [400, 500]
    finally:
        for shard in replay.shards[1:]:
            ray.kill(shard)


def test_streams_spread_over_the_shards_by_a_stable_hash():
    assert [shard_of(f"arm{i}/0", 4) for i in range(4)] == [0, 3, 2, 1]
    assert {shard_of(f"arm{i}/0", 8) for i in range(64)} == set(range(8))
    assert all(shard_of(f"arm{i}/0", 1) == 0 for i in range(8))


def test_a_resource_no_node_declares_is_a_one_line_error(ray):
    with pytest.raises(cfg.ConfigError) as info:
        ShardedReplay.create(ray, 1000, shards=2, node_resources=["replay_a", "replay_c"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config: learner.replay_node_resources[1] = 'replay_c' is declared by no node")
    assert "replay_a, replay_b" in message and "ray start --resources" in message


@pytest.mark.parametrize("overrides, expected", [
    (["learner.replay_shards=2", "learner.replay_node_resources=[replay_a]"],
     r"config: learner.replay_node_resources = \['replay_a'\] has 1 name\(s\) for learner.replay_shards = 2: give "
     r"one per shard, or none"),
    (["learner.replay_shards=65"], r"config: learner.replay_shards = 65 is out of range: allowed 1 to 64"),
    (["learner.replay_shards=0"], r"config: learner.replay_shards = 0 is out of range"),
    (["learner.replay_node_resources=[CPU]"],
     r"config: learner.replay_node_resources\[0\] = 'CPU' is not a custom Ray resource name"),
    (["learner.replay_node_resources=replay_a"], r"learner.replay_node_resources = 'replay_a' is not a list"),
    (["learner.replay_in_learner=true", "learner.data_parallel_ranks=2"],
     r"config: learner.replay_in_learner = true with learner.data_parallel_ranks = 2: the other ranks reach replay "
     r"through Ray"),
    (["learner.replay_in_learner=true", "learner.replay_shards=2", "learner.replay_node_resources=[a, b]"],
     r"config: learner.replay_node_resources = \['a', 'b'\] has 2 name\(s\) for the 1 replay shard actor\(s\) "
     r"beside the learner's own shard"),
    (["learner.replay_shards=4", "learner.replay_capacity_steps=300"],
     r"config: learner.replay_capacity_steps = 300 leaves fewer than 100 steps to each of learner.replay_shards = 4"),
])
def test_replay_shard_settings_are_checked_in_one_line(overrides, expected):
    with pytest.raises(cfg.ConfigError, match=expected) as info:
        cfg.load(None, overrides)
    assert "\n" not in str(info.value)


def test_replay_shard_settings_default_to_one_unplaced_shard():
    learner = cfg.load(None).learner
    assert (learner.replay_shards, learner.replay_node_resources) == (1, [])
    placed = cfg.load(None, ["learner.replay_shards=2", "learner.replay_node_resources=[replay_a, replay_b]"])
    assert placed.learner.replay_node_resources == ["replay_a", "replay_b"]
    assert learner.replay_in_learner is False
    beside = cfg.load(None, ["learner.replay_in_learner=true", "learner.replay_shards=3",
                             "learner.replay_node_resources=[replay_a, replay_b]"])
    assert beside.learner.replay_in_learner and beside.learner.replay_node_resources == ["replay_a", "replay_b"]
