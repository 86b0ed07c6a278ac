"""A fake Unitree A1 that speaks the real low-level UDP protocol, backed by the MuJoCo A1 (drivers/mujoco_sim.A1Sim).

It binds a UDP socket on a loopback address and answers every well-formed LowCmd with one LowState,
as the robot does: the physics runs on the wall clock (whole 1 ms steps up to the moment the
command arrives, at most 20 of them per command, so a fake starved of CPU slows its world down
rather than its replies), the command is latched, and the state after it is sent back to the sender,
with the robot's millisecond ``tick`` since start. A motor whose q is the "do not use" PosStopF
(or whose dq is VelStopF) gets no position (or velocity) term, as on the robot; a slot in idle
mode gets no torque at all. Datagrams of the wrong size, with a bad CRC or not in low-level mode
are counted and dropped without a reply; nothing received is trusted beyond the codec. The foot
force sensors report each foot's MuJoCo contact normal force in newtons.

What reached the wire, for tests: ``last_command`` (the last well-formed command, decoded) and
``commands`` (the latest ones, oldest first, as (host receive time ns, decoded command)).

Fault injections for tests of a driver's safety paths:

- ``go_silent()`` / ``resume()``: stop answering (a link that lost its return path); commands are
  still received, checked, counted and applied, only no state goes back.
- ``tilt(rpy)``: every state sent reports that IMU attitude (rpy and the matching quaternion)
  instead of the simulated one, as if the robot had fallen over; ``tilt(None)`` ends it.

For tests of the real A1 driver without hardware: ``with FakeA1() as robot: ...robot.address...``.
It refuses to bind anything but a loopback address.
"""
from __future__ import annotations

import socket
import collections
import threading
import time

import numpy as np

from drivers.real import a1_wire
from drivers.sim.realism import check_loopback

_NS_PER_S = 1_000_000_000
COMMAND_HISTORY = 2048  # commands kept in FakeA1.commands (about 4 s at 500 Hz)
MAX_CATCH_UP_STEPS = 20  # physics steps (1 ms each) one command may catch up; a starved fake runs slower beyond it


def rpy_to_quaternion(rpy) -> np.ndarray:
    """The (w, x, y, z) quaternion of roll, pitch, yaw (rad, ZYX convention), (4,) float64."""
    half_r, half_p, half_y = (0.5 * float(v) for v in rpy)
    cr, sr = np.cos(half_r), np.sin(half_r)
    cp, sp = np.cos(half_p), np.sin(half_p)
    cy, sy = np.cos(half_y), np.sin(half_y)
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])


class FakeA1:
    """The fake robot: ``start()`` serves on a thread until ``stop()``; ``address`` is (host, port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, start: str = "stand") -> None:
        check_loopback("FakeA1", host)
        if start not in ("stand", "lying"):
            raise ValueError(f"FakeA1: start must be 'stand' or 'lying', got {start!r}")
        import mujoco  # imported here so importing drivers never needs mujoco

        from drivers.sim import mujoco_sim

        self.sim = mujoco_sim.A1Sim()
        if start == "lying":
            self.sim.reset(np.tile([0.0, 1.1, -2.6], 4))
            self.sim.damp()
            self.sim.step(1000)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, port))
        self._socket.settimeout(0.05)
        self.address = self._socket.getsockname()
        self.counters = {"commands": 0, "states": 0, "malformed": 0, "unanswered": 0, "physics_skipped_ms": 0}
        self.last_command: dict | None = None
        self.commands: collections.deque = collections.deque(maxlen=COMMAND_HISTORY)
        self._silent = False
        self._tilt_rpy: np.ndarray | None = None
        model = self.sim.model
        self._foot_geoms = tuple(int(model.geom(f"{leg}_foot").id) for leg in self.sim.LEGS)
        self._force6 = np.zeros(6)
        self._mujoco = mujoco
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._t0_ns = time.monotonic_ns()
        self._sim_ns = 0
        self._step_ns = round(self.sim.timestep_s * _NS_PER_S)

    # ----------------------------------------------------------------------------------------
    def start(self) -> "FakeA1":
        """Serve on a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="fake-a1", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> "FakeA1":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def go_silent(self) -> None:
        """Stop answering: commands are still received, checked, counted and applied, but no state is sent."""
        self._silent = True

    def resume(self) -> None:
        """Answer every well-formed command again."""
        self._silent = False

    def tilt(self, rpy=None) -> None:
        """Fault injection: report the IMU attitude ``rpy`` (roll, pitch, yaw rad) in every state; None ends it."""
        if rpy is None:
            self._tilt_rpy = None
            return
        value = np.asarray(rpy, dtype=np.float64)
        if value.shape != (3,) or not np.all(np.isfinite(value)):
            raise ValueError(f"FakeA1.tilt: rpy must be 3 finite angles in rad (roll, pitch, yaw), got {rpy!r}; "
                             f"pass e.g. (1.2, 0, 0), or None to end the fault")
        self._tilt_rpy = value

    @property
    def tick_ms(self) -> int:
        """The robot's clock: milliseconds since the fake started (wraps at 2**32 as the robot's does)."""
        return ((time.monotonic_ns() - self._t0_ns) // 1_000_000) & 0xFFFFFFFF

    # ----------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Step the physics in whole steps up to now (never backwards), at most MAX_CATCH_UP_STEPS per command.

        A fake starved of CPU (a Python thread on a busy machine) would otherwise fall into a spiral: the longer
        it waits, the more physics the next command must catch up, the later its reply. Beyond the cap the
        world runs in slow motion instead (counted in ``counters["physics_skipped_ms"]``), and every command
        is answered promptly, as the robot's own controller would."""
        elapsed = time.monotonic_ns() - self._t0_ns
        n = (elapsed - self._sim_ns) // self._step_ns
        if n > 0:
            stepped = min(int(n), MAX_CATCH_UP_STEPS)
            self.sim.step(stepped)
            self._sim_ns += int(n) * self._step_ns
            self.counters["physics_skipped_ms"] += (int(n) - stepped) * self._step_ns // 1_000_000

    def _apply(self, command: dict) -> None:
        """Latch a decoded command on the simulated motors, with the robot's "do not use" rules."""
        active = command["mode"] == a1_wire.MODE_SERVO
        use_q = active & (np.abs(command["q"]) < a1_wire.POS_STOP_F / 2)
        use_dq = active & (np.abs(command["dq"]) < a1_wire.VEL_STOP_F / 2)
        q_now, dq_now = self.sim.q(), self.sim.dq()
        self.sim.command_motors(np.where(use_q, command["q"], q_now), np.where(use_dq, command["dq"], dq_now),
                                np.where(use_q, command["kp"], 0.0), np.where(use_dq, command["kd"], 0.0),
                                np.where(active, command["tau"], 0.0))

    def foot_forces_n(self) -> np.ndarray:
        """Each foot's contact normal force with the world, newtons, (4,) in FR, FL, RR, RL order."""
        mujoco = self._mujoco
        sim = self.sim
        data = sim.data
        forces = np.zeros(len(self._foot_geoms))
        for i in range(data.ncon):
            contact = data.contact[i]
            for foot, geom in enumerate(self._foot_geoms):
                if geom in (int(contact.geom1), int(contact.geom2)):
                    mujoco.mj_contactForce(sim.model, data, i, self._force6)
                    forces[foot] += abs(float(self._force6[0]))
        return forces

    def state_datagram(self) -> bytes:
        """The LowState the robot would send now (with the injected tilt, if any)."""
        sim = self.sim
        imu = sim.imu()
        quaternion = imu["quaternion"]
        if self._tilt_rpy is not None:
            roll, pitch, yaw = self._tilt_rpy
            quaternion = rpy_to_quaternion(self._tilt_rpy)
        else:
            w, x, y, z = quaternion
            roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
            pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
            yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        feet = np.clip(np.rint(self.foot_forces_n()), 0, 32767)
        return a1_wire.encode_low_state(q=sim.q(), dq=sim.dq(), quaternion=quaternion,
                                        gyroscope=imu["gyroscope"], accelerometer=imu["accelerometer"],
                                        rpy=(roll, pitch, yaw), tau_est=sim.tau(), foot_force=feet,
                                        foot_force_est=feet, tick=self.tick_ms)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._socket.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                command = a1_wire.decode_low_cmd(data)
                if command["level"] != a1_wire.LOWLEVEL:
                    raise a1_wire.A1WireError(f"LowCmd: levelFlag {command['level']:#04x} is not low level (0xff)")
            except a1_wire.A1WireError:
                self.counters["malformed"] += 1
                continue
            received_ns = time.monotonic_ns()
            self.last_command = command
            self.commands.append((received_ns, command))
            with self._lock:
                self._advance()
                self._apply(command)
                reply = None if self._silent else self.state_datagram()
            self.counters["commands"] += 1
            if reply is None:
                self.counters["unanswered"] += 1
                continue
            self.counters["states"] += 1          # counted before it leaves, so a peer that has it sees it counted
            try:
                self._socket.sendto(reply, sender)
            except OSError:
                self.counters["states"] -= 1
