"""CurveZMQ keys and authentication for the actor <-> learner sockets when they leave the machine.

Every connection between a robot PC and the learner is encrypted and both ends are checked: the
actor knows the learner's public key (so it never takes weights from another peer) and the learner
admits only the actor public keys it was given (so it never takes experience from another peer).

Key layout made by ``init_keys(keys_dir, actors=["arm0", ...])``::

    keys_dir/learner.key              learner public key
    keys_dir/learner.key_secret       learner public + secret key (0600)
    keys_dir/actors/<actor>.key        one public key per actor
    keys_dir/actors/<actor>.key_secret one public + secret key per actor (0600)

Where the files go:

* robot PC: copy ``learner.key``, ``actors/<actor>.key`` and ``actors/<actor>.key_secret`` into
  the same relative places under its own ``keys_dir``. ``configure_client`` also accepts the flat
  layout ``keys_dir/learner.key`` + ``keys_dir/<actor>.key_secret`` on a robot PC that holds only
  its own files.
* learner: keeps ``learner.key_secret`` and the public ``actors/*.key`` files; it admits every
  public key in ``keys_dir/actors/``. Remove an actor's ``.key`` there (and restart the learner) to
  lock that robot out; no actor secret needs to stay on the learner.

The status channel follows the same rule as the experience channel (``secures``: ``auto`` when its address
leaves the machine, ``always``, ``never``) in every publisher and collector. The collector (``robotd train``,
``robotd watch``) is the CURVE server with ``learner.key_secret`` and admits ``actors/*.key`` and ``learner.key``
(``status_server``); the publishers are clients with the pairs they use anyway: the actor its own, the daemon
``daemon`` where there is one else its robot's (``daemon_key_name``), the learner ``learner`` (``actors/`` in
``robotd train``'s keys, else its own ``learner.key_secret``).

Files use the ZeroMQ certificate format, so ``zmq.auth.load_certificate`` reads them too.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import itertools
import os
import queue
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
LEARNER = "learner"
ACTORS_DIR = "actors"
AUTH_MODES = ("auto", "always", "never")

# libzmq sends every handshake on this context to whichever socket is bound here (RFC 27).
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_KEY_TEXT_LEN = 40  # Z85 text of a 32-byte CURVE key
_KEY_BYTES_LEN = 32
# Handshakes that fail before the ZAP handler is asked: a client without keys (NULL or PLAIN against CURVE) or one
# that breaks the protocol. Failures of the ZAP check itself are counted by the handler.
_UNKEYED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_monitor_ids = itertools.count()


class SecurityError(RuntimeError):
    """A key file or setup that cannot be used safely; the message is one line naming it and the fix."""


def curve_available() -> bool:
    """Whether the installed libzmq was built with CURVE (libsodium) support."""
    return bool(zmq.has("curve"))


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address stays on this machine; decided from the text alone, nothing is resolved.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local only for 127.0.0.0/8, ``[::1]`` and
    the name ``localhost``. Wildcards (``*``, ``0.0.0.0``), interface names, other host names and
    other transports count as leaving the machine, so the safe answer is the default.
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        return False
    scheme = scheme.lower()
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    # A connect address may name a source first ("tcp://src:port;dst:port"); the peer is the last part.
    endpoint = rest.rsplit(";", 1)[-1]
    if endpoint.startswith("["):
        host = endpoint[1:].partition("]")[0]
    else:
        host = endpoint.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def needs_auth(mode: str, *addresses: str) -> bool:
    """Whether sockets on ``addresses`` must use CURVE: ``auto`` (when any leaves the machine), ``always``, ``never``."""
    if mode == "auto":
        return any(not is_loopback(address) for address in addresses)
    if mode == "always":
        return True
    if mode == "never":
        return False
    raise ValueError(f"auth mode {mode!r} is not one of {', '.join(AUTH_MODES)}: choose one of those")


def secures_every_channel(mode: str) -> bool:
    """Whether ``network.auth`` asks for CURVE on every channel, loopback ones included (control and status too),
    as ``robotd train`` sets it with its per-session keys."""
    return mode == "always"


def secures(network, address: str) -> bool:
    """Whether the channel at ``address`` uses CurveZMQ: the experience channel's rule (``needs_auth``) for the
    control and status channels too, so that both ends of a channel decide alike. ``auto``: when the address
    leaves the machine; ``always``: always; ``never``: never. Under ``auto`` an empty address (a channel that is
    not used, e.g. no network.status) needs nothing."""
    if network.auth == "auto" and not address:
        return False
    return needs_auth(network.auth, address)


SESSION_CLIENTS = ("daemon", "learner")
"""Client key names ``robotd train`` makes besides the actor's: the daemon and the learner publish status."""
DAEMON_KEY = "daemon"
"""The daemon's own client pair (``robotd train`` makes one per session); see ``daemon_key_name``."""


def _channel_name(network, address: str) -> str:
    """The config key an address comes from, for messages."""
    for key in ("status", "control", "experience", "weights"):
        if getattr(network, key, None) == address:
            return f"network.{key} {address}"
    return address


def client_securer(network, name: str, address: str | None = None):
    """A function making a socket a CURVE client named ``name`` (its pair ``network.keys_dir/actors/NAME.key_secret``,
    or ``keys_dir/NAME.key_secret``) of the channel at ``address``, or None when that channel is not secured
    (``secures``). ``address`` defaults to ``network.status``, the channel every process publishes on. Unusable
    keys fail here, in one line."""
    address = network.status if address is None else address
    if not secures(network, address):
        return None
    if not network.keys_dir:
        if secures_every_channel(network.auth):
            raise SecurityError("network.auth=always secures every channel: set network.keys_dir to a key directory "
                                "(`robotd keys DIR`; robotd train makes one per session)")
        unused = " or leave network.status empty (no status)" if address == network.status else ""
        raise SecurityError(f"{_channel_name(network, address)} leaves this machine, so it uses CurveZMQ "
                            f"(network.auth=auto): set network.keys_dir to a key directory (`robotd keys DIR`){unused}, "
                            f"or network.auth=never on a trusted network")
    if not curve_available():
        raise SecurityError(f"network.auth={network.auth} needs CurveZMQ on {address}, which this libzmq lacks: "
                            f"install pyzmq with libsodium (pip install --force-reinstall pyzmq)")
    probe_context = zmq.Context()
    probe = probe_context.socket(zmq.DEALER)
    try:
        configure_client(probe, network.keys_dir, name)
    finally:
        probe.close(0)
        probe_context.term()
    return lambda socket: configure_client(socket, network.keys_dir, name)


def daemon_key_name(keys_dir: str | Path, configured: str, robot: str | None) -> str:
    """The client pair the daemon publishes status with: its own, ``daemon``, where ``keys_dir`` holds one
    (``robotd train`` makes one per session), else its robot's, the pair that robot's actor uses
    (``own_key_name``: network.actor_key, or the pair named by --robot-id while network.actor_key is left at its
    default). So on a robot PC the daemon and the actor need no more keys than the actor's."""
    if keys_dir and any(path.exists() for path in (Path(keys_dir) / ACTORS_DIR / f"{DAEMON_KEY}{SECRET_SUFFIX}",
                                                   Path(keys_dir) / f"{DAEMON_KEY}{SECRET_SUFFIX}")):
        return DAEMON_KEY
    return own_key_name(keys_dir, configured, robot)


def may_publish_as(key: str, process: str) -> bool:
    """Whether a status publisher holding the pair named ``key`` (its user id in the CURVE handshake) may publish
    as ``process``: the learner's pair as the learner only, and only it as the learner; the daemon pair (``robotd
    train`` makes one) as a daemon; a robot's pair as that robot's processes (``actor.KEY``, ``daemon.KEY``) or as
    the unnamed ones of a one-robot session (``actor``, ``daemon``), never as another robot's."""
    kind, _, robot = process.partition(".")
    if key == LEARNER or kind == LEARNER:
        return key == LEARNER and kind == LEARNER
    if key == DAEMON_KEY:
        return kind == "daemon"
    return robot in ("", key)


def server_for_every_channel(network, context: zmq.Context) -> CurveServer | None:
    """A started CurveServer for a process that binds a control socket when ``network.auth`` secures every
    channel (it serves with ``keys_dir/learner.key_secret``, the session's server key), else None."""
    if not secures_every_channel(network.auth):
        return None
    if not network.keys_dir:
        raise SecurityError("network.auth=always secures every channel: set network.keys_dir to a key directory "
                            "holding learner.key_secret (robotd train makes one per session)")
    server = CurveServer(context, network.keys_dir)
    server.start()
    return server


def status_server(network, context: zmq.Context, address: str | None = None) -> CurveServer | None:
    """A started CurveServer for a status collector bound at ``address`` (default ``network.status``) when that
    channel is secured (``secures``, the rule every publisher follows), else None.

    The collector serves as the learner does: with ``keys_dir/learner.key_secret`` (which the publishers know as
    ``learner.key``), admitting every ``keys_dir/actors/*.key`` and the learner's own ``learner.key`` (the learner
    on its own machine publishes with its own pair)."""
    address = network.status if address is None else address
    if not secures(network, address):
        return None
    if not network.keys_dir:
        why = ("network.auth=always secures every channel" if secures_every_channel(network.auth) else
               f"{address} leaves this machine, so status uses CurveZMQ (network.auth=auto)")
        raise SecurityError(f"{why}: set network.keys_dir to the key directory holding learner.key_secret and the "
                            f"robots' actors/*.key (the learner's), or network.auth=never on a trusted network")
    if not curve_available():
        raise SecurityError(f"network.auth={network.auth} needs CurveZMQ on {address}, which this libzmq lacks: "
                            f"install pyzmq with libsodium (pip install --force-reinstall pyzmq)")
    server = CurveServer(context, network.keys_dir, admit_own_key=True)
    server.start()
    return server


def session_keys(keys_dir: str | Path, actor: str) -> Path:
    """Makes ``robotd train``'s per-session keys in ``keys_dir`` (owner-only): the server pair and client pairs
    for the actor, the daemon and the learner. Returns ``keys_dir``."""
    keys_dir = Path(keys_dir)
    names = [actor, *(name for name in SESSION_CLIENTS if name != actor)]
    init_keys(keys_dir, actors=names)
    for directory in (keys_dir, keys_dir / ACTORS_DIR):
        directory.chmod(0o700)
    return keys_dir


def _check_name(name: str) -> None:
    """Rejects key names that would land outside the key directory or be hidden files."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"key name {name!r} is not a plain file name: use letters, digits, '-' or '_'")


def _certificate(public: bytes, secret: bytes | None) -> str:
    """The text of a ZeroMQ certificate file holding ``public`` and, for a secret file, ``secret``."""
    kind = "secret" if secret is not None else "public"
    lines = [
        f"#   ****  robotd CURVE {kind} key, made {datetime.datetime.now().isoformat(timespec='seconds')}  ****",
        "#   ZeroMQ certificate format (zmq.auth / czmq zcert)",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def generate_keys(keys_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Writes a new key pair as ``keys_dir/<name>.key`` (public) and ``<name>.key_secret`` (0600).

    Returns (public file, secret file). An existing secret is never overwritten: peers already
    trust the public key that belongs to it.
    """
    _check_name(name)
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path = keys_dir / f"{name}{PUBLIC_SUFFIX}"
    secret_path = keys_dir / f"{name}{SECRET_SUFFIX}"
    public, secret = zmq.curve_keypair()
    try:
        # O_EXCL makes the refusal race-free, and the mode is set at creation so the secret is never
        # readable by others, not even for a moment.
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecurityError(f"{secret_path} already exists: keep using it, or delete it and {public_path.name} "
                            f"to make a new pair (then hand out the new public key)") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(_certificate(public, secret))
    public_path.write_text(_certificate(public, None))
    public_path.chmod(0o644)
    return public_path, secret_path


def init_keys(keys_dir: str | Path, *, actors: Sequence[str] = ("actor",)) -> list[Path]:
    """Makes the lab layout (see the module docstring): the learner's pair and one pair per actor.

    Returns every file written. Nothing is written when any of the secrets already exists.
    """
    keys_dir = Path(keys_dir)
    actors = list(actors)
    if not actors:
        raise ValueError("init_keys needs at least one actor name: pass actors=['arm0', ...]")
    if len(set(actors)) != len(actors):
        raise ValueError(f"actor names {actors!r} repeat a name: give each robot its own name")
    for name in actors:
        _check_name(name)
    planned = [(keys_dir, LEARNER)] + [(keys_dir / ACTORS_DIR, name) for name in actors]
    # Check every secret first so a refusal does not leave a half-made layout behind.
    for directory, name in planned:
        secret_path = directory / f"{name}{SECRET_SUFFIX}"
        if secret_path.exists():
            raise SecurityError(f"{secret_path} already exists: keep the existing keys, or delete "
                                f"{keys_dir} (or that file) to make new ones")
    written: list[Path] = []
    for directory, name in planned:
        written.extend(generate_keys(directory, name))
    return written


def _read_field(path: Path, field: str) -> bytes | None:
    """The Z85 value of ``field`` (``public-key`` / ``secret-key``) in a certificate file, or None."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"key file {path} does not exist: create keys with robotd.security.init_keys "
                            f"or copy the file from the machine that made them") from None
    except OSError as exc:
        raise SecurityError(f"cannot read key file {path} ({exc.strerror}): check the path and its permissions") from None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(field.encode()) and b"=" in line:
            value = line.split(b"=", 1)[1].strip(b" \t'\"")
            if len(value) != _KEY_TEXT_LEN:
                return None
            try:
                if len(z85.decode(value)) != _KEY_BYTES_LEN:
                    return None
            except (ValueError, KeyError, IndexError):
                return None
            return value
    return None


def load_public(path: str | Path) -> bytes:
    """The Z85 public key in a key file (a ``.key`` or a ``.key_secret``)."""
    path = Path(path)
    public = _read_field(path, "public-key")
    if public is None:
        raise SecurityError(f"key file {path} has no valid public-key line: "
                            f"replace it with the file init_keys wrote")
    return public


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file that only its owner can read."""
    path = Path(path)
    public = load_public(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecurityError(f"secret key file {path} is open to group/others (mode {mode:04o}): "
                            f"run chmod 600 {path}")
    secret = _read_field(path, "secret-key")
    if secret is None:
        raise SecurityError(f"key file {path} has no valid secret-key line: "
                            f"use the .key_secret file init_keys wrote, not the public .key")
    if zmq.curve_public(secret) != public:
        raise SecurityError(f"key file {path} has a public key that does not belong to its secret key: "
                            f"replace it with the file init_keys wrote")
    return public, secret


def own_key_name(keys_dir: str | Path, configured: str, actor_id: str | None) -> str:
    """The actor key to use: ``configured`` (network.actor_key), except that an actor named by --actor-id or
    --robot-id whose own key pair is in ``keys_dir`` (``robotd keys DIR --actors NAME``) uses it while
    network.actor_key is left at its default, "actor"."""
    if configured != "actor" or not actor_id or not keys_dir:
        return configured
    try:
        _check_name(actor_id)
    except ValueError:
        return configured
    keys_dir = Path(keys_dir)
    found = any(path.exists() for path in (keys_dir / ACTORS_DIR / f"{actor_id}{SECRET_SUFFIX}",
                                           keys_dir / f"{actor_id}{SECRET_SUFFIX}"))
    return actor_id if found else configured


def configure_client(socket: zmq.Socket, keys_dir: str | Path, actor: str = "actor") -> None:
    """Makes ``socket`` a CURVE client of the learner; call before ``connect``.

    The learner's key is ``keys_dir/learner.key``; the actor's own pair is
    ``keys_dir/actors/<actor>.key_secret``, or ``keys_dir/<actor>.key_secret`` in the flat layout.
    """
    _check_name(actor)
    keys_dir = Path(keys_dir)
    nested = keys_dir / ACTORS_DIR / f"{actor}{SECRET_SUFFIX}"
    flat = keys_dir / f"{actor}{SECRET_SUFFIX}"
    if nested.exists():
        secret_path = nested
    elif flat.exists():
        secret_path = flat
    else:
        raise SecurityError(f"no secret key for actor {actor!r}: expected {nested} or {flat}; "
                            f"copy actors/{actor}.key_secret from the machine that ran init_keys")
    public, secret = load_secret(secret_path)
    server_key = load_public(keys_dir / f"{LEARNER}{PUBLIC_SUFFIX}")
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = server_key


class CurveServer:
    """Authenticator for one zmq.Context (a ZAP handler thread) that admits only the public keys in keys_dir/actors/*.key.

    The learner's secret and the actor keys are read when the server is made, so a new or removed
    actor key takes effect on the next learner start. ``rejected`` counts refused handshakes: keys not admitted
    (the ZAP check) and clients without keys or breaking the protocol (``rejected_unkeyed``, seen by a monitor
    on every socket it secures); each refused key, and each endpoint a client without keys knocked on, is
    logged once.
    Use ``with CurveServer(context, keys_dir) as server:`` or ``start()`` / ``stop()``; stop only
    after closing the sockets it secures, since libzmq admits every client once no handler runs.
    """

    def __init__(self, context: zmq.Context, keys_dir: str | Path, *, admit_own_key: bool = False) -> None:
        """``admit_own_key`` admits the server's own public key too (``learner.key``, as user id ``learner``): a
        status collector does, since the learner publishes its status with its own pair where it runs alone."""
        keys_dir = Path(keys_dir)
        self._context = context
        self._public, self._secret = load_secret(keys_dir / f"{LEARNER}{SECRET_SUFFIX}")
        actors_dir = keys_dir / ACTORS_DIR
        self._actors: dict[bytes, str] = {}
        for path in sorted(actors_dir.glob(f"*{PUBLIC_SUFFIX}")):
            self._actors[z85.decode(load_public(path))] = path.stem
        if not self._actors:
            raise SecurityError(f"no actor public keys in {actors_dir}: copy each robot's actors/<actor>.key "
                                f"there (init_keys makes them)")
        if admit_own_key:
            self._actors.setdefault(z85.decode(self._public), LEARNER)
        self.rejected = 0
        self.rejected_unkeyed = 0
        self._refused_logged: set[bytes] = set()
        self._monitors: queue.SimpleQueue[str] = queue.SimpleQueue()     # endpoints the handler thread connects
        self._thread: threading.Thread | None = None
        self._stop_pipe: zmq.Socket | None = None

    @property
    def actors(self) -> list[str]:
        """Names of the admitted actors (the file stems in keys_dir/actors/)."""
        return sorted(self._actors.values())

    def start(self) -> None:
        """Starts answering handshakes for this context; call before any CURVE server socket binds."""
        if self._thread is not None:
            return
        zap = self._context.socket(zmq.REP)
        zap.linger = 0
        try:
            zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close()
            if exc.errno == zmq.EADDRINUSE:
                raise SecurityError("this zmq.Context already has a ZAP authenticator: "
                                    "use one CurveServer per context") from None
            raise
        endpoint = f"inproc://robotd-curve-stop-{id(self)}"
        self._stop_pipe = self._context.socket(zmq.PAIR)
        self._stop_pipe.linger = 0
        self._stop_pipe.bind(endpoint)
        thread_pipe = self._context.socket(zmq.PAIR)
        thread_pipe.linger = 0
        thread_pipe.connect(endpoint)
        # Both sockets are made here so bind errors reach the caller; Thread.start is the memory
        # barrier libzmq needs before another thread uses them.
        self._thread = threading.Thread(target=self._serve, args=(zap, thread_pipe),
                                        name="robotd-curve-auth", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the handler thread; safe to call twice."""
        if self._thread is None:
            return
        self._stop_pipe.send(b"")
        self._thread.join()
        self._stop_pipe.close()
        self._thread = None
        self._stop_pipe = None

    def __enter__(self) -> CurveServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def configure(self, socket: zmq.Socket) -> None:
        """Makes ``socket`` a CURVE server with the learner's secret key; call before ``bind``."""
        # Without a running handler on the socket's own context libzmq admits any client key.
        if self._thread is None:
            raise SecurityError("CurveServer.configure called before start(): start the server first, "
                                "otherwise every client key would be admitted")
        if socket.context.underlying != self._context.underlying:
            raise SecurityError("CurveServer.configure got a socket from another zmq.Context: "
                                "make the socket from the context the CurveServer was given")
        socket.curve_server = True
        socket.curve_publickey = self._public
        socket.curve_secretkey = self._secret
        endpoint = f"inproc://robotd-curve-monitor-{os.getpid()}-{next(_monitor_ids)}"
        socket.monitor(endpoint, _UNKEYED_EVENTS)       # in the socket's own thread; read by the handler thread
        self._monitors.put(endpoint)

    def _serve(self, zap: zmq.Socket, pipe: zmq.Socket) -> None:
        """Handler thread: answers ZAP requests until the stop pipe fires."""
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        monitors: list[zmq.Socket] = []
        logged_endpoints: set[bytes] = set()
        try:
            while True:
                while not self._monitors.empty():
                    monitor = self._context.socket(zmq.PAIR)
                    monitor.linger = 0
                    monitor.connect(self._monitors.get())
                    poller.register(monitor, zmq.POLLIN)
                    monitors.append(monitor)
                events = dict(poller.poll(200))
                if pipe in events:
                    return
                if zap in events:
                    zap.send_multipart(self._answer(zap.recv_multipart()))
                for monitor in monitors:
                    if monitor in events:
                        self._unkeyed(parse_monitor_message(monitor.recv_multipart()), logged_endpoints)
        except zmq.ContextTerminated:
            # The context was terminated without stop(); closing below lets that term() finish.
            pass
        finally:
            for monitor in monitors:
                monitor.close()
            zap.close()
            pipe.close()

    def _unkeyed(self, event: dict, logged_endpoints: set[bytes]) -> None:
        """A handshake refused before the ZAP check (no keys, or a broken protocol); logged once per endpoint."""
        if not event["event"] & _UNKEYED_EVENTS:
            return
        self.rejected += 1
        self.rejected_unkeyed += 1
        endpoint = event.get("endpoint", b"")
        if endpoint not in logged_endpoints and len(logged_endpoints) < 100:
            logged_endpoints.add(endpoint)
            log.warning("refused a handshake on %s from a client without this session's CurveZMQ keys (%s); "
                        "further ones there are counted, not logged", endpoint.decode(errors="replace"),
                        "mechanism mismatch" if event.get("value") == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                        else "protocol error")

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one handshake: 200 with the actor name as user id, or 400."""
        # Frames: version, request id, domain, address, identity, mechanism, credentials...
        if len(request) < 6 or request[0] != b"1.0":
            self.rejected += 1
            request_id = request[1] if len(request) > 1 else b""
            return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
        request_id, address, mechanism = request[1], request[3], request[5]
        key = request[6] if len(request) > 6 else b""
        actor = self._actors.get(key) if mechanism == b"CURVE" else None
        if actor is not None:
            return [b"1.0", request_id, b"200", b"OK", actor.encode(), b""]
        self.rejected += 1
        # Once per key: a refused peer reconnects every few hundred ms and would flood the log.
        if key not in self._refused_logged:
            self._refused_logged.add(key)
            shown = z85.encode(key).decode() if mechanism == b"CURVE" and len(key) == _KEY_BYTES_LEN else "-"
            log.warning("refused %s handshake from %s: public key %s is not in %s/*.key",
                        mechanism.decode(errors="replace"), address.decode(errors="replace"), shown, ACTORS_DIR)
        return [b"1.0", request_id, b"400", b"unknown public key", b"", b""]
