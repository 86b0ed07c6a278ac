"""Replay: contiguous segments per stream, sequence sampling, capacity."""
import numpy as np
import pytest

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


def test_a_stored_chunk_keeps_no_view_of_the_callers_arrays():
    """As a Ray actor the replay gets read-only views of the object store: keeping them would pin every chunk's
    object there (the store, not the capacity, bounding the replay). What is stored is its own copy."""
    arrays = chunk(0, 32)
    views = {key: value.view() for key, value in arrays.items()}
    for view in views.values():
        view.flags.writeable = False                          # as numpy arrays read from Ray's object store are
    replay = ReplayBuffer(10_000, seed=0)
    replay.add("a", 0, views)
    stored = replay.segments["a"][0].chunks[0]
    for key, value in stored.items():
        assert not np.shares_memory(value, arrays[key]), key
    arrays["index"][:] = -1                                   # the caller's buffer reused: replay unchanged
    assert np.all(replay.sample(4, 32)["index"] >= 0)


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


# Replay context: latents written back by the learner come back as the context of the next sequence.

DETER, STOCH, CLASSES = 4, 3, 5


def step_chunk(start: int, n: int, first: tuple[int, ...] = ()) -> dict:
    """Steps in the step layout; ``action`` and ``index`` hold the stream step, ``is_first`` at ``first``."""
    index = np.arange(start, start + n)
    return {"index": index.astype(np.int64), "action": np.stack([index, -index], 1).astype(np.float32),
            "is_first": np.isin(index, first)}


def latents_of(keys: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents that name their stream step: deter = step % 1024 (exact in float16), stoch classes = step % CLASSES."""
    steps = keys[:, 1:2] + np.arange(length)[None]
    deter = np.repeat(steps[..., None] % 1024, DETER, -1).astype(np.float32)
    stoch = np.repeat((steps % CLASSES)[..., None], STOCH, -1).astype(np.uint8)
    return deter, stoch


def segment_id(replay: ReplayBuffer) -> int:
    return int(replay.sample(1, 2, context=True)["replay_keys"][0, 0])


def check_context(batch: dict) -> None:
    """Every valid context is the latent and action written for the step before the sequence."""
    before = batch["index"][:, 0] - 1
    valid = batch["context_valid"]
    assert np.all(batch["context_deter"][valid] == before[valid, None] % 1024)
    assert np.all(batch["context_stoch"][valid].argmax(-1) == (before[valid, None] % CLASSES))
    assert np.all(batch["context_stoch"].sum(-1)[valid] == 1.0)
    assert np.all(batch["context_action"][valid] == np.stack([before, -before], 1)[valid])
    assert np.all(batch["context_deter"][~valid] == 0) and np.all(batch["context_action"][~valid] == 0)


def test_context_sampling_leaves_the_sequences_and_their_draws_as_they_were():
    plain, context = ReplayBuffer(10_000, seed=5), ReplayBuffer(10_000, seed=5)
    for replay in (plain, context):
        for start in range(0, 96, 32):
            replay.add("a", start, step_chunk(start, 32))
    for _ in range(5):
        without, with_context = plain.sample(8, 20), context.sample(8, 20, context=True)
        assert set(without) == {"index", "action", "is_first"}
        for key, value in without.items():
            assert np.array_equal(value, with_context[key]) and value.dtype == with_context[key].dtype


def test_before_any_write_back_no_context_is_valid():
    replay = ReplayBuffer(10_000, seed=6)
    replay.add("a", 100, step_chunk(100, 64))
    batch = replay.sample(8, 10, context=True)
    assert not batch["context_valid"].any() and batch["context_valid"].dtype == bool
    assert "context_deter" not in batch and "context_stoch" not in batch   # sizes unknown until a write-back
    assert np.all(batch["context_action"] == 0) and batch["context_action"].shape == (8, 2)
    assert batch["replay_keys"].dtype == np.int64 and np.array_equal(batch["replay_keys"][:, 1], batch["index"][:, 0])


def test_written_back_latents_return_as_context_for_the_right_steps_across_chunks():
    replay = ReplayBuffer(10_000, seed=7)
    for start in range(0, 96, 32):
        replay.add("a", start, step_chunk(start, 32, first=(50,)))
    ident = segment_id(replay)
    # The learner trained on steps 10..69 (crossing both chunk boundaries) and wrote their latents back.
    keys = np.array([[ident, 10], [ident, 40]], np.int64)
    deter, stoch = latents_of(keys, 30)
    assert replay.update_latents(keys, deter, stoch, CLASSES) == 60
    assert replay.stats()["latent_writes"] == 60
    seen_valid = set()
    for _ in range(40):
        batch = replay.sample(16, 8, context=True)
        assert batch["context_deter"].shape == (16, DETER) and batch["context_deter"].dtype == np.float32
        assert batch["context_stoch"].shape == (16, STOCH, CLASSES) and batch["context_stoch"].dtype == np.float32
        check_context(batch)
        first = batch["index"][:, 0]
        valid = batch["context_valid"]
        # Valid exactly where the step before was written and the sequence does not start an episode.
        assert np.array_equal(valid, (first - 1 >= 10) & (first - 1 < 70) & (first != 50))
        seen_valid.update(first[valid].tolist())
    assert {11, 32, 33, 64, 65} <= seen_valid          # contexts just before and after the chunk boundaries


def test_no_context_at_a_segment_start_or_an_episode_start():
    replay = ReplayBuffer(10_000, seed=8)
    replay.add("a", 0, step_chunk(0, 40, first=(0, 20)))
    replay.add("a", 60, step_chunk(60, 40, first=()))     # a gap: a second segment starting at step 60
    keys = []          # each segment holds exactly one sequence of 40 steps: write both back whole
    for _ in range(20):
        keys.extend(map(tuple, replay.sample(4, 40, context=True)["replay_keys"].tolist()))
    keys = np.array(sorted(set(keys)), np.int64)
    assert keys[:, 1].tolist() == [0, 60]
    replay.update_latents(keys, *latents_of(keys, 40), CLASSES)
    starts = set()
    for _ in range(40):
        batch = replay.sample(16, 5, context=True)
        check_context(batch)
        first = batch["index"][:, 0]
        assert not batch["context_valid"][np.isin(first, (0, 20, 60))].any()
        assert batch["context_valid"][~np.isin(first, (0, 20, 60))].all()
        starts.update(first.tolist())
    assert {0, 20, 60} <= starts


def test_write_backs_skip_evicted_steps_and_segments():
    replay = ReplayBuffer(64, seed=9)
    replay.add("a", 0, step_chunk(0, 32))
    replay.add("a", 32, step_chunk(32, 32))
    ident = segment_id(replay)
    keys = np.array([[ident, 20], [ident, 40]], np.int64)
    replay.add("a", 64, step_chunk(64, 32))              # evicts steps 0..31 while the batch trains
    assert replay.update_latents(keys, *latents_of(keys, 20), CLASSES) == 8 + 20    # steps 32..39 and 40..59
    for _ in range(20):
        batch = replay.sample(16, 4, context=True)
        check_context(batch)
        first = batch["index"][:, 0]
        assert np.array_equal(batch["context_valid"], (first - 1 >= 32) & (first - 1 < 60))
    # A segment gone entirely (and a new one after a gap) takes nothing from old keys.
    replay.add("a", 200, step_chunk(200, 64))
    assert replay.stats()["segments"] == 1
    assert replay.update_latents(keys, *latents_of(keys, 20), CLASSES) == 0
    assert not replay.sample(16, 4, context=True)["context_valid"].any()


def test_long_streams_keep_latents_in_place_through_many_evictions():
    replay = ReplayBuffer(400, seed=10)
    for start in range(0, 4000, 8):
        replay.add("a", start, step_chunk(start, 8))
        if start and start % 400 == 0:
            batch = replay.sample(8, 30, context=True)
            assert np.all(np.diff(batch["index"], axis=1) == 1)
            replay.update_latents(batch["replay_keys"], *latents_of(batch["replay_keys"], 30), CLASSES)
    ident = segment_id(replay)
    keys = np.array([[ident, 3600]], np.int64)
    replay.update_latents(keys, *latents_of(keys, 400), CLASSES)
    batch = replay.sample(64, 30, context=True)
    assert batch["index"].min() >= 3600 and np.all(np.diff(batch["index"], axis=1) == 1)
    check_context(batch)
    assert np.array_equal(batch["context_valid"], batch["index"][:, 0] > 3600)


def test_latents_of_another_size_are_refused():
    replay = ReplayBuffer(1000, seed=11)
    replay.add("a", 0, step_chunk(0, 32))
    keys = replay.sample(2, 8, context=True)["replay_keys"]
    replay.update_latents(keys, *latents_of(keys, 8), CLASSES)
    deter, stoch = latents_of(keys, 8)
    with pytest.raises(ValueError, match="one replay serves one model"):
        replay.update_latents(keys, deter[..., :2], stoch, CLASSES)


def test_a_replay_that_would_outgrow_the_memory_is_named_with_a_capacity_that_fits():
    from learner.replay import available_memory_bytes, capacity_warning, step_bytes
    spec = {"obs/image": ((64, 64, 3), "uint8"), "action": ((6,), "float32"), "reward": ((), "float32")}
    assert step_bytes(spec) == 64 * 64 * 3 + 24 + 4
    gib = 2**30
    assert capacity_warning(spec, 100_000, available=8 * gib) is None          # 1.1 GiB of 8
    warning = capacity_warning(spec, 1_000_000, available=8 * gib)             # 11.5 GiB of 8
    assert warning is not None and "\n" not in warning
    assert "learner.replay_capacity_steps 1,000,000" in warning and "11.5 GiB" in warning
    fits = int(warning.split("learner.replay_capacity_steps=")[1].split()[0])
    assert step_bytes(spec) * fits <= 0.8 * 8 * gib < step_bytes(spec) * (fits + 1)
    assert capacity_warning(spec, 1_000_000, available=None) is None           # unknown: no claim
    assert available_memory_bytes() is None or available_memory_bytes() > 0
