"""The fake A1 (drivers/fakes/a1.py): the real low-level UDP protocol on loopback, backed by the MuJoCo A1."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from tests import requires  # noqa: E402
requires.mujoco()

from drivers.real import a1_wire  # noqa: E402
from drivers.fakes.a1 import FakeA1  # noqa: E402

STAND = np.tile([0.0, 0.9, -1.8], 4)


@pytest.fixture
def client():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def exchange(sock, robot, datagram: bytes) -> dict:
    sock.sendto(datagram, robot.address)
    data, _ = sock.recvfrom(2048)
    return a1_wire.decode_low_state(data)


def test_only_loopback_is_served():
    with pytest.raises(ValueError, match="FakeA1: host '0.0.0.0' is not an IPv4 loopback address"):
        FakeA1("0.0.0.0")


def test_every_command_gets_one_state_with_the_robots_millisecond_tick(client):
    with FakeA1() as robot:
        first = exchange(client, robot, a1_wire.idle_low_cmd())
        time.sleep(0.05)
        second = exchange(client, robot, a1_wire.idle_low_cmd())
        assert 40 <= second["tick"] - first["tick"] <= 200
        assert robot.counters["commands"] == robot.counters["states"] == 2
        assert first["level"] == a1_wire.LOWLEVEL and first["mode"].tolist() == [a1_wire.MODE_SERVO] * 12


def test_pd_commands_stand_the_robot_up_from_lying(client):
    with FakeA1(start="lying") as robot:
        lying = exchange(client, robot, a1_wire.idle_low_cmd())
        assert abs(lying["q"][2] - (-2.6)) < 0.2                       # calves folded
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:                              # 200 Hz, as a driver would send
            state = exchange(client, robot, a1_wire.encode_low_cmd(STAND, np.zeros(12), 60.0, 2.0, np.zeros(12)))
            time.sleep(0.005)
        assert np.max(np.abs(state["q"] - STAND)) < 0.15
        assert abs(state["rpy"][0]) < 0.1 and abs(state["rpy"][1]) < 0.1
        assert robot.sim.trunk_height() > 0.2


def test_malformed_datagrams_are_dropped_without_a_reply_and_the_robot_keeps_serving(client):
    with FakeA1() as robot:
        client.settimeout(0.2)
        damaged = bytearray(a1_wire.idle_low_cmd())
        damaged[20] ^= 0xFF
        high_level = a1_wire.encode_low_cmd(STAND, 0, 0, 0, 0, level=a1_wire.HIGHLEVEL)
        for datagram in (b"hello", bytes(damaged), high_level):
            client.sendto(datagram, robot.address)
            with pytest.raises(socket.timeout):
                client.recvfrom(2048)
        assert robot.counters["malformed"] == 3
        client.settimeout(1.0)
        assert exchange(client, robot, a1_wire.idle_low_cmd())["tick"] >= 0
