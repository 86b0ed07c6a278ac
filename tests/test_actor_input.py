"""The actor refuses observations that do not match what its daemon promised, before changing anything."""
import re
from pathlib import Path

import numpy as np
import pytest

from actor.loop import Actor, DaemonError, parse_daemon_hello
from robotd import config as cfg
from robotd import wire

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mock_arm.yaml"
SPEC = {"arm": {"joint_pos": ((6,), "float32")}, "camera": {"image": ((4, 4, 3), "uint8")}}
TIMING = {"hw_time_ns": 1, "host_time_ns": 2, "age_ns": 1, "frame_number": -1, "stale": False}


@pytest.fixture
def actor(tmp_path):
    actor = Actor(cfg.load(CONFIG), logdir=str(tmp_path))
    actor.devices, actor.reading_spec, actor.action_dim = list(SPEC), SPEC, 6
    return actor


def obs(meta_changes=None, arrays_changes=None):
    meta = {"tick": 5, "t_tick_ns": 10, "prev": {"tick": 4, "late": False},
            "devices": {"arm": dict(TIMING), "camera": dict(TIMING)}}
    arrays = {"arm/joint_pos": np.zeros(6, np.float32), "camera/image": np.zeros((4, 4, 3), np.uint8),
              "prev_action": np.zeros(6, np.float32)}
    meta.update(meta_changes or {})
    arrays.update(arrays_changes or {})
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return wire.decode(wire.encode(wire.Kind.OBS, meta, arrays))


def test_a_well_formed_observation_passes(actor):
    assert actor._obs_problem(obs()) is None


@pytest.mark.parametrize("meta_changes, arrays_changes, expected", [
    ({"prev": {"late": False}}, None, "meta.prev"),          # a dict without the tick (not a dict: robotd.wire)
    ({"devices": {"arm": TIMING}}, None, "meta.devices should name"),
    ({"devices": {"arm": {"hw_time_ns": 1}, "camera": TIMING}}, None, "meta.devices.arm lacks"),
    (None, {"camera/image": None}, "array camera/image missing"),
    (None, {"arm/joint_pos": np.zeros(7, np.float32)}, "array arm/joint_pos"),
    (None, {"arm/joint_pos": np.zeros(6, np.float64)}, "array arm/joint_pos"),
    (None, {"prev_action": np.zeros(2, np.float32)}, "prev_action has shape"),
])
def test_a_malformed_observation_is_named(actor, meta_changes, arrays_changes, expected):
    assert expected in actor._obs_problem(obs(meta_changes, arrays_changes))


def test_in_lockstep_a_silent_daemon_never_ends_the_episode(tmp_path):
    """A busy machine can hold the lockstep daemon's next observation for seconds: only the environment ends an
    episode there; in real time the silence of a stopped robot still does."""
    realtime = Actor(cfg.load(CONFIG), logdir=str(tmp_path))
    wait_s, ends = realtime.silence_policy()
    assert ends and wait_s == pytest.approx(max(1.0, 20 / realtime.config.control.rate_hz))
    lockstep = Actor(cfg.load(CONFIG, ["control.pacing=lockstep", "control.watchdog_s=3"]), logdir=str(tmp_path))
    wait_s, ends = lockstep.silence_policy()
    assert not ends and wait_s > 3.0


GOOD_HELLO = {"role": "daemon", "session": "s", "robot_name": "arm", "cameras": ["camera"], "action_dim": 6,
              "reading_spec": {"arm": {"joint_pos": [[6], "float32"]}, "camera": {"image": [[4, 4, 3], "uint8"]}}}


def test_a_well_formed_daemon_hello_gives_the_reading_spec():
    assert parse_daemon_hello(GOOD_HELLO) == SPEC


@pytest.mark.parametrize("changes, expected", [
    ({"reading_spec": None}, "no reading_spec"),
    ({"reading_spec": {}}, "no reading_spec"),
    ({"reading_spec": {"arm": {"joint_pos": [6, "float32"]}}}, "reading_spec for device 'arm'"),
    ({"reading_spec": {"arm": {"joint_pos": [[6], "float99"]}}}, "reading_spec for device 'arm'"),
    ({"reading_spec": {"arm": [[6], "float32"]}}, "reading_spec for device 'arm'"),
    ({"robot_name": "leg"}, "names robot 'leg'"),
    ({"robot_name": None}, "names robot None"),
    ({"cameras": ["wrist"]}, "names cameras ['wrist']"),
    ({"cameras": "camera"}, "names cameras 'camera'"),
    ({"action_dim": None}, "no action_dim"),
])
def test_a_malformed_daemon_hello_is_one_clear_error(changes, expected):
    hello = {**GOOD_HELLO, **changes}
    hello = {key: value for key, value in hello.items() if value is not None}
    with pytest.raises(DaemonError, match=re.escape(expected)) as info:
        parse_daemon_hello(hello)
    assert "\n" not in str(info.value)


def test_an_actor_whose_daemon_sends_a_malformed_hello_stops_with_that_error(tmp_path):
    """A daemon (here a ROUTER on loopback) whose hello the actor cannot build on: run() raises the one-line
    DaemonError, not a KeyError from deep inside."""
    import zmq
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    answered = []

    def serve():
        if router.poll(10_000):
            identity, *frames = router.recv_multipart()
            bad = {**GOOD_HELLO, "reading_spec": {"arm": {"joint_pos": "six floats"}}}
            wire.send_to(router, identity, wire.Kind.HELLO, bad)
            answered.append(True)

    import threading
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        actor = Actor(cfg.load(CONFIG, [f"network.control=tcp://127.0.0.1:{port}", "actor.daemon_timeout_s=10"]),
                      logdir=str(tmp_path))
        with pytest.raises(DaemonError, match=r"reading_spec for device 'arm' is not \{key: \[shape, dtype\]\}"):
            actor.run()
        assert answered
    finally:
        server.join(5)
        router.close(0)
        context.term()
