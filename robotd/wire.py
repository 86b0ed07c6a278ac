"""Wire format: the single definition of every message exchanged between robotd processes.

A message is a list of ZeroMQ frames, and nothing received is ever unpickled:

* frame 0 -- fixed header ``HEADER`` (16 bytes, little-endian): magic ``b"RBTD"``
  (4 bytes), protocol version (uint16), message kind (uint8), pad byte,
  meta length in bytes (uint32), number of array frames (uint32).
* frame 1 -- UTF-8 JSON object ("meta") holding the message's scalar fields.
  The reserved key ``"_arrays"`` lists ``[name, dtype_str, shape]`` for each
  array frame, in frame order; ``dtype_str`` is one of ``WIRE_DTYPES``.
* frames 2.. -- one raw C-contiguous little-endian buffer per array.

Beyond the field table below, an ACT carries a 1-D float32 array ``"action"``
and every array of a CHUNK has ``n_steps`` rows (``n_steps >= 0``).

Every meta field of every kind is defined once, in ``FIELDS`` (kind -> name -> ``Field``): its
type, whether it is required, and for numbers its range. Both encode and decode check every
defined field that is present (and that the required ones are); bool never stands in for int,
an int may stand in for a float. Fields not in the table are carried but never read.
Per kind (``?`` marks an optional field):
"""

from __future__ import annotations

import enum
import json
import logging
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

PROTOCOL_VERSION: int = 1
MAGIC = b"RBTD"
HEADER = struct.Struct("<4sHBxII")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_NDIM = 8

# Wire dtype strings are numpy's little-endian ``dtype.str``; anything else
# (object, void, structured, big-endian, string) is refused on both sides.
WIRE_DTYPES: dict[str, np.dtype] = {
    np.dtype(name).newbyteorder("<").str: np.dtype(name).newbyteorder("<")
    for name in (
        "bool", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
}

_ARRAYS_KEY = "_arrays"
_ACTION_DTYPE = np.dtype("<f4")
# Remote-controlled values are shown truncated so an error stays one short line.
_MAX_SHOWN_CHARS = 60
_LOG_FIRST_MALFORMED = 10
_LOG_EVERY_MALFORMED = 100

_log = logging.getLogger("robotd.wire")


class Kind(enum.IntEnum):
    """Message kind, carried as one byte in the header."""

    HELLO = 1
    OBS = 2
    ACT = 3
    STOP = 4
    BYE = 5
    CHUNK = 6
    ACK = 7
    HEARTBEAT = 8
    WEIGHTS = 9
    STATUS = 10
    REFUSE = 11


@dataclass(frozen=True)
class Field:
    """One meta field: its type (a tuple for "one of"), whether every message of its kind has it, and the
    inclusive range of a number (None: unbounded on that side)."""

    type: type | tuple[type, ...]
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(t.__name__ for t in types)


def _req(field_type, minimum=None, maximum=None) -> Field:
    return Field(field_type, required=True, minimum=minimum, maximum=maximum)


def _opt(field_type, minimum=None, maximum=None) -> Field:
    return Field(field_type, required=False, minimum=minimum, maximum=maximum)


_NUMBER = (int, float)

FIELDS: dict[Kind, dict[str, Field]] = {
    # Sent by the actor to the daemon and to the learner, and answered by each with its own fields.
    Kind.HELLO: {"role": _req(str), "session": _req(str),
                 "actor_id": _opt(str), "config_digest": _opt(str), "stream": _opt(str),
                 "acked_through": _opt(int, 0), "previous_streams": _opt(dict), "spec": _opt(dict),
                 "action_discrete": _opt(bool),
                 # the daemon's answer
                 "robot": _opt(str), "action_dim": _opt(int, 1, 4096), "rate_hz": _opt(_NUMBER, 0.0),
                 "reading_spec": _opt(dict), "robot_name": _opt(str), "cameras": _opt(list), "pacing": _opt(str),
                 # the learner's answer
                 "instance": _opt(str), "weights_port": _opt(int, 1, 65535), "history_steps": _opt(int, 0)},
    Kind.OBS: {"tick": _req(int, 0), "t_tick_ns": _req(int), "devices": _opt(dict), "prev": _opt(dict),
               "robot_status": _opt(dict)},
    Kind.ACT: {"tick": _req(int, 0), "policy_version": _req(int, 0), "reset": _opt(bool)},
    Kind.STOP: {"reason": _req(str)},
    Kind.BYE: {"reason": _req(str)},
    Kind.CHUNK: {"actor_id": _req(str), "episode_id": _req(int, 0), "seq": _req(int, 0),
                 "n_steps": _req(int, 0), "stream": _opt(str), "stream_step": _req(int, 0), "exclude": _opt(dict)},
    Kind.ACK: {"seq": _req(int, 0), "stream": _opt(str)},
    # From the actor (alive while it holds a lockstep simulation), the learner (alive) or the daemon (resetting).
    Kind.HEARTBEAT: {"actor_id": _opt(str), "instance": _opt(str), "resetting": _opt(bool)},
    Kind.WEIGHTS: {"version": _req(int, 0), "replayed_steps": _req(int, 0), "published_at": _opt(_NUMBER)},
    # Its "counters" are checked one by one against the sender's table in robotd.status (a malformed status is
    # counted under its sender there).
    Kind.STATUS: {"process": _req(str)},
    Kind.REFUSE: {"reason": _req(str), "code": _opt(str)},
}

# The required fields alone, {kind: {name: type}}.
REQUIRED_FIELDS: dict[Kind, dict[str, type]] = {
    kind: {name: field.type for name, field in fields.items() if field.required} for kind, fields in FIELDS.items()
}

# "or" keeps the import working under python -OO, which strips docstrings.
__doc__ = (__doc__ or "") + "\n".join(
    f"* {kind.name}: "
    + (", ".join(f"{name}{'' if field.required else '?'} ({field.type_name()})" for name, field in fields.items())
       or "(none)")
    for kind, fields in FIELDS.items()
) + "\n"


class WireError(ValueError):
    """A received message is malformed; the text is a one-line reason naming the problem."""


@dataclass
class Message:
    """A decoded message: its kind, scalar fields (without ``_arrays``) and arrays."""

    kind: Kind
    meta: dict
    arrays: dict[str, np.ndarray]


def shown(value: object) -> str:
    """``repr(value)`` cut short enough for a one-line error (the value came from another process)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):          # an integer too long to print, or nesting too deep
        text = f"<{type(value).__name__}>"
    if len(text) > _MAX_SHOWN_CHARS:
        return text[:_MAX_SHOWN_CHARS] + "..."
    return text


def _is_type(value: object, field_type: type | tuple[type, ...]) -> bool:
    """Return whether ``value`` is a ``field_type`` (or one of them), never counting bool as int or int as bool."""
    types = field_type if isinstance(field_type, tuple) else (field_type,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, tuple(t for t in types if t is not bool))


def _schema_problem(kind: Kind, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> str | None:
    """Return why ``meta``/``arrays`` do not satisfy ``kind``'s rules, or None when they do."""
    for name, field in FIELDS[kind].items():
        if name not in meta:
            if field.required:
                return f"{kind.name} meta field {name!r} is missing"
            continue
        value = meta[name]
        if not _is_type(value, field.type):
            return (
                f"{kind.name} meta field {name!r} is {shown(value)} "
                f"({type(value).__name__}), expected {field.type_name()}"
            )
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            low = field.minimum if field.minimum is not None else -math.inf
            high = field.maximum if field.maximum is not None else math.inf
            if not low <= value <= high:
                bounds = f">= {field.minimum:g}" if field.maximum is None else f"in [{low:g}, {high:g}]"
                return f"{kind.name} meta field {name!r} is {shown(value)}, expected {bounds}"
        elif isinstance(value, float):
            return f"{kind.name} meta field {name!r} is NaN, expected a number"
    if kind is Kind.ACT:
        action = arrays.get("action")
        if action is None:
            return "ACT has no 'action' array"
        if action.dtype != _ACTION_DTYPE or action.ndim != 1:
            return f"ACT array 'action' is {action.dtype} with shape {action.shape}, expected 1-D float32"
    if kind is Kind.CHUNK:
        n_steps = meta["n_steps"]
        for name, array in arrays.items():
            if array.ndim == 0 or array.shape[0] != n_steps:
                return (
                    f"CHUNK array {shown(name)} has shape {array.shape}, expected {n_steps} rows (n_steps)"
                )
    return None


def _wire_array(name: object, value: object, kind: Kind) -> np.ndarray:
    """Return ``value`` as a C-contiguous little-endian whitelisted array, copying only when needed."""
    if not isinstance(name, str):
        raise ValueError(
            f"wire: cannot encode {kind.name}: array name {shown(name)} is not a str; use a str key"
        )
    array = np.asarray(value)
    wire_dtype = array.dtype.newbyteorder("<")
    if wire_dtype.str not in WIRE_DTYPES:
        raise ValueError(
            f"wire: cannot encode {kind.name}: array {name!r} has dtype {array.dtype}, "
            f"not one of bool/intN/uintN/float16/32/64; convert it first"
        )
    if array.ndim > MAX_NDIM:
        raise ValueError(
            f"wire: cannot encode {kind.name}: array {name!r} has {array.ndim} dimensions "
            f"(at most {MAX_NDIM}); reshape it first"
        )
    # asarray, unlike ascontiguousarray, keeps 0-d arrays 0-d.
    return np.asarray(array, dtype=wire_dtype, order="C")


def encode(kind: Kind, meta: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> list:
    """Return the frames of one message, for ``socket.send_multipart(frames, copy=False)``.

    Array frames are views of the caller's arrays whenever they are already
    C-contiguous little-endian, so do not modify them until the send completes.
    Raises ValueError when the local input cannot form a valid message.
    """
    kind = Kind(kind)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"wire: cannot encode {kind.name}: meta is a {type(meta).__name__}, expected a dict")
    if _ARRAYS_KEY in meta:
        raise ValueError(
            f"wire: cannot encode {kind.name}: meta key {_ARRAYS_KEY!r} is reserved; rename the field"
        )
    wire_arrays = {name: _wire_array(name, value, kind) for name, value in (arrays or {}).items()}
    problem = _schema_problem(kind, meta, wire_arrays)
    if problem is not None:
        raise ValueError(f"wire: cannot encode: {problem}; fix the caller")
    descriptors = [[name, array.dtype.str, list(array.shape)] for name, array in wire_arrays.items()]
    try:
        meta_bytes = json.dumps({**meta, _ARRAYS_KEY: descriptors}, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"wire: cannot encode {kind.name}: meta is not JSON-serialisable ({shown(str(exc))}); "
            f"use plain str/int/float/bool/list/dict"
        ) from None
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, len(meta_bytes), len(wire_arrays))
    # A flat uint8 view keeps 0-d and bool arrays exportable as plain bytes without copying.
    payloads = [memoryview(array.reshape(-1).view(np.uint8)) for array in wire_arrays.values()]
    return [header, meta_bytes, *payloads]


def _byte_view(frame: object, index: int) -> memoryview:
    """Return a flat byte memoryview of a frame (bytes, bytearray, memoryview, zmq.Frame, ...)."""
    try:
        view = memoryview(frame)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    except (TypeError, ValueError):
        raise WireError(
            f"wire: frame {index} is a {type(frame).__name__}, not a contiguous byte buffer; "
            f"pass bytes, memoryview or zmq.Frame"
        ) from None
    return view


def _parse_header(view: memoryview, expect: Iterable[Kind] | None) -> tuple[Kind, int, int]:
    """Validate the header frame and return (kind, meta length, number of array frames)."""
    if view.nbytes != HEADER.size:
        raise WireError(
            f"wire: header frame is {view.nbytes} bytes (expected {HEADER.size}): "
            f"truncated or not a robotd message"
        )
    magic, version, kind_value, meta_len, n_arrays = HEADER.unpack(view)
    if magic != MAGIC:
        raise WireError(f"wire: bad magic {magic!r} (expected {MAGIC!r}): not a robotd message")
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"wire: protocol version {version} not supported (this build speaks {PROTOCOL_VERSION}): "
            f"upgrade the older side"
        )
    try:
        kind = Kind(kind_value)
    except ValueError:
        raise WireError(
            f"wire: unknown message kind {kind_value} (known 1..{int(max(Kind))}): "
            f"sender speaks another protocol; upgrade the older side"
        ) from None
    if expect is not None:
        allowed = frozenset(expect)
        if kind not in allowed:
            names = ", ".join(sorted(k.name for k in allowed)) or "none"
            raise WireError(
                f"wire: unexpected {kind.name} message (expected one of {names}): peer is out of step; check its role"
            )
    return kind, meta_len, n_arrays


def _parse_meta(view: memoryview) -> dict:
    """Decode the meta frame as a UTF-8 JSON object."""
    try:
        text = str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(
            f"wire: meta frame is not valid UTF-8 (at byte {exc.start}): not a robotd message"
        ) from None
    try:
        meta = json.loads(text)
    # Deep nesting raises RecursionError and over-long integers a plain ValueError.
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WireError(
            f"wire: meta frame is not valid JSON ({shown(reason)}): not a robotd message"
        ) from None
    if not isinstance(meta, dict):
        raise WireError(
            f"wire: meta frame is a JSON {type(meta).__name__}, expected an object: not a robotd message"
        )
    return meta


def _parse_descriptor(
    index: int, descriptor: object, max_bytes: int
) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """Validate one ``_arrays`` entry and return (name, dtype, shape, byte length)."""
    if not (isinstance(descriptor, list) and len(descriptor) == 3):
        raise WireError(
            f"wire: _arrays[{index}] is {shown(descriptor)}, expected [name, dtype, shape]: fix the sender"
        )
    name, dtype_str, shape = descriptor
    if not isinstance(name, str):
        raise WireError(f"wire: _arrays[{index}] name is {shown(name)}, expected a str: fix the sender")
    if not isinstance(dtype_str, str) or dtype_str not in WIRE_DTYPES:
        raise WireError(
            f"wire: array {shown(name)} has dtype {shown(dtype_str)}, not one of {sorted(WIRE_DTYPES)}: "
            f"send only plain little-endian numeric arrays"
        )
    if not isinstance(shape, list) or not all(_is_type(dim, int) and dim >= 0 for dim in shape):
        raise WireError(
            f"wire: array {shown(name)} has shape {shown(shape)}, expected a list of non-negative ints: "
            f"fix the sender"
        )
    if len(shape) > MAX_NDIM:
        raise WireError(
            f"wire: array {shown(name)} has {len(shape)} dimensions (at most {MAX_NDIM}): reshape it before sending"
        )
    dtype = WIRE_DTYPES[dtype_str]
    # Python ints cannot overflow, so the product is exact however large the claim.
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise WireError(
            f"wire: array {shown(name)} with shape {shape} claims {nbytes} bytes, over max_bytes {max_bytes}: "
            f"send smaller chunks or raise max_bytes"
        )
    return name, dtype, tuple(shape), nbytes


def decode(
    frames: list, *, max_bytes: int = DEFAULT_MAX_BYTES, expect: Iterable[Kind] | None = None
) -> Message:
    """Validate and decode the frames of one message; raise WireError for any malformed input.

    Arrays are zero-copy views of the frames. ``expect``, when given, lists the
    kinds the caller accepts; ``max_bytes`` bounds the whole message.
    """
    if len(frames) < 2:
        raise WireError(
            f"wire: message has {len(frames)} frame(s), need at least 2 (header, meta): "
            f"truncated or not a robotd message"
        )
    views = [_byte_view(frame, index) for index, frame in enumerate(frames)]
    kind, meta_len, n_arrays = _parse_header(views[0], expect)
    if meta_len != views[1].nbytes:
        raise WireError(
            f"wire: header says meta is {meta_len} bytes but the meta frame is {views[1].nbytes}: truncated message"
        )
    if n_arrays != len(views) - 2:
        raise WireError(
            f"wire: header says {n_arrays} array frames but {len(views) - 2} arrived: truncated message"
        )
    total_bytes = sum(view.nbytes for view in views)
    if total_bytes > max_bytes:
        raise WireError(
            f"wire: {kind.name} message is {total_bytes} bytes, over max_bytes {max_bytes}: "
            f"send smaller chunks or raise max_bytes"
        )
    meta = _parse_meta(views[1])
    descriptors = meta.pop(_ARRAYS_KEY, [])
    if not isinstance(descriptors, list) or len(descriptors) != n_arrays:
        raise WireError(
            f"wire: meta {_ARRAYS_KEY!r} is {shown(descriptors)}, expected a list of {n_arrays} descriptors: "
            f"fix the sender"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, descriptor in enumerate(descriptors):
        name, dtype, shape, nbytes = _parse_descriptor(index, descriptor, max_bytes)
        if name in arrays:
            raise WireError(f"wire: duplicate array name {shown(name)}: fix the sender")
        view = views[index + 2]
        if view.nbytes != nbytes:
            raise WireError(
                f"wire: array {shown(name)} ({dtype.name}, shape {list(shape)}) needs {nbytes} bytes "
                f"but its frame is {view.nbytes}: truncated or corrupt message"
            )
        arrays[name] = np.frombuffer(view, dtype=dtype).reshape(shape)
    problem = _schema_problem(kind, meta, arrays)
    if problem is not None:
        raise WireError(f"wire: {problem}: fix the sender")
    return Message(kind=kind, meta=meta, arrays=arrays)


def send(socket, kind: Kind, meta: dict | None = None, arrays: dict[str, np.ndarray] | None = None, *,
         flags: int = 0) -> None:
    """Encode and send one message on ``socket`` without copying array payloads."""
    socket.send_multipart(encode(kind, meta, arrays), copy=False, flags=flags)


def send_to(socket, identity: bytes, kind: Kind, meta: dict | None = None,
            arrays: dict[str, np.ndarray] | None = None, *, flags: int = 0) -> None:
    """Send one message from a ROUTER socket to the peer with routing ``identity``."""
    socket.send_multipart([identity, *encode(kind, meta, arrays)], copy=False, flags=flags)


def recv(socket, *, max_bytes: int = DEFAULT_MAX_BYTES, expect: Iterable[Kind] | None = None,
         flags: int = 0) -> Message:
    """Receive and decode one message; raises WireError if it is malformed."""
    # copy=False lets decoded arrays view ZeroMQ's buffers instead of fresh bytes copies.
    frames = socket.recv_multipart(flags=flags, copy=False)
    return decode(frames, max_bytes=max_bytes, expect=expect)


def recv_from(socket, *, max_bytes: int = DEFAULT_MAX_BYTES, expect: Iterable[Kind] | None = None,
              flags: int = 0) -> tuple[bytes, Message]:
    """Receive one message on a ROUTER socket; return (peer identity, message).

    Raises WireError if the message is malformed.
    """
    frames = socket.recv_multipart(flags=flags, copy=False)
    identity = bytes(_byte_view(frames[0], 0))
    return identity, decode(frames[1:], max_bytes=max_bytes, expect=expect)


class Receiver:
    """Wraps decode for a process: counts and logs (logging.getLogger("robotd.wire")) every malformed message.

    A malformed message yields None instead of an exception, so no process crashes on bad input.
    """

    def __init__(self, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Create a receiver labelled ``name`` in log lines, accepting messages up to ``max_bytes``."""
        self.name = name
        self.max_bytes = max_bytes
        self.malformed = 0

    def decode(self, frames: list, expect: Iterable[Kind] | None = None) -> Message | None:
        """Return the decoded message, or None (counted, and logged unless flooding) if it is malformed."""
        try:
            return decode(frames, max_bytes=self.max_bytes, expect=expect)
        except WireError as exc:
            self.malformed += 1
            if self.malformed <= _LOG_FIRST_MALFORMED or self.malformed % _LOG_EVERY_MALFORMED == 0:
                _log.warning("receiver %s dropped malformed message #%d: %s", self.name, self.malformed, exc)
            return None
