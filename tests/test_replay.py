"""Replay: contiguous segments per stream, sequence sampling, capacity."""
import numpy as np

from learner.replay import ReplayBuffer


def chunk(start: int, n: int) -> dict:
    index = np.arange(start, start + n)
    return {"index": index.astype(np.int64), "obs/x": np.stack([index, index], 1).astype(np.float32)}


def test_consecutive_chunks_make_one_segment_and_sequences_are_contiguous():
    replay = ReplayBuffer(10_000, seed=0)
    for start in range(0, 96, 32):
        replay.add("a", start, chunk(start, 32))
    assert replay.stats()["segments"] == 1
    batch = replay.sample(16, 50)
    assert batch["index"].shape == (16, 50)
    assert batch["obs/x"].shape == (16, 50, 2)
    assert np.all(np.diff(batch["index"], axis=1) == 1)


def test_a_gap_starts_a_new_segment_so_no_sequence_spans_it():
    replay = ReplayBuffer(10_000, seed=1)
    replay.add("a", 0, chunk(0, 32))
    replay.add("a", 64, chunk(64, 32))
    assert replay.stats()["segments"] == 2
    for _ in range(20):
        batch = replay.sample(8, 20)
        assert np.all(np.diff(batch["index"], axis=1) == 1)


def test_streams_are_never_joined():
    replay = ReplayBuffer(10_000, seed=2)
    replay.add("a", 0, chunk(0, 16))
    replay.add("b", 16, chunk(1000, 16))
    assert replay.sample(4, 20) is None
    assert not replay.can_sample(20)
    assert replay.can_sample(16)


def test_capacity_evicts_oldest_steps():
    replay = ReplayBuffer(100, seed=3)
    for start in range(0, 320, 32):
        replay.add("a", start, chunk(start, 32))
    stats = replay.stats()
    assert stats["replay_steps"] <= 100
    assert stats["evicted_steps"] == 320 - stats["replay_steps"]
    batch = replay.sample(8, 40)
    assert batch["index"].min() >= 320 - stats["replay_steps"]


def test_sampling_covers_the_whole_segment():
    replay = ReplayBuffer(10_000, seed=4)
    replay.add("a", 0, chunk(0, 64))
    starts = set()
    for _ in range(200):
        starts.update(replay.sample(4, 10)["index"][:, 0].tolist())
    assert min(starts) == 0 and max(starts) == 54


def test_excluded_steps_are_never_sampled_while_clean_ones_exist():
    replay = ReplayBuffer(10_000, seed=2)
    for start in range(0, 300, 50):
        replay.add("a", start, chunk(start, 50))
    assert replay.exclude("a", 100, 100) and not replay.exclude("a", 100, 100)     # an episode's steps, once
    seen = set()
    for _ in range(50):
        batch = replay.sample(8, 20)
        seen.update(batch["index"].ravel().tolist())
    assert not seen & set(range(100, 200))
    assert seen & set(range(0, 100)) and seen & set(range(200, 300))
    stats = replay.stats()
    assert stats["excluded_steps"] == 100 and stats["fallback_sequences"] == 0


def test_when_everything_is_excluded_training_still_gets_batches_and_it_is_counted():
    replay = ReplayBuffer(10_000, seed=3)
    replay.add("a", 0, chunk(0, 64))
    replay.exclude("a", 0, 64)
    batch = replay.sample(4, 16)
    assert batch["index"].shape == (4, 16)
    assert replay.stats()["fallback_sequences"] == 4
