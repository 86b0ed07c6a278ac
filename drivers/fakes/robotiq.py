"""A fake Robotiq 2F gripper URCap on loopback: the ASCII socket protocol of drivers/real/robotiq.py.

Answers ``SET <VAR> <int>`` with ``ack`` and ``GET <VAR>`` with ``<VAR> <int>`` for ACT, GTO, POS,
SPE, FOR, STA and OBJ. Activation takes ``activation_s``; the fingers travel the full stroke in
``stroke_s`` toward the requested position and stop early at ``object_at`` (an object between the
fingers, OBJ 2), else OBJ 3 on arrival. A malformed line gets ``error`` and is counted. For tests and
software-in-the-loop runs; it refuses anything but a loopback address.
"""
from __future__ import annotations

import socket
import threading
import time

from drivers.sim.realism import check_loopback
from drivers.real.robotiq import ROBOTIQ_PORT

VARIABLES = ("ACT", "GTO", "POS", "SPE", "FOR", "STA", "OBJ")


class FakeRobotiq:
    """``with FakeRobotiq("127.0.0.2") as gripper: ...``; ``address`` is (host, port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = ROBOTIQ_PORT, *, stroke_s: float = 0.5,
                 activation_s: float = 0.1, object_at: int | None = None) -> None:
        check_loopback("FakeRobotiq", host)
        self.stroke_s, self.activation_s, self.object_at = float(stroke_s), float(activation_s), object_at
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(4)
        self._server.settimeout(0.1)
        self.address = self._server.getsockname()
        self.counters = {"requests": 0, "malformed": 0, "connections": 0}
        self._lock = threading.Lock()
        self._activated_at: float | None = None
        self._target = 0
        self._position = 0.0
        self._moved_at = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "FakeRobotiq":
        """Serve connections on background threads."""
        thread = threading.Thread(target=self._accept, name="fake-robotiq", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close every socket."""
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        self._server.close()

    def __enter__(self) -> "FakeRobotiq":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    def position(self) -> int:
        """The fingers' position now, 0 open .. 255 closed."""
        with self._lock:
            return self._advance()

    def _advance(self) -> int:
        now = time.monotonic()
        step = 255.0 * (now - self._moved_at) / self.stroke_s
        self._moved_at = now
        goal = self._target if self.object_at is None or self._target < self.object_at else self.object_at
        if self._position < goal:
            self._position = min(goal, self._position + step)
        else:
            self._position = max(goal, self._position - step)
        return int(round(self._position))

    def _value(self, var: str) -> int:
        position = self._advance()
        if var == "STA":
            active = self._activated_at is not None and time.monotonic() - self._activated_at >= self.activation_s
            return 3 if active else (1 if self._activated_at is not None else 0)
        if var == "POS":
            return position
        if var == "OBJ":
            if self.object_at is not None and self._target >= self.object_at and position >= self.object_at:
                return 2
            return 3 if position == self._target else 0
        return {"ACT": int(self._activated_at is not None), "GTO": 1, "SPE": 255, "FOR": 100}[var]

    def _answer(self, line: str) -> str:
        parts = line.split()
        with self._lock:
            if len(parts) == 2 and parts[0] == "GET" and parts[1] in VARIABLES:
                return f"{parts[1]} {self._value(parts[1])}"
            if len(parts) == 3 and parts[0] == "SET" and parts[1] in VARIABLES and parts[2].isdigit():
                value = int(parts[2])
                self._advance()
                if parts[1] == "ACT" and value == 1 and self._activated_at is None:
                    self._activated_at = time.monotonic()
                elif parts[1] == "POS":
                    self._target = min(255, value)
                return "ack"
        self.counters["malformed"] += 1
        return "error"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            self.counters["connections"] += 1
            thread = threading.Thread(target=self._serve, args=(conn,), name="fake-robotiq-conn", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(256)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                if len(buffer) > 4096:
                    self.counters["malformed"] += 1
                    return
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    self.counters["requests"] += 1
                    reply = self._answer(raw.decode("ascii", errors="replace").strip())
                    try:
                        conn.sendall(reply.encode("ascii") + b"\n")
                    except OSError:
                        return
