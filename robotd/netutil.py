"""Socket helpers shared by the processes: binding with clear errors, free loopback ports."""
from __future__ import annotations

import socket as pysocket

import zmq


class AddressError(RuntimeError):
    """An address that cannot be bound or reached; the message says which and what to do."""


def bind_or_explain(socket: zmq.Socket, address: str, what: str) -> str:
    """Binds ``socket`` to ``address``; a port in use or a bad address becomes one clear line."""
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise AddressError(f"{what}: {address} is already in use (another robotd running?): "
                               f"stop it or choose another port with --set") from None
        raise AddressError(f"{what}: cannot bind {address!r} ({exc.strerror}): "
                           f"use tcp://HOST:PORT with an address of this machine") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


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
