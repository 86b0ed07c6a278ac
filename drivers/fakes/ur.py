"""A fake Universal Robots controller that the real ``ur-rtde`` client can drive, backed by the MuJoCo UR5.

It serves, on one loopback address, the ports a UR controller serves and ur-rtde uses:

- RTDE (30004): protocol version ``V``, controller version ``v``, output (``O``) and input (``I``)
  recipe setups, ``S`` start / ``P`` pause, and ``U`` data packages both ways. Every output
  variable of the public RTDE guide is known (``OUTPUT_TYPES``); after ``S`` each connection gets
  one data package per period of the frequency it asked for (-1 or 0: the controller's own rate,
  125 Hz on a CB3, 500 Hz on an e-Series), sent on deadlines from its own thread. Incoming data
  packages are decoded by their recipe's fields into the controller's input registers.
- Dashboard (29999): the text protocol, one line per command and one line per answer.
- Script (30001, 30002, 30003): URScript text. A complete program (``def name():`` .. ``end``)
  starts "running" (runtime_state 2 PLAYING), and from then on the controller behaves like
  ur-rtde's control script: the command id in ``input_int_register_0``, parameters in
  ``input_double_register_0..``, and 1 (ready) / 2 (done) in ``output_int_register_0``.

The arm is drivers/sim_ur5.SimUR5 on the host clock: servoJ sets servo targets, speedJ joint
velocities, speedL the tool's linear velocity (the tool held pointing down), moveJ moves there in
joint space and answers "done" on arrival (an asynchronous moveJ answers at once and reports its run
in the async progress register, output_int_register_2, as the script does), the stop commands hold the
arm where it is. A protective stop (injected, triggered by command 31, or an arm link pushing into
something), a safeguard stop or an emergency stop freezes the arm and makes it ignore commands until the
dashboard's ``unlock protective stop`` (or ``safeguard_stop(False)``, ``emergency_stop(False)``). The
script's RTDE watchdog (command 35) stops the program when input_int_register_0 goes without an update
for longer than its period; the controller's own cycle thread checks it, with or without clients.

``FakeURController`` runs the server in a child process (``python -m drivers.fakes.ur --control``, driven
by JSON lines on its stdin), because the ur-rtde control interface holds the GIL while it connects: a
server thread in the same process would never answer it. Faults to inject: ``protective_stop()``,
``safeguard_stop()``, ``emergency_stop()``, ``vanish()`` (SIGKILL: every link closes at once, as a crashed
controller) and ``freeze()`` / ``thaw()`` (SIGSTOP / SIGCONT: links stay open but go silent, as a pulled cable).
Everything received is parsed by hand; malformed input is counted and its connection closed.
Only loopback addresses are served, so parallel tests each take their own (127.0.0.2, ...).

    with FakeURController("127.0.0.2") as ur:
        rtde_r = rtde_receive.RTDEReceiveInterface(ur.host)

``python -m drivers.fakes.ur --host 127.0.0.2 [--version 5.11.0.0]`` serves until Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np

from drivers.sim.realism import check_loopback

RTDE_PORT = 30004
DASHBOARD_PORT = 29999
SCRIPT_PORTS = (30001, 30002, 30003)  # primary, secondary, realtime: each accepts URScript
CB3_VERSION = (3, 15, 8, 0)
E_SERIES_VERSION = (5, 11, 0, 0)
# ur-rtde (PolyScope >= 5.6, host not localhost) reads the serial number while it connects and raises
# RuntimeError unless it is all digits, as a real one is.
DEFAULT_SERIAL = "20235500001"

# RTDE package types.
RTDE_REQUEST_PROTOCOL_VERSION = 86  # 'V'
RTDE_GET_URCONTROL_VERSION = 118  # 'v'
RTDE_TEXT_MESSAGE = 77  # 'M'
RTDE_DATA_PACKAGE = 85  # 'U'
RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS = 79  # 'O'
RTDE_CONTROL_PACKAGE_SETUP_INPUTS = 73  # 'I'
RTDE_CONTROL_PACKAGE_START = 83  # 'S'
RTDE_CONTROL_PACKAGE_PAUSE = 80  # 'P'
_HEADER = struct.Struct(">HB")
_MAX_PACKAGE = 65535

# RTDE type name -> struct format (big-endian on the wire).
TYPE_FORMATS = {
    "BOOL": "?", "UINT8": "B", "UINT32": "I", "UINT64": "Q", "INT32": "i", "DOUBLE": "d",
    "VECTOR3D": "3d", "VECTOR6D": "6d", "VECTOR6INT32": "6i", "VECTOR6UINT32": "6I",
}

# Robot modes, safety modes, runtime states and status bits as the RTDE guide numbers them.
ROBOT_MODE_RUNNING = 7
SAFETY_MODE_NORMAL = 1
SAFETY_MODE_PROTECTIVE_STOP = 3
SAFETY_MODE_SAFEGUARD_STOP = 5
SAFETY_MODE_ROBOT_EMERGENCY_STOP = 7
RUNTIME_STOPPED = 1
RUNTIME_PLAYING = 2
JOINT_MODE_RUNNING = 253
SAFETY_BIT_NORMAL = 1 << 0
SAFETY_BIT_PROTECTIVE_STOPPED = 1 << 2
SAFETY_BIT_SAFEGUARD_STOPPED = 1 << 4
SAFETY_BIT_ROBOT_EMERGENCY_STOPPED = 1 << 6
SAFETY_BIT_EMERGENCY_STOPPED = 1 << 7
SAFETY_BIT_STOPPED_DUE_TO_SAFETY = 1 << 10
ROBOT_STATUS_POWER_ON = 1 << 0
ROBOT_STATUS_PROGRAM_RUNNING = 1 << 1

# ur-rtde's control script: command ids in input_int_register_0, and its answers in output_int_register_0.
CMD_NONE = 0
CMD_MOVEJ = 1
CMD_SPEEDJ = 9
CMD_SPEEDL = 10
CMD_SERVOJ = 11
CMD_SPEED_STOP = 15
CMD_SERVO_STOP = 16
CMD_PROTECTIVE_STOP = 31
CMD_STOPL = 33
CMD_STOPJ = 34
CMD_SET_WATCHDOG = 35
CMD_STOP_SCRIPT = 255
SCRIPT_READY = 1
SCRIPT_DONE = 2
# The script's async progress register (output_int_register_2): bit 15 "running", bits 16-22 a write count,
# bits 24-30 the operation id (incremented when an operation starts), the progress in bits 0-14.
ASYNC_RUNNING = 1 << 15
# Commands the script handles every cycle and answers with "ready" (the client does not wait for them).
_REALTIME_COMMANDS = frozenset({6, 9, 10, 11, 12, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})
_STOP_COMMANDS = frozenset({CMD_SPEED_STOP, CMD_SERVO_STOP, CMD_STOPL, CMD_STOPJ})
CONTACT_STOP_N = 50.0  # an arm link pushing on anything harder than this latches a protective stop
_ARRIVED_RAD = 0.002  # a moveJ is done when every joint is this close to its goal ...
_SETTLED_RAD_S = 0.02  # ... and this slow


def _output_types() -> dict[str, str]:
    """Every controller output the RTDE guide lists, name -> RTDE type."""
    table = {"timestamp": "DOUBLE"}
    for name in ("target_q", "target_qd", "target_qdd", "target_current", "target_moment", "actual_q", "actual_qd",
                 "actual_current", "actual_current_window", "joint_control_output", "actual_TCP_pose",
                 "actual_TCP_speed", "actual_TCP_force", "target_TCP_pose", "target_TCP_speed", "joint_temperatures",
                 "actual_joint_voltage", "payload_inertia", "ft_raw_wrench", "actual_current_as_torque",
                 "joint_position_deviation_ratio", "target_current_window"):
        table[name] = "VECTOR6D"
    for name in ("actual_execution_time", "speed_scaling", "target_speed_fraction", "actual_momentum",
                 "actual_main_voltage", "actual_robot_voltage", "actual_robot_current", "standard_analog_input0",
                 "standard_analog_input1", "standard_analog_output0", "standard_analog_output1", "io_current",
                 "tool_analog_input0", "tool_analog_input1", "tool_output_current", "tool_temperature",
                 "tcp_force_scalar", "payload", "speed_scaling_combined", "collision_detection_ratio",
                 "actual_robot_energy_consumed", "actual_robot_braking_energy_dissipated"):
        table[name] = "DOUBLE"
    table["external_force_torque"] = "VECTOR6D"
    for name in ("actual_tool_accelerometer", "elbow_position", "elbow_velocity", "payload_cog"):
        table[name] = "VECTOR3D"
    for name in ("robot_mode", "safety_mode", "safety_status", "tool_output_voltage"):
        table[name] = "INT32"
    for name in ("runtime_state", "robot_status_bits", "safety_status_bits", "analog_io_types",
                 "euromap67_input_bits", "euromap67_output_bits", "euromap67_24V_voltage", "euromap67_24V_current",
                 "tool_mode", "tool_analog_input_types", "output_bit_registers0_to_31", "output_bit_registers32_to_63",
                 "input_bit_registers0_to_31", "input_bit_registers32_to_63", "script_control_line",
                 "time_scale_source", "standard_digital_output_mask", "speed_slider_mask"):
        table[name] = "UINT32"
    for name in ("actual_digital_input_bits", "actual_digital_output_bits", "actual_configurable_digital_input_bits",
                 "actual_configurable_digital_output_bits"):
        table[name] = "UINT64"
    for name in ("tool_output_mode", "tool_digital_output0_mode", "tool_digital_output1_mode"):
        table[name] = "UINT8"
    table["joint_mode"] = "VECTOR6INT32"
    for i in range(48):
        table[f"output_int_register_{i}"] = "INT32"
        table[f"output_double_register_{i}"] = "DOUBLE"
        table[f"input_int_register_{i}"] = "INT32"
        table[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        table[f"output_bit_register_{i}"] = "BOOL"
        table[f"input_bit_register_{i}"] = "BOOL"
    # ur-rtde spells some names with an underscore before the index.
    for i in (0, 1):
        table[f"standard_analog_input_{i}"] = "DOUBLE"
        table[f"standard_analog_output_{i}"] = "DOUBLE"
    return table


def _input_types() -> dict[str, str]:
    """Every controller input the RTDE guide lists, name -> RTDE type."""
    table = {}
    for name in ("standard_digital_output_mask", "standard_digital_output", "configurable_digital_output_mask",
                 "configurable_digital_output", "tool_digital_output_mask", "tool_digital_output",
                 "standard_analog_output_mask", "standard_analog_output_type"):
        table[name] = "UINT8"
    for name in ("standard_analog_output_0", "standard_analog_output_1", "speed_slider_fraction"):
        table[name] = "DOUBLE"
    for name in ("speed_slider_mask", "input_bit_registers0_to_31", "input_bit_registers32_to_63"):
        table[name] = "UINT32"
    table["external_force_torque"] = "VECTOR6D"
    for i in range(48):
        table[f"input_int_register_{i}"] = "INT32"
        table[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        table[f"input_bit_register_{i}"] = "BOOL"
    return table


OUTPUT_TYPES = _output_types()
INPUT_TYPES = _input_types()


class RTDEProtocolError(ValueError):
    """A package that breaks the RTDE protocol (bad size, unknown type, wrong payload)."""


def encode_message(kind: int, payload: bytes = b"") -> bytes:
    """One RTDE package: uint16 size (header included), uint8 type, payload."""
    size = _HEADER.size + len(payload)
    if size > _MAX_PACKAGE:
        raise ValueError(f"RTDE package of {size} bytes is larger than {_MAX_PACKAGE}; send fewer variables")
    return _HEADER.pack(size, kind) + payload


class Recipe:
    """An RTDE recipe: its id, variable names and types, and the struct that packs its values."""

    def __init__(self, recipe_id: int, names: list[str], types: list[str]) -> None:
        self.id = recipe_id
        self.names = names
        self.types = types
        self.struct = struct.Struct(">" + "".join(TYPE_FORMATS[t] for t in types))
        self.widths = [int(TYPE_FORMATS[t][:-1] or 1) for t in types]

    def pack(self, values: list) -> bytes:
        """uint8 recipe id + the values (vectors flattened), big-endian."""
        flat: list = []
        for width, value in zip(self.widths, values):
            if width == 1:
                flat.append(value)
            else:
                flat.extend(value)
        return struct.pack(">B", self.id) + self.struct.pack(*flat)

    def unpack(self, payload: bytes) -> dict[str, object]:
        """name -> value from a data package's payload after its recipe id (raises RTDEProtocolError)."""
        if len(payload) != self.struct.size:
            raise RTDEProtocolError(f"data package for recipe {self.id} has {len(payload)} bytes, "
                                    f"its recipe needs {self.struct.size}")
        flat = self.struct.unpack(payload)
        values, i = {}, 0
        for name, width in zip(self.names, self.widths):
            values[name] = flat[i] if width == 1 else flat[i:i + width]
            i += width
        return values


def _split_names(payload: bytes) -> list[str]:
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise RTDEProtocolError("recipe variable names are not ASCII") from None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise RTDEProtocolError("recipe names no variables")
    return names


def _rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis-angle (rotation vector) of a rotation matrix, as a UR reports a pose's orientation."""
    cos = float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0],
                     rotation[1, 0] - rotation[0, 1]])
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:
        # Near 180 degrees the antisymmetric part vanishes: take the axis from the symmetric part.
        column = int(np.argmax(np.diag(rotation)))
        axis = (rotation[:, column] + np.eye(3)[column]) / math.sqrt(2.0 * (1.0 + rotation[column, column]))
        return axis * angle
    return axis / (2.0 * math.sin(angle)) * angle


def check_version(owner: str, version: object) -> tuple[int, int, int, int]:
    """version as 4 integers >= 0 (major >= 1), or a one-line ValueError."""
    ok = (isinstance(version, (tuple, list)) and len(version) == 4
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in version) and version[0] >= 1)
    if not ok:
        raise ValueError(f"{owner}: version must be 4 integers (major, minor, bugfix, build) with major >= 1, "
                         f"got {version!r}; e.g. {CB3_VERSION} (CB3) or {E_SERIES_VERSION} (e-Series)")
    return tuple(version)  # type: ignore[return-value]


def default_frequency(version: tuple[int, ...]) -> float:
    """The controller's own RTDE rate: 125 Hz up to CB3 (major 3), 500 Hz on an e-Series."""
    return 125.0 if version[0] <= 3 else 500.0


# ---------------------------------------------------------------------------------------------
# The controller (in the serving process): the arm, the registers, the safety state, the script.
# ---------------------------------------------------------------------------------------------
class _Controller:
    """The simulated controller state shared by every connection; every method takes the lock."""

    def __init__(self, version: tuple[int, int, int, int], start_q: list[float] | None, serial: str,
                 unlock_delay_s: float, stop_script_on_fault: bool = False, program_start_delay_s: float = 0.0) -> None:
        from drivers.sim.sim_ur5 import SimUR5  # imports mujoco

        self.version = version
        self.serial = serial
        self.unlock_delay_s = unlock_delay_s
        self.stop_script_on_fault = stop_script_on_fault
        self.program_start_delay_s = program_start_delay_s
        self.base_period_s = 1.0 / default_frequency(version)
        # The controller's own cycle (program start, RTDE watchdog) is checked at this period; a stall of this
        # process (a starved machine, freeze()) counts for at most stall_cap_s of RTDE silence per check.
        self.cycle_period_s = max(self.base_period_s, 0.008)
        self.stall_cap_s = max(4 * self.cycle_period_s, 0.02)
        self.lock = threading.RLock()
        self.t0 = time.monotonic()
        # The arm's own contact latch is off: the controller checks contacts itself, so it can also clear them.
        self.arm = SimUR5(name="fake_ur", world=f"fake_ur_{id(self)}", reset_noise_rad=0.0, gripper=True,
                          target=False, randomize_objects=False, protective_stop_n=1e12)
        self.arm.connect()
        if start_q is not None:
            q, limits = np.asarray(start_q, dtype=np.float64), self.arm.joint_limits_rad
            if q.shape != (6,) or np.any(q < limits[:, 0]) or np.any(q > limits[:, 1]):
                raise ValueError(f"FakeURController: start_q {list(start_q)} lies outside the UR5's joint limits "
                                 f"{limits.tolist()}; move it inside")
            self.arm.sim.reset(q)
        self.arm.stop()
        self.in_int = [0] * 48
        self.in_double = [0.0] * 48
        self.out_int = [0] * 48
        self.out_double = [0.0] * 48
        self.inputs: dict[str, object] = {}
        self.script_running = False
        self.script_name = ""
        self.executing = False
        self.motion: dict | None = None
        self.protective_stop = False
        self.protective_since = 0.0
        self.emergency_stop = False
        self.safeguard_stop = False
        self.pending_program: tuple[str, float] | None = None   # (name, monotonic start time) of an upload
        self.program_stop_reason = ""
        self.watchdog_hz = 0.0        # rtde_set_watchdog's min_frequency on input_int_register_0; 0: none
        self.watchdog_silent_s = 0.0
        self._last_cycle: float | None = None
        self._watching = False          # whether the last cycle had an armed watchdog to watch
        self.wake = threading.Event()   # set when the cycle has work: a watchdog armed, a program to start
        self.async_wr_count = 0
        self.async_op_id = 0
        self.counters: Counter = Counter()
        self.commands: Counter = Counter()
        self.script_ports: Counter = Counter()
        self._snap: dict | None = None
        self._snap_time_s = -1.0

    # --- clock and state ------------------------------------------------------------------
    def controller_time(self, at: float | None = None) -> float:
        """Seconds since the controller started at monotonic time ``at`` (default now), in whole cycles."""
        elapsed = (time.monotonic() if at is None else at) - self.t0
        return math.floor(elapsed / self.base_period_s + 1e-6) * self.base_period_s

    def next_cycle(self, after: float) -> float:
        """The monotonic time the first controller cycle at or after ``after`` starts."""
        cycles = math.ceil((after - self.t0) / self.base_period_s - 1e-6)
        return self.t0 + cycles * self.base_period_s

    def safety_mode(self) -> int:
        if self.emergency_stop:
            return SAFETY_MODE_ROBOT_EMERGENCY_STOP
        if self.protective_stop:
            return SAFETY_MODE_PROTECTIVE_STOP
        return SAFETY_MODE_SAFEGUARD_STOP if self.safeguard_stop else SAFETY_MODE_NORMAL

    def safety_status_bits(self) -> int:
        if self.emergency_stop:
            return SAFETY_BIT_ROBOT_EMERGENCY_STOPPED | SAFETY_BIT_EMERGENCY_STOPPED | SAFETY_BIT_STOPPED_DUE_TO_SAFETY
        if self.protective_stop:
            return SAFETY_BIT_PROTECTIVE_STOPPED | SAFETY_BIT_STOPPED_DUE_TO_SAFETY
        if self.safeguard_stop:
            return SAFETY_BIT_SAFEGUARD_STOPPED | SAFETY_BIT_STOPPED_DUE_TO_SAFETY
        return SAFETY_BIT_NORMAL

    def runtime_state(self) -> int:
        return RUNTIME_PLAYING if self.script_running else RUNTIME_STOPPED

    def frozen(self) -> bool:
        return self.protective_stop or self.emergency_stop or self.safeguard_stop

    def snapshot(self, at: float | None = None) -> dict:
        """The arm stepped up to now and its state (cached per physics step), plus the controller's state;
        the timestamp is the controller cycle of monotonic time ``at`` (default now)."""
        with self.lock:
            self.arm.status()  # steps the physics up to now
            sim = self.arm.sim
            if not self.frozen() and sim.protective_stop_contact(CONTACT_STOP_N):
                self._latch_protective_stop()
            self._advance_motion()
            t_s = sim.time_s
            if t_s != self._snap_time_s or self._snap is None:
                q, qd = sim.q(), sim.dq()
                pose = np.concatenate([sim.tcp_position(), _rotation_vector(sim.tcp_rotation())])
                speed = sim.tcp_jacobian() @ qd
                self._snap = {"q": q, "qd": qd, "pose": pose, "speed": speed, "torques": sim.joint_torques()}
                self._snap_time_s = t_s
            snap = dict(self._snap)
            snap.update(timestamp=self.controller_time(at), safety_mode=self.safety_mode(),
                        safety_status_bits=self.safety_status_bits(), runtime_state=self.runtime_state(),
                        robot_status_bits=ROBOT_STATUS_POWER_ON
                        | (ROBOT_STATUS_PROGRAM_RUNNING if self.script_running else 0),
                        out_int=list(self.out_int), out_double=list(self.out_double),
                        in_int=list(self.in_int), in_double=list(self.in_double))
            return snap

    # --- safety -----------------------------------------------------------------------------
    def _halt(self) -> None:
        if self.motion is not None and self.motion["async"]:
            self._async_progress(-1)      # the script kills its move thread and signals the end
        self.motion = None
        self.arm.stop()

    def _async_progress(self, value: int) -> None:
        """Write the async progress register as the control script's write_async_progress_register(value) does:
        0 starts an operation (a new operation id), a negative value ends it."""
        self.async_wr_count = 0 if self.async_wr_count >= 127 else self.async_wr_count + 1
        if value == 0:
            self.async_op_id = 0 if self.async_op_id >= 127 else self.async_op_id + 1
        register = self.async_wr_count * 65536 + self.async_op_id * 16777216
        if value >= 0:
            register += min(value, 32767) + ASYNC_RUNNING
        self.out_int[2] = register

    def _latch_protective_stop(self) -> None:
        if not self.protective_stop:
            self.protective_stop = True
            self.protective_since = time.monotonic()
            self.counters["protective_stops"] += 1
        self._halt()
        self._fault_ends_script()

    def _fault_ends_script(self) -> None:
        if self.stop_script_on_fault and self.script_running:
            self.script_running = False
            self.executing = False
            self.out_int[0] = 0
            self.watchdog_hz = 0.0
            self.program_stop_reason = "safety stop"

    def trigger_protective_stop(self) -> None:
        """Latch a protective stop: the arm holds and ignores commands until unlocked."""
        with self.lock:
            self.arm.status()
            self._latch_protective_stop()

    def set_emergency_stop(self, on: bool) -> None:
        """Press (on) or release the emergency stop."""
        with self.lock:
            self.arm.status()
            if on and not self.emergency_stop:
                self.counters["emergency_stops"] += 1
            self.emergency_stop = bool(on)
            self._halt()
            if on:
                self._fault_ends_script()

    def set_safeguard_stop(self, on: bool) -> None:
        """Open (on) or close and reset (off) the safeguard: while it is open the arm holds and ignores commands."""
        with self.lock:
            self.arm.status()
            if on and not self.safeguard_stop:
                self.counters["safeguard_stops"] += 1
            self.safeguard_stop = bool(on)
            self._halt()
            if on:
                self._fault_ends_script()

    def unlock_protective_stop(self) -> str:
        """The dashboard's answer to ``unlock protective stop``; clears the stop when allowed."""
        with self.lock:
            if self.protective_stop and time.monotonic() - self.protective_since < self.unlock_delay_s:
                return (f"Cannot unlock protective stop until {self.unlock_delay_s:g}s after occurrence. "
                        f"Always inspect cause of protective stop before unlocking")
            self.arm.status()
            self.protective_stop = False
            self._halt()
            return "Protective stop releasing"

    # --- the script port ----------------------------------------------------------------------
    def script_received(self, name: str, port: int) -> None:
        """A complete URScript program arrived: it replaces the running one (whose motion ends) and starts
        playing, ``program_start_delay_s`` later (a real controller takes a moment to compile and start it)."""
        with self.lock:
            self.counters["script_uploads"] += 1
            self.script_ports[port] += 1
            self.arm.status()
            self._halt()
            self.watchdog_hz = 0.0
            if self.program_start_delay_s > 0.0:
                self.script_running = False
                self.executing = False
                self.out_int[0] = 0
                self.pending_program = (name, time.monotonic() + self.program_start_delay_s)
                self.wake.set()
            else:
                self.start_program(name)

    def start_program(self, name: str) -> None:
        """The program starts playing: fresh script globals, no watchdog, "ready" for a command."""
        with self.lock:
            self.pending_program = None
            self.script_name = name
            self.script_running = True
            self.executing = False
            self.motion = None
            self.watchdog_hz = 0.0
            self.program_stop_reason = ""
            self.async_wr_count = self.async_op_id = 0
            self._async_progress(-1)      # the script's reset_async_progress()
            self.out_int[0] = SCRIPT_READY

    def stop_program(self, reason: str = "stopped") -> None:
        """Stop the running program (dashboard ``stop``, the script's own stop command, a tripped watchdog);
        the arm holds and every RTDE watchdog is removed."""
        with self.lock:
            if self.script_running or self.pending_program is not None:
                self.program_stop_reason = reason
            self.pending_program = None
            self.script_running = False
            self.executing = False
            self.out_int[0] = 0
            self.watchdog_hz = 0.0
            self.arm.status()
            self._halt()

    def busy(self) -> bool:
        """True while the cycle has something to watch (an armed watchdog, a program about to start)."""
        with self.lock:
            return self.pending_program is not None or (self.watchdog_hz > 0.0 and self.script_running)

    def cycle(self, now: float) -> None:
        """One check of the controller's own cycle: start an uploaded program when due, and stop the program
        (rtde_set_watchdog's "stop" action) when input_int_register_0 got no update for 1 / min_frequency."""
        with self.lock:
            elapsed = 0.0 if self._last_cycle is None else max(0.0, now - self._last_cycle)
            self._last_cycle = now
            if self.pending_program is not None and now >= self.pending_program[1]:
                self.start_program(self.pending_program[0])
            watching = self.watchdog_hz > 0.0 and self.script_running
            if watching and self._watching:
                self.watchdog_silent_s += min(elapsed, self.stall_cap_s)
            self._watching = watching
            if watching and self.watchdog_silent_s > 1.0 / self.watchdog_hz:
                self.counters["watchdog_stops"] += 1
                self.stop_program(f"RTDE watchdog: no update of input_int_register_0 for "
                                  f"{self.watchdog_silent_s:.3f} s (min frequency {self.watchdog_hz:g} Hz)")

    # --- RTDE inputs and the control script --------------------------------------------------
    def apply_inputs(self, values: dict[str, object]) -> None:
        """Take a decoded input data package into the registers and let the control script react."""
        with self.lock:
            for name, value in values.items():
                if name.startswith("input_int_register_"):
                    self.in_int[int(name.rsplit("_", 1)[1])] = int(value)  # type: ignore[arg-type]
                elif name.startswith("input_double_register_"):
                    self.in_double[int(name.rsplit("_", 1)[1])] = float(value)  # type: ignore[arg-type]
                else:
                    self.inputs[name] = value
            if "input_int_register_0" in values:
                self.commands[self.in_int[0]] += 1
                self.watchdog_silent_s = 0.0    # an update of the watched register, whatever its value
            self._run_script()

    def _run_script(self) -> None:
        if not self.script_running:
            return
        self.arm.status()
        cmd = self.in_int[0]
        if cmd == CMD_NONE:
            self.executing = False
            if self.motion is None or self.motion["async"]:
                self.out_int[0] = SCRIPT_READY
            return
        if cmd in _REALTIME_COMMANDS:
            self._realtime_command(cmd)
            self.out_int[0] = SCRIPT_READY
            return
        if self.executing:
            return
        self.executing = True
        self._command(cmd)

    def _vector(self, first: int = 0) -> np.ndarray:
        return np.array(self.in_double[first:first + 6], dtype=np.float64)

    def _realtime_command(self, cmd: int) -> None:
        if self.frozen():
            self.counters["ignored_commands"] += 1
            return
        try:
            if cmd == CMD_SERVOJ:
                self.motion = None
                self.arm.command_joint_position(self._vector())
            elif cmd == CMD_SPEEDJ:
                self.motion = None
                self.arm.command_joint_velocity(self._vector())
            elif cmd == CMD_SPEEDL:
                self.motion = None
                twist = self._vector()
                twist[3:] = 0.0  # the tool is held pointing down
                self.arm.command_tcp_velocity(twist)
            else:
                self.counters["unsupported_commands"] += 1
        except ValueError:
            self.counters["rejected_commands"] += 1

    def _command(self, cmd: int) -> None:
        """A command the client waits for: answer "done" now, or when a move arrives."""
        if cmd == CMD_STOP_SCRIPT:
            self.stop_program("stopScript")
            return
        if cmd == CMD_PROTECTIVE_STOP:
            self._latch_protective_stop()
        elif cmd == CMD_SET_WATCHDOG:
            frequency = self.in_double[0]
            if math.isfinite(frequency) and frequency > 0.0:
                self.watchdog_hz = frequency
                self.watchdog_silent_s = 0.0
                self.wake.set()
            else:
                self.counters["rejected_commands"] += 1
        elif self.frozen():
            self.counters["ignored_commands"] += 1
        elif cmd in _STOP_COMMANDS:
            self._halt()
            if cmd in (CMD_STOPL, CMD_STOPJ) and self.in_int[1] == 1:
                self._async_progress(0)   # an asynchronous stop runs in its own thread, done at once here
                self._async_progress(-1)
        elif cmd == CMD_MOVEJ:
            if self._start_move():
                return
        else:
            self.counters["unsupported_commands"] += 1
        self.out_int[0] = SCRIPT_DONE

    def _start_move(self) -> bool:
        """Start a moveJ; True when the client must wait for its arrival."""
        goal = self._vector()
        speed, asynchronous = self.in_double[6], self.in_int[1] == 1
        limits = self.arm.joint_limits_rad
        if not (np.all(np.isfinite(goal)) and math.isfinite(speed) and speed > 0.0):
            self.counters["rejected_commands"] += 1
            return False
        goal = np.clip(goal, limits[:, 0], limits[:, 1])
        if self.motion is not None and self.motion["async"]:
            self._async_progress(-1)      # stop_async_move(): a running asynchronous move is killed first
        start = self.arm.sim.q()
        duration = float(np.abs(goal - start).max()) / min(speed, math.pi)
        self.motion = {"start": start, "goal": goal, "t0": time.monotonic(), "duration": duration,
                       "async": asynchronous}
        if asynchronous:
            self._async_progress(0)
        self._advance_motion()
        if asynchronous:
            self.out_int[0] = SCRIPT_DONE
            return False
        return self.motion is not None

    def _advance_motion(self) -> None:
        motion = self.motion
        if motion is None or self.frozen():
            return
        sim = self.arm.sim
        elapsed = time.monotonic() - motion["t0"]
        fraction = 1.0 if motion["duration"] <= 0.0 else min(1.0, elapsed / motion["duration"])
        # Plus the offset the servos need to carry gravity, so the arm settles on the goal itself.
        sag = sim.hold_target() - sim.q()
        self.arm.command_joint_position(motion["start"] + fraction * (motion["goal"] - motion["start"]) + sag)
        if fraction < 1.0:
            return
        error = float(np.abs(sim.q() - motion["goal"]).max())
        settled = error < _ARRIVED_RAD and float(np.abs(sim.dq()).max()) < _SETTLED_RAD_S
        if settled or elapsed > motion["duration"] + 2.0:
            self.motion = None
            if motion["async"]:
                self._async_progress(-1)
            else:
                self.out_int[0] = SCRIPT_DONE

    # --- reporting ------------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain data for the parent: pose, modes and counters."""
        snap = self.snapshot()
        with self.lock:
            return {
                "q": snap["q"].tolist(), "qd": snap["qd"].tolist(), "tcp_pose": snap["pose"].tolist(),
                "timestamp": snap["timestamp"], "runtime_state": snap["runtime_state"],
                "safety_mode": snap["safety_mode"], "robot_mode": ROBOT_MODE_RUNNING,
                "script_running": self.script_running, "script_name": self.script_name,
                "program_stop_reason": self.program_stop_reason, "watchdog_hz": self.watchdog_hz,
                "output_int_register_0": self.out_int[0],
                "packages_sent": self.counters["packages_sent"],
                "packages_received": self.counters["packages_received"],
                "commands": dict(self.commands), "malformed": self.counters["malformed"],
                "script_uploads": self.counters["script_uploads"], "script_ports": dict(self.script_ports),
                "counters": dict(self.counters), "cpu_s": time.process_time(),
                "uptime_s": time.monotonic() - self.t0,
            }


def _output_getter(name: str):
    """A function snapshot -> value for output variable name (zeros for what the fake does not model)."""
    kind = OUTPUT_TYPES[name]
    direct = {
        "timestamp": lambda s: s["timestamp"],
        "actual_q": lambda s: s["q"], "target_q": lambda s: s["q"],
        "actual_qd": lambda s: s["qd"], "target_qd": lambda s: s["qd"],
        "actual_TCP_pose": lambda s: s["pose"], "target_TCP_pose": lambda s: s["pose"],
        "actual_TCP_speed": lambda s: s["speed"], "target_TCP_speed": lambda s: s["speed"],
        "target_moment": lambda s: s["torques"], "actual_current_as_torque": lambda s: s["torques"],
        "robot_mode": lambda s: ROBOT_MODE_RUNNING,
        "joint_mode": lambda s: (JOINT_MODE_RUNNING,) * 6,
        "safety_mode": lambda s: s["safety_mode"], "safety_status": lambda s: s["safety_mode"],
        "safety_status_bits": lambda s: s["safety_status_bits"],
        "robot_status_bits": lambda s: s["robot_status_bits"],
        "runtime_state": lambda s: s["runtime_state"],
        "joint_temperatures": lambda s: (35.0,) * 6,
        "actual_joint_voltage": lambda s: (48.0,) * 6,
        "actual_main_voltage": lambda s: 48.0, "actual_robot_voltage": lambda s: 48.0,
        "actual_robot_current": lambda s: 0.5,
        "speed_scaling": lambda s: 1.0, "target_speed_fraction": lambda s: 1.0,
        "speed_scaling_combined": lambda s: 1.0,
        "actual_tool_accelerometer": lambda s: (0.0, 0.0, 9.81),
    }
    if name in direct:
        return direct[name]
    for prefix, key in (("output_int_register_", "out_int"), ("output_double_register_", "out_double"),
                        ("input_int_register_", "in_int"), ("input_double_register_", "in_double")):
        if name.startswith(prefix):
            index = int(name[len(prefix):])
            return lambda s: s[key][index]
    width = int(TYPE_FORMATS[kind][:-1] or 1)
    zero = 0.0 if TYPE_FORMATS[kind][-1] == "d" else (False if kind == "BOOL" else 0)
    constant = zero if width == 1 else (zero,) * width
    return lambda s: constant


# ---------------------------------------------------------------------------------------------
# The servers.
# ---------------------------------------------------------------------------------------------
def _recv_exact(conn: socket.socket, n: int, stop: threading.Event) -> bytes | None:
    """n bytes from conn, or None when the peer closed or the server stops."""
    chunks, got = [], 0
    while got < n:
        if stop.is_set():
            return None
        try:
            chunk = conn.recv(n - got)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _RTDEConnection:
    """One RTDE client: its recipes, its stream and its reader."""

    def __init__(self, server: "FakeURServer", conn: socket.socket, peer) -> None:
        self.server = server
        self.controller = server.controller
        self.conn = conn
        self.peer = peer
        self.send_lock = threading.Lock()
        self.protocol = 1
        self.output: Recipe | None = None
        self.output_getters: list = []
        self.frequency = default_frequency(server.version)
        self.outputs_made = 0
        self.inputs: list[Recipe] = []
        self.streaming = threading.Event()
        self.closed = threading.Event()
        self.stream_thread: threading.Thread | None = None
        self.stats = {"sent": 0, "late_max_s": 0.0, "late_sum_s": 0.0, "skipped": 0, "frequency": 0.0}

    def send(self, kind: int, payload: bytes = b"") -> bool:
        try:
            with self.send_lock:
                self.conn.sendall(encode_message(kind, payload))
            return True
        except OSError:
            self.closed.set()
            return False

    def serve(self) -> None:
        stop = self.server.stop_event
        try:
            while not stop.is_set() and not self.closed.is_set():
                header = _recv_exact(self.conn, _HEADER.size, stop)
                if header is None:
                    return
                size, kind = _HEADER.unpack(header)
                if size < _HEADER.size:
                    raise RTDEProtocolError(f"package size {size} is smaller than its header")
                payload = _recv_exact(self.conn, size - _HEADER.size, stop)
                if payload is None:
                    return
                self.server.trace(f"rtde {self.peer} <- {chr(kind) if 32 <= kind < 127 else kind} {payload[:200]!r}")
                self.handle(kind, payload)
        except (RTDEProtocolError, struct.error, ValueError) as err:
            with self.controller.lock:
                self.controller.counters["malformed"] += 1
            self.server.trace(f"rtde {self.peer}: malformed: {err}")
        finally:
            self.closed.set()
            self.streaming.clear()
            try:
                self.conn.close()
            except OSError:
                pass

    def handle(self, kind: int, payload: bytes) -> None:
        controller = self.controller
        with controller.lock:
            controller.counters["packages_received"] += 1
        if kind == RTDE_DATA_PACKAGE:
            if not payload:
                raise RTDEProtocolError("data package without a recipe id")
            recipe_id = payload[0]
            if not 1 <= recipe_id <= len(self.inputs):
                raise RTDEProtocolError(f"data package for unknown input recipe {recipe_id}")
            controller.apply_inputs(self.inputs[recipe_id - 1].unpack(payload[1:]))
        elif kind == RTDE_REQUEST_PROTOCOL_VERSION:
            if len(payload) != 2:
                raise RTDEProtocolError(f"protocol version request of {len(payload)} bytes, expected 2")
            version = struct.unpack(">H", payload)[0]
            accepted = version in (1, 2)
            if accepted:
                self.protocol = version
            self.send(kind, struct.pack(">B", int(accepted)))
        elif kind == RTDE_GET_URCONTROL_VERSION:
            self._expect_empty(kind, payload)
            self.send(kind, struct.pack(">IIII", *self.server.version))
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS:
            self._setup_outputs(payload)
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_INPUTS:
            self._setup_inputs(payload)
        elif kind == RTDE_CONTROL_PACKAGE_START:
            self._expect_empty(kind, payload)
            ok = self.output is not None
            self.send(kind, struct.pack(">B", int(ok)))
            if ok:
                self._start_stream()
        elif kind == RTDE_CONTROL_PACKAGE_PAUSE:
            self._expect_empty(kind, payload)
            self.streaming.clear()
            self.send(kind, struct.pack(">B", 1))
        elif kind == RTDE_TEXT_MESSAGE:
            pass
        else:
            raise RTDEProtocolError(f"unknown package type {kind}")

    @staticmethod
    def _expect_empty(kind: int, payload: bytes) -> None:
        if payload:
            raise RTDEProtocolError(f"package type {chr(kind)!r} carries {len(payload)} unexpected bytes")

    def _setup_outputs(self, payload: bytes) -> None:
        frequency = default_frequency(self.server.version)
        if self.protocol >= 2:
            if len(payload) < 8:
                raise RTDEProtocolError("output setup without its frequency")
            requested = struct.unpack(">d", payload[:8])[0]
            payload = payload[8:]
            if math.isfinite(requested) and requested > 0.0:
                frequency = min(requested, default_frequency(self.server.version))
        names = _split_names(payload)
        types = [OUTPUT_TYPES.get(name, "NOT_FOUND") for name in names]
        if "NOT_FOUND" in types:
            self.send(RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS, struct.pack(">B", 0) + ",".join(types).encode())
            return
        self.outputs_made += 1
        recipe = Recipe(self.outputs_made, names, types)
        self.output, self.output_getters, self.frequency = recipe, [_output_getter(n) for n in names], frequency
        reply = struct.pack(">B", recipe.id) if self.protocol >= 2 else b""
        self.send(RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS, reply + ",".join(types).encode())

    def _setup_inputs(self, payload: bytes) -> None:
        names = _split_names(payload)
        types = [INPUT_TYPES.get(name, "NOT_FOUND") for name in names]
        if "NOT_FOUND" in types:
            self.send(RTDE_CONTROL_PACKAGE_SETUP_INPUTS, struct.pack(">B", 0) + ",".join(types).encode())
            return
        if len(self.inputs) >= 255:
            raise RTDEProtocolError("more than 255 input recipes")
        recipe = Recipe(len(self.inputs) + 1, names, types)
        self.inputs.append(recipe)
        self.send(RTDE_CONTROL_PACKAGE_SETUP_INPUTS, struct.pack(">B", recipe.id) + ",".join(types).encode())

    def _start_stream(self) -> None:
        self.streaming.set()
        if self.stream_thread is None:
            self.stream_thread = threading.Thread(target=self._stream, name=f"fake-ur-stream-{self.peer}",
                                                  daemon=True)
            self.stream_thread.start()

    def _stream(self) -> None:
        """One data package per period, on deadlines on the controller's cycle grid (a late package does not
        shift the next ones, and carries its deadline's cycle as its timestamp)."""
        stop = self.server.stop_event
        controller = self.controller
        self.stats["frequency"] = self.frequency
        next_t = controller.next_cycle(time.monotonic())
        while not stop.is_set() and not self.closed.is_set():
            if not self.streaming.is_set():
                time.sleep(0.01)
                next_t = controller.next_cycle(time.monotonic())
                continue
            period = 1.0 / self.frequency  # a new output setup may have changed it
            now = time.monotonic()
            if now < next_t:
                time.sleep(next_t - now)
                now = time.monotonic()
            late = now - next_t
            if late > period:
                # Far behind (a stalled machine): skip the missed periods instead of bursting.
                missed = int(late / period)
                self.stats["skipped"] += missed
                next_t += missed * period
                late -= missed * period
            deadline = next_t
            next_t += period
            recipe, getters = self.output, self.output_getters
            snap = controller.snapshot(deadline)
            data = recipe.pack([get(snap) for get in getters])
            if not self.send(RTDE_DATA_PACKAGE, data):
                return
            self.stats["sent"] += 1
            self.stats["frequency"] = self.frequency
            self.stats["late_sum_s"] += late
            self.stats["late_max_s"] = max(self.stats["late_max_s"], late)
            with controller.lock:
                controller.counters["packages_sent"] += 1


_DASHBOARD_GREETING = "Connected: Universal Robots Dashboard Server\n"
_SAFETY_NAMES = {SAFETY_MODE_NORMAL: "NORMAL", SAFETY_MODE_PROTECTIVE_STOP: "PROTECTIVE_STOP",
                 SAFETY_MODE_SAFEGUARD_STOP: "SAFEGUARD_STOP", SAFETY_MODE_ROBOT_EMERGENCY_STOP: "ROBOT_EMERGENCY_STOP"}
_MAX_LINE = 4096
_MAX_SCRIPT = 1 << 20
_PROGRAM = re.compile(r"^(def|sec)\s+(\w+)\s*\(\s*\)\s*:\s*$(.*?)^end\s*$", re.M | re.S)


# Dashboard commands whose answer never changes (the others depend on the controller's state).
_DASHBOARD_FIXED_REPLIES = {
    "get robot model": "UR5",
    "is in remote control": "true",
    "robotmode": "Robotmode: RUNNING",
    "close safety popup": "closing safety popup",
    "close popup": "closing popup",
    "power on": "Powering on",
    "power off": "Powering off",
    "brake release": "Brake releasing",
    "get loaded program": "No program loaded",
    "isprogramsaved": "true <unnamed>",
    "pause": "Pausing program",
    "restart safety": "Restarting safety",
    "shutdown": "Shutting down",
}


class FakeURServer:
    """The listening sockets and their threads, around one _Controller; runs in the serving process."""

    def __init__(self, host: str = "127.0.0.2", *, version: tuple[int, int, int, int] = CB3_VERSION,
                 start_q: list[float] | None = None, serial: str = DEFAULT_SERIAL, unlock_delay_s: float = 0.0,
                 stop_script_on_fault: bool = False, program_start_delay_s: float = 0.0, trace: bool = False,
                 gripper: bool = False) -> None:
        self.host = check_loopback("FakeURServer", host)
        self.gripper = gripper
        self.robotiq = None
        self.version = check_version("FakeURServer", version)
        self.serial = serial
        self._trace = trace
        self.controller = _Controller(self.version, start_q, serial, unlock_delay_s, stop_script_on_fault,
                                      program_start_delay_s)
        self.stop_event = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.rtde_connections: list[_RTDEConnection] = []

    def trace(self, text: str) -> None:
        if self._trace:
            print(f"[fake_ur {time.monotonic() - self.controller.t0:9.4f}] {text}", file=sys.stderr, flush=True)

    def start(self) -> "FakeURServer":
        """Bind every port (raises OSError if one is taken) and serve each on its own thread."""
        handlers = [(RTDE_PORT, self._serve_rtde), (DASHBOARD_PORT, self._serve_dashboard)]
        handlers += [(port, self._serve_script) for port in SCRIPT_PORTS]
        try:
            for port, handler in handlers:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sockets.append(sock)
                sock.bind((self.host, port))
                sock.listen(16)
                sock.settimeout(0.1)
                thread = threading.Thread(target=self._accept, args=(sock, port, handler),
                                          name=f"fake-ur-{port}", daemon=True)
                self._threads.append(thread)
        except OSError:
            self.stop()
            raise
        if self.gripper:
            from drivers.fakes.robotiq import FakeRobotiq   # a Robotiq URCap on its port 63352, as on a real cell
            try:
                self.robotiq = FakeRobotiq(self.host).start()
            except OSError:
                self.stop()
                raise
        self._threads.append(threading.Thread(target=self._cycle, name="fake-ur-cycle", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def _cycle(self) -> None:
        """The controller's own cycle, independent of any client: program starts and the RTDE watchdog (checked
        every cycle_period_s while there is something to watch, else every 0.1 s or when woken)."""
        controller = self.controller
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            next_t += controller.cycle_period_s if controller.busy() else 0.1
            delay = next_t - time.monotonic()
            if delay > 0.0 and controller.wake.wait(delay):
                controller.wake.clear()
                next_t = time.monotonic()
            elif delay <= 0.0:
                next_t = time.monotonic()     # behind (a starved process): no burst of catch-up cycles
            stops = controller.counters["watchdog_stops"]
            controller.cycle(time.monotonic())
            if controller.counters["watchdog_stops"] != stops:
                self.trace(f"watchdog: {controller.program_stop_reason}")

    def stop(self) -> None:
        """Stop serving: close the listening sockets; connection threads end within ~0.1 s."""
        self.stop_event.set()
        if self.robotiq is not None:
            self.robotiq.stop()
            self.robotiq = None
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(1.0)

    def _accept(self, sock: socket.socket, port: int, handler) -> None:
        while not self.stop_event.is_set():
            try:
                conn, peer = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.controller.lock:
                self.controller.counters[f"connections_{port}"] += 1
            self.trace(f"port {port}: connection from {peer}")
            threading.Thread(target=handler, args=(conn, peer, port), name=f"fake-ur-{port}-{peer[1]}",
                             daemon=True).start()

    # --- RTDE ---------------------------------------------------------------------------------
    def _serve_rtde(self, conn: socket.socket, peer, port: int) -> None:
        connection = _RTDEConnection(self, conn, peer)
        self.rtde_connections = [c for c in self.rtde_connections if not c.closed.is_set()] + [connection]
        connection.serve()

    # --- dashboard ------------------------------------------------------------------------------
    def _serve_dashboard(self, conn: socket.socket, peer, port: int) -> None:
        buffer = b""
        try:
            conn.sendall(_DASHBOARD_GREETING.encode())
            while not self.stop_event.is_set():
                try:
                    chunk = conn.recv(4096)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    try:
                        line = raw.decode("utf-8").strip()
                    except UnicodeDecodeError:
                        self._malformed(f"dashboard {peer}: a line that is not UTF-8")
                        return
                    self.trace(f"dashboard {peer} <- {line!r}")
                    with self.controller.lock:
                        self.controller.counters["dashboard_commands"] += 1
                    reply, close = self.dashboard_reply(line)
                    conn.sendall((reply + "\n").encode())
                    if close:
                        return
                if len(buffer) > _MAX_LINE:
                    self._malformed(f"dashboard {peer}: a line longer than {_MAX_LINE} bytes")
                    return
        except OSError:
            return
        finally:
            conn.close()

    def dashboard_reply(self, line: str) -> tuple[str, bool]:
        """The dashboard server's one-line answer to line, and whether it closes the connection."""
        controller = self.controller
        command = line.strip()
        lower = command.lower()
        major, minor, bugfix, build = self.version
        with controller.lock:
            safety = _SAFETY_NAMES[controller.safety_mode()]
            running = controller.script_running
        if lower in _DASHBOARD_FIXED_REPLIES:
            return _DASHBOARD_FIXED_REPLIES[lower], False
        if lower == "polyscopeversion":
            return f"URSoftware {major}.{minor}.{bugfix}.{build or 1} (Jan 01 2024)", False
        if lower == "get serial number":
            return self.serial, False
        if lower == "safetymode":
            return f"Safetymode: {safety}", False
        if lower == "safetystatus":
            return f"Safetystatus: {safety}", False
        if lower == "unlock protective stop":
            return controller.unlock_protective_stop(), False
        if lower.startswith("popup "):
            return "showing popup", False
        if lower.startswith("addtolog "):
            return "Added log message", False
        if lower == "running":
            return f"Program running: {'true' if running else 'false'}", False
        if lower == "programstate":
            name = controller.script_name or "<unnamed>"
            return f"{'PLAYING' if running else 'STOPPED'} {name}", False
        if lower == "play":
            if controller.script_name:
                controller.start_program(controller.script_name)
                return "Starting program", False
            return "Failed to execute: play", False
        if lower == "stop":
            controller.stop_program("dashboard stop")
            return "Stopped", False
        if lower == "quit":
            return "Disconnected", True
        if lower.startswith("load "):
            return f"File not found: {command[5:]}", False
        return f"could not understand: '{command}'", False

    # --- script ports -------------------------------------------------------------------------
    def _serve_script(self, conn: socket.socket, peer, port: int) -> None:
        text = ""
        try:
            while not self.stop_event.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                try:
                    text += chunk.decode("utf-8")
                except UnicodeDecodeError:
                    self._malformed(f"script {peer}: text that is not UTF-8")
                    return
                while True:
                    match = _PROGRAM.search(text)
                    if match is None:
                        break
                    self.trace(f"script {peer} port {port}: program {match.group(2)!r}, "
                               f"{match.group(0).count(chr(10)) + 1} lines")
                    if match.group(1) == "def":
                        self.controller.script_received(match.group(2), port)
                    text = text[match.end():]
                if len(text) > _MAX_SCRIPT:
                    self._malformed(f"script {peer}: more than {_MAX_SCRIPT} bytes without a complete program")
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _malformed(self, why: str) -> None:
        with self.controller.lock:
            self.controller.counters["malformed"] += 1
        self.trace(f"malformed: {why}")

    def state(self) -> dict:
        """The controller's state plus each RTDE stream's timing statistics."""
        state = self.controller.state()
        state["streams"] = [dict(c.stats, peer=list(c.peer), open=not c.closed.is_set())
                            for c in list(self.rtde_connections)]
        return state


# ---------------------------------------------------------------------------------------------
# The parent-side handle: the server runs in `python -m drivers.fakes.ur --control`, which takes one JSON
# request per line on stdin and answers one JSON line on stdout (so no script needs a __main__ guard).
# ---------------------------------------------------------------------------------------------
def _control_loop(server: FakeURServer) -> None:
    """Answer the parent's requests (JSON lines on stdin) until "stop" or end of input."""
    for line in sys.stdin:
        try:
            request = json.loads(line)
            kind = request["request"]
        except (ValueError, KeyError, TypeError):
            _reply({"error": f"bad request {line.strip()!r}"})
            continue
        if kind == "stop":
            break
        if kind == "protective_stop":
            server.controller.trigger_protective_stop()
            _reply({"ok": True})
        elif kind == "emergency_stop":
            server.controller.set_emergency_stop(bool(request.get("on", True)))
            _reply({"ok": True})
        elif kind == "safeguard_stop":
            server.controller.set_safeguard_stop(bool(request.get("on", True)))
            _reply({"ok": True})
        elif kind == "state":
            _reply(server.state())
        else:
            _reply({"error": f"unknown request {kind!r}"})


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class FakeURController:
    """A fake UR controller in its own process, serving RTDE, dashboard and script ports on ``host``.

    ``version`` is what the controller reports (CB3 (3, 15, 8, 0): 125 Hz; e-Series (5, 11, 0, 0):
    500 Hz). ``start_q`` (6 joint angles, rad) is where the arm starts (default: the sim's home).
    ``serial`` is the dashboard's serial number: a real one is all digits, and ur-rtde's control interface
    raises RuntimeError while connecting to a PolyScope >= 5.6 that answers anything else.
    ``unlock_delay_s`` is how long after a protective stop the dashboard refuses to unlock it (a
    real UR: 5 s). With ``stop_script_on_fault`` a protective or emergency stop also ends the running
    script (runtime_state 1, as reported for real controllers): the client must reuploadScript() after the
    unlock; without it the script keeps running through the stop. ``program_start_delay_s`` is how long an
    uploaded program takes to start playing (a real controller compiles it first; ur-rtde's reuploadScript()
    returns before that). ``trace`` prints every message the fake receives to stderr.

    The control script's RTDE watchdog is honoured as ``rtde_set_watchdog("input_int_register_0", f, "stop")``
    does on a controller: once the script armed it (ur-rtde's setWatchdog, command 35), a data package
    updating input_int_register_0 (any command, a kickWatchdog, a clear) must arrive at least every 1 / f
    seconds, or the program stops (runtime_state STOPPED, the arm holds, ``program_stop_reason`` says why,
    ``counters["watchdog_stops"]`` counts it). A program stop or a new upload removes the watchdog.
    """

    def __init__(self, host: str = "127.0.0.2", *, version: tuple[int, int, int, int] = CB3_VERSION,
                 start_q=None, serial: str = DEFAULT_SERIAL, unlock_delay_s: float = 0.0,
                 stop_script_on_fault: bool = False, program_start_delay_s: float = 0.0, trace: bool = False,
                 gripper: bool = False) -> None:
        self.host = check_loopback("FakeURController", host)
        self.gripper = bool(gripper)
        self.version = check_version("FakeURController", version)
        if start_q is not None:
            try:
                q = np.asarray(start_q, dtype=np.float64)
            except (TypeError, ValueError):
                q = np.full(1, np.nan)
            if q.shape != (6,) or not np.all(np.isfinite(q)):
                raise ValueError(f"FakeURController: start_q must be 6 finite joint angles in radians, got {start_q!r}")
            start_q = q.tolist()
        if not isinstance(serial, str) or not serial.strip() or any(c in serial for c in "\r\n"):
            raise ValueError(f"FakeURController: serial must be a one-line non-empty string, got {serial!r}")
        if not (isinstance(unlock_delay_s, (int, float)) and math.isfinite(unlock_delay_s) and unlock_delay_s >= 0):
            raise ValueError(f"FakeURController: unlock_delay_s must be a number of seconds >= 0, "
                             f"got {unlock_delay_s!r}")
        if not (isinstance(program_start_delay_s, (int, float)) and math.isfinite(program_start_delay_s)
                and 0 <= program_start_delay_s <= 10):
            raise ValueError(f"FakeURController: program_start_delay_s must be a number of seconds in [0, 10], "
                             f"got {program_start_delay_s!r}")
        self.start_q = start_q
        self.serial = serial
        self.unlock_delay_s = float(unlock_delay_s)
        self.program_start_delay_s = float(program_start_delay_s)
        self.stop_script_on_fault = bool(stop_script_on_fault)
        self.trace = bool(trace)
        self.address = (self.host, RTDE_PORT)
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._lock = threading.Lock()

    @property
    def frequency(self) -> float:
        """The controller's own RTDE rate, Hz."""
        return default_frequency(self.version)

    @property
    def pid(self) -> int | None:
        """The serving process's id (None when not started)."""
        return None if self._process is None else self._process.pid

    def start(self, timeout_s: float = 20.0) -> "FakeURController":
        """Start the serving process and wait until every port accepts connections."""
        if self._process is not None:
            return self
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        command = [sys.executable, "-m", "drivers.fakes.ur", "--control", "--host", self.host,
                   "--version", ".".join(map(str, self.version)), "--serial", self.serial,
                   "--unlock-delay", repr(self.unlock_delay_s)]
        if self.start_q is not None:
            command += ["--start-q", ",".join(repr(v) for v in self.start_q)]
        if self.stop_script_on_fault:
            command.append("--stop-script-on-fault")
        if self.program_start_delay_s:
            command += ["--program-start-delay", repr(self.program_start_delay_s)]
        if self.trace:
            command.append("--trace")
        if self.gripper:
            command.append("--gripper")
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                   cwd=root)
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(process, self._replies), daemon=True,
                         name=f"fake-ur-replies-{self.host}").start()
        try:
            first = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            first = {"error": f"FakeURController: the fake controller on {self.host} did not start within "
                              f"{timeout_s} s; raise timeout_s on a loaded machine", "type": "RuntimeError"}
        if first is None or "error" in first:
            process.kill()
            process.wait(5.0)
            if first is None:
                raise RuntimeError(f"FakeURController: the process serving {self.host} died while starting "
                                   f"(exit code {process.returncode})")
            raise (ValueError if first.get("type") == "ValueError" else RuntimeError)(first["error"])
        self._process = process
        return self

    @staticmethod
    def _read_replies(process: subprocess.Popen, replies: queue.Queue) -> None:
        for line in process.stdout:
            try:
                replies.put(json.loads(line))
            except ValueError:
                continue
        replies.put(None)  # the process ended

    def _request(self, kind: str, timeout_s: float = 5.0, **args) -> dict:
        with self._lock:
            process = self._process
            if process is None:
                raise RuntimeError(f"FakeURController {self.host}: not running; call start() first")
            try:
                process.stdin.write(json.dumps(dict(args, request=kind)) + "\n")
                process.stdin.flush()
                reply = self._replies.get(timeout=timeout_s)
            except (OSError, ValueError):
                reply = None
            except queue.Empty:
                raise RuntimeError(f"FakeURController {self.host}: no answer to {kind!r} within {timeout_s} s "
                                   f"(frozen?)") from None
            if reply is None:
                raise RuntimeError(f"FakeURController {self.host}: the serving process is gone")
            return reply

    def protective_stop(self) -> None:
        """Latch a protective stop (as a collision would): the arm holds and ignores commands until unlocked."""
        self._request("protective_stop")

    def emergency_stop(self, on: bool = True) -> None:
        """Press (on) or release the robot's emergency stop."""
        self._request("emergency_stop", on=bool(on))

    def safeguard_stop(self, on: bool = True) -> None:
        """Open (on) the safeguard (a door, a light curtain): safety mode SAFEGUARD_STOP, the arm holds and
        ignores commands; off closes and resets it."""
        self._request("safeguard_stop", on=bool(on))

    def state(self) -> dict:
        """q, qd, tcp_pose, timestamp, runtime_state, safety_mode, script_running, program_stop_reason,
        watchdog_hz, counters (packages_sent, commands by id, malformed, script_uploads, watchdog_stops, ...),
        cpu_s of the serving process and per-stream timing."""
        state = self._request("state")
        state["commands"] = {int(k): v for k, v in state["commands"].items()}
        state["script_ports"] = {int(k): v for k, v in state["script_ports"].items()}
        return state

    def freeze(self) -> None:
        """SIGSTOP the serving process: its sockets stay open but nothing more is sent or answered, as when
        a cable is pulled (the client only notices through its own timeouts). thaw() resumes it."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen serving process; its streams resume (skipping the periods they missed)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def vanish(self) -> None:
        """SIGKILL the serving process: every link dies at once, as with a crashed controller."""
        process = self._process
        if process is None:
            return
        process.kill()
        process.wait(5.0)
        self._close()

    def stop(self) -> None:
        """Stop serving and end the process (killing it if it does not end within 3 s)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            try:
                with self._lock:
                    process.stdin.write(json.dumps({"request": "stop"}) + "\n")
                    process.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                process.wait(3.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2.0)
        self._close()

    def _close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

    @property
    def alive(self) -> bool:
        """True while the serving process runs."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> "FakeURController":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()


def _parse_version(text: str) -> tuple[int, int, int, int]:
    parts = text.split(".")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 4:
        raise argparse.ArgumentTypeError(f"version {text!r} must be four numbers like 3.15.8.0 or 5.11.0.0")
    return tuple(numbers)  # type: ignore[return-value]


def _parse_q(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"start q {text!r} must be 6 comma-separated angles in radians") from None


def main(argv: list[str] | None = None) -> int:
    """Serve a fake controller in this process until Ctrl-C (or, with --control, until told to stop)."""
    parser = argparse.ArgumentParser(prog="python -m drivers.fakes.ur", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.2", help="loopback address to serve on (127.0.0.x)")
    parser.add_argument("--version", type=_parse_version, default=CB3_VERSION,
                        help="controller version: 3.15.8.0 (CB3, 125 Hz) or 5.11.0.0 (e-Series, 500 Hz)")
    parser.add_argument("--serial", default=DEFAULT_SERIAL, help="the dashboard's serial number (digits)")
    parser.add_argument("--unlock-delay", type=float, default=0.0, help="seconds before a protective stop unlocks")
    parser.add_argument("--start-q", type=_parse_q, default=None, help="start joint angles, rad: q0,q1,...,q5")
    parser.add_argument("--stop-script-on-fault", action="store_true",
                        help="a protective, safeguard or emergency stop ends the running script (reupload it after)")
    parser.add_argument("--program-start-delay", type=float, default=0.0,
                        help="seconds an uploaded program takes to start playing")
    parser.add_argument("--trace", action="store_true", help="print every message received to stderr")
    parser.add_argument("--gripper", action="store_true", help="also serve a Robotiq gripper URCap on port 63352")
    parser.add_argument("--control", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        server = FakeURServer(args.host, version=args.version, start_q=args.start_q, serial=args.serial,
                              unlock_delay_s=args.unlock_delay, stop_script_on_fault=args.stop_script_on_fault,
                              program_start_delay_s=args.program_start_delay,
                              trace=args.trace, gripper=args.gripper).start()
    except ValueError as err:
        if args.control:
            _reply({"error": str(err), "type": "ValueError"})
        print(f"fake_ur: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        message = f"FakeURController: cannot serve on {args.host}: {err} (another fake on this address?)"
        if args.control:
            _reply({"error": message, "type": "OSError"})
        print(f"fake_ur: {message}", file=sys.stderr)
        return 2
    try:
        if args.control:
            _reply({"ready": True})
            _control_loop(server)
        else:
            print(f"fake UR {'.'.join(map(str, args.version))} serving on {args.host} (RTDE {RTDE_PORT}, "
                  f"dashboard {DASHBOARD_PORT}, script {SCRIPT_PORTS}); Ctrl-C stops", flush=True)
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
