"""Chunks over real ZeroMQ sockets: acked after storage, resent until acked, de-duplicated, nothing lost
when the learner restarts."""
import time

import numpy as np
import pytest
import zmq

from actor.spool import ChunkSpool
from actor.stream import ExperienceStream
from learner.ingest import IngestLedger, IngestServer
from learner.replay import ReplayBuffer
from robotd import steps, wire
from robotd.netutil import free_tcp_ports

SPEC = steps.step_spec({"x": ((3,), "float32")}, action_dim=2, devices=["arm"])


def make_chunk(seq: int, stream_step: int, n: int = 8, stream: str = "s0") -> list:
    arrays = {}
    for key, (shape, dtype) in SPEC.items():
        arrays[key] = np.zeros((n, *shape), dtype)
    arrays[steps.TICK] = np.arange(stream_step, stream_step + n, dtype=np.int64)
    meta = {"actor_id": "a0", "stream": stream, "episode_id": 0, "seq": seq, "n_steps": n, "stream_step": stream_step}
    return wire.encode(wire.Kind.CHUNK, meta, arrays)


HELLO = {"role": "actor", "session": "t", "actor_id": "a0", "stream": "s0", "config_digest": "d1",
         "spec": {k: [list(s), d] for k, (s, d) in SPEC.items()}}


class Learner:
    """An ingest server storing into a plain replay buffer."""

    def __init__(self, context, address, spec=None):
        self.replay = ReplayBuffer(100_000)
        self.server = IngestServer(context, address, config_digest="d1", store=self.replay.add, weights_port=1,
                                   spec=spec, on_spec=lambda s: None, max_bytes=2**24)
        self.server.start()

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
