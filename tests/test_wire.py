"""Specification of the robotd wire format: round trips, validation and robustness."""

from __future__ import annotations

import json
import logging
import pickle
import struct
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robotd import wire
from robotd.wire import Kind, Message, Receiver, WireError

HEADER_FORMAT = "<4sHBxII"
RECV_TIMEOUT_MS = 2000
N_STEPS = 3

VALID_META = {
    Kind.HELLO: {"role": "actor", "session": "s-1"},
    Kind.OBS: {"tick": 5, "t_tick_ns": 123_456_789_000},
    Kind.ACT: {"tick": 5, "policy_version": 2},
    Kind.STOP: {"reason": "operator"},
    Kind.BYE: {"reason": "done"},
    Kind.CHUNK: {"actor_id": "a0", "episode_id": 7, "seq": 3, "n_steps": N_STEPS, "stream_step": 96},
    Kind.ACK: {"seq": 3},
    Kind.HEARTBEAT: {},
    Kind.WEIGHTS: {"version": 9, "replayed_steps": 4096},
    Kind.STATUS: {"process": "learner"},
    Kind.REFUSE: {"reason": "busy"},
}

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "float16", "float32", "float64"]


def _varied_arrays(kind: Kind) -> dict[str, np.ndarray]:
    """Arrays of every wire dtype and several shapes that ``kind`` accepts."""
    rng = np.random.default_rng(0)
    lead = (N_STEPS,) if kind is Kind.CHUNK else ()
    arrays = {
        f"a_{name}": (rng.random(lead + (2, 3)) * 100).astype(name) for name in DTYPES
    }
    arrays["empty"] = np.zeros(lead + (0,), dtype=np.float32)
    arrays["wide"] = np.arange(int(np.prod(lead + (1, 2, 1, 2, 1, 2, 1)))).reshape(lead + (1, 2, 1, 2, 1, 2, 1))
    if kind is not Kind.CHUNK:
        arrays["scalar"] = np.array(2.5)
        arrays["zero_rows"] = np.zeros((0, 4), dtype=np.uint8)
    if kind is Kind.ACT:
        arrays["action"] = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    return arrays


def _as_bytes(frames: list) -> list[bytes]:
    """Frames as independent bytes objects, the way a peer would receive them."""
    return [bytes(memoryview(frame)) for frame in frames]


def _valid_frames(kind: Kind = Kind.OBS, **meta_overrides) -> list[bytes]:
    """Frames of a valid message of ``kind``."""
    return _as_bytes(wire.encode(kind, {**VALID_META[kind], **meta_overrides}, _varied_arrays(kind)))


def _craft(kind: int = Kind.HEARTBEAT, meta: object = None, arrays: list | None = None, *, magic: bytes = b"RBTD",
           version: int = 1, meta_bytes: bytes | None = None, meta_len: int | None = None,
           n_arrays: int | None = None) -> list[bytes]:
    """Hand-build frames; ``arrays`` is a list of (descriptor, payload) and any field can be forged."""
    arrays = arrays or []
    if meta is None:
        meta = dict(VALID_META.get(kind, {}))
    if arrays and isinstance(meta, dict):
        meta = {**meta, "_arrays": [descriptor for descriptor, _ in arrays]}
    body = json.dumps(meta).encode() if meta_bytes is None else meta_bytes
    header = struct.pack(HEADER_FORMAT, magic, version, int(kind), len(body) if meta_len is None else meta_len,
                         len(arrays) if n_arrays is None else n_arrays)
    return [header, body, *[payload for _, payload in arrays]]


def _assert_same(message: Message, kind: Kind, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Assert ``message`` carries exactly ``kind``, ``meta`` and ``arrays`` (dtype, shape and values)."""
    assert message.kind is kind
    assert message.meta == meta
    assert list(message.arrays) == list(arrays)
    for name, expected in arrays.items():
        got = message.arrays[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def context():
    """A private ZeroMQ context, torn down after the test."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def pair(context):
    """Two connected PAIR sockets over inproc."""
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    for sock in (a, b):
        sock.rcvtimeo = RECV_TIMEOUT_MS
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    return a, b


@pytest.fixture
def dealer_router(context):
    """A DEALER connected to a ROUTER over tcp on a random loopback port."""
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.rcvtimeo = RECV_TIMEOUT_MS
    dealer.setsockopt(zmq.IDENTITY, b"actor-0")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return dealer, router


# --- layout --------------------------------------------------------------------------------


def test_header_is_sixteen_little_endian_bytes_with_magic_version_kind_lengths():
    frames = wire.encode(Kind.ACK, {"seq": 1}, {"x": np.zeros(2, np.uint8)})
    magic, version, kind, meta_len, n_arrays = struct.unpack(HEADER_FORMAT, frames[0])
    assert len(frames[0]) == 16 == wire.HEADER.size
    assert (magic, version, kind) == (b"RBTD", wire.PROTOCOL_VERSION, Kind.ACK)
    assert meta_len == len(frames[1]) and n_arrays == 1 == len(frames) - 2


def test_meta_frame_is_json_with_array_descriptors_in_frame_order():
    frames = wire.encode(Kind.ACK, {"seq": 1}, {"b": np.zeros((2, 3), np.float32), "a": np.zeros((), np.int16)})
    assert json.loads(bytes(frames[1])) == {"seq": 1, "_arrays": [["b", "<f4", [2, 3]], ["a", "<i2", []]]}


def test_protocol_version_is_one():
    assert wire.PROTOCOL_VERSION == 1


def test_required_fields_table_covers_every_kind_and_is_in_the_module_docs():
    assert set(wire.REQUIRED_FIELDS) == set(Kind)
    assert set(wire.FIELDS) == set(Kind)
    assert "CHUNK: actor_id (str), episode_id (int), seq (int), n_steps (int), stream? (str)" in wire.__doc__


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_kind_round_trips_over_pair_socket(pair, kind):
    a, b = pair
    arrays = _varied_arrays(kind)
    wire.send(a, kind, VALID_META[kind], arrays)
    _assert_same(wire.recv(b), kind, VALID_META[kind], arrays)


def test_dealer_router_round_trip_carries_identity_both_ways(dealer_router):
    dealer, router = dealer_router
    wire.send(dealer, Kind.HELLO, {"role": "actor", "session": "s-1", "extra": [1, {"x": None}]})
    identity, hello = wire.recv_from(router, expect=[Kind.HELLO])
    assert identity == b"actor-0"
    assert hello.meta == {"role": "actor", "session": "s-1", "extra": [1, {"x": None}]}
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    wire.send_to(router, identity, Kind.WEIGHTS, {"version": 4, "replayed_steps": 0}, weights)
    _assert_same(wire.recv(dealer, expect=[Kind.WEIGHTS]), Kind.WEIGHTS, {"version": 4, "replayed_steps": 0}, weights)


def test_message_without_arrays_round_trips_with_empty_arrays(pair):
    a, b = pair
    wire.send(a, Kind.HEARTBEAT)
    assert wire.recv(b) == Message(kind=Kind.HEARTBEAT, meta={}, arrays={})


def test_chunk_with_zero_steps_round_trips():
    meta = {**VALID_META[Kind.CHUNK], "n_steps": 0}
    arrays = {"image": np.zeros((0, 4, 4, 3), np.uint8), "reward": np.zeros(0, np.float32)}
    _assert_same(wire.decode(wire.encode(Kind.CHUNK, meta, arrays)), Kind.CHUNK, meta, arrays)


def test_decode_accepts_bytes_bytearray_memoryview_and_zmq_frames():
    frames = _valid_frames(Kind.ACK)
    for convert in (bytes, bytearray, memoryview, zmq.Frame):
        assert wire.decode([convert(frame) for frame in frames]).meta == VALID_META[Kind.ACK]


def test_encode_makes_non_contiguous_arrays_contiguous():
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    arrays = {"strided": base[:, ::2], "fortran": np.asfortranarray(base), "transposed": base.T}
    _assert_same(wire.decode(_as_bytes(wire.encode(Kind.ACK, {"seq": 0}, arrays))), Kind.ACK, {"seq": 0}, arrays)


def test_encode_sends_big_endian_arrays_as_little_endian_with_same_values():
    big = np.arange(5, dtype=">f8")
    message = wire.decode(_as_bytes(wire.encode(Kind.ACK, {"seq": 0}, {"x": big})))
    assert message.arrays["x"].dtype.str == "<f8"
    np.testing.assert_array_equal(message.arrays["x"], big)


def test_encode_does_not_copy_contiguous_array_payloads():
    images = np.zeros((64, 64, 64, 3), np.uint8)
    frames = wire.encode(Kind.CHUNK, {**VALID_META[Kind.CHUNK], "n_steps": 64}, {"image": images})
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), images)


def test_decoded_arrays_view_the_received_frame_without_copying():
    frames = _valid_frames(Kind.ACK)
    message = wire.decode(frames)
    assert np.shares_memory(message.arrays["a_uint8"], np.frombuffer(frames[2 + DTYPES.index("uint8")], np.uint8))


def test_decoding_a_64_step_image_chunk_takes_well_under_a_millisecond():
    n_steps = 64
    arrays = {
        "image": np.zeros((n_steps, 64, 64, 3), np.uint8),
        "action": np.zeros((n_steps, 6), np.float32),
        "reward": np.zeros(n_steps, np.float32),
        "is_first": np.zeros(n_steps, bool),
        "tick": np.arange(n_steps, dtype=np.int64),
    }
    frames = _as_bytes(wire.encode(Kind.CHUNK, {**VALID_META[Kind.CHUNK], "n_steps": n_steps}, arrays))
    durations_s = []
    for _ in range(50):
        start = time.perf_counter()
        wire.decode(frames)
        durations_s.append(time.perf_counter() - start)
    assert sorted(durations_s)[len(durations_s) // 2] < 0.5e-3


# --- encode refuses bad local input ----------------------------------------------------------


@pytest.mark.parametrize("value", [
    np.array([1 + 2j]), np.array(["text"]), np.array([object()]), np.zeros(2, dtype=[("a", "f4")]),
    np.zeros(2, dtype="datetime64[ns]"),
], ids=["complex", "str", "object", "structured", "datetime"])
def test_encode_refuses_dtypes_outside_the_whitelist(value):
    with pytest.raises(ValueError, match="dtype"):
        wire.encode(Kind.ACK, {"seq": 0}, {"x": value})


def test_encode_refuses_non_str_array_names():
    with pytest.raises(ValueError, match="array name 3"):
        wire.encode(Kind.ACK, {"seq": 0}, {3: np.zeros(1)})


def test_encode_refuses_more_than_eight_dimensions():
    with pytest.raises(ValueError, match="9 dimensions"):
        wire.encode(Kind.ACK, {"seq": 0}, {"x": np.zeros((1,) * 9)})


def test_encode_refuses_reserved_arrays_key_in_meta():
    with pytest.raises(ValueError, match="_arrays"):
        wire.encode(Kind.ACK, {"seq": 0, "_arrays": []})


def test_encode_refuses_meta_that_is_not_json_serialisable():
    with pytest.raises(ValueError, match="JSON"):
        wire.encode(Kind.ACK, {"seq": 0, "when": object()})


def test_encode_refuses_messages_missing_required_fields():
    with pytest.raises(ValueError, match="'policy_version' is missing"):
        wire.encode(Kind.ACT, {"tick": 1}, {"action": np.zeros(2, np.float32)})


def test_encode_refuses_unknown_kind():
    with pytest.raises(ValueError):
        wire.encode(99)


# --- decode refuses malformed input ----------------------------------------------------------


def _descriptor_case(descriptor, payload=b""):
    return _craft(Kind.ACK, arrays=[(descriptor, payload)])


MALFORMED = {
    "no frames": ([], "0 frame(s), need at least 2"),
    "header only": (_craft()[:1], "1 frame(s), need at least 2"),
    "short header": ([_craft()[0][:-1], _craft()[1]], "header frame is 15 bytes (expected 16)"),
    "long header": ([_craft()[0] + b"\0", _craft()[1]], "header frame is 17 bytes (expected 16)"),
    "bad magic": (_craft(magic=b"XXXX"), "bad magic b'XXXX' (expected b'RBTD')"),
    "future version": (_craft(version=7), "protocol version 7 not supported (this build speaks 1)"),
    "kind zero": (_craft(kind=0), "unknown message kind 0"),
    "kind 200": (_craft(kind=200), "unknown message kind 200"),
    "meta length mismatch": (_craft(meta_len=3), "header says meta is 3 bytes but the meta frame is 2"),
    "meta not utf-8": (_craft(meta_bytes=b'{"a": "\xff"}'), "not valid UTF-8"),
    "meta not json": (_craft(meta_bytes=b"{nope"), "not valid JSON"),
    "meta deeply nested": (_craft(meta_bytes=b"[" * 100_000), "not valid JSON"),
    "meta huge integer": (_craft(meta_bytes=b'{"seq": ' + b"9" * 5000 + b"}"), "not valid JSON"),
    "meta is a list": (_craft(meta=[1, 2]), "meta frame is a JSON list, expected an object"),
    "meta is a string": (_craft(meta="hello"), "meta frame is a JSON str, expected an object"),
    "more array frames than header": (_craft(Kind.ACK, n_arrays=0) + [b"x"],
                                      "header says 0 array frames but 1 arrived"),
    "fewer array frames than header": (_craft(Kind.ACK, n_arrays=2), "header says 2 array frames but 0 arrived"),
    "descriptors fewer than frames": (_craft(Kind.ACK, meta_bytes=b'{"seq":1}', n_arrays=1) + [b""],
                                      "'_arrays' is [], expected a list of 1 descriptors"),
    "descriptors not a list": (_craft(Kind.ACK, meta={"seq": 1, "_arrays": {"x": 1}}),
                               "'_arrays' is {'x': 1}, expected a list of 0 descriptors"),
    "descriptor not a list": (_descriptor_case("x"), "_arrays[0] is 'x', expected [name, dtype, shape]"),
    "descriptor too short": (_descriptor_case(["x", "<f4"]), "expected [name, dtype, shape]"),
    "name not str": (_descriptor_case([5, "<f4", []], b"\0" * 4), "_arrays[0] name is 5, expected a str"),
    "dtype not str": (_descriptor_case(["x", 4, [1]], b"\0" * 4), "array 'x' has dtype 4"),
    "object dtype": (_descriptor_case(["x", "|O", [1]], b"\0" * 8), "array 'x' has dtype '|O'"),
    "void dtype": (_descriptor_case(["x", "|V4", [1]], b"\0" * 4), "array 'x' has dtype '|V4'"),
    "big-endian dtype": (_descriptor_case(["x", ">f4", [1]], b"\0" * 4), "array 'x' has dtype '>f4'"),
    "complex dtype": (_descriptor_case(["x", "<c8", [1]], b"\0" * 8), "array 'x' has dtype '<c8'"),
    "shape not list": (_descriptor_case(["x", "<f4", 3], b"\0" * 12), "array 'x' has shape 3"),
    "negative dim": (_descriptor_case(["x", "<f4", [-1]]), "array 'x' has shape [-1]"),
    "float dim": (_descriptor_case(["x", "<f4", [1.0]], b"\0" * 4), "array 'x' has shape [1.0]"),
    "bool dim": (_descriptor_case(["x", "<f4", [True]], b"\0" * 4), "array 'x' has shape [True]"),
    "nine dims": (_descriptor_case(["x", "|u1", [1] * 9], b"\0"), "array 'x' has 9 dimensions (at most 8)"),
    "duplicate names": (_craft(Kind.ACK, arrays=[(["x", "|u1", [1]], b"\0"), (["x", "|u1", [1]], b"\0")]),
                        "duplicate array name 'x'"),
    "frame too short": (_descriptor_case(["x", "<f4", [2]], b"\0" * 7),
                        "array 'x' (float32, shape [2]) needs 8 bytes but its frame is 7"),
    "frame too long": (_descriptor_case(["x", "<f4", [2]], b"\0" * 9), "needs 8 bytes but its frame is 9"),
    "shape overflows": (_descriptor_case(["x", "<f8", [2**40, 2**40, 2**40]]), "over max_bytes"),
    "act without action": (_craft(Kind.ACT), "ACT has no 'action' array"),
    "act action float64": (_craft(Kind.ACT, arrays=[(["action", "<f8", [1]], b"\0" * 8)]),
                           "ACT array 'action' is float64 with shape (1,), expected 1-D float32"),
    "act action 2-d": (_craft(Kind.ACT, arrays=[(["action", "<f4", [1, 1]], b"\0" * 4)]),
                       "ACT array 'action' is float32 with shape (1, 1), expected 1-D float32"),
    "chunk rows differ from n_steps": (_craft(Kind.CHUNK, arrays=[(["r", "<f4", [2]], b"\0" * 8)]),
                                       "CHUNK array 'r' has shape (2,), expected 3 rows (n_steps)"),
    "chunk 0-d array": (_craft(Kind.CHUNK, arrays=[(["r", "<f4", []], b"\0" * 4)]),
                        "CHUNK array 'r' has shape (), expected 3 rows"),
    "chunk negative n_steps": (_craft(Kind.CHUNK, meta={**VALID_META[Kind.CHUNK], "n_steps": -1}),
                               "'n_steps' is -1, expected >= 0"),
}


@pytest.mark.parametrize("frames, reason", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_rejects_malformed_message_with_one_line_reason(frames, reason):
    with pytest.raises(WireError) as caught:
        wire.decode(frames)
    text = str(caught.value)
    assert reason in text
    assert text.startswith("wire: ") and "\n" not in text and len(text) < 300


def test_decode_rejects_kind_not_in_expect():
    with pytest.raises(WireError, match=r"unexpected OBS message \(expected one of ACT, STOP\)"):
        wire.decode(_valid_frames(Kind.OBS), expect=[Kind.ACT, Kind.STOP])


def test_decode_rejects_frames_that_are_not_byte_buffers():
    with pytest.raises(WireError, match="frame 1 is a str"):
        wire.decode([_craft()[0], "{}"])


REQUIRED = [(kind, field) for kind, fields in wire.REQUIRED_FIELDS.items() for field in fields]


@pytest.mark.parametrize("kind, field", REQUIRED, ids=[f"{k.name}-{f}" for k, f in REQUIRED])
def test_decode_rejects_missing_required_field_naming_it(kind, field):
    meta = {key: value for key, value in VALID_META[kind].items() if key != field}
    with pytest.raises(WireError, match=f"{kind.name} meta field '{field}' is missing"):
        wire.decode(_craft(kind, meta=meta))


@pytest.mark.parametrize("kind, field", REQUIRED, ids=[f"{k.name}-{f}" for k, f in REQUIRED])
def test_decode_rejects_required_field_of_wrong_type_naming_it(kind, field):
    wrong = [True, 1.0, "3"] if wire.REQUIRED_FIELDS[kind][field] is int else [3, False, None]
    for value in wrong:
        with pytest.raises(WireError, match=f"{kind.name} meta field '{field}' is .* expected"):
            wire.decode(_craft(kind, meta={**VALID_META[kind], field: value}))


def test_decode_accepts_extra_meta_fields():
    frames = _craft(Kind.ACK, meta={"seq": 1, "note": "extra", "nested": {"a": [1, 2.5]}})
    assert wire.decode(frames).meta == {"seq": 1, "note": "extra", "nested": {"a": [1, 2.5]}}


# --- truncation and size limits --------------------------------------------------------------


def test_decode_rejects_chunk_whose_last_array_frame_is_truncated():
    frames = _valid_frames(Kind.CHUNK)
    with pytest.raises(WireError, match="truncated or corrupt"):
        wire.decode(frames[:-1] + [frames[-1][:-1]])


def test_decode_rejects_chunk_missing_its_last_frame():
    with pytest.raises(WireError, match="array frames but"):
        wire.decode(_valid_frames(Kind.CHUNK)[:-1])


def test_decode_rejects_truncated_meta_frame():
    frames = _valid_frames(Kind.CHUNK)
    with pytest.raises(WireError, match="meta"):
        wire.decode([frames[0], frames[1][:-5], *frames[2:]])


def test_decode_rejects_message_larger_than_max_bytes():
    frames = wire.encode(Kind.WEIGHTS, {"version": 1, "replayed_steps": 0}, {"w": np.zeros(1000, np.float32)})
    with pytest.raises(WireError, match=r"WEIGHTS message is \d+ bytes, over max_bytes 1024"):
        wire.decode(frames, max_bytes=1024)


def test_decode_rejects_array_claim_over_max_bytes_before_checking_its_frame():
    frames = _descriptor_case(["x", "|u1", [2048]])
    with pytest.raises(WireError, match="claims 2048 bytes, over max_bytes 1024"):
        wire.decode(frames, max_bytes=1024)


def test_decode_accepts_message_exactly_at_max_bytes():
    frames = _valid_frames(Kind.ACK)
    assert wire.decode(frames, max_bytes=sum(len(frame) for frame in frames)).kind is Kind.ACK


# --- never unpickles -------------------------------------------------------------------------

UNPICKLED = []


def _mark_unpickled():
    UNPICKLED.append(True)


class _Trap:
    """Pickles to a call of ``_mark_unpickled``, so unpickling it would leave a trace."""

    def __reduce__(self):
        return _mark_unpickled, ()


def test_pickle_payload_in_meta_frame_is_rejected_as_bad_json_and_never_run():
    payload = pickle.dumps(_Trap())
    with pytest.raises(WireError, match="not valid"):
        wire.decode(_craft(meta_bytes=payload))
    assert UNPICKLED == []


def test_pickle_payload_in_array_frame_is_only_raw_bytes():
    payload = pickle.dumps(_Trap())
    message = wire.decode(_descriptor_case(["x", "|u1", [len(payload)]], payload))
    assert message.arrays["x"].tobytes() == payload
    assert UNPICKLED == []


# --- receiver --------------------------------------------------------------------------------


def test_receiver_returns_message_for_valid_frames():
    receiver = Receiver("learner")
    assert receiver.decode(_valid_frames(Kind.OBS), expect=[Kind.OBS]).kind is Kind.OBS
    assert receiver.malformed == 0


def test_receiver_counts_malformed_and_returns_none(caplog):
    receiver = Receiver("learner")
    with caplog.at_level(logging.WARNING, logger="robotd.wire"):
        assert receiver.decode(_craft(magic=b"XXXX")) is None
        assert receiver.decode(_valid_frames(Kind.OBS), expect=[Kind.ACT]) is None
    assert receiver.malformed == 2
    assert "learner" in caplog.records[0].getMessage() and "bad magic" in caplog.records[0].getMessage()


def test_receiver_applies_its_max_bytes():
    receiver = Receiver("actor", max_bytes=64)
    assert receiver.decode(_valid_frames(Kind.CHUNK)) is None
    assert receiver.malformed == 1


def test_receiver_logs_first_ten_then_every_hundredth_malformed(caplog):
    receiver = Receiver("daemon")
    with caplog.at_level(logging.WARNING, logger="robotd.wire"):
        for _ in range(300):
            receiver.decode([b"junk"])
    assert receiver.malformed == 300
    assert [r.args[1] for r in caplog.records] == [*range(1, 11), 100, 200, 300]


# --- robustness against arbitrary input ------------------------------------------------------

# No example database: fuzzing must not leave files in the repository.
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_wire_error(frames) -> None:
    """Decode ``frames``; anything but success or WireError fails the test."""
    try:
        wire.decode(frames, max_bytes=1 << 20)
    except WireError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_raise_anything_but_wire_error(frames):
    _decode_or_wire_error(frames)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=200), st.lists(st.binary(max_size=32), max_size=4))
def test_valid_header_with_random_meta_bytes_never_raises_anything_but_wire_error(kind, meta_bytes, payloads):
    _decode_or_wire_error([struct.pack(HEADER_FORMAT, b"RBTD", 1, kind, len(meta_bytes), len(payloads)),
                           meta_bytes, *payloads])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)
DESCRIPTORS = st.lists(
    st.one_of(JSON_VALUES, st.tuples(st.text(max_size=4) | JSON_VALUES,
                                     st.sampled_from(sorted(wire.WIRE_DTYPES) + ["|O", ">f4", "<c8"]) | JSON_VALUES,
                                     st.lists(st.integers(-2, 4) | JSON_VALUES, max_size=10)).map(list)),
    max_size=3,
)


# Generating nested JSON is the slow part, so fewer examples keep the file fast.
@settings(FUZZ, max_examples=100)
@given(st.sampled_from(list(Kind)), st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3), DESCRIPTORS,
       st.lists(st.binary(max_size=48), max_size=3))
def test_valid_header_with_random_json_meta_never_raises_anything_but_wire_error(kind, meta, descriptors, payloads):
    meta = {**VALID_META[kind], **meta, "_arrays": descriptors}
    _decode_or_wire_error(_craft(kind, meta=meta, n_arrays=len(payloads)) + payloads)


VALID_FRAMES = {kind: _valid_frames(kind) for kind in Kind}


@FUZZ
@given(st.sampled_from(list(Kind)), st.data())
def test_corrupted_valid_message_never_raises_anything_but_wire_error(kind, data):
    frames = [bytearray(frame) for frame in VALID_FRAMES[kind]]
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(frames) - 1))
        frame = frames[index]
        action = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop"]))
        if action == "flip" and frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del frame[data.draw(st.integers(0, len(frame))):]
        elif action == "extend":
            frame.extend(data.draw(st.binary(min_size=1, max_size=8)))
        elif action == "drop":
            del frames[index]
            if not frames:
                break
    _decode_or_wire_error(frames)


OUT_OF_TABLE = {
    "negative tick": (Kind.OBS, {"tick": -1}, "OBS meta field 'tick' is -1, expected >= 0"),
    "optional of wrong type": (Kind.HELLO, {"acked_through": "12"}, r"HELLO meta field 'acked_through' is '12' \(str\)"),
    "optional bool as int": (Kind.ACT, {"reset": 1}, r"ACT meta field 'reset' is 1 \(int\), expected bool"),
    "port out of range": (Kind.HELLO, {"weights_port": 70000}, r"'weights_port' is 70000, expected in \[1, 65535\]"),
    "NaN number": (Kind.WEIGHTS, {"published_at": float("nan")}, "'published_at' is NaN"),
    "negative stream step": (Kind.CHUNK, {"stream_step": -5}, "CHUNK meta field 'stream_step' is -5, expected >= 0"),
}


@pytest.mark.parametrize("case", list(OUT_OF_TABLE))
def test_every_field_in_the_table_is_checked_when_present_required_or_not(case):
    kind, meta, message = OUT_OF_TABLE[case]
    with pytest.raises(WireError, match=message):
        wire.decode(_craft(kind, meta={**VALID_META[kind], **meta}))
    with pytest.raises(ValueError, match=message):
        wire.encode(kind, {**VALID_META[kind], **meta})


def test_an_int_stands_in_for_a_float_and_unknown_fields_are_carried():
    message = wire.decode(_craft(Kind.WEIGHTS, meta={**VALID_META[Kind.WEIGHTS], "published_at": 17, "note": "x"}))
    assert message.meta["published_at"] == 17 and message.meta["note"] == "x"
