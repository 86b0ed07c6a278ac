"""The fake UR controller (drivers/fakes/ur.py) driven by the real ur-rtde client, and by raw sockets.

Each test serves its own loopback address (the controller's ports are fixed), so tests can run side by side.
Clients are never disconnect()ed explicitly: ur-rtde's destructors disconnect anyway, and each disconnect
sleeps 0.5 s.
"""
from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from tests import requires  # noqa: E402
requires.mujoco()
rtde_receive = pytest.importorskip("rtde_receive", reason="ur-rtde is not installed (pip install ur-rtde)")
rtde_control = pytest.importorskip("rtde_control", reason="ur-rtde is not installed (pip install ur-rtde)")
dashboard_client = pytest.importorskip("dashboard_client", reason="ur-rtde is not installed (pip install ur-rtde)")

from drivers.fakes import ur as fake_ur  # noqa: E402
from drivers.fakes.ur import FakeURController  # noqa: E402

START_Q = [0.3, -1.4, 1.5, -1.7, -1.57, 0.2]
INTO_TABLE_Q = [1.57, -0.5, 1.5, -1.57, -1.57, 0.0]  # wrist_2 down into the table top, beside the bins
SERVO = (0.5, 0.5, 0.008, 0.1, 300.0)  # servoJ speed, acceleration, time, lookahead, gain


def wait_until(predicate, timeout_s: float, step_s: float = 0.002) -> float | None:
    """Seconds until predicate() is true, or None after timeout_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(step_s)
    return None


def distinct_timestamps(receivers, seconds: float) -> list[set[float]]:
    """The distinct getTimestamp() values each receiver shows while polled for seconds."""
    seen = [set() for _ in receivers]
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for values, receiver in zip(seen, receivers):
            values.add(receiver.getTimestamp())
        time.sleep(0.0004)  # several polls per 2 ms period, leaving the CPU to the client's receive thread
    return seen


def rate_within(receivers, rates_hz, tolerance: float = 0.1, tries: int = 3) -> list[set[float]]:
    """One second of distinct timestamps per receiver, measured again (up to tries times) while a count
    is off by more than tolerance: a machine shared with other work can stall a whole process for a while."""
    for _ in range(tries):
        seen = distinct_timestamps(receivers, 1.0)
        if all(abs(len(s) - rate) <= tolerance * rate for s, rate in zip(seen, rates_hz)):
            break
    return seen


@pytest.fixture
def serve():
    """serve(host, **kwargs): a started fake controller on host (arm at START_Q), stopped after the test."""
    started = []

    def start(host: str, **kwargs) -> FakeURController:
        controller = FakeURController(host, start_q=kwargs.pop("start_q", START_Q), **kwargs).start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()


def test_bad_arguments_are_refused_in_one_line():
    for host in ("0.0.0.0", "192.168.1.5", "localhost", "::1"):
        with pytest.raises(ValueError, match=r"FakeURController: host .* is not an IPv4 loopback address") as info:
            FakeURController(host)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="version must be 4 integers"):
        FakeURController("127.0.0.2", version=(5, 11))
    with pytest.raises(ValueError, match="start_q must be 6 finite joint angles"):
        FakeURController("127.0.0.2", start_q=[0.0, float("nan"), 0, 0, 0, 0])
    assert fake_ur.default_frequency((3, 15, 8, 0)) == 125.0 and fake_ur.default_frequency((5, 11, 0, 0)) == 500.0


def test_receive_streams_at_the_requested_rate_with_the_arm_state(serve):
    ur = serve("127.0.0.2")
    fast = rtde_receive.RTDEReceiveInterface(ur.host)
    slow = rtde_receive.RTDEReceiveInterface(ur.host, 50.0)
    fast_ts, slow_ts = rate_within([fast, slow], [125, 50])
    assert 0.9 * 125 <= len(fast_ts) <= 1.1 * 125, len(fast_ts)
    assert 0.9 * 50 <= len(slow_ts) <= 1.1 * 50, len(slow_ts)
    steps = np.diff(sorted(fast_ts))
    assert np.allclose(np.median(steps), 0.008, atol=1e-6)  # controller time in whole 8 ms cycles
    assert np.all(np.abs(np.round(steps / 0.008) - steps / 0.008) < 1e-6)
    state = ur.state()
    np.testing.assert_allclose(fast.getActualQ(), START_Q, atol=2e-3)
    np.testing.assert_allclose(fast.getActualQ(), state["q"], atol=1e-4)
    np.testing.assert_allclose(fast.getActualTCPPose(), state["tcp_pose"], atol=1e-4)
    assert fast.getRobotMode() == 7 and fast.getSafetyMode() == 1 and fast.getRuntimeState() == 1
    assert not fast.isProtectiveStopped() and not fast.isEmergencyStopped()
    assert fast.getSpeedScaling() == 1.0 and fast.getJointMode() == [253] * 6
    assert state["packages_sent"] >= 160 and state["malformed"] == 0


def test_e_series_streams_at_500_hz(serve):
    ur = serve("127.0.0.3", version=(5, 11, 0, 0))
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    (timestamps,) = rate_within([receiver], [500])
    # 500 a second on a quiet machine; a busy one starves the fake's sender (346 seen beside two CPU burners), but
    # every packet still carries a controller timestamp on the 2 ms grid
    assert 0.5 * 500 <= len(timestamps) <= 1.1 * 500, len(timestamps)
    assert np.isclose(np.median(np.diff(sorted(timestamps))), 0.002, atol=1e-6)
    stream = [s for s in ur.state()["streams"] if s["open"]][0]
    assert stream["frequency"] == 500.0
    del receiver  # a client leaving does not disturb the fake
    again = rtde_receive.RTDEReceiveInterface(ur.host)
    first = again.getTimestamp()
    assert wait_until(lambda: again.getTimestamp() > first + 0.05, 1.0) is not None


def test_control_uploads_its_script_and_servoj_moves_the_arm(serve):
    ur = serve("127.0.0.4")
    t0 = time.monotonic()
    control = rtde_control.RTDEControlInterface(ur.host)
    connect_s = time.monotonic() - t0
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    assert connect_s < 3.0
    state = ur.state()
    assert state["script_uploads"] == 1 and state["script_name"] == "rtde_control"
    assert state["script_ports"] == {30003: 1}
    assert state["runtime_state"] == 2 and control.isProgramRunning() and receiver.getRuntimeState() == 2
    start = np.array(receiver.getActualQ())
    goal = start + np.array([0.3, -0.2, 0.2, 0.0, 0.0, 0.3])
    sent = 0
    t_start = time.monotonic()
    while time.monotonic() - t_start < 2.0:
        period = control.initPeriod()
        fraction = min(1.0, (time.monotonic() - t_start) / 1.5)
        assert control.servoJ((start + fraction * (goal - start)).tolist(), *SERVO)
        sent += 1
        control.waitPeriod(period)
    # ur-rtde's waitPeriod holds the loop to 125 Hz; a starved machine loses periods of this loop, never adds any
    assert 0.5 * 250 <= sent <= 1.05 * 250, sent
    np.testing.assert_allclose(receiver.getActualQ(), goal, atol=0.02)
    assert ur.state()["commands"][fake_ur.CMD_SERVOJ] >= 0.9 * sent
    assert control.servoStop()
    held = np.array(receiver.getActualQ())
    time.sleep(0.2)
    np.testing.assert_allclose(receiver.getActualQ(), held, atol=2e-3)
    # moveJ blocks until the arm arrives.
    t0 = time.monotonic()
    assert control.moveJ(start.tolist(), 1.0, 1.0)
    assert time.monotonic() - t0 >= 0.25  # 0.3 rad at 1 rad/s
    np.testing.assert_allclose(receiver.getActualQ(), start, atol=0.01)


def test_speedj_and_speedl_move_the_arm_and_the_stops_hold_it(serve):
    ur = serve("127.0.0.5")
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    q0 = np.array(receiver.getActualQ())
    assert control.speedJ([0.3, 0.0, 0.0, 0.0, 0.0, -0.3], 1.0, 0.008)
    time.sleep(0.5)
    assert control.speedStop()
    q1 = np.array(receiver.getActualQ())
    assert 0.08 < q1[0] - q0[0] < 0.25 and 0.08 < q0[5] - q1[5] < 0.25, q1 - q0
    assert np.all(np.abs((q1 - q0)[1:5]) < 0.02), q1 - q0
    time.sleep(0.2)
    np.testing.assert_allclose(receiver.getActualQ(), q1, atol=5e-3)

    p0 = np.array(receiver.getActualTCPPose())
    assert control.speedL([0.0, 0.0, 0.05, 0.0, 0.0, 0.0], 0.5, 0.008)  # straight up
    time.sleep(0.6)
    assert control.speedStop()
    p1 = np.array(receiver.getActualTCPPose())
    assert 0.015 < p1[2] - p0[2] < 0.04, p1 - p0
    assert np.all(np.abs((p1 - p0)[:2]) < 0.005), p1 - p0
    time.sleep(0.2)
    np.testing.assert_allclose(receiver.getActualTCPPose()[:3], p1[:3], atol=2e-3)
    commands = ur.state()["commands"]
    assert commands[fake_ur.CMD_SPEEDJ] >= 1 and commands[fake_ur.CMD_SPEEDL] >= 1
    assert commands[fake_ur.CMD_SPEED_STOP] == 2


def test_protective_stop_freezes_the_arm_until_the_dashboard_unlocks_it(serve):
    ur = serve("127.0.0.6")
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    dashboard = dashboard_client.DashboardClient(ur.host)
    dashboard.connect()
    q0 = np.array(receiver.getActualQ())
    ur.protective_stop()
    seen_s = wait_until(receiver.isProtectiveStopped, 0.5)
    assert seen_s is not None and seen_s < 0.1  # a few 8 ms periods
    assert receiver.getSafetyMode() == 3
    assert dashboard.safetystatus() == "Safetystatus: PROTECTIVE_STOP"
    for _ in range(40):
        control.servoJ((q0 + 0.3).tolist(), *SERVO)  # ur-rtde still answers True here
        time.sleep(0.008)
    np.testing.assert_allclose(receiver.getActualQ(), q0, atol=2e-3)
    assert ur.state()["counters"]["ignored_commands"] >= 30

    dashboard.unlockProtectiveStop()
    assert wait_until(lambda: not receiver.isProtectiveStopped(), 0.5) is not None
    assert receiver.getSafetyMode() == 1 and dashboard.safetystatus() == "Safetystatus: NORMAL"
    for _ in range(40):
        control.servoJ((q0 + 0.05).tolist(), *SERVO)
        time.sleep(0.008)
    assert np.all(np.array(receiver.getActualQ()) - q0 > 0.02)

    # The client's own trigger (command 31), then the emergency stop.
    assert control.triggerProtectiveStop() in (True, False)
    assert wait_until(receiver.isProtectiveStopped, 0.5) is not None
    dashboard.unlockProtectiveStop()
    ur.emergency_stop()
    assert wait_until(receiver.isEmergencyStopped, 0.5) is not None
    assert receiver.getSafetyMode() == 7 and not receiver.isProtectiveStopped()
    ur.emergency_stop(False)
    assert wait_until(lambda: receiver.getSafetyMode() == 1, 0.5) is not None

    # Driving a link into the table latches a protective stop by itself; the blocking moveJ gives up.
    assert not control.moveJ(INTO_TABLE_Q, 2.0, 2.0)
    assert wait_until(receiver.isProtectiveStopped, 0.5) is not None
    assert ur.state()["counters"]["protective_stops"] == 3


def test_a_protective_stop_can_end_the_script_which_the_client_reuploads(serve):
    ur = serve("127.0.0.11", stop_script_on_fault=True, unlock_delay_s=0.3)
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    dashboard = dashboard_client.DashboardClient(ur.host)
    dashboard.connect()
    q0 = np.array(receiver.getActualQ())
    ur.protective_stop()
    assert wait_until(lambda: receiver.getRuntimeState() == 1, 0.5) is not None
    assert wait_until(lambda: not control.isProgramRunning(), 0.5) is not None
    with pytest.raises(RuntimeError, match="Cannot unlock protective stop until 0.3s after occurrence"):
        dashboard.unlockProtectiveStop()
    time.sleep(0.3)
    dashboard.unlockProtectiveStop()
    assert wait_until(lambda: not receiver.isProtectiveStopped(), 0.5) is not None
    assert control.reuploadScript()
    assert wait_until(control.isProgramRunning, 1.0) is not None and ur.state()["script_uploads"] == 2
    for _ in range(40):
        assert control.servoJ((q0 + 0.05).tolist(), *SERVO)
        time.sleep(0.008)
    assert np.all(np.array(receiver.getActualQ()) - q0 > 0.02)


def test_dashboard_answers_as_a_controller(serve):
    ur = serve("127.0.0.7")
    dashboard = dashboard_client.DashboardClient(ur.host)
    dashboard.connect()
    assert dashboard.polyscopeVersion().startswith("3.15.8.")
    assert dashboard.robotmode() == "Robotmode: RUNNING"
    assert dashboard.safetymode() == "Safetymode: NORMAL"
    assert not dashboard.running()
    dashboard.powerOn()
    dashboard.brakeRelease()
    dashboard.closeSafetyPopup()
    dashboard.unlockProtectiveStop()  # raises unless the exact "Protective stop releasing"
    dashboard.stop()  # raises unless "Stopped"
    with socket.create_connection((ur.host, fake_ur.DASHBOARD_PORT), timeout=2.0) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"Connected: Universal Robots Dashboard Server\n"
        sock.sendall(b"make coffee\nis in remote control\n")
        assert reader.readline() == b"could not understand: 'make coffee'\n"
        assert reader.readline() == b"true\n"
        sock.sendall(b"\xff\xfe\n")
        assert reader.readline() == b""  # malformed: closed
    assert ur.state()["malformed"] == 1
    with pytest.raises(RuntimeError, match="FakeURController: cannot serve on 127.0.0.7"):
        FakeURController("127.0.0.7").start()  # the ports are taken
    with pytest.raises(ValueError, match=r"FakeURController: start_q .* lies outside the UR5's joint limits"):
        FakeURController("127.0.0.17", start_q=[0.0, 0.0, 4.0, 0.0, 0.0, 0.0]).start()


def test_vanish_is_seen_at_once_by_both_interfaces(serve):
    ur = serve("127.0.0.8")
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    assert receiver.isConnected() and control.isConnected()
    q = receiver.getActualQ()
    ur.vanish()
    assert wait_until(lambda: not receiver.isConnected(), 0.5, 0.0005) is not None
    assert wait_until(lambda: not control.isConnected(), 0.5, 0.0005) is not None
    frozen = receiver.getTimestamp()
    time.sleep(0.05)
    # The stale values stay readable and servoJ still says True: only isConnected tells.
    assert receiver.getTimestamp() == frozen and receiver.getActualQ() == q
    assert control.servoJ(q, *SERVO)


def test_the_scripts_watchdog_stops_the_program_unless_its_register_is_updated(serve):
    ur = serve("127.0.0.12")
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    assert ur.state()["watchdog_hz"] == 0.0
    # rtde_set_watchdog("input_int_register_0", 2, "stop"): 0.5 s, as a busy machine can stall this test for 0.2 s
    assert control.setWatchdog(2.0)
    assert ur.state()["watchdog_hz"] == 2.0
    assert control.speedJ([0.2, 0.0, 0.0, 0.0, 0.0, 0.0], 1.0, 0.0)
    for _ in range(20):                                          # kicked every 50 ms for 1 s: it keeps running
        time.sleep(0.05)
        assert control.kickWatchdog()
    state = ur.state()
    assert state["script_running"] and state["counters"].get("watchdog_stops", 0) == 0
    assert state["qd"][0] == pytest.approx(0.2, abs=0.02)
    last = time.monotonic()
    assert wait_until(lambda: not ur.state()["script_running"], 3.0) is not None
    silent_s = time.monotonic() - last
    assert 0.45 < silent_s < 1.5, silent_s                      # 1 / 2 Hz, plus the fake's cycle and a busy machine
    state = ur.state()
    assert state["program_stop_reason"].startswith("RTDE watchdog: no update of input_int_register_0")
    assert state["counters"]["watchdog_stops"] == 1 and state["watchdog_hz"] == 0.0   # removed with the program
    assert wait_until(lambda: receiver.getRuntimeState() == 1 and not control.isProgramRunning(), 0.5) is not None
    q = np.array(receiver.getActualQ())
    assert not control.servoJ(q.tolist(), *SERVO)               # the client refuses: no program runs
    time.sleep(0.2)
    np.testing.assert_allclose(receiver.getActualQ(), q, atol=1e-3)
    assert abs(receiver.getActualQd()[0]) < 0.01
    # a fresh program carries no watchdog until it is set again
    assert control.reuploadScript()
    assert wait_until(control.isProgramRunning, 1.0) is not None
    time.sleep(0.8)
    assert ur.state()["script_running"] and ur.state()["counters"]["watchdog_stops"] == 1


def test_an_asynchronous_movej_reports_its_run_in_the_progress_register_and_stopj_ends_it(serve):
    ur = serve("127.0.0.13")
    control = rtde_control.RTDEControlInterface(ur.host)
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    before = control.getAsyncOperationProgressEx()
    assert not before.isAsyncOperationRunning() and control.getAsyncOperationProgress() < 0
    goal = np.array(START_Q) + np.array([0.6, 0.0, 0.0, 0.0, 0.0, 0.0])
    t0 = time.monotonic()
    assert control.moveJ(goal.tolist(), 0.5, 1.0, True)        # returns at once
    assert time.monotonic() - t0 < 0.5
    assert wait_until(lambda: control.getAsyncOperationProgressEx().isAsyncOperationRunning(), 0.5) is not None
    running = control.getAsyncOperationProgressEx()
    assert running.operationId() == before.operationId() + 1 and control.getAsyncOperationProgress() >= 0
    time.sleep(0.3)
    control.stopJ(2.0, True)
    assert wait_until(lambda: not control.getAsyncOperationProgressEx().isAsyncOperationRunning(), 0.5) is not None
    time.sleep(0.1)                                              # the servos settle where the stop caught the arm
    held = np.array(receiver.getActualQ())
    assert 0.05 < held[0] - START_Q[0] < 0.5
    time.sleep(0.2)
    np.testing.assert_allclose(receiver.getActualQ(), held, atol=2e-3)
    # the next one runs to its goal, and the register says when it is over
    assert control.moveJ(goal.tolist(), 1.0, 1.0, True)
    assert wait_until(lambda: control.getAsyncOperationProgressEx().isAsyncOperationRunning(), 0.5) is not None
    assert wait_until(lambda: not control.getAsyncOperationProgressEx().isAsyncOperationRunning(), 5.0) is not None
    np.testing.assert_allclose(receiver.getActualQ(), goal, atol=0.01)
    assert ur.state()["commands"][fake_ur.CMD_STOPJ] == 1


def test_a_safeguard_stop_and_a_slow_program_start(serve):
    ur = serve("127.0.0.14", program_start_delay_s=0.4)
    t0 = time.monotonic()
    control = rtde_control.RTDEControlInterface(ur.host)        # waits for the program itself
    assert time.monotonic() - t0 >= 0.35 and control.isProgramRunning()
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    dashboard = dashboard_client.DashboardClient(ur.host)
    dashboard.connect()
    q0 = np.array(receiver.getActualQ())
    ur.safeguard_stop()
    assert wait_until(lambda: receiver.getSafetyMode() == fake_ur.SAFETY_MODE_SAFEGUARD_STOP, 0.5) is not None
    bits = receiver.getSafetyStatusBits()
    assert bits == fake_ur.SAFETY_BIT_SAFEGUARD_STOPPED | fake_ur.SAFETY_BIT_STOPPED_DUE_TO_SAFETY
    assert not receiver.isProtectiveStopped() and not receiver.isEmergencyStopped()
    assert dashboard.safetymode() == "Safetymode: SAFEGUARD_STOP"
    for _ in range(30):
        control.servoJ((q0 + 0.2).tolist(), *SERVO)
        time.sleep(0.008)
    np.testing.assert_allclose(receiver.getActualQ(), q0, atol=2e-3)      # the arm holds
    ur.safeguard_stop(False)
    assert wait_until(lambda: receiver.getSafetyMode() == 1, 0.5) is not None
    # reuploadScript() returns before the controller runs the new program
    dashboard.stop()
    assert wait_until(lambda: not control.isProgramRunning(), 0.5) is not None
    t0 = time.monotonic()
    assert control.reuploadScript()
    assert not control.isProgramRunning()
    assert wait_until(control.isProgramRunning, 2.0) is not None
    assert 0.3 < time.monotonic() - t0 < 1.5
    with pytest.raises(ValueError, match="program_start_delay_s must be a number of seconds in") as info:
        FakeURController("127.0.0.15", program_start_delay_s=-1)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_frozen_controller_is_only_noticed_by_the_clients_timeout(serve):
    # Only the receiver: after such a stall ur-rtde 1.6.5's control interface reconnects by itself from its
    # own thread, several times over, and can crash the process (SIGSEGV) doing so.
    ur = serve("127.0.0.10")
    receiver = rtde_receive.RTDEReceiveInterface(ur.host)
    ur.freeze()  # as a pulled cable: the sockets stay open, nothing arrives
    t0 = time.monotonic()
    first = receiver.getTimestamp()
    time.sleep(0.1)
    assert receiver.getTimestamp() == first and receiver.isConnected()  # stale, and still "connected"
    assert wait_until(lambda: not receiver.isConnected(), 4.0) is not None
    assert 2.0 < time.monotonic() - t0 < 3.5  # ur-rtde's 2.5 s read deadline
    ur.thaw()
    time.sleep(0.2)
    assert not receiver.isConnected()  # the receiver does not reconnect by itself
    assert receiver.reconnect() and receiver.isConnected()
    assert wait_until(lambda: receiver.getTimestamp() > first + 2.0, 1.0) is not None


# --- raw RTDE ---------------------------------------------------------------------------------
def send(sock: socket.socket, kind: int, payload: bytes = b"") -> None:
    sock.sendall(fake_ur.encode_message(kind, payload))


def receive(sock: socket.socket, kind: int | None = None) -> tuple[int, bytes]:
    """The next package (of type kind, skipping data packages when waiting for another type)."""
    while True:
        header = sock.recv(3, socket.MSG_WAITALL)
        assert len(header) == 3, "connection closed"
        size, got = struct.unpack(">HB", header)
        payload = sock.recv(size - 3, socket.MSG_WAITALL) if size > 3 else b""
        if kind is None or got == kind or got != fake_ur.RTDE_DATA_PACKAGE:
            return got, payload


def test_raw_rtde_exchange_and_malformed_packages(serve):
    ur = serve("127.0.0.9")
    V, v, O, I, S, P, U = (ord(c) for c in "VvOISPU")
    with socket.create_connection((ur.host, fake_ur.RTDE_PORT), timeout=2.0) as sock:
        send(sock, V, struct.pack(">H", 2))
        assert receive(sock) == (V, b"\x01")
        send(sock, v)
        assert receive(sock) == (v, struct.pack(">IIII", 3, 15, 8, 0))
        send(sock, O, struct.pack(">d", 125.0) + b"timestamp,no_such_thing")
        assert receive(sock) == (O, b"\x00DOUBLE,NOT_FOUND")
        send(sock, O, struct.pack(">d", 125.0) + b"timestamp,actual_q,robot_mode,safety_status_bits,")
        assert receive(sock) == (O, b"\x01DOUBLE,VECTOR6D,INT32,UINT32")
        send(sock, I, b"input_int_register_0,input_double_register_0")
        assert receive(sock) == (I, b"\x01INT32,DOUBLE")
        send(sock, I, b"speed_slider_mask,speed_slider_fraction")
        assert receive(sock) == (I, b"\x02UINT32,DOUBLE")
        send(sock, S)
        assert receive(sock) == (S, b"\x01")
        stamps = []
        for _ in range(5):
            kind, payload = receive(sock)
            assert kind == U and payload[0] == 1 and len(payload) == 1 + 8 + 48 + 4 + 4
            timestamp, *q = struct.unpack(">d6d", payload[1:57])
            robot_mode, bits = struct.unpack(">iI", payload[57:])
            assert robot_mode == 7 and bits == 1
            np.testing.assert_allclose(q, START_Q, atol=2e-3)
            stamps.append(timestamp)
        assert np.allclose(np.diff(stamps), 0.008, atol=1e-9)
        send(sock, U, b"\x01" + struct.pack(">id", 0, 1.5))

        # A second client sending garbage is counted and dropped; the first keeps streaming.
        for garbage in (b"\x00\x02U", struct.pack(">HB", 3, ord("X")), fake_ur.encode_message(U, b"\x07")):
            with socket.create_connection((ur.host, fake_ur.RTDE_PORT), timeout=2.0) as bad:
                bad.sendall(garbage)
                assert bad.recv(100) == b""
        kind, payload = receive(sock)
        assert kind == U
        send(sock, P)
        assert receive(sock, P) == (P, b"\x01")
    state = ur.state()
    assert state["malformed"] == 3 and state["commands"] == {0: 1}
