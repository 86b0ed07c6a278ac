"""The Robotiq URCap socket client against the fake URCap on loopback."""
import time

import pytest

from drivers.fakes.robotiq import FakeRobotiq
from drivers.real.robotiq import RobotiqGripper


def wait_for(predicate, timeout_s=3.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_activates_closes_and_opens():
    with FakeRobotiq("127.0.0.1", 0, stroke_s=0.3) as fake:
        gripper = RobotiqGripper(*fake.address, poll_hz=100)
        gripper.connect()
        try:
            assert gripper.closure() == 0.0
            gripper.command(1.0)
            assert wait_for(lambda: gripper.closure() == 1.0), gripper.closure()
            assert not gripper.object_detected()
            gripper.command(0.25)
            assert wait_for(lambda: abs(gripper.closure() - 64 / 255) < 1e-6)
            assert fake.counters["malformed"] == 0
        finally:
            gripper.close()


def test_object_between_fingers_is_detected():
    with FakeRobotiq("127.0.0.1", 0, stroke_s=0.2, object_at=150) as fake:
        gripper = RobotiqGripper(*fake.address, poll_hz=100)
        gripper.connect()
        try:
            gripper.command(1.0)
            assert wait_for(gripper.object_detected)
            assert abs(gripper.closure() - 150 / 255) < 1e-6
        finally:
            gripper.close()


def test_silent_urcap_marks_the_link_lost():
    fake = FakeRobotiq("127.0.0.1", 0).start()
    gripper = RobotiqGripper(*fake.address, poll_hz=100, timeout_s=0.2)
    gripper.connect()
    fake.stop()
    try:
        assert wait_for(lambda: gripper.lost is not None, 2.0)
        assert "stopped answering" in gripper.lost
    finally:
        gripper.close()


def test_nothing_listening_is_one_clear_error():
    with pytest.raises(RuntimeError, match="cannot connect to the Robotiq URCap at 127.0.0.1:1 "):
        RobotiqGripper("127.0.0.1", 1).connect()


def test_fake_counts_malformed_lines_and_keeps_serving():
    import socket
    with FakeRobotiq("127.0.0.1", 0) as fake:
        with socket.create_connection(fake.address, timeout=1) as raw:
            raw.sendall(b"HELLO\nGET POS\n")
            reply = b""
            while reply.count(b"\n") < 2:
                reply += raw.recv(64)
        assert reply.split(b"\n")[:2] == [b"error", b"POS 0"]
        assert fake.counters["malformed"] == 1
