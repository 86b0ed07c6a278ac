"""The MuJoCo Unitree A1 (drivers/mujoco_sim.A1Sim) as a simulated Legged driver: ``sim_a1``.

Physics advances with the elapsed time of the driver's ``host_clock`` (time.monotonic_ns in
realtime; the daemon passes its simulated clock in lockstep), in whole 1 ms physics steps, never
backwards: the driver remembers the host time it has been stepped to and steps up to "now"
whenever it is read, commanded or asked for its status.

Realism knobs, as on the real robot:

- ``inner_rate_hz``: the A1's low-level loop latches a new command only at its own ticks, so a
  command takes effect at the first inner tick at or after it arrives (rounded up to a physics step).
- ``command_latency_s`` + ``latency_jitter_s``: commands travel through a DelayLine and take effect
  when due (then latched at the next inner tick); ``command_loss`` drops packets (seeded).
- ``sensor_latency_s``: readings show the state captured ``sensor_latency_s`` (plus jitter) ago,
  from snapshots kept at every inner tick; the hardware timestamp is that capture time.
- ``noise_std`` on joints and IMU, a device clock with ``clock_offset_s`` / ``clock_drift_ppm``.

Readings are MockLegged's (joint_pos, joint_vel, imu_rpy, foot_contact, tick) plus imu_gyro and
the privileged ``scene_base_vel`` (trunk velocity in the heading frame) and ``scene_base_height``,
which tasks use for rewards and never show the policy.

mujoco is imported only when a driver is constructed, so `import drivers` never needs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers.real.a1 import A1_READING_SPEC
from drivers.base import DeviceStatus, Legged, Reading
from drivers.device_clock import DeviceClock
from drivers.sim.realism import DelayLine, History, LatencyArgs
from drivers.registry import register
from drivers.settings import setting

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_U32_TICKS = 2**32
START_POSES = ("stand", "lying", "back")
# Legs folded under the body (hip, thigh, calf), as the A1 lies before it stands up.
FOLDED_LEG_RAD = (0.0, 1.1, -2.6)
# Simulated time a reset lets the robot settle into its start pose (not host time: a shortcut).
SETTLE_S = {"stand": 0.3, "lying": 1.0, "back": 1.0}


def _mujoco_sim():
    """drivers.sim.mujoco_sim, imported on first use (it imports mujoco)."""
    from drivers.sim import mujoco_sim

    return mujoco_sim


def quat_to_rpy(quat: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw (rad, ZYX convention) of a (w, x, y, z) quaternion, (3,) float64."""
    w, x, y, z = (float(v) for v in quat)
    roll = math.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x))))
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


@register("sim_a1")
class SimA1(Legged):
    """The MuJoCo A1 behind the Legged interface, under the per-motor PD law at 1 kHz.

    ``start`` is where the robot begins (at construction and after reset()): "stand" (standing at
    rest, holding stand_q_rad with A1Sim's standing gains), "lying" (on its belly, legs folded,
    motors damped) or "back" (upside down, legs folded, damped). A tilt beyond fall_tilt_rad is
    reported as ``fallen`` in status(), a state rather than a fault, so reset-free tasks keep going.
    """

    simulated = True

    @dataclass
    class Args(LatencyArgs):
        """The simulated A1's settings: its transport and device clock (LatencyArgs), its low-level loop, where it
        starts and when it counts as fallen."""
        inner_rate_hz: float = setting(500.0, range=(1.0, 1000.0),
                                       help="the A1's low-level loop rate, at most the 1 kHz physics rate")
        fall_tilt_rad: float = setting(0.6, range=(0.01, math.pi), help="trunk tilt beyond which it is fallen")
        start: str = setting("stand", choices=START_POSES,
                             help="start pose at construction and reset(): stand, lying (on its belly) or back")
        reset_noise_rad: float = setting(0.0, range=(0.0, math.pi),
                                         help="std of the Gaussian noise on the start pose's joints")

    def __init__(
        self,
        *,
        name: str = "legs",
        host_clock: Callable[[], int] = time.monotonic_ns,
        **args,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"SimA1: name must be a non-empty string, got {name!r}; pass e.g. name='legs'")
        self.name = name
        owner = self._owner
        if not callable(host_clock):
            raise ValueError(f"{owner}: host_clock must be a callable returning nanoseconds, got {host_clock!r}")
        a = self.settings(args, owner)
        self.noise_std = a.noise_std
        self.reset_noise_rad = a.reset_noise_rad
        self.command_latency_s = a.command_latency_s
        self.sensor_latency_s = a.sensor_latency_s
        self.latency_jitter_s = a.latency_jitter_s
        self.command_loss = a.command_loss
        self.inner_rate_hz = a.inner_rate_hz
        self.fall_tilt_rad = a.fall_tilt_rad
        self.start = a.start
        self._host_clock = host_clock
        self.clock = DeviceClock(a.clock_offset_s, a.clock_drift_ppm, host_clock)
        self._noise_rng, self._reset_rng, self._loss_rng, self._sensor_rng, jitter_rng = (
            np.random.default_rng(a.seed).spawn(5))
        self._commands = DelayLine(self.command_latency_s, self.latency_jitter_s, jitter_rng, owner=owner)

        mujoco_sim = _mujoco_sim()
        self.sim = mujoco_sim.A1Sim(fall_tilt_rad=self.fall_tilt_rad)
        sim = self.sim
        self.n_motors = sim.n_motors
        self.stand_q_rad = np.asarray(sim.stand_q_rad, dtype=np.float64).copy()
        self.joint_limits_rad = sim.joint_limits_rad.copy()
        self.step_ns = max(1, round(sim.timestep_s * _NS_PER_S))
        self.inner_period_ns = _NS_PER_S / self.inner_rate_hz
        model = sim.model
        self._foot_geoms = tuple(int(model.geom(f"{leg}_foot").id) for leg in sim.LEGS)
        self._trunk_dof = int(model.joint("trunk").dofadr[0])
        self._trunk = model.body("trunk").id

        self._sensor_jitter_ns = round(self.latency_jitter_s * _NS_PER_S) if self.sensor_latency_s > 0 else 0
        self._sensor_latency_ns = round(self.sensor_latency_s * _NS_PER_S)
        self._history: History | None = None
        if self._sensor_latency_ns > 0:
            horizon = self.sensor_latency_s + self.latency_jitter_s + 2.0 * self.inner_period_ns / _NS_PER_S
            self._history = History(horizon, owner=owner)
        self._last_capture_ns: int | None = None
        self._origin_ns = 0
        self._t_ns = 0
        self._connected = False
        self.commands_sent = 0
        self.commands_lost = 0
        self._place_start_pose()

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Start the physics clock at host time now; the robot is wherever it was left (its start pose at first)."""
        if self._connected:
            return
        now_ns = int(self._host_clock())
        self._origin_ns = self._t_ns = now_ns
        self._commands.clear()
        self._connected = True
        self._restart_history()

    def disconnect(self) -> None:
        """Damp the motors (the safe passive state) and stop the physics clock."""
        if not self._connected:
            return
        self.damp()
        self._connected = False

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """MockLegged's readings plus imu_gyro (3,) and the privileged scene_base_vel (3,), scene_base_height (1,)."""
        return {
            **A1_READING_SPEC,
            "scene_base_vel": ((3,), "float32"),
            "scene_base_height": ((1,), "float32"),
        }

    # --- Device -----------------------------------------------------------------------------
    def read(self) -> Reading:
        """The state at the last physics step (or, with sensor latency, as captured that long ago)."""
        now_ns = self._live()
        if self._history is None:
            capture_ns, state = self._t_ns, self._snapshot()
        else:
            lag_ns = self._sensor_latency_ns
            if self._sensor_jitter_ns > 0:
                lag_ns += int(self._sensor_rng.integers(0, self._sensor_jitter_ns + 1))
            capture_ns, state = self._history.at(now_ns - lag_ns)
            if self._last_capture_ns is not None and capture_ns < self._last_capture_ns:
                # A sensor stream never goes back in time: jitter delays a sample, it does not reorder them.
                capture_ns, state = self._history.at(self._last_capture_ns)
        self._last_capture_ns = capture_ns
        hw_ns = self.clock.to_device_ns(capture_ns)
        values = {
            "joint_pos": self._with_noise(state["q"]),
            "joint_vel": self._with_noise(state["dq"]),
            "imu_rpy": self._with_noise(state["rpy"]),
            "imu_gyro": self._with_noise(state["gyro"]),
            "foot_contact": state["contact"].astype(np.float32),
            "tick": np.array([(hw_ns // _NS_PER_MS) % _U32_TICKS], dtype=np.uint32),
            "scene_base_vel": state["base_vel"].astype(np.float32),
            "scene_base_height": np.array([state["height"]], dtype=np.float32),
        }
        return Reading(values, hw_ns, now_ns, "hardware_clock")

    def status(self) -> DeviceStatus:
        """fallen while the trunk tilts beyond fall_tilt_rad (still ok); not ok while disconnected."""
        if not self._connected:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        self._live()
        return DeviceStatus(fallen=self.sim.tilt_rad() > self.fall_tilt_rad)

    # --- Legged -----------------------------------------------------------------------------
    def command_motors(
        self,
        q_rad: np.ndarray,
        dq_rad_s: np.ndarray,
        kp: np.ndarray,
        kd: np.ndarray,
        tau_nm: np.ndarray,
    ) -> None:
        """Send a PD command (each (12,)); it takes effect after the command latency, at the next inner tick.

        A lost packet (probability command_loss) never takes effect.
        """
        arrays = [self._motor_vector(what, value)
                  for what, value in (("q_rad", q_rad), ("dq_rad_s", dq_rad_s), ("kp", kp), ("kd", kd),
                                      ("tau_nm", tau_nm))]
        for what, gains in (("kp", arrays[2]), ("kd", arrays[3])):
            if np.any(gains < 0.0):
                raise ValueError(f"{self._owner}: command_motors {what} must be >= 0, got {gains.tolist()}")
        now_ns = self._live()
        self.commands_sent += 1
        if self.command_loss > 0.0 and self._loss_rng.random() < self.command_loss:
            self.commands_lost += 1
            return
        self._commands.push(now_ns, tuple(arrays))
        self._advance(now_ns)  # a command due now on an inner tick applies at once

    def damp(self) -> None:
        """Damping mode now (kp = 0, kd = A1Sim.DAMP_KD), bypassing latency; commands in flight are dropped."""
        if self._connected:
            self._live()
        self._commands.clear()
        self.sim.damp()

    def stop(self) -> None:
        """Safe stop: damping mode, as damp()."""
        self.damp()

    def reset(self) -> None:
        """Place the robot in its start pose at rest (a simulator shortcut), dropping queued commands and history."""
        if self._connected:
            self._live()
        self._place_start_pose()
        self._restart_history()

    # --- physics ----------------------------------------------------------------------------
    def _live(self) -> int:
        """Step the physics up to host time now and return now; raises when not connected."""
        if not self._connected:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        now_ns = int(self._host_clock())
        self._advance(now_ns)
        return now_ns

    def _latch_ns(self, t_ns: int) -> int:
        """The first inner tick at or after t_ns, rounded up to the physics step grid."""
        rel = t_ns - self._origin_ns
        if rel <= 0:
            return self._origin_ns
        k = math.ceil(rel / self.inner_period_ns - 1e-9)
        tick_rel = math.ceil(k * self.inner_period_ns - 1e-6)
        steps = -(-tick_rel // self.step_ns)
        return self._origin_ns + steps * self.step_ns

    def _advance(self, host_ns: int) -> None:
        """Step whole physics steps up to host_ns, applying each queued command at its latch time."""
        step = self.step_ns
        n_total = (host_ns - self._t_ns) // step
        target = self._t_ns + max(0, n_total) * step
        history = self._history
        sim = self.sim
        while True:
            due = self._commands.next_due_ns()
            while due is not None and self._latch_ns(due) <= self._t_ns:
                _, (q, dq, kp, kd, tau) = self._commands.pop_due(due)[0]
                sim.command_motors(q, dq, kp, kd, tau)
                due = self._commands.next_due_ns()
            stop = target
            if due is not None:
                stop = min(stop, self._latch_ns(due))
            if history is not None:
                stop = min(stop, self._latch_ns(self._t_ns + 1))
            if stop <= self._t_ns:
                return
            n = (stop - self._t_ns) // step
            sim.step(n)
            self._t_ns += n * step
            if history is not None and self._latch_ns(self._t_ns) == self._t_ns:
                history.record(self._t_ns, self._snapshot())

    def _snapshot(self) -> dict:
        """The state a reading reports: joints, IMU, foot contacts and the privileged trunk velocity and height."""
        sim = self.sim
        data = sim.data
        ncon = data.ncon
        touching = set(data.contact.geom[:ncon].ravel().tolist()) if ncon else ()
        contact = np.array([1.0 if geom in touching else 0.0 for geom in self._foot_geoms])
        xmat = data.xmat[self._trunk]
        heading = math.atan2(float(xmat[3]), float(xmat[0]))
        c, s = math.cos(heading), math.sin(heading)
        v = data.qvel[self._trunk_dof : self._trunk_dof + 3]
        base_vel = np.array([c * v[0] + s * v[1], -s * v[0] + c * v[1], v[2]])
        imu = sim.imu()
        return {
            "q": sim.q(),
            "dq": sim.dq(),
            "rpy": quat_to_rpy(imu["quaternion"]),
            "gyro": imu["gyroscope"],
            "contact": contact,
            "base_vel": base_vel,
            "height": sim.trunk_height(),
        }

    def _with_noise(self, values: np.ndarray) -> np.ndarray:
        if self.noise_std > 0.0:
            values = values + self._noise_rng.normal(0.0, self.noise_std, np.shape(values))
        return np.asarray(values, dtype=np.float32)

    def _place_start_pose(self) -> None:
        """Put the robot in its start pose (plus seeded joint noise) and let it settle there."""
        self._commands.clear()
        sim = self.sim
        lower, upper = self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1]
        if self.start == "stand":
            q = self.stand_q_rad.copy()
        else:
            q = np.tile(FOLDED_LEG_RAD, 4)
        if self.reset_noise_rad > 0.0:
            q = q + self._reset_rng.normal(0.0, self.reset_noise_rad, self.n_motors)
        q = np.clip(q, lower, upper)
        if self.start == "back":
            sim.reset(q, base_pos=np.array([0.0, 0.0, 0.3]), base_quat=np.array([0.0, 1.0, 0.0, 0.0]))
        else:
            sim.reset(q)
        if self.start != "stand":
            sim.damp()
        sim.step(round(SETTLE_S[self.start] / sim.timestep_s))

    def _restart_history(self) -> None:
        self._last_capture_ns = None
        if self._history is not None:
            self._history.clear()
            self._history.record(self._t_ns, self._snapshot())
