"""Socket helpers shared by the processes: binding with clear errors, free loopback ports."""
from __future__ import annotations

import socket as pysocket

import zmq


class AddressError(RuntimeError):
    """An address that cannot be bound or reached; the message says which and what to do."""


def bind_or_explain(socket: zmq.Socket, address: str, what: str, *, fix: str = "with --set") -> str:
    """Binds ``socket`` to ``address``; a port in use or a bad address becomes one clear line (``fix`` says where
    another port is chosen). Returns the address bound."""
    problem = _tcp_port_problem(address)
    if problem is not None:                 # libzmq would bind tcp://HOST:99999 as port 34463
        raise AddressError(f"{what}: cannot bind {address!r} ({problem}): use tcp://HOST:PORT with an address of "
                           f"this machine and a port from 1 to 65535")
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise AddressError(f"{what}: {address} is already in use (another robotd running?): "
                               f"stop it or choose another port {fix}") from None
        raise AddressError(f"{what}: cannot bind {address!r} ({exc.strerror}): "
                           f"use tcp://HOST:PORT with an address of this machine") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def _tcp_port_problem(address: str) -> str | None:
    """What is wrong with the port of a ``tcp://`` address (libzmq wraps some ports out of range), or None."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme.lower() != "tcp" or ":" not in rest:
        return None                         # libzmq refuses those itself
    port = rest.rsplit(":", 1)[1]
    if port == "*" or (port.isdigit() and int(port) <= 65535):
        return None
    return f"port {port!r} is not a number from 0 to 65535"


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free a moment ago on ``host`` (for a one-machine session)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports
