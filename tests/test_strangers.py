"""Strangers on loopback: with network.auth=always (what robotd train sets, with keys made per session) a process
without the session's keys gets nothing from, and puts nothing into, the control and status channels."""
from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest
import zmq

from robotd import config as cfg
from robotd import security, wire
from robotd.daemon.loop import Daemon
from robotd.netutil import free_tcp_ports
from robotd.status import StatusCollector, StatusPublisher

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not security.curve_available(), reason="libzmq without CURVE")


@pytest.fixture
def keys(tmp_path) -> Path:
    return security.session_keys(tmp_path / "keys", "actor0")


def test_session_keys_are_owner_only_and_cover_every_process(keys):
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "actors").stat().st_mode) == 0o700
    secrets = sorted(path.name for path in keys.rglob("*.key_secret"))
    assert secrets == ["actor0.key_secret", "daemon.key_secret", "learner.key_secret", "learner.key_secret"]
    for path in keys.rglob("*.key_secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def stranger(context: zmq.Context, kind: int, address: str, keys: Path | None, *, own_keys: bool) -> zmq.Socket:
    """A socket of a process without the session's keys: no CURVE at all, or a key pair of its own (it can read
    the public server key, which is not secret)."""
    socket = context.socket(kind)
    socket.linger = 0
    if own_keys:
        public, secret = zmq.curve_keypair()
        socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.curve_serverkey = security.load_public(keys / "learner.key")
    socket.connect(address)
    return socket


def daemon_config(keys: Path):
    (port,) = free_tcp_ports(1)
    items = [f"network.control=tcp://127.0.0.1:{port}", "control.rate_hz=10", "control.action_deadline_ms=80",
             "control.watchdog_s=0.5", "control.realtime=off", "network.auth=always", f"network.keys_dir={keys}",
             "network.actor_key=actor0"]
    return cfg.load(ROOT / "configs" / "mock_arm.yaml", items)


def hello(socket, config) -> wire.Message | None:
    try:
        wire.send(socket, wire.Kind.HELLO, {"role": "actor", "session": "t", "actor_id": "x",
                                            "config_digest": config.digest()}, flags=zmq.NOBLOCK)
    except zmq.Again:                                   # a refused DEALER has no peer to queue the message for
        return None
    return wire.recv(socket) if socket.poll(1500) else None


def test_the_daemon_serves_only_the_sessions_keys(keys):
    config = daemon_config(keys)
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    context = zmq.Context()
    try:
        # A stranger that knows the address and even the config digest gets no answer, with or without keys.
        for own_keys in (False, True):
            socket = stranger(context, zmq.DEALER, config.network.control, keys, own_keys=own_keys)
            assert hello(socket, config) is None
            socket.close(0)
        assert daemon.counters["actor_ticks"] == 0
        member = context.socket(zmq.DEALER)
        member.linger = 0
        security.client_securer(config.network, "actor0")(member)
        member.connect(config.network.control)
        reply = hello(member, config)
        assert reply is not None and reply.kind == wire.Kind.HELLO
        member.close(0)
    finally:
        daemon.stop_requested.set()
        thread.join(10)
        context.term()
    assert daemon.curve is not None and daemon.curve.rejected >= 1    # the stranger with a key pair of its own
    assert daemon.counters["refused_connections"] == daemon.curve.rejected


def test_the_status_channel_takes_counters_only_from_the_sessions_processes(keys):
    network = daemon_config(keys).network
    (port,) = free_tcp_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    context = zmq.Context()
    server = security.server_for_every_channel(network, context)
    collector = StatusCollector(context, address, secure=server.configure)
    strangers = [stranger(context, zmq.PUB, address, keys, own_keys=own) for own in (False, True)]
    member = StatusPublisher(context, address, "learner", interval_s=0.0,
                             secure=security.client_securer(network, "learner"))
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and "learner" not in collector.latest:
            for socket in strangers:
                wire.send(socket, wire.Kind.STATUS, {"process": "actor", "counters": {"env_steps": 10**9}})
            member.publish({"replay_steps": 5, "updates": 1, "updates_per_s": 0.0, "published_version": 1})
            collector.poll(50)
        assert collector.latest.get("learner", {}).get("updates") == 1
        assert "actor" not in collector.latest                  # no spoofed counters from a stranger
        assert server.rejected >= 1
    finally:
        for socket in strangers:
            socket.close(0)
        member.close()
        collector.close()
        server.stop()
        context.term()


def test_always_without_keys_fails_in_one_line(tmp_path):
    config = cfg.load(ROOT / "configs" / "mock_arm.yaml", ["network.auth=always"])
    with pytest.raises(security.SecurityError, match=r"network.auth=always secures every channel: set network.keys_dir"):
        security.client_securer(config.network, "daemon")
    config = cfg.load(ROOT / "configs" / "mock_arm.yaml", ["network.auth=always", f"network.keys_dir={tmp_path}"])
    with pytest.raises(security.SecurityError, match=r"no secret key for actor 'daemon'"):
        security.client_securer(config.network, "daemon")
