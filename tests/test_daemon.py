"""The daemon's control loop against a scripted actor over a real ZeroMQ socket."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from robotd import config as cfg
from robotd import wire
from robotd.daemon.loop import Daemon
from robotd.netutil import free_tcp_ports


def make_config(**overrides):
    (port,) = free_tcp_ports(1)
    # 10 Hz with an 80 ms deadline: an answer sent at once is in time even when a busy machine starves this
    # process (daemon thread and scripted actor share it) for a while
    items = [f"network.control=tcp://127.0.0.1:{port}", "control.rate_hz=10", "control.action_deadline_ms=80",
             "control.watchdog_s=0.5", "control.realtime=off"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return cfg.load(Path(__file__).resolve().parent.parent / "configs" / "mock_arm.yaml", items)


class Running:
    """A daemon running in a thread, and a DEALER socket playing the actor."""

    def __init__(self, config):
        self.config = config
        self.daemon = Daemon(config)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(config.network.control)

    def hello(self, digest=None):
        wire.send(self.socket, wire.Kind.HELLO, {"role": "actor", "session": "t", "actor_id": "test",
                                                  "config_digest": digest or self.config.digest()})
        return self.next_message()

    def next_message(self, timeout_ms=2000):
        assert self.socket.poll(timeout_ms), "daemon sent nothing"
        return wire.recv(self.socket)

    def next_obs(self):
        while True:
            message = self.next_message()
            if message.kind == wire.Kind.OBS:
                return message

    def act(self, obs, action, reset=False):
        wire.send(self.socket, wire.Kind.ACT, {"tick": obs.meta["tick"], "policy_version": 3, "reset": reset},
                  {"action": np.asarray(action, np.float32)})

    def close(self):
        self.daemon.stop_requested.set()
        self.thread.join(5)
        self.socket.close(0)
        self.context.term()


def wait_for_watchdog_stop(running, timeout_s=3.0):
    deadline = time.monotonic() + timeout_s
    while running.daemon.counters["watchdog_stops"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def running():
    run = Running(make_config())
    yield run
    run.close()


def test_hello_returns_the_reading_spec_and_action_size(running):
    reply = running.hello()
    assert reply.kind == wire.Kind.HELLO
    assert reply.meta["action_dim"] == 6
    assert set(reply.meta["reading_spec"]) == {"arm", "camera"}
    assert reply.meta["reading_spec"]["camera"]["image"][0] == [64, 64, 3]


def test_hello_with_another_config_is_refused_without_revealing_the_digest(running):
    reply = running.hello(digest="000000000000")
    assert reply.kind == wire.Kind.REFUSE and "config digest differs" in reply.meta["reason"]
    # a stranger learns nothing it could put in its next hello
    assert running.config.digest() not in repr(reply.meta)
    assert running.daemon.counters["refused_actors"] == 1


def test_observation_carries_device_and_host_times_and_reading_ages(running):
    running.hello()
    obs = running.next_obs()
    for device in ("arm", "camera"):
        timing = obs.meta["devices"][device]
        assert timing["hw_time_ns"] != timing["host_time_ns"]          # the mocks' clocks are offset
        assert 0 <= timing["age_ns"] < 100e6
    assert obs.arrays["camera/image"].shape == (64, 64, 3)
    assert obs.arrays["arm/joint_pos"].shape == (6,)


def test_an_action_in_time_is_applied_and_reported_back(running):
    """An action sent well inside the 80 ms deadline is applied, not the fallback. On a starved machine this
    process may read an observation late or be held before its answer goes out, so the test answers fresh
    observations (under 20 ms old by the shared monotonic clock) until one answer went out within 20 ms."""
    running.hello()
    for _ in range(20):
        obs = running.next_obs()
        if time.monotonic_ns() - obs.meta["t_tick_ns"] > 20e6:
            continue                                                      # read late: not a fair try
        running.act(obs, np.full(6, 0.5))
        answered_in_time = time.monotonic_ns() - obs.meta["t_tick_ns"] < 20e6
        following = running.next_obs()
        assert following.meta["prev"]["tick"] == obs.meta["tick"]
        if answered_in_time:
            break
    else:
        pytest.fail("no observation in 20 could be answered within 20 ms: the machine is starved beyond the test")
    assert following.meta["prev"]["late"] is False
    assert following.meta["prev"]["policy_version"] == 3
    np.testing.assert_allclose(following.arrays["prev_action"], 0.5, atol=1e-5)


def test_a_missed_deadline_applies_the_fallback_and_marks_the_step_late(running):
    running.hello()
    obs = running.next_obs()
    time.sleep(0.12)                                                      # past the 80 ms deadline
    running.act(obs, np.ones(6))
    following = running.next_obs()
    assert following.meta["prev"]["late"] is True
    np.testing.assert_array_equal(following.arrays["prev_action"], np.zeros(6))   # hold
    assert running.daemon.counters["late_steps"] >= 1


def test_an_invalid_action_is_held_by_the_safety_layer(running):
    running.hello()
    obs = running.next_obs()
    running.act(obs, [np.nan, 0, 0, 0, 0, 0])
    following = running.next_obs()
    assert following.meta["prev"]["clipped"] is True
    np.testing.assert_array_equal(following.arrays["prev_action"], np.zeros(6))


def test_a_silent_actor_brings_the_robot_to_a_safe_stop(running):
    running.hello()
    running.next_obs()
    wait_for_watchdog_stop(running)
    assert running.daemon.counters["watchdog_stops"] == 1
    while running.socket.poll(50):                                       # drain what was sent before the stop
        running.socket.recv_multipart()
    time.sleep(0.1)
    assert not running.socket.poll(100), "the daemon kept sending observations to a dead actor"


def test_a_reset_request_resets_the_robot_and_is_reported(running):
    running.hello()
    obs = running.next_obs()
    running.act(obs, np.zeros(6), reset=True)
    following = running.next_obs()
    assert following.meta["prev"]["reset_done"] is True
    assert running.daemon.counters["resets"] == 1


def test_malformed_messages_are_counted_and_the_loop_goes_on(running):
    running.hello()
    running.socket.send_multipart([b"junk", b"more junk"])
    obs = running.next_obs()
    running.act(obs, np.zeros(6))
    assert running.next_obs().meta["prev"]["late"] is False
    assert running.daemon.receiver.malformed >= 1


def test_an_actor_that_says_hello_again_after_a_watchdog_stop_is_served_again(running):
    running.hello()
    running.next_obs()
    wait_for_watchdog_stop(running)
    while running.socket.poll(50):
        running.socket.recv_multipart()
    assert running.hello().kind == wire.Kind.HELLO
    obs = running.next_obs()
    running.act(obs, np.zeros(6))
    assert running.next_obs().meta["prev"]["late"] is False


def test_a_long_reset_runs_outside_the_control_tick_with_heartbeats_and_no_watchdog_stop():
    # The reset takes 3x the watchdog (a real arm's move home): the loop goes on ticking, the actor hears heartbeats
    # instead of observations, the watchdog does not fire, and the first observation after it reports the reset.
    run = Running(make_config(**{"robot.args": "{reset_s: 1.5}"}))
    try:
        run.hello()
        obs = run.next_obs()
        run.act(obs, np.zeros(6), reset=True)
        ticks_before = run.daemon.counters["ticks"]
        beats, started = 0, time.monotonic()
        while True:
            message = run.next_message(3000)
            if message.kind == wire.Kind.OBS:
                break
            beats += message.kind == wire.Kind.HEARTBEAT and message.meta.get("resetting") is True
        waited = time.monotonic() - started
        assert message.meta["prev"]["reset_done"] is True
        assert message.meta["prev"]["tick"] == obs.meta["tick"]
        assert waited >= 1.4, "the observation came before the reset could have ended"
        assert beats >= 3, f"{beats} heartbeats during a 1.5 s reset (one every 0.2 s expected)"
        assert run.daemon.counters["watchdog_stops"] == 0
        assert run.daemon.counters["reset_ticks"] >= 3
        assert run.daemon.counters["ticks"] - ticks_before >= 4, "the control loop stood still during the reset"
        run.act(message, np.zeros(6))
        assert run.next_obs().meta["prev"]["late"] is False
    finally:
        run.close()


def test_a_bye_during_a_reset_stops_the_robot_when_the_reset_ends():
    run = Running(make_config(**{"robot.args": "{reset_s: 0.6}"}))
    stops = []
    robot_stop = run.daemon.robot.stop
    run.daemon.robot.stop = lambda: (stops.append(time.monotonic()), robot_stop())[1]
    try:
        run.hello()
        obs = run.next_obs()
        run.act(obs, np.zeros(6), reset=True)
        time.sleep(0.1)
        wire.send(run.socket, wire.Kind.BYE, {"reason": "test over"})
        asked = time.monotonic()
        deadline = asked + 3.0
        while not stops and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stops, "the robot was not stopped after the actor left during a reset"
        assert stops[0] - asked >= 0.3, "the robot was commanded while its reset was still running"
        assert run.daemon.link.state.value == "none"
        while run.socket.poll(50):
            run.socket.recv_multipart()
        assert not run.socket.poll(300), "the daemon kept talking to an actor that said bye"
    finally:
        run.close()
