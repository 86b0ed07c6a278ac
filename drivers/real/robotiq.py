"""A Robotiq 2F gripper through its URCap socket on the robot controller (TCP port 63352, ASCII lines).

The URCap answers one line per request: ``SET <VAR> <value>`` gets ``ack``, ``GET <VAR>`` gets
``<VAR> <value>``. Variables used here: ACT (activate), GTO (go to the requested position), POS
(0 open .. 255 closed; the requested position on SET, the measured one on GET), SPE and FOR (speed
and force 0..255), STA (3 = activated) and OBJ (0 moving, 1/2 stopped on an object, 3 at the
requested position).

``RobotiqGripper`` keeps one connection; a background thread sends the newest requested closure
when it changes and polls the measured position and object status, so ``closure()`` never waits
on the network. A request that goes unanswered for ``timeout_s`` marks the link lost.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger("robotd.robotiq")

ROBOTIQ_PORT = 63352


class RobotiqGripper:
    """The gripper at ``host:port``: ``connect()``, ``command(closure)``, ``closure()``, ``status()``, ``close()``."""

    def __init__(self, host: str, port: int = ROBOTIQ_PORT, *, speed: int = 255, force: int = 100,
                 poll_hz: float = 50.0, timeout_s: float = 0.5, owner: str = "gripper") -> None:
        for what, value, low, high in (("gripper_port", port, 1, 65535), ("gripper speed", speed, 0, 255),
                                       ("gripper force", force, 0, 255)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{owner}: {what} {value!r} must be an integer in [{low}, {high}]")
        self.host, self.port, self.speed, self.force = host, port, speed, force
        self.poll_s = 1.0 / float(poll_hz)
        self.timeout_s = float(timeout_s)
        self.owner = owner
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._requested: int | None = None
        self._sent: int | None = None
        self._position = 0
        self._object = 0
        self.lost: str | None = None
        self.counters = {"requests": 0, "polls": 0, "bad_replies": 0}

    # ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connects, activates the gripper if needed (bounded wait) and starts polling."""
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise RuntimeError(f"{self.owner}: cannot connect to the Robotiq URCap at {self.host}:{self.port} "
                               f"({exc}): is the URCap installed and the gripper plugged in?") from None
        self._sock.settimeout(self.timeout_s)
        self._buffer = b""
        self.lost = None
        if self._get("STA") != 3:
            self._set("ACT", 1)
            deadline = time.monotonic() + 5.0
            while self._get("STA") != 3:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"{self.owner}: the gripper at {self.host}:{self.port} did not activate "
                                       f"within 5 s")
                time.sleep(0.05)
        self._set("SPE", self.speed)
        self._set("FOR", self.force)
        self._set("GTO", 1)
        self._position = self._get("POS")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="robotiq", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops polling and closes the connection (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def command(self, closure: float) -> None:
        """Requests a closure: 0 fully open .. 1 fully closed (clipped); sent by the polling thread."""
        self._requested = int(round(min(1.0, max(0.0, float(closure))) * 255))

    def closure(self) -> float:
        """The measured closure, 0 open .. 1 closed (the newest poll)."""
        return self._position / 255.0

    def object_detected(self) -> bool:
        """True when the fingers stopped on an object (OBJ 1 or 2)."""
        return self._object in (1, 2)

    # ----------------------------------------------------------------------------------------
    def _request(self, line: str) -> str:
        with self._lock:
            if self._sock is None:
                raise RuntimeError(f"{self.owner}: not connected")
            self._sock.sendall(line.encode("ascii") + b"\n")
            self.counters["requests"] += 1
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(256)
                if not chunk:
                    raise ConnectionError("the URCap closed the connection")
                self._buffer += chunk
                if len(self._buffer) > 4096:
                    raise ConnectionError("reply without a line end")
            reply, self._buffer = self._buffer.split(b"\n", 1)
        return reply.decode("ascii", errors="replace").strip()

    def _set(self, var: str, value: int) -> None:
        reply = self._request(f"SET {var} {value}")
        if reply != "ack":
            self.counters["bad_replies"] += 1
            raise RuntimeError(f"{self.owner}: SET {var} {value} got {reply!r}, expected 'ack'")

    def _get(self, var: str) -> int:
        reply = self._request(f"GET {var}")
        name, _, value = reply.partition(" ")
        if name != var or not value.strip().lstrip("-").isdigit():
            self.counters["bad_replies"] += 1
            raise RuntimeError(f"{self.owner}: GET {var} got {reply!r}, expected '{var} <integer>'")
        return int(value)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                requested = self._requested
                if requested is not None and requested != self._sent:
                    self._set("POS", requested)
                    self._sent = requested
                self._position = self._get("POS")
                self._object = self._get("OBJ")
                self.counters["polls"] += 1
            except (OSError, ConnectionError, RuntimeError) as exc:
                self.lost = f"{self.owner}: the Robotiq URCap at {self.host}:{self.port} stopped answering ({exc})"
                log.error("%s", self.lost)
                return
            self._stop.wait(max(0.0, self.poll_s - (time.monotonic() - started)))
