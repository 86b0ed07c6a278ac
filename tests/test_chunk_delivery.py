"""Chunks over real ZeroMQ sockets: acked after storage, resent until acked, de-duplicated, nothing lost
when the learner restarts."""
import time

import numpy as np
import pytest
import zmq

from actor.spool import RESEND_SEQ_BASE, AckMarkers, ChunkSpool, resend_from_episodes
from actor.stream import ExperienceStream
from learner.ingest import IngestLedger, IngestServer
from learner.replay import ReplayBuffer
from robotd import steps, wire
from robotd.episodes import EpisodeWriter
from robotd.netutil import free_tcp_ports

SPEC = steps.step_spec({"x": ((3,), "float32")}, action_dim=2, devices=["arm"])


def make_chunk(seq: int, stream_step: int, n: int = 8, stream: str = "s0", episode_id: int = 0) -> list:
    arrays = {}
    for key, (shape, dtype) in SPEC.items():
        arrays[key] = np.zeros((n, *shape), dtype)
    arrays[steps.TICK] = np.arange(stream_step, stream_step + n, dtype=np.int64)
    meta = {"actor_id": "a0", "stream": stream, "episode_id": episode_id, "seq": seq, "n_steps": n,
            "stream_step": stream_step}
    return wire.encode(wire.Kind.CHUNK, meta, arrays)


HELLO = {"role": "actor", "session": "t", "actor_id": "a0", "stream": "s0", "config_digest": "d1",
         "spec": {k: [list(s), d] for k, (s, d) in SPEC.items()}}


class Learner:
    """An ingest server storing into a plain replay buffer; ``ticks`` lists the ticks stored per stream."""

    def __init__(self, context, address, spec=None):
        self.replay = ReplayBuffer(100_000)
        self.ticks: dict[str, list[int]] = {}
        self.server = IngestServer(context, address, config_digest="d1", store=self._store, weights_port=1,
                                   spec=spec, on_spec=lambda s: None, max_bytes=2**24)
        self.server.start()

    def _store(self, stream, stream_step, arrays):
        self.ticks.setdefault(stream, []).extend(arrays[steps.TICK].tolist())
        return self.replay.add(stream, stream_step, arrays)

    def stop(self):
        self.server.stop()


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def test_ledger_counts_duplicates_and_unfilled_gaps():
    ledger = IngestLedger()
    ledger.record("s", 0, 0, 10)
    assert ledger.is_duplicate("s", 0, 0, 10)
    assert ledger.is_duplicate("s", 7, 0, 10)          # same steps under another number
    ledger.record("s", 2, 20, 10)
    assert ledger.lost_steps == 10 and ledger.ingested_steps == 20
    ledger.record("s", 1, 10, 10)
    assert ledger.lost_steps == 0 and ledger.ingested_steps == 30


def test_ledger_of_a_restarted_learner_counts_only_from_where_it_took_over():
    ledger = IngestLedger()
    ledger.start_stream("s", 96)                     # the actor says: everything below 96 was acked before
    ledger.record("s", 12, 96, 32)
    ledger.record("s", 14, 160, 32)
    assert ledger.lost_steps == 32 and ledger.ingested_steps == 64


def test_every_chunk_is_acked_after_storage_and_resends_are_dropped(context, tmp_path):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=4)
    stream = ExperienceStream(context, address, HELLO, spool, resend_after_s=0.05, max_bytes=2**24)
    stream.start()
    for seq in range(20):
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    assert wait_for(lambda: stream.pending == 0)
    assert stream.close(1.0)
    stats = learner.server.stats()
    learner.stop()
    assert stats["ingested_steps"] == 160 and stats["lost_steps"] == 0
    assert learner.replay.steps == 160
    assert spool.spilled_total > 0                      # the small memory budget forced spilling, and it came back


def test_a_restarted_learner_gets_every_unacked_chunk_and_nothing_is_lost(context, tmp_path):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    first = Learner(context, address)
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=64)
    stream = ExperienceStream(context, address, HELLO, spool, resend_after_s=0.2, max_bytes=2**24)
    stream.start()
    for seq in range(5):
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    assert wait_for(lambda: stream.pending == 0)
    first.stop()
    for seq in range(5, 10):                            # produced while no learner is listening
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    time.sleep(0.3)
    assert stream.pending == 5
    second = Learner(context, address, spec=first.server.spec)
    assert wait_for(lambda: stream.pending == 0, timeout_s=15)
    stream.close(1.0)
    stats = second.server.stats()
    second.stop()
    assert stats["ingested_steps"] == 40                # the 5 chunks the first learner never saw
    assert stats["lost_steps"] == 0
    assert stream.reconnects == 1
    assert first.server.stats()["ingested_steps"] == 40


def test_a_duplicate_chunk_is_acked_but_stored_once(context):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    wire.send(dealer, wire.Kind.HELLO, HELLO)
    assert wire.recv(dealer).kind == wire.Kind.HELLO
    for _ in range(3):
        dealer.send_multipart(make_chunk(0, 0), copy=False)
        reply = wire.recv(dealer)
        assert reply.kind == wire.Kind.ACK and reply.meta["seq"] == 0
    stats = learner.server.stats()
    learner.stop()
    dealer.close(0)
    assert stats["duplicate_chunks"] == 2 and stats["ingested_steps"] == 8 and learner.replay.steps == 8


def test_chunks_before_hello_and_off_spec_chunks_are_refused_not_stored(context):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    dealer.send_multipart(make_chunk(0, 0), copy=False)
    reply = wire.recv(dealer)
    assert reply.kind == wire.Kind.REFUSE and reply.meta["code"] == "hello_required"
    wire.send(dealer, wire.Kind.HELLO, HELLO)
    assert wire.recv(dealer).kind == wire.Kind.HELLO
    bad = wire.encode(wire.Kind.CHUNK, {"actor_id": "a0", "stream": "s0", "episode_id": 0, "seq": 1, "n_steps": 2,
                                        "stream_step": 0}, {"reward": np.zeros(2, np.float32)})
    dealer.send_multipart(bad, copy=False)
    dealer.send_multipart([b"garbage"], copy=False)
    assert wait_for(lambda: learner.server.stats()["refused_chunks"] == 1 and learner.server.stats()["malformed"] == 1)
    assert learner.replay.steps == 0
    learner.stop()
    dealer.close(0)


def test_hello_with_another_spec_is_refused_naming_the_key(context):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address, spec={k: v for k, v in SPEC.items()})
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    other = dict(HELLO, spec={**HELLO["spec"], "obs/x": [[4], "float32"]})
    wire.send(dealer, wire.Kind.HELLO, other)
    reply = wire.recv(dealer)
    learner.stop()
    dealer.close(0)
    assert reply.kind == wire.Kind.REFUSE and "'obs/x'" in reply.meta["reason"]


@pytest.mark.parametrize("spec", [{"obs/x": 5}, {"obs/x": [[2], "no-such-dtype"]}, {"obs/x": [[-1], "float32"]},
                                  {"obs/x": [["2"], "float32"]}, {"obs/x": [[2]]}])
def test_a_malformed_step_spec_is_refused_and_logged_once_and_the_learner_goes_on(context, spec, caplog):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    try:
        with caplog.at_level("WARNING", logger="learner.ingest"):
            for _ in range(3):
                wire.send(dealer, wire.Kind.HELLO, dict(HELLO, spec=spec))
                reply = wire.recv(dealer)
                assert reply.kind == wire.Kind.REFUSE and "step spec" in reply.meta["reason"]
        assert len([r for r in caplog.records if "refused actor" in r.getMessage()]) == 1
        assert learner.server.stats()["refused_hellos"] == 3
        wire.send(dealer, wire.Kind.HELLO, HELLO)                   # the same peer, now well formed, is served
        assert wire.recv(dealer).kind == wire.Kind.HELLO
    finally:
        learner.stop()
        dealer.close(0)


# ---- the spool: back-off, bound, adoption ----------------------------------------------------------------------

def test_resends_to_a_learner_that_never_acks_back_off(context, tmp_path):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=64)
    stream = ExperienceStream(context, address, HELLO, spool, resend_after_s=0.05, max_bytes=2**24)
    stream.start()
    for seq in range(3):
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    received = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.6:               # a learner that says hello and then freezes
        if router.poll(20):
            identity, *frames = router.recv_multipart()
            if wire.decode(frames).kind == wire.Kind.HELLO:
                router.send_multipart([identity, *wire.encode(wire.Kind.HELLO, {"role": "learner", "session": "t",
                                                                                 "instance": "i1"})])
            elif wire.decode(frames).kind == wire.Kind.CHUNK:
                received += 1
    stream.close(0.0)
    router.close(0)
    # every 0.05 s without back-off: about 32 sends per chunk; doubling waits 0.05, 0.1, 0.2, 0.4, 0.8 s: 6 at most
    assert 3 <= received <= 3 * 6, received
    assert stream.resent_chunks == received - 3


def test_a_full_spool_drops_its_oldest_spilled_chunks_when_told_to(tmp_path):
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=1, stream="s0")
    spool.add(0, make_chunk(0, 0), 8, 0)
    spool.add(1, make_chunk(1, 8), 8, 8)
    one_file = spool.spilled_bytes
    assert one_file > 0 and not spool.full
    spool.max_spill_bytes = 3 * one_file + 10             # three files (their sizes differ by a digit or two)
    for seq in range(2, 5):
        spool.add(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    assert spool.full                                     # chunks 0-3 spilled (4 is in memory), bound three files
    assert spool.drop_oldest_spilled() == 8
    assert not spool.full and spool.dropped_chunks == 1 and spool.dropped_steps == 8
    assert spool.lowest_pending_step() == 8               # chunk 0 went, the oldest
    assert len(list((tmp_path / "spool").glob("*.chunk"))) == 3


@pytest.mark.parametrize("policy", ["stop", "drop_oldest"])
def test_the_stream_applies_the_spool_full_policy(context, tmp_path, policy):
    (port,) = free_tcp_ports(1)
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=1, max_spill_bytes=1)
    stream = ExperienceStream(context, f"tcp://127.0.0.1:{port}", HELLO, spool, resend_after_s=0.05,
                              max_bytes=2**24, spool_full=policy)
    stream.start()
    for seq in range(4):                                  # nobody listens: everything beyond one chunk spills
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    if policy == "stop":
        assert stream.spool_full_event.wait(5.0)
        assert wait_for(lambda: len(spool) == 4, 5.0) and spool.dropped_chunks == 0
    else:
        assert wait_for(lambda: spool.dropped_chunks == 3, 5.0)
        assert not stream.spool_full_event.is_set() and len(spool) == 1
    stream.close(0.0)
    with pytest.raises(ValueError, match=r"spool_full 'later': use one of stop, drop_oldest"):
        ExperienceStream(context, "tcp://127.0.0.1:1", HELLO, spool, resend_after_s=1.0, max_bytes=1,
                         spool_full="later")


def test_a_new_actor_sends_what_an_earlier_one_left_in_the_spool(context, tmp_path):
    earlier = ChunkSpool(tmp_path / "spool", memory_chunks=2, stream="s0")
    for seq in range(5):
        earlier.add(seq, make_chunk(seq, 40 + seq * 8), 8, 40 + seq * 8)    # steps 0..39 were acked before
    assert earlier.spill_all() == 2 and len(list((tmp_path / "spool").glob("*.chunk"))) == 5
    (tmp_path / "spool" / "zz-000000000001.chunk").write_bytes(b"not a chunk")
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    later = ChunkSpool(tmp_path / "spool", memory_chunks=64)
    assert later.adopt() == 5
    assert (tmp_path / "spool" / "zz-000000000001.chunk.unreadable").exists()
    hello = {**HELLO, "stream": "s1"}
    stream = ExperienceStream(context, address, hello, later, resend_after_s=0.2, max_bytes=2**24)
    assert later.other_streams() == {"s0": 40} and stream._hello()["previous_streams"] == {"s0": 40}
    stream.start()
    stream.put(0, make_chunk(0, 0, stream="s1"), 8, 0)    # and its own first chunk
    assert wait_for(lambda: stream.pending == 0)
    stream.close(1.0)
    stats = learner.server.stats()
    learner.stop()
    assert stats["ingested_steps"] == 48 and stats["lost_steps"] == 0
    assert not list((tmp_path / "spool").glob("*.chunk"))


def test_a_resent_chunk_overlapping_stored_steps_anywhere_stores_only_the_missing_ones(context):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    wire.send(dealer, wire.Kind.HELLO, HELLO)
    assert wire.recv(dealer).kind == wire.Kind.HELLO
    for seq, step, n in [(0, 0, 8), (1, 16, 8), (2, 0, 32)]:     # the last one covers both and the gaps around them
        dealer.send_multipart(make_chunk(seq, step, n), copy=False)
        assert wire.recv(dealer).meta["seq"] == seq
    stats = learner.server.stats()
    learner.stop()
    dealer.close(0)
    assert sorted(learner.ticks["a0/s0"]) == list(range(32))
    assert learner.replay.added_steps == 32 and stats["ingested_steps"] == 32 and stats["lost_steps"] == 0


# ---- acknowledgement markers, and what a killed actor left unsent ----------------------------------------------

def write_episode(folder, episode_id, first_step, n, *, stream="s0", close=True, flags=()):
    """An episode of actor a0 as the actor logs it (ticks equal stream steps); ``close=False`` leaves it as a
    killed actor does (only its journal is whole) and returns the open writer."""
    attrs = {"session": "t", "actor_id": "a0", "episode_id": episode_id, "robot": "mock", "task": "t",
             "control_rate_hz": 50.0, "stream": stream}
    writer = EpisodeWriter(folder / f"a0-{episode_id:06d}.h5", SPEC, attrs)
    for t in range(n):
        step = {key: np.zeros(shape, dtype) for key, (shape, dtype) in SPEC.items()}
        step.update({steps.TICK: first_step + t, steps.STREAM_STEP: first_step + t, steps.IS_FIRST: t == 0,
                     steps.IS_LAST: close and t == n - 1})
        writer.append(step)
    if close:
        writer.close(stats={}, flags=list(flags))
    return writer


def test_markers_are_written_atomically_read_back_and_bad_ones_set_aside(tmp_path):
    markers = AckMarkers(tmp_path / "spool")
    assert markers.read() == {}
    markers.write("s0", 96, 3)
    markers.write("s0", 128, 4)
    markers.write("s1", 0, 5)
    assert markers.read() == {"s0": (128, 4), "s1": (0, 5)}
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["acked-s0.json", "acked-s1.json"]
    markers.remove("s1")
    markers.remove("s1")
    (tmp_path / "spool" / "acked-s2.json").write_text('{"stream": "s2", "acked_through": -1, "episode_id": 0}')
    (tmp_path / "spool" / "acked-s3.json").write_text('{"stream": "other", "acked_through": 1, "episode_id": 0}')
    (tmp_path / "spool" / "acked-s4.json").write_text("{trunc")
    assert markers.read() == {"s0": (128, 4)}
    assert sorted(p.name for p in (tmp_path / "spool").glob("*.unreadable")) == [
        "acked-s2.json.unreadable", "acked-s3.json.unreadable", "acked-s4.json.unreadable"]
    with pytest.raises(ValueError, match=r"^stream '\.\./x' cannot name a marker file: use at most 64 letters"):
        markers.write("../x", 0, 0)


def test_the_stream_keeps_its_marker_at_the_oldest_unacknowledged_step(context, tmp_path):
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=64)
    stream = ExperienceStream(context, address, HELLO, spool, resend_after_s=0.2, max_bytes=2**24,
                              first_episode_id=5)
    stream.write_markers()
    assert stream.markers.read() == {"s0": (0, 5)}              # before any step
    stream.start()
    for seq in range(3):                                        # nobody listens yet
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8, episode_id=5 + seq)
    time.sleep(1.3)
    assert stream.markers.read() == {"s0": (0, 5)}
    learner = Learner(context, address)
    assert wait_for(lambda: stream.pending == 0)
    assert wait_for(lambda: stream.markers.read() == {"s0": (24, 7)}, 3.0), stream.markers.read()
    learner.stop()
    stream.put(3, make_chunk(3, 24), 8, 24, episode_id=7)       # never acknowledged
    stream.close(0.3)
    assert stream.markers.read() == {"s0": (24, 7)}


def test_a_restarted_actor_resends_the_unacknowledged_tail_from_the_episode_files(context, tmp_path):
    """The earlier actor (stream s0) logged 75 steps in two episodes, the second left open by a kill; the learner
    acknowledged steps 0-31; one chunk (40-47) was spilled; the rest was in its memory or never emitted."""
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    episodes, spool_dir = tmp_path / "episodes", tmp_path / "spool" / "a0"
    write_episode(episodes, 0, 0, 40)
    killed = write_episode(episodes, 1, 40, 35, close=False)
    write_episode(episodes, 2, 0, 5, stream="gone")             # an older stream, all acknowledged: no marker
    learner = Learner(context, address)
    earlier = ExperienceStream(context, address, HELLO, ChunkSpool(spool_dir, memory_chunks=64), resend_after_s=5.0,
                               max_bytes=2**24)                 # no resend: every duplicate counted is a rebuilt one
    earlier.start()
    for seq in range(4):
        earlier.put(seq, make_chunk(seq, seq * 8), 8, seq * 8, episode_id=0)
    assert wait_for(lambda: earlier.pending == 0)
    assert earlier.close(1.0)
    assert earlier.markers.read() == {"s0": (32, 0)}
    earlier.markers.write("s0", 24, 0)                          # written a moment before the last ack: stale
    spilled = ChunkSpool(spool_dir, memory_chunks=1, stream="s0")
    spilled.add(5, make_chunk(5, 40, episode_id=1), 8, 40, episode_id=1)
    spilled.add(6, make_chunk(6, 48, episode_id=1), 8, 48, episode_id=1)   # in memory at the kill: lost with it

    spool = ChunkSpool(spool_dir, memory_chunks=64, stream="s1")
    assert spool.adopt() == 1
    markers = AckMarkers(spool_dir)
    rebuilt = resend_from_episodes(spool, markers, episodes, "a0", SPEC, chunk_steps=8)
    assert rebuilt == {"s0": {"from": 24, "steps": 16 + 27, "chunks": 2 + 4}}
    # Cut as the actor cuts (from each episode's first step), numbered apart from the stream's own chunks.
    assert sorted(spool.pending_chunks("s0")) == [(24, 8, 0), (32, 8, 0), (40, 8, 1), (48, 8, 1), (56, 8, 1),
                                                  (64, 8, 1), (72, 3, 1)]
    stream = ExperienceStream(context, address, {**HELLO, "stream": "s1"}, spool, resend_after_s=5.0,
                              max_bytes=2**24)
    assert stream._hello()["previous_streams"] == {"s0": 24}
    stream.start()
    assert wait_for(lambda: stream.pending == 0)
    assert stream.close(1.0)
    stats = learner.server.stats()
    learner.stop()
    assert sorted(learner.ticks["a0/s0"]) == list(range(75))   # every step once
    assert learner.replay.added_steps == 75 and stats["ingested_steps"] == 75 and stats["lost_steps"] == 0
    assert stats["duplicate_chunks"] == 1                        # the stale marker's 24-31, dropped
    seqs = learner.server.ledger.seqs["a0/s0"]                   # numbered apart from the stream's own
    assert sorted(seq for seq in seqs if seq < RESEND_SEQ_BASE) == [0, 1, 2, 3, 5] and len(seqs) == 5 + 5
    assert markers.read() == {"s1": (0, 0)}                      # s0 is done; s1 sent nothing yet
    assert not list(spool_dir.glob("*.chunk"))
    del killed


def test_streams_without_a_marker_resend_only_beyond_their_spilled_chunks(tmp_path):
    """A stream with neither a marker nor spilled chunks is not looked for; one with spilled chunks but no marker
    (an older actor's spool) is taken as acknowledged up to its oldest spilled chunk."""
    episodes, spool_dir = tmp_path / "episodes", tmp_path / "spool" / "a0"
    write_episode(episodes, 0, 0, 20, stream="quiet")
    write_episode(episodes, 1, 0, 30, stream="s0", flags=["quality:late_steps", "time_limit"])
    earlier = ChunkSpool(spool_dir, memory_chunks=1, stream="s0")
    earlier.add(1, make_chunk(1, 8, episode_id=1), 8, 8, episode_id=1)
    earlier.spill_all()
    spool = ChunkSpool(spool_dir, memory_chunks=64, stream="s1")
    assert spool.adopt() == 1
    rebuilt = resend_from_episodes(spool, AckMarkers(spool_dir), episodes, "a0", SPEC, chunk_steps=8)
    assert rebuilt == {"s0": {"from": 16, "steps": 14, "chunks": 2}}
    assert spool.other_streams() == {"s0": 8}
    last = wire.decode(spool.frames(("s0", RESEND_SEQ_BASE + 24 * 8192 + 6)))
    assert last.meta["exclude"] == {"from": 0, "n": 30, "reasons": ["quality:late_steps"]}
    assert last.arrays[steps.TICK].tolist() == list(range(24, 30))
    # Nothing marked, nothing spilled: nothing to send, no file read.
    bare = ChunkSpool(tmp_path / "spool" / "b0", memory_chunks=64, stream="s2")
    assert resend_from_episodes(bare, AckMarkers(bare.spill_dir), episodes, "a0", SPEC, chunk_steps=8) == {}
    assert len(bare) == 0


def test_weights_carry_the_learners_replayed_steps_to_the_actor(context):
    import torch

    from actor.weights import WeightSubscriber
    from learner.trainer import WeightPublisher
    (port,) = free_tcp_ports(1)
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    subscriber = WeightSubscriber(context, f"tcp://127.0.0.1:{port}", max_bytes=2**20)
    subscriber.start()
    try:
        publisher = WeightPublisher(pub)
        deadline = time.monotonic() + 10
        newest = None
        while newest is None and time.monotonic() < deadline:
            publisher.publish({"w": torch.ones(3)}, replayed_steps=5_120)   # until the late subscriber joins
            time.sleep(0.05)
            newest = subscriber.take()
        assert newest is not None, "no weights reached the subscriber"
        assert newest.replayed_steps == 5_120 and newest.version >= 1
        assert np.array_equal(newest.arrays["w"], np.ones(3, np.float32))
    finally:
        subscriber.stop()
        pub.close(0)


def test_a_restarted_learner_refills_an_episode_only_a_journal_holds(tmp_path):
    """An actor killed between creating an episode's journal and its HDF5 file leaves only the journal: its steps
    are logged and must reach replay too."""
    from learner.ingest import IngestLedger
    from learner.refill import refill_from_episodes
    from robotd.episodes import episode_files
    folder = tmp_path / "episodes"
    folder.mkdir()
    write_episode(folder, 0, 0, 20)
    open_writer = write_episode(folder, 1, 20, 12, close=False)
    journal = folder / "a0-000001.h5.journal"
    kept = journal.read_bytes()
    open_writer.close()
    (folder / "a0-000001.h5").unlink()
    journal.write_bytes(kept)                                  # as the killed actor left it: no HDF5 file
    assert [p.name for p in episode_files(folder)] == ["a0-000000.h5", "a0-000001.h5"]
    stored = []
    loaded = refill_from_episodes(tmp_path, SPEC, IngestLedger(),
                                  lambda stream, step, arrays: stored.append((stream, step, len(arrays[steps.TICK]))))
    assert loaded == 32 and stored == [("a0/s0", 0, 20), ("a0/s0", 20, 12)]


def test_chunks_waiting_together_are_stored_in_one_call_acked_after_it_and_resent_when_it_fails(context):
    """The ingest takes every chunk waiting at once: one store_many for all of them, each acked only after it
    returned; a copy of a chunk in the same batch is a duplicate (stored once); a failed store acks nothing, and
    the resends are stored then."""
    from learner.ingest import _Batch
    calls, fail = [], [True]

    def store_many(items):
        if fail[0]:
            fail[0] = False
            raise RuntimeError("replay actor died")
        calls.append([(stream, step, len(arrays[steps.TICK])) for stream, step, arrays in items])

    server = IngestServer(context, "tcp://127.0.0.1:*", config_digest="d1", store=None, store_many=store_many,
                          weights_port=1, spec=SPEC, on_spec=lambda s: None, max_bytes=2**24)
    acks = []
    server._reply = lambda identity, kind, meta: acks.append((kind, meta.get("seq")))
    server._hello(b"peer", HELLO)
    acks.clear()

    def take(chunks):
        batch = _Batch()
        for frames in chunks:
            server._chunk(b"peer", wire.decode([zmq.Frame(f) for f in frames]), batch)
        server._flush(batch)

    chunks = [make_chunk(0, 0), make_chunk(1, 8), make_chunk(1, 8)]        # the last one a resend of the second
    take(chunks)
    assert acks == [] and calls == [] and server.ledger.ingested_steps == 0     # the store failed: nothing acked
    take(chunks)
    assert calls == [[("a0/s0", 0, 8), ("a0/s0", 8, 8)]]                         # one call, the duplicate left out
    assert acks == [(wire.Kind.ACK, 0), (wire.Kind.ACK, 1), (wire.Kind.ACK, 1)]
    assert server.ledger.ingested_steps == 16 and server.ledger.duplicate_chunks == 1
    server.socket.close(0)


# ---- history: a learner that holds none of an actor's steps gets them from its episode files ------------------

def history_ticks(chunks) -> list[tuple[str, int, int]]:
    """(stream, first tick, steps) of each history chunk, after decoding it as the learner does."""
    found = []
    for stream, seq, frames, n_steps in chunks:
        message = wire.Receiver("test", max_bytes=2**24).decode(frames)
        assert message.meta["seq"] == seq >= RESEND_SEQ_BASE and message.meta["stream"] == stream
        ticks = message.arrays[steps.TICK]
        assert len(ticks) == n_steps and list(ticks) == list(range(ticks[0], ticks[0] + n_steps))
        found.append((stream, int(ticks[0]), n_steps))
    return found


def test_history_is_the_newest_steps_up_to_the_limit_oldest_first_and_stops_where_the_stream_is_pending(tmp_path):
    from actor.spool import history_chunks
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    write_episode(episodes, 0, 0, 20, stream="old")           # an earlier actor's stream
    write_episode(episodes, 1, 20, 20, stream="old")
    write_episode(episodes, 2, 0, 20, stream="s0")            # this actor's stream
    write_episode(episodes, 3, 20, 12, stream="s0", close=False)     # still being written (journal only)
    everything = history_ticks(history_chunks(episodes, "a0", SPEC, 8, 10_000, {}))
    assert [(s, t) for s, t, _ in everything][:3] == [("old", 0), ("old", 8), ("old", 16)]   # oldest first
    assert sum(n for _, _, n in everything) == 72
    # The newest 30 steps: all of episode 3, 18 of episode 2 (its first two cut), in the actor's chunking.
    newest = history_ticks(history_chunks(episodes, "a0", SPEC, 8, 30, {}))
    assert newest == [("s0", 2, 6), ("s0", 8, 8), ("s0", 16, 4), ("s0", 20, 8), ("s0", 28, 4)]
    # Of s0 only what lies below its pending point: steps 0..25.
    until = history_ticks(history_chunks(episodes, "a0", SPEC, 8, 10_000, {"s0": 26}))
    assert [(t, n) for s, t, n in until if s == "s0"] == [(0, 8), (8, 8), (16, 4), (20, 6)]
    assert history_ticks(history_chunks(tmp_path / "none", "a0", SPEC, 8, 100, {})) == []


def test_a_learner_holding_none_of_an_actors_steps_gets_its_history_and_counts_nothing_lost(context, tmp_path):
    from actor.spool import history_chunks
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    write_episode(episodes, 0, 0, 40, stream="old")           # acknowledged by a learner that is gone
    write_episode(episodes, 1, 0, 24, stream="s0")            # this stream's first 24 steps, acknowledged too
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    learner = Learner(context, address, spec=None)
    learner.server.history_steps = 1000
    spool = ChunkSpool(tmp_path / "spool", memory_chunks=64, stream="s0")
    hello = {**HELLO, "stream": "s0"}
    stream = ExperienceStream(context, address, hello, spool, resend_after_s=0.2, max_bytes=2**24,
                              history=lambda limit, until: history_chunks(episodes, "a0", SPEC, 8, limit, until))
    stream.emitted_steps = 24                 # what the actor had emitted and had acknowledged before
    stream.start()
    for seq in range(3, 6):                   # live chunks go on meanwhile
        stream.put(seq, make_chunk(seq, seq * 8), 8, seq * 8)
    assert wait_for(lambda: stream.pending == 0 and stream.history_acked_steps == 64, timeout_s=15), \
        (stream.pending, stream.history_acked_steps)
    stream.close(1.0)
    stats = learner.server.stats()
    assert learner.ticks["a0/old"] == list(range(40))
    assert sorted(learner.ticks["a0/s0"]) == list(range(48))
    assert stats["ingested_steps"] == 88 and stats["lost_steps"] == 0 and stats["duplicate_chunks"] == 0
    assert stats["history_requests"] == 1 and stream.history_sent_chunks == 8
    # A second actor of the same id (restarted) is not asked again: the learner holds its steps now.
    again = ExperienceStream(context, address, {**HELLO, "stream": "s1"}, ChunkSpool(tmp_path / "spool2", 8,
                             stream="s1"), resend_after_s=0.2, max_bytes=2**24,
                             history=lambda limit, until: history_chunks(episodes, "a0", SPEC, 8, limit, until))
    again.start()
    assert again.accepted.wait(10)
    assert again.learner_reply["history_steps"] == 0
    again.close(1.0)
    learner.stop()
    assert learner.server.stats()["history_requests"] == 1 and again.history_sent_chunks == 0


def test_the_ledger_counts_no_gap_below_where_it_took_a_stream_over():
    ledger = IngestLedger()
    ledger.start_stream("s", 96)
    ledger.record("s", 1, 96, 32)
    ledger.record("s", None, 0, 64)           # history below the point: not a gap being filled
    assert ledger.lost_steps == 0 and ledger.ingested_steps == 96
    ledger.record("s", 3, 160, 32)            # a gap above it still counts
    assert ledger.lost_steps == 32
