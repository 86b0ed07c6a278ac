"""CurveZMQ keys and authentication: the key layout, refusals a person reads, and real loopback sockets
where only the learner's authorised actors get through."""
import shutil
import stat
import time

import pytest
import zmq
import zmq.auth

from robotd import security
from robotd.security import CurveServer, SecurityError

pytestmark = pytest.mark.skipif(not security.curve_available(), reason="libzmq built without CURVE")

RECV_TIMEOUT_MS = 2000
SILENCE_S = 0.5


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def keys(tmp_path):
    keys_dir = tmp_path / "keys"
    security.init_keys(keys_dir, actors=["arm0"])
    return keys_dir


@pytest.fixture
def stranger_keys(tmp_path):
    """A complete layout of its own: the learner key is right, the actor key is one nobody authorised."""
    keys_dir = tmp_path / "stranger"
    security.init_keys(keys_dir, actors=["arm0"])
    return keys_dir


def use_learner_key(stranger_dir, keys_dir):
    shutil.copy(keys_dir / "learner.key", stranger_dir / "learner.key")


def bound(socket) -> str:
    socket.bind("tcp://127.0.0.1:*")
    return socket.last_endpoint.decode()


def socket(context, kind):
    sock = context.socket(kind)
    sock.linger = 0
    return sock


def wait_until(predicate, timeout_s=RECV_TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# ---- addresses and modes ---------------------------------------------------------------------------

@pytest.mark.parametrize("address, expected", [
    ("ipc:///tmp/robotd.sock", True),
    ("inproc://weights", True),
    ("tcp://127.0.0.1:5555", True),
    ("tcp://127.0.0.2:5555", True),
    ("tcp://localhost:5555", True),
    ("tcp://LocalHost:5555", True),
    ("tcp://[::1]:5555", True),
    ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False),
    ("tcp://192.168.1.5:5555", False),
    ("tcp://10.0.0.1:5555", False),
    ("tcp://some.host:5555", False),
    ("tcp://127.0.0.1:0;192.168.1.5:5555", False),
    ("udp://127.0.0.1:5555", False),
    ("127.0.0.1:5555", False),
])
def test_is_loopback_reads_the_address_text(address, expected):
    assert security.is_loopback(address) is expected


def test_auto_mode_needs_auth_only_when_an_address_leaves_the_machine():
    assert not security.needs_auth("auto", "tcp://127.0.0.1:5555", "ipc:///tmp/w")
    assert security.needs_auth("auto", "tcp://127.0.0.1:5555", "tcp://192.168.1.5:5556")


def test_always_and_never_modes_ignore_the_addresses():
    assert security.needs_auth("always", "tcp://127.0.0.1:5555")
    assert not security.needs_auth("never", "tcp://192.168.1.5:5555")


def test_an_unknown_auth_mode_is_named():
    with pytest.raises(ValueError, match="'sometimes'"):
        security.needs_auth("sometimes", "tcp://127.0.0.1:5555")


# ---- key files --------------------------------------------------------------------------------------

def test_init_keys_writes_the_lab_layout(tmp_path):
    keys_dir = tmp_path / "keys"
    written = security.init_keys(keys_dir, actors=["arm0", "dog1"])
    expected = [keys_dir / "learner.key", keys_dir / "learner.key_secret",
                keys_dir / "actors" / "arm0.key", keys_dir / "actors" / "arm0.key_secret",
                keys_dir / "actors" / "dog1.key", keys_dir / "actors" / "dog1.key_secret"]
    assert sorted(written) == sorted(expected)
    assert all(path.is_file() for path in expected)


def test_secret_files_are_owner_only_and_public_files_are_readable(keys):
    for secret in [keys / "learner.key_secret", keys / "actors" / "arm0.key_secret"]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "learner.key").stat().st_mode) == 0o644


def test_public_file_holds_no_secret(keys):
    assert "secret-key" not in (keys / "learner.key").read_text()


def test_generated_pairs_match_and_zmq_auth_reads_them(tmp_path):
    public_path, secret_path = security.generate_keys(tmp_path, "robot")
    public, secret = security.load_secret(secret_path)
    assert security.load_public(public_path) == public
    assert zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(secret_path) == (public, secret)


def test_generate_keys_refuses_to_overwrite_a_secret(tmp_path):
    _, secret_path = security.generate_keys(tmp_path, "robot")
    before = secret_path.read_bytes()
    with pytest.raises(SecurityError, match="already exists.*delete") as info:
        security.generate_keys(tmp_path, "robot")
    assert str(secret_path) in str(info.value) and "\n" not in str(info.value)
    assert secret_path.read_bytes() == before


def test_init_keys_refuses_before_writing_anything_when_a_secret_exists(tmp_path):
    keys_dir = tmp_path / "keys"
    security.generate_keys(keys_dir / "actors", "dog1")
    with pytest.raises(SecurityError, match="dog1.key_secret already exists"):
        security.init_keys(keys_dir, actors=["arm0", "dog1"])
    assert not (keys_dir / "learner.key_secret").exists()
    assert not (keys_dir / "actors" / "arm0.key_secret").exists()


def test_a_key_name_with_a_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'../robot'"):
        security.generate_keys(tmp_path, "../robot")


def test_a_missing_key_file_is_named_in_one_line(tmp_path):
    missing = tmp_path / "learner.key"
    with pytest.raises(SecurityError, match="does not exist") as info:
        security.load_public(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_a_malformed_key_file_is_named_in_one_line(tmp_path):
    bad = tmp_path / "learner.key"
    bad.write_text('curve\n    public-key = "too-short"\n')
    with pytest.raises(SecurityError, match="no valid public-key") as info:
        security.load_public(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_a_secret_readable_by_others_is_refused_with_the_chmod_to_run(keys):
    secret = keys / "actors" / "arm0.key_secret"
    secret.chmod(0o644)
    with pytest.raises(SecurityError, match=f"mode 0644.*chmod 600 {secret}") as info:
        security.load_secret(secret)
    assert "\n" not in str(info.value)


def test_a_public_file_is_not_accepted_as_a_secret(tmp_path):
    public_path, _ = security.generate_keys(tmp_path, "robot")
    public_path.chmod(0o600)
    with pytest.raises(SecurityError, match="no valid secret-key"):
        security.load_secret(public_path)


def test_a_secret_with_someone_elses_public_key_is_refused(tmp_path):
    _, secret_path = security.generate_keys(tmp_path, "robot")
    other_public, _ = zmq.curve_keypair()
    text = secret_path.read_text()
    own_public = security.load_public(secret_path).decode()
    secret_path.write_text(text.replace(own_public, other_public.decode()))
    with pytest.raises(SecurityError, match="does not belong"):
        security.load_secret(secret_path)


def test_a_client_without_its_secret_is_told_where_it_was_looked_for(context, tmp_path):
    with pytest.raises(SecurityError, match="arm7") as info:
        security.configure_client(socket(context, zmq.DEALER), tmp_path, actor="arm7")
    assert str(tmp_path / "actors" / "arm7.key_secret") in str(info.value)


def test_a_server_with_no_actor_keys_is_refused(context, tmp_path):
    security.generate_keys(tmp_path, "learner")
    with pytest.raises(SecurityError, match="no actor public keys"):
        CurveServer(context, tmp_path)


# ---- server guards ---------------------------------------------------------------------------------

def test_configure_before_start_is_refused(context, keys):
    server = CurveServer(context, keys)
    with pytest.raises(SecurityError, match="before start"):
        server.configure(socket(context, zmq.ROUTER))


def test_configure_refuses_a_socket_from_another_context(context, keys):
    other = zmq.Context()
    try:
        with CurveServer(context, keys) as server:
            with pytest.raises(SecurityError, match="another zmq.Context"):
                server.configure(socket(other, zmq.ROUTER))
    finally:
        other.destroy(linger=0)


def test_a_second_server_on_one_context_is_refused(context, keys):
    with CurveServer(context, keys):
        with pytest.raises(SecurityError, match="one CurveServer per context"):
            CurveServer(context, keys).start()


# ---- real sockets ----------------------------------------------------------------------------------

def test_an_authorised_dealer_and_the_router_exchange_messages(context, keys):
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        dealer = socket(context, zmq.DEALER)
        security.configure_client(dealer, keys, actor="arm0")
        dealer.connect(address)
        dealer.send(b"chunk")
        assert router.poll(RECV_TIMEOUT_MS)
        frame = router.recv(copy=False)
        assert frame.get("User-Id") == "arm0"
        assert router.recv() == b"chunk"
        router.send_multipart([frame.bytes, b"ack"])
        assert dealer.poll(RECV_TIMEOUT_MS)
        assert dealer.recv() == b"ack"
        assert server.rejected == 0


def test_an_actor_key_not_in_actors_is_refused_and_counted(context, keys, stranger_keys):
    use_learner_key(stranger_keys, keys)
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        dealer = socket(context, zmq.DEALER)
        security.configure_client(dealer, stranger_keys, actor="arm0")
        dealer.connect(address)
        dealer.send(b"chunk")
        assert router.poll(int(SILENCE_S * 1000)) == 0
        assert wait_until(lambda: server.rejected >= 1)


def test_a_plain_client_gets_nothing_through_a_curve_server(context, keys):
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        dealer = socket(context, zmq.DEALER)
        dealer.connect(address)
        dealer.send(b"chunk")
        assert router.poll(int(SILENCE_S * 1000)) == 0
        # Refused before the key check (no keys at all), yet counted and logged once for the endpoint.
        assert wait_until(lambda: server.rejected_unkeyed >= 1)
        assert server.rejected >= server.rejected_unkeyed


def test_a_plain_client_is_logged_once_per_endpoint(context, keys, caplog):
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        with caplog.at_level("WARNING", logger="robotd.security"):
            clients = [socket(context, zmq.DEALER) for _ in range(3)]
            for client in clients:
                client.connect(address)
            assert wait_until(lambda: server.rejected_unkeyed >= 3)
            for client in clients:
                client.close()
        lines = [r for r in caplog.records if "without this session's CurveZMQ keys" in r.getMessage()]
        assert len(lines) == 1 and address in lines[0].getMessage()


def test_a_client_expecting_another_learner_key_gets_nothing_through(context, keys, stranger_keys):
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        dealer = socket(context, zmq.DEALER)
        # Right actor secret, wrong learner key: the client would be talking to an impostor.
        shutil.copy(stranger_keys / "learner.key", keys / "learner.key")
        security.configure_client(dealer, keys, actor="arm0")
        dealer.connect(address)
        dealer.send(b"chunk")
        assert router.poll(int(SILENCE_S * 1000)) == 0


def test_the_flat_layout_on_a_robot_pc_connects(context, keys, tmp_path):
    robot = tmp_path / "robot"
    robot.mkdir()
    shutil.copy(keys / "learner.key", robot / "learner.key")
    shutil.copy(keys / "actors" / "arm0.key_secret", robot / "arm0.key_secret")
    with CurveServer(context, keys) as server:
        router = socket(context, zmq.ROUTER)
        server.configure(router)
        address = bound(router)
        dealer = socket(context, zmq.DEALER)
        security.configure_client(dealer, robot, actor="arm0")
        dealer.connect(address)
        dealer.send(b"chunk")
        assert router.poll(RECV_TIMEOUT_MS)
        assert router.recv_multipart()[1] == b"chunk"


def publish_until(pub, sub, duration_s) -> bool:
    """Publishes weights repeatedly (a late subscriber misses early messages) until ``sub`` has one."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        pub.send(b"weights")
        if sub.poll(20):
            return sub.recv() == b"weights"
    return False


def subscriber(context, keys_dir):
    sub = socket(context, zmq.SUB)
    sub.subscribe(b"")
    security.configure_client(sub, keys_dir, actor="arm0")
    return sub


def test_an_authorised_subscriber_receives_published_weights(context, keys):
    with CurveServer(context, keys) as server:
        pub = socket(context, zmq.PUB)
        server.configure(pub)
        sub = subscriber(context, keys)
        sub.connect(bound(pub))
        assert publish_until(pub, sub, RECV_TIMEOUT_MS / 1000)


def test_an_unauthorised_subscriber_receives_no_weights(context, keys, stranger_keys):
    use_learner_key(stranger_keys, keys)
    with CurveServer(context, keys) as server:
        pub = socket(context, zmq.PUB)
        server.configure(pub)
        sub = subscriber(context, stranger_keys)
        sub.connect(bound(pub))
        assert not publish_until(pub, sub, SILENCE_S)
        assert server.rejected >= 1


def test_an_actor_named_by_its_id_uses_its_own_key_pair_when_network_actor_key_is_left_at_its_default(tmp_path):
    from robotd.security import init_keys, own_key_name
    init_keys(tmp_path / "keys", actors=["arm1", "arm2"])
    keys = tmp_path / "keys"
    assert own_key_name(keys, "actor", "arm1") == "arm1"           # robotd keys DIR --actors arm1,arm2
    assert own_key_name(keys, "actor", "arm3") == "actor"          # no such pair: the configured name
    assert own_key_name(keys, "arm2", "arm1") == "arm2"            # network.actor_key given: it wins
    assert own_key_name(keys, "actor", None) == "actor"
    assert own_key_name(keys, "actor", "../learner") == "actor"    # never a path
    assert own_key_name("", "actor", "arm1") == "actor"
