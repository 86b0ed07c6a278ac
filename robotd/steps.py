"""The step record: the one layout shared by episode files, experience chunks and replay.

A step is a flat mapping of '/'-separated keys to per-step arrays:

- ``obs/<key>``: the observation at the tick (images uint8 HxWx3, vectors float32)
- ``action``: the policy's action after this observation, in its [-1, 1] space (a late or
  malformed one records the fallback that was applied instead)
- ``applied_action``: the command that reached the robot after the safety layer, same units
- ``reward``, ``is_first``, ``is_last``, ``is_terminal``
- ``is_success``: the task counts the state at this tick as solved (for success rates; not trained on)
- ``timing/tick``, ``timing/t_tick_ns`` (host monotonic ns), ``timing/late``, ``timing/clipped``,
  ``timing/policy_version``, ``timing/stream_step`` (index of the step in its actor's stream, the
  numbering chunks and acks use)
- ``timing/<device>/hw_time_ns``, ``host_time_ns``, ``age_ns``, ``frame_number``, ``stale``
"""
from __future__ import annotations

import numpy as np

OBS_PREFIX = "obs/"
ACTION = "action"
APPLIED_ACTION = "applied_action"
REWARD = "reward"
IS_FIRST = "is_first"
IS_LAST = "is_last"
IS_TERMINAL = "is_terminal"
IS_SUCCESS = "is_success"
TICK = "timing/tick"
T_TICK_NS = "timing/t_tick_ns"
LATE = "timing/late"
CLIPPED = "timing/clipped"
POLICY_VERSION = "timing/policy_version"
STREAM_STEP = "timing/stream_step"
DEVICE_FIELDS = {"hw_time_ns": "int64", "host_time_ns": "int64", "age_ns": "int64",
                 "frame_number": "int64", "stale": "bool"}

Spec = dict[str, tuple[tuple[int, ...], str]]


def step_spec(obs_spec: Spec, action_dim: int, devices: list[str]) -> Spec:
    """Every key of a step record with its per-step shape and dtype."""
    spec: Spec = {OBS_PREFIX + key: (tuple(shape), dtype) for key, (shape, dtype) in obs_spec.items()}
    spec[ACTION] = ((action_dim,), "float32")
    spec[APPLIED_ACTION] = ((action_dim,), "float32")
    spec[REWARD] = ((), "float32")
    for key in (IS_FIRST, IS_LAST, IS_TERMINAL, IS_SUCCESS, LATE, CLIPPED):
        spec[key] = ((), "bool")
    for key in (TICK, T_TICK_NS, POLICY_VERSION, STREAM_STEP):
        spec[key] = ((), "int64")
    for device in devices:
        for field, dtype in DEVICE_FIELDS.items():
            spec[f"timing/{device}/{field}"] = ((), dtype)
    return spec


def obs_spec_of(spec: Spec) -> Spec:
    """The observation part of a step spec, without the ``obs/`` prefix."""
    return {key[len(OBS_PREFIX):]: value for key, value in spec.items() if key.startswith(OBS_PREFIX)}


CONTEXT_KEYS = ("context_deter", "context_stoch", "context_action", "context_valid", "replay_keys")
"""Replay-context keys of a batch sampled with context (learner/replay.py), kept by ``training_batch``."""


def training_batch(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys the world model trains on, renamed (``obs/image`` -> ``image``), with any replay-context keys."""
    batch = {key[len(OBS_PREFIX):]: value for key, value in arrays.items() if key.startswith(OBS_PREFIX)}
    for key in (ACTION, REWARD, IS_FIRST, IS_LAST, IS_TERMINAL):
        batch[key] = arrays[key]
    for key in CONTEXT_KEYS:
        if key in arrays:
            batch[key] = arrays[key]
    return batch


def check_against(spec: Spec, arrays: dict[str, np.ndarray], n_steps: int) -> str | None:
    """Why ``arrays`` (n_steps of steps) do not match ``spec``, or None when they do."""
    missing = sorted(set(spec) - set(arrays))
    if missing:
        return f"missing key {missing[0]!r}"
    extra = sorted(set(arrays) - set(spec))
    if extra:
        return f"unexpected key {extra[0]!r}"
    for key, (shape, dtype) in spec.items():
        value = arrays[key]
        if value.shape != (n_steps, *shape):
            return f"key {key!r} has shape {value.shape}, expected {(n_steps, *shape)}"
        if value.dtype != np.dtype(dtype):
            return f"key {key!r} has dtype {value.dtype}, expected {dtype}"
    return None


def parse_spec(spec: object) -> Spec | None:
    """A spec received as {key: [shape, dtype]} (a hello's step spec, a daemon's reading spec per device) as
    {key: (shape tuple, dtype string)}, or None when it is malformed or names a dtype numpy does not know."""
    if not isinstance(spec, dict):
        return None
    parsed = {}
    try:
        for key, (shape, dtype) in spec.items():
            if not isinstance(key, str) or not isinstance(dtype, str) or not isinstance(shape, list) \
                    or len(shape) > 8 or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31
                                                 for n in shape):
                return None
            np.dtype(dtype)                 # a name numpy does not know raises here, not where it is used
            parsed[key] = (tuple(shape), dtype)
    except (TypeError, ValueError):
        return None
    return parsed


def spec_mismatch(expected: Spec, got: Spec) -> str | None:
    """How step spec ``got`` differs from ``expected`` (the first differing key), or None when they agree."""
    for key in sorted(set(expected) | set(got)):
        if key not in got:
            return f"key {key!r} missing"
        if key not in expected:
            return f"unexpected key {key!r}"
        if tuple(expected[key][0]) != tuple(got[key][0]) or expected[key][1] != got[key][1]:
            return f"key {key!r} is {got[key]}, expected {expected[key]}"
    return None


def uncovered(spans, start: int, end: int) -> list[tuple[int, int]]:
    """The parts of the stream-step range [start, end) outside ``spans`` (sorted, merged, half-open (lo, hi)
    pairs), in order: what a chunk adds to what a stream already has."""
    out, at = [], start
    for lo, hi in spans:
        if hi <= at:
            continue
        if lo >= end:
            break
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < end:
        out.append((at, end))
    return out
