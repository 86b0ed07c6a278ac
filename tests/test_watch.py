"""`robotd watch`: the status line of processes that run as separate commands (on other machines), shown by a
collector bound apart from `robotd train`; and the status channel's CurveZMQ rule, the experience channel's.

Real ZeroMQ sockets on 127.0.0.1, real StatusPublisher objects, `robotd watch` as a subprocess bounded by
--seconds. Non-loopback addresses appear only as text given to the security decision; nothing connects to
or binds them."""
from __future__ import annotations

import json
import signal
import socket as pysocket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from robotd import cli, security, wire
from robotd import config as cfg
from robotd.netutil import free_tcp_ports
from robotd.status import LINE_WIDTH, StatusCollector, StatusPublisher
from robotd.watch import watch_line

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "mock_arm.yaml")
OFF_MACHINE = ("tcp://192.0.2.10:5570", "tcp://gpu-box:5570", "tcp://*:5570", "tcp://0.0.0.0:5570")
"""Addresses that leave the machine, as text only (192.0.2.0/24 is documentation space; never connected)."""


def loopback_address() -> str:
    return f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}"


class Watch:
    """`robotd watch` as a subprocess. ``run`` calls ``publish(elapsed_s, shown)`` every 50 ms until it exits, with
    the lines it has printed so far (read as they come, so a test can react to what the watch has shown)."""

    def __init__(self, *args: str, seconds: float | None = 3.0):
        self.argv = [sys.executable, "-m", "robotd.cli", "watch", CONFIG, *args]
        if seconds is not None:
            self.argv += ["--seconds", str(seconds)]
        self.seconds = seconds if seconds is not None else 10.0

    def run(self, publish=None, *, signum=None) -> tuple[int, str, str]:
        """With ``signum``, sends that signal once the watch has shown its first line."""
        process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        shown: list[str] = []
        reader = threading.Thread(target=lambda: shown.extend(process.stdout), daemon=True)
        reader.start()
        started = time.monotonic()
        try:
            while process.poll() is None and time.monotonic() - started < self.seconds + 8:
                if publish is not None:
                    publish(time.monotonic() - started, list(shown))
                if signum is not None and shown:
                    process.send_signal(signum)
                    signum = None
                time.sleep(0.05)
            _, err = process.communicate(timeout=5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(5)
        return process.returncode, "".join(shown), err


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def lines_of(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


# --- the line and the report ---------------------------------------------------------------------------------
def test_the_watch_shows_a_fleets_figures_each_robots_steps_and_reports_the_last_counters(context, tmp_path):
    address = loopback_address()
    report = tmp_path / "watch.json"
    publishers = {name: StatusPublisher(context, address, name, interval_s=0.0)
                  for name in ("daemon.robot0", "daemon.robot1", "actor.robot0", "actor.robot1")}

    def publish(elapsed, shown):
        late = 7 if elapsed > 1.5 else 2            # the figures change: the report must hold the last ones
        publishers["daemon.robot0"].publish({"rate_hz": 25.0, "late_steps": late})
        publishers["daemon.robot1"].publish({"rate_hz": 24.0, "late_steps": 1})
        publishers["actor.robot0"].publish({"env_steps": 100, "episodes": 1, "finished_episodes": 1,
                                            "return_mean20": -12.5, "success_rate": 0.0, "policy_version": 3})
        publishers["actor.robot1"].publish({"env_steps": 200, "episodes": 2, "finished_episodes": 2,
                                            "return_mean20": -7.5, "success_rate": 1.0, "policy_version": 4})
    try:
        code, out, err = Watch("--status", address, "--json", str(report), seconds=3.0).run(publish)
    finally:
        for publisher in publishers.values():
            publisher.close()
    assert code == 0, err
    lines = lines_of(out)
    shown = [line for line in lines if line.startswith("2 robots")]
    assert shown, out                                   # about one line a second, plain lines (not a terminal)
    # the slowest robot's rate, the summed late steps, steps, episodes; each robot's steps; mean return and
    # success over the robots; the oldest policy version
    assert shown[-1] == "2 robots 24.0Hz late 8 | st 300 (100/200) ep 3 ret -10.0 ok 50% v3", shown
    assert all(len(line) <= LINE_WIDTH for line in shown)
    # The exit report: every process with its last counters, when it was last heard from.
    assert any(line.startswith("robotd watch: ") and "4 processes heard, 0 malformed messages dropped" in line
               for line in lines), out
    robot0 = next(line for line in lines if line.strip().startswith("daemon.robot0"))
    assert "last heard" in robot0 and "rate_hz=25 late_steps=7" in robot0, robot0
    data = json.loads(report.read_text())
    assert data["address"] == address and data["security"] == "plaintext"
    assert list(data["processes"]) == ["daemon.robot0", "daemon.robot1", "actor.robot0", "actor.robot1"]
    assert data["processes"]["daemon.robot0"]["counters"] == {"rate_hz": 25.0, "late_steps": 7}
    assert data["processes"]["actor.robot1"]["counters"]["env_steps"] == 200
    for entry in data["processes"].values():
        assert 0 <= entry["last_heard_s_ago"] < 2.0 and not entry["silent"]
        assert entry["last_heard"][:4].isdigit()
    assert data["malformed"] == {} and data["refused_connections"] is None


def test_a_process_that_stops_publishing_is_shown_as_silent(context, tmp_path):
    address = loopback_address()
    report = tmp_path / "watch.json"
    daemon = StatusPublisher(context, address, "daemon.arm1", interval_s=0.0)
    learner = StatusPublisher(context, address, "learner", interval_s=0.0)

    def publish(elapsed, shown):
        if not any("25.0Hz" in line for line in shown):   # once it was shown, the robot PC drops off the network
            daemon.publish({"rate_hz": 25.0, "late_steps": 0})
        learner.publish({"replay_steps": 64, "updates": 2, "updates_per_s": 1.5, "published_version": 1})
    try:
        code, out, err = Watch("--status", address, "--silent-after", "0.6", "--json", str(report),
                               seconds=3.5).run(publish)
    finally:
        daemon.close()
        learner.close()
    assert code == 0, err
    shown = [line for line in lines_of(out) if "Hz late" in line]
    assert shown and "silent" not in shown[0], out
    assert shown[-1].endswith(" | 1 silent (daemon.arm1 2s)") or " | 1 silent (daemon.arm1 " in shown[-1], shown
    assert shown[-1].startswith("25.0Hz late 0")           # its last figures stay on the line
    data = json.loads(report.read_text())
    assert data["processes"]["daemon.arm1"]["silent"] and data["processes"]["daemon.arm1"]["last_heard_s_ago"] > 0.6
    assert not data["processes"]["learner"]["silent"]
    assert any("daemon.arm1" in line and ", silent:" in line for line in lines_of(out))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_ends_the_watch_with_its_report(context, signum):
    address = loopback_address()
    learner = StatusPublisher(context, address, "learner", interval_s=0.0)

    def publish(elapsed, shown):
        learner.publish({"replay_steps": 5, "updates": 0, "updates_per_s": 0.0, "published_version": 0})
    try:
        code, out, err = Watch("--status", address, seconds=None).run(publish, signum=signum)   # no --seconds
    finally:
        learner.close()
    assert code == 0, err
    assert f"stopped by {signal.Signals(signum).name}: " in out, out
    assert "replay_steps=5" in out and "Traceback" not in err


def test_malformed_messages_are_counted_per_sender_and_the_watch_goes_on(context, tmp_path):
    address = loopback_address()
    report = tmp_path / "watch.json"
    stranger = context.socket(zmq.PUB)
    stranger.linger = 0
    stranger.connect(address)
    learner = StatusPublisher(context, address, "learner", interval_s=0.0)

    def publish(elapsed, shown):
        stranger.send(b"not a robotd message")                                       # -> unknown
        wire.send(stranger, wire.Kind.STATUS, {"process": "actor.robot0",
                                               "counters": {"env_steps": 5, "episodes": 9}})   # -> actor.robot0
        wire.send(stranger, wire.Kind.STATUS, {"process": "learner", "counters": {"updates": float("nan")}})
        wire.send(stranger, wire.Kind.STATUS, {"process": "../etc", "counters": {}})       # -> unknown
        learner.publish({"replay_steps": 10, "updates": 1, "updates_per_s": 0.5, "published_version": 1})
    try:
        code, out, err = Watch("--status", address, "--json", str(report), seconds=2.5).run(publish)
    finally:
        stranger.close(0)
        learner.close()
    assert code == 0, err
    data = json.loads(report.read_text())
    assert set(data["malformed"]) == {"unknown", "actor.robot0", "learner"}, data["malformed"]
    assert data["malformed"]["unknown"] >= 4 and data["malformed"]["actor.robot0"] >= 2
    assert list(data["processes"]) == ["learner"]               # the good messages still came through
    assert data["processes"]["learner"]["counters"]["updates"] == 1
    assert "malformed messages dropped: " in out and "actor.robot0" in out
    assert "Traceback" not in err


# --- security: the experience channel's rule -----------------------------------------------------------------
def network(**values):
    items = [f"network.{key}={value}" for key, value in values.items()]
    return cfg.load(CONFIG, items).network


def test_the_status_channel_follows_the_experience_channels_rule():
    for address in OFF_MACHINE:
        assert security.secures(network(auth="auto", status=address), address)
        assert not security.secures(network(auth="never", status=address), address)
    for address in ("tcp://127.0.0.1:5570", "tcp://localhost:5570", "ipc:///tmp/robotd-status"):
        assert not security.secures(network(auth="auto", status=address), address)
        assert security.secures(network(auth="always", status=address), address)
    assert not security.secures(network(auth="auto", status=""), "")          # no status: nothing to secure
    # the same decision as the experience channel's, for every mode and address
    for mode in ("auto", "always", "never"):
        for address in (*OFF_MACHINE, "tcp://127.0.0.1:5570"):
            assert security.secures(network(auth=mode), address) == security.needs_auth(mode, address)


def test_every_publisher_and_collector_decide_alike_and_fail_without_keys_in_one_line(tmp_path):
    off = network(auth="auto", status="tcp://192.0.2.10:5570")
    # publishers (daemon, actor, learner all call client_securer with network.status's rule)
    with pytest.raises(security.SecurityError, match=r"network.status tcp://192.0.2.10:5570 leaves this machine, "
                                                     r"so it uses CurveZMQ \(network.auth=auto\): set "
                                                     r"network.keys_dir"):
        security.client_securer(off, "learner")
    context = zmq.Context()
    try:
        with pytest.raises(security.SecurityError, match=r"tcp://192.0.2.10:5570 leaves this machine, so status uses "
                                                         r"CurveZMQ .*network.keys_dir"):
            security.status_server(off, context)
        keys = tmp_path / "keys"
        security.init_keys(keys, actors=["arm1"])
        keyed = network(auth="auto", status="tcp://192.0.2.10:5570", keys_dir=keys)
        assert callable(security.client_securer(keyed, "arm1"))
        assert callable(security.client_securer(keyed, "learner"))      # the learner's own pair (flat layout)
        server = security.status_server(keyed, context)                 # started, nothing bound
        assert server is not None and server.actors == ["arm1", "learner"]
        server.stop()
        # The control channel keeps its own address's rule: the actor's control socket stays plain on loopback.
        assert security.client_securer(keyed, "arm1", keyed.control) is None
        loop = network(auth="auto", status="tcp://127.0.0.1:5570", keys_dir=keys)
        assert security.client_securer(loop, "arm1") is None and security.status_server(loop, context) is None
    finally:
        context.term()


def test_the_daemon_publishes_with_its_own_pair_or_else_its_robots(tmp_path):
    lab = tmp_path / "lab"
    security.init_keys(lab, actors=["arm1", "arm2"])
    assert security.daemon_key_name(lab, "actor", "arm1") == "arm1"      # --robot-id arm1 on its robot PC
    assert security.daemon_key_name(lab, "arm2", None) == "arm2"         # network.actor_key=arm2
    assert security.daemon_key_name(lab, "actor", None) == "actor"
    session = security.session_keys(tmp_path / "session", "actor")
    assert security.daemon_key_name(session, "actor", "robot0") == "daemon"    # robotd train's per-session pair


def test_the_daemon_refuses_an_off_machine_status_without_keys_before_opening_a_socket(monkeypatch):
    from robotd.daemon import loop
    config = cfg.load(CONFIG, ["network.status=tcp://192.0.2.10:5570", "control.realtime=off",
                               f"network.control={loopback_address()}"])

    def no_context(*args, **kwargs):
        raise AssertionError("a socket was about to be made before the status keys were checked")
    monkeypatch.setattr(loop.zmq, "Context", no_context)
    with pytest.raises(security.SecurityError, match=r"network.status tcp://192.0.2.10:5570 leaves this machine"):
        loop.Daemon(config).run()


@pytest.mark.skipif(not security.curve_available(), reason="libzmq without CURVE")
def test_a_robot_pcs_daemon_publishes_with_its_robots_pair_and_the_collector_admits_it(context, tmp_path):
    from robotd.daemon.loop import Daemon
    keys = tmp_path / "keys"
    security.init_keys(keys, actors=["arm1"])          # the lab layout: no daemon pair, the robot's arm1 pair
    address = loopback_address()
    config = cfg.load(CONFIG, [f"network.control={loopback_address()}", f"network.status={address}",
                               "network.auth=always", f"network.keys_dir={keys}", "control.rate_hz=10",
                               "control.realtime=off"])
    server = security.status_server(config.network, context)
    collector = StatusCollector(context, address, secure=server.configure)
    daemon = Daemon(config, robot="arm1")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and "daemon.arm1" not in collector.latest and thread.is_alive():
            collector.poll(100)
        assert collector.latest.get("daemon.arm1", {}).get("ticks", 0) > 0, "nothing came from the daemon"
        assert server.rejected == 0
    finally:
        daemon.stop_requested.set()
        thread.join(10)
        collector.close()
        server.stop()


@pytest.mark.skipif(not security.curve_available(), reason="libzmq without CURVE")
def test_with_auth_always_unkeyed_and_unknown_publishers_are_refused_and_counted_keyed_ones_shown(context, tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys, actors=["robot0"])
    address = loopback_address()
    report = tmp_path / "watch.json"
    keyed_network = network(auth="always", keys_dir=keys, status=address)
    actor = StatusPublisher(context, address, "actor.robot0", interval_s=0.0,
                            secure=security.client_securer(keyed_network, "robot0"))
    learner = StatusPublisher(context, address, "learner", interval_s=0.0,          # with learner.key_secret
                              secure=security.client_securer(keyed_network, "learner"))
    unkeyed = StatusPublisher(context, address, "daemon.robot0", interval_s=0.0)

    def own_pair(socket):                   # knows the server's public key, but its own key is not admitted
        socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
        socket.curve_serverkey = security.load_public(keys / "learner.key")
    stranger = StatusPublisher(context, address, "daemon.robot1", interval_s=0.0, secure=own_pair)

    def publish(elapsed, shown):
        actor.publish({"env_steps": 42, "episodes": 1, "policy_version": 2})
        learner.publish({"replay_steps": 42, "updates": 3, "updates_per_s": 1.0, "published_version": 2})
        unkeyed.publish({"rate_hz": 99.0, "late_steps": 0})
        stranger.publish({"rate_hz": 98.0, "late_steps": 0})
    try:
        code, out, err = Watch("--status", address, "--set", "network.auth=always", "--set",
                               f"network.keys_dir={keys}", "--json", str(report), seconds=3.0).run(publish)
    finally:
        for publisher in (actor, learner, unkeyed, stranger):
            publisher.close()
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["security"] == "CurveZMQ"
    assert list(data["processes"]) == ["actor.robot0", "learner"]        # neither refused peer's counters
    assert data["refused_without_keys"] >= 1                              # the unkeyed one
    assert data["refused_connections"] > data["refused_without_keys"]     # and the one with a key of its own
    shown = [line for line in lines_of(out) if "st 42" in line]
    assert shown and "99.0Hz" not in out and "98.0Hz" not in out
    assert "refused " in shown[-1]
    assert "refused handshakes: " in out
    assert "CurveZMQ, admitting learner, robot0" in err


@pytest.mark.skipif(not security.curve_available(), reason="libzmq without CURVE")
def test_a_publisher_the_collector_refuses_neither_raises_nor_blocks(context, tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys, actors=["robot0"])
    address = loopback_address()
    net = network(auth="always", keys_dir=keys, status=address)
    server = security.status_server(net, context)
    collector = StatusCollector(context, address, secure=server.configure)
    other = tmp_path / "other"
    security.init_keys(other, actors=["robot0"])            # the same names, keys nobody admitted
    refused = StatusPublisher(context, address, "actor.robot0", interval_s=0.0,
                              secure=security.client_securer(network(auth="always", keys_dir=other,
                                                                     status=address), "robot0"))
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and server.rejected < 2:
            # 100 publishes in a thread that must end at once: publishing never waits on the refused peer
            burst = threading.Thread(target=lambda: [refused.publish({"env_steps": 1, "episodes": 1})
                                                     for _ in range(100)], daemon=True)
            burst.start()
            burst.join(1.0)
            assert not burst.is_alive(), "publishing to a collector that refuses this publisher blocked"
            collector.poll(50)
        assert server.rejected >= 2, "the collector saw no refused handshake"
        assert collector.latest == {}
    finally:
        refused.close()
        collector.close()
        server.stop()


# --- bad input -----------------------------------------------------------------------------------------------
def test_a_negative_seconds_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "robotd.cli", "watch", CONFIG, "--status", loopback_address(),
                             "--seconds", "-1"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("robotd watch: error: --seconds -1: give a positive number of seconds")


@pytest.mark.parametrize("argv, expected", [
    (["--seconds", "0"], "--seconds 0: give a positive number of seconds"),
    (["--silent-after", "0"], "--silent-after 0: give a positive number of seconds"),
    (["--status", ""], "network.status is empty in "),
    (["--json", "/nonexistent-dir/w.json"], "directory '/nonexistent-dir' does not exist"),
    (["--status", "tcp://127.0.0.1:99999"], "cannot bind 'tcp://127.0.0.1:99999'"),
    (["--set", "network.auth=always"], "set network.keys_dir to the key directory holding learner.key_secret"),
])
def test_bad_arguments_give_one_line_naming_them_and_exit_2(capsys, argv, expected):
    if "--status" not in argv:
        argv = [*argv, "--status", loopback_address()]
    if "--seconds" not in argv:
        argv = [*argv, "--seconds", "0.5"]
    code = cli.main(["watch", CONFIG, *argv])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("robotd watch: error: "), captured.err
    assert expected in captured.err


def test_the_status_address_defaults_to_network_status(capsys):
    # mock_arm.yaml sets no network.status: without --status there is nothing to bind, and it says so
    assert cli.main(["watch", CONFIG, "--seconds", "0.5"]) == 2
    assert "network.status is empty in " in capsys.readouterr().err
    address = loopback_address()
    assert cli.main(["watch", CONFIG, "--set", f"network.status={address}", "--seconds", "0.3"]) == 0
    assert f"on {address} (plaintext)" in capsys.readouterr().out


def test_a_taken_port_is_one_line_and_exit_2():
    holder = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        address = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "robotd.cli", "watch", CONFIG, "--status", address,
                                 "--seconds", "2"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        holder.close()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"{address} is already in use" in result.stderr and "--status" in result.stderr


# --- the line ------------------------------------------------------------------------------------------------
def test_the_watch_line_names_silent_processes_where_room_is_left_and_counts_them_where_not():
    latest = {"daemon": {"rate_hz": 25.0, "late_steps": 0, "error_p99_ms": 0.1},
              "actor": {"env_steps": 50, "episodes": 1, "finished_episodes": 0, "policy_version": 1}}
    heard = {"daemon": 100.0, "actor": 99.0}
    assert watch_line(latest, heard, now=100.5, silent_after_s=5.0) == \
        "25.0Hz late 0 p99 0.10ms | st 50 ep 1 ret - ok - v1"
    line = watch_line(latest, heard, now=100.5, silent_after_s=5.0, refused=3)
    assert line == "25.0Hz late 0 p99 0.10ms | st 50 ep 1 ret - ok - v1 | refused 3"
    line = watch_line(latest, heard, now=105.0, silent_after_s=5.0)
    assert line == "25.0Hz late 0 p99 0.10ms | st 50 ep 1 ret - ok - v1 | 1 silent (actor 6s)"
    many = {f"actor.robot{i}": {"env_steps": 10, "episodes": 1} for i in range(8)}
    line = watch_line(many, {name: 0.0 for name in many}, now=60.0, silent_after_s=5.0)
    assert line.endswith(" | 8 silent") and len(line) <= LINE_WIDTH, line
    assert watch_line({}, {}, now=0.0, address="tcp://127.0.0.1:5570") == "waiting for status on tcp://127.0.0.1:5570..."


def test_the_watch_command_line_imports_neither_torch_nor_ray_nor_mujoco():
    code = ("import sys\n"
            "from robotd import cli\n"
            f"code = cli.main(['watch', {CONFIG!r}, '--status', {loopback_address()!r}, '--seconds', '0.3'])\n"
            "print(code, sorted(m for m in ('torch', 'ray', 'mujoco') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 []"


def test_the_rule_tying_status_names_to_keys():
    assert security.may_publish_as("learner", "learner")
    assert not security.may_publish_as("learner", "actor") and not security.may_publish_as("learner", "daemon.arm1")
    assert not security.may_publish_as("arm1", "learner") and not security.may_publish_as("daemon", "learner")
    assert security.may_publish_as("arm1", "actor.arm1") and security.may_publish_as("arm1", "daemon.arm1")
    assert not security.may_publish_as("arm1", "actor.arm2") and not security.may_publish_as("arm1", "daemon.arm2")
    assert security.may_publish_as("actor", "actor") and security.may_publish_as("actor", "daemon")  # one robot
    assert security.may_publish_as("daemon", "daemon.arm2") and not security.may_publish_as("daemon", "actor.arm2")


@pytest.mark.skipif(not security.curve_available(), reason="libzmq without CURVE")
def test_an_admitted_key_cannot_publish_as_the_learner_or_another_robot(context, tmp_path):
    keys = tmp_path / "keys"
    security.init_keys(keys, actors=["robot0", "robot1"])
    address = loopback_address()
    net = network(auth="always", keys_dir=keys, status=address)
    server = security.status_server(net, context)
    collector = StatusCollector(context, address, secure=server.configure)
    robot0 = security.client_securer(net, "robot0")
    publishers = [StatusPublisher(context, address, name, interval_s=0.0, secure=secure)
                  for name, secure in (("actor.robot0", robot0), ("learner", robot0), ("daemon.robot1", robot0),
                                       ("learner", security.client_securer(net, "learner")))]
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (len(collector.latest) < 2 or len(collector.malformed) < 2):
            for index, publisher in enumerate(publishers):
                kind = publisher.process.split(".")[0]
                publisher.publish({"actor": {"env_steps": index, "episodes": 0},
                                   "daemon": {"rate_hz": 50.0, "late_steps": index},
                                   "learner": {"replay_steps": index, "updates": 0, "updates_per_s": 0.0}}[kind])
            collector.poll(20)
    finally:
        for publisher in publishers:
            publisher.close()
        collector.close()
        server.stop()
    assert sorted(collector.latest) == ["actor.robot0", "learner"]
    assert collector.latest["learner"]["replay_steps"] == 3                 # the learner's own, not robot0's
    assert collector.latest["actor.robot0"]["env_steps"] == 0
    assert sorted(collector.malformed) == ["daemon.robot1 (key robot0)", "learner (key robot0)"]
