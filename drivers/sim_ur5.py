"""The MuJoCo UR5 (drivers/mujoco_sim.UR5Sim) as simulated drivers: an Arm `sim_ur5` and a Camera `sim_camera`.

Both are ``simulated`` so a session may run them under ``control.pacing: lockstep``. They share
one UR5Sim per ``world`` name (default "ur5"): a small module-level registry creates the world
when the first device of that name connects and closes it when the last one disconnects.

Physics advances with the elapsed time of the driver's ``host_clock`` (time.monotonic_ns in
realtime; the daemon passes its simulated clock in lockstep, as it does for the mocks), in whole
physics steps: a world remembers the host time it has been stepped to and steps
floor(elapsed / timestep) more whenever a device attached to it is read or commanded.

mujoco is imported only when a driver is constructed, so `import drivers` never needs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from drivers.base import Arm, Camera, DeviceStatus, Reading
from drivers.device_clock import DeviceClock
from drivers.registry import register

_NS_PER_S = 1_000_000_000


def _mujoco_sim():
    """drivers.mujoco_sim, imported on first use (it imports mujoco)."""
    from drivers import mujoco_sim

    return mujoco_sim


class _World:
    """One UR5Sim shared by the devices naming the same world, and the host time it has been stepped to."""

    def __init__(self, name: str, host_ns: int) -> None:
        self.name = name
        self.sim = _mujoco_sim().UR5Sim()
        self.step_ns = max(1, round(self.sim.timestep_s * _NS_PER_S))
        self.t_ns = host_ns
        self.users = 0
        # Hooks run before each chunk of physics steps (the arm integrates velocity targets there)
        # and after it (the arm checks for a protective stop).
        self.before_steps: list[Callable[[float], None]] = []
        self.after_steps: list[Callable[[], None]] = []

    def advance(self, host_ns: int) -> None:
        """Step the physics in whole steps up to host time host_ns (never backwards)."""
        n = (host_ns - self.t_ns) // self.step_ns
        if n <= 0:
            return
        self.t_ns += n * self.step_ns
        dt_s = n * self.step_ns / _NS_PER_S
        for hook in self.before_steps:
            hook(dt_s)
        self.sim.step(n)
        for hook in self.after_steps:
            hook()


_WORLDS: dict[str, _World] = {}


def _acquire(name: str, host_ns: int) -> _World:
    """The world called name, created (its physics clock starting at host_ns) if nobody holds it."""
    world = _WORLDS.get(name)
    if world is None:
        world = _World(name, host_ns)
        _WORLDS[name] = world
    world.users += 1
    return world


def _release(world: _World) -> None:
    """Drop one user of world; the last one closes it and removes it from the registry."""
    world.users -= 1
    if world.users <= 0:
        world.sim.close()
        if _WORLDS.get(world.name) is world:
            del _WORLDS[world.name]


_FK_SIM = None


def _fk_sim():
    """A private UR5Sim for joint limits and forward kinematics before (or without) a world."""
    global _FK_SIM
    if _FK_SIM is None:
        _FK_SIM = _mujoco_sim().UR5Sim()
    return _FK_SIM


def _check_world(owner: str, world: object) -> str:
    if not isinstance(world, str) or not world:
        raise ValueError(f"{owner}: world must be a non-empty string naming the shared simulation, got {world!r}")
    return world


class _SimDevice:
    """Connection to a shared world, the device clock and the noise stream."""

    simulated = True

    def __init__(
        self,
        *,
        name: str,
        world: str = "ur5",
        seed: int = 0,
        noise_std: float = 0.0,
        clock_offset_s: float = 0.0,
        clock_drift_ppm: float = 0.0,
        host_clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.world_name = _check_world(self._owner, world)
        self.noise_std = float(noise_std)
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0.0):
            raise ValueError(f"{self._owner}: noise_std must be a finite number >= 0, got {noise_std!r}")
        self._host_clock = host_clock
        self.clock = DeviceClock(clock_offset_s, clock_drift_ppm, host_clock)
        self._noise_rng, self._reset_rng = np.random.default_rng(seed).spawn(2)
        self._world: _World | None = None
        _mujoco_sim()  # fail at construction, with mujoco's ImportError, when mujoco is missing

    @property
    def _owner(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    def _live(self) -> tuple[_World, int]:
        """The world stepped up to now, and host time now; raises when not connected."""
        if self._world is None:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        now_ns = self._host_clock()
        self._world.advance(now_ns)
        return self._world, now_ns

    def _with_noise(self, values: np.ndarray) -> np.ndarray:
        if self.noise_std > 0.0:
            values = values + self._noise_rng.normal(0.0, self.noise_std, values.shape)
        return np.asarray(values, dtype=np.float32)


@register("sim_ur5")
class SimUR5(_SimDevice, Arm):
    """The MuJoCo UR5 behind the Arm interface, with MockArm's readings (joint_pos, joint_vel, tcp_pos).

    command_joint_position sets the servo targets; command_joint_velocity moves the targets at the
    commanded speed (clamped to max_vel_rad_s) as physics time advances; stop() holds the current
    pose. tcp_pos and tcp_position() are the DH flange (as MockArm reports it). An arm link pushing
    on anything harder than protective_stop_n latches a protective stop: the arm holds where it is,
    commands are ignored and status() reports it until reset().
    """

    def __init__(
        self,
        *,
        name: str = "arm",
        max_vel_rad_s: float = math.pi,
        reset_noise_rad: float = 0.01,
        protective_stop_n: float = 50.0,
        **common,
    ) -> None:
        super().__init__(name=name, **common)
        self.dof = 6
        self.max_vel_rad_s = float(max_vel_rad_s)
        self.reset_noise_rad = float(reset_noise_rad)
        self.protective_stop_n = float(protective_stop_n)
        for what, value in (("max_vel_rad_s", self.max_vel_rad_s), ("protective_stop_n", self.protective_stop_n)):
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{self._owner}: {what} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.reset_noise_rad) and self.reset_noise_rad >= 0.0):
            raise ValueError(f"{self._owner}: reset_noise_rad must be a finite number >= 0, got {reset_noise_rad!r}")
        fk = _fk_sim()
        self.joint_limits_rad = fk.joint_limits_rad.copy()
        self.home_q_rad = np.asarray(fk.home_q_rad, dtype=np.float64).copy()
        self._velocity_mode = False
        self._target_qd_rad_s = np.zeros(self.dof)
        self._protective_stop = False

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Attach to (or create) the shared world; the arm starts holding wherever the world's arm is."""
        if self._world is not None:
            return
        world = _acquire(self.world_name, self._host_clock())
        self._world = world
        world.before_steps.append(self._integrate_velocity)
        world.after_steps.append(self._check_contact)
        self._velocity_mode = False
        self._protective_stop = False

    def disconnect(self) -> None:
        """Hold the arm where it is and detach from the world."""
        world = self._world
        if world is None:
            return
        world.advance(self._host_clock())
        self._hold()
        world.before_steps.remove(self._integrate_velocity)
        world.after_steps.remove(self._check_contact)
        self._world = None
        _release(world)

    @property
    def sim(self):
        """The shared UR5Sim (None while disconnected)."""
        return None if self._world is None else self._world.sim

    # --- Device -------------------------------------------------------------------------------
    def read(self) -> Reading:
        world, now_ns = self._live()
        sim = world.sim
        q = sim.q()
        values = {
            "joint_pos": self._with_noise(q),
            "joint_vel": self._with_noise(sim.dq()),
            "tcp_pos": self._with_noise(sim.flange_pose()[0]),
        }
        # The state is the physics state at the last whole step, which is when it was "captured".
        return Reading(values, self.clock.to_device_ns(world.t_ns), now_ns, "hardware_clock")

    def status(self) -> DeviceStatus:
        if self._world is None:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        self._live()
        if self._protective_stop:
            return DeviceStatus(
                ok=False, protective_stop=True,
                fault=f"{self._owner} is in protective stop (an arm link pushed harder than "
                      f"{self.protective_stop_n} N); call reset() to clear it",
            )
        return DeviceStatus()

    # --- Arm ----------------------------------------------------------------------------------
    def _finite(self, what: str, value: object) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (self.dof,):
            raise ValueError(f"{self._owner}: {what} must have shape ({self.dof},), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self._owner}: {what} must be finite, got {array.tolist()}")
        return array

    def _clip_q(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])

    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """Servo towards q_rad (clamped to the joint limits); ignored during a protective stop."""
        target = self._finite("command_joint_position q_rad", q_rad)
        world, _ = self._live()
        if self._protective_stop:
            return
        world.sim.command_joint_position(self._clip_q(target))
        self._velocity_mode = False

    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """Move the servo targets at qd_rad_s (clamped to max_vel_rad_s); ignored during a protective stop."""
        velocity = self._finite("command_joint_velocity qd_rad_s", qd_rad_s)
        world, _ = self._live()
        if self._protective_stop:
            return
        if not self._velocity_mode:
            # Integrate from where the arm is, not from a stale position target.
            world.sim.command_joint_position(self._clip_q(world.sim.q()))
        self._target_qd_rad_s = np.clip(velocity, -self.max_vel_rad_s, self.max_vel_rad_s)
        self._velocity_mode = True

    def stop(self) -> None:
        """Hold the current pose (the servos brake to it)."""
        self._live()
        self._hold()

    def reset(self) -> None:
        """Reset the scene with the arm at home plus seeded noise of std reset_noise_rad, and clear a protective stop."""
        world, _ = self._live()
        q = self._clip_q(self.home_q_rad + self._reset_rng.normal(0.0, self.reset_noise_rad, self.dof))
        world.sim.reset(q)
        self._velocity_mode = False
        self._target_qd_rad_s = np.zeros(self.dof)
        self._protective_stop = False

    def tcp_position(self, q_rad: np.ndarray) -> np.ndarray:
        """Forward kinematics: DH flange position for joint angles q_rad, (3,) metres, base frame (as MockArm)."""
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != (self.dof,):
            raise ValueError(f"{self._owner}: tcp_position q_rad must have shape ({self.dof},), got {q.shape}")
        sim = self.sim if self._world is not None else _fk_sim()
        return sim.flange_pose(q)[0]

    # --- world hooks --------------------------------------------------------------------------
    def _hold(self) -> None:
        if self._world is not None:
            sim = self._world.sim
            sim.command_joint_position(self._clip_q(sim.q()))
        self._velocity_mode = False
        self._target_qd_rad_s = np.zeros(self.dof)

    def _integrate_velocity(self, dt_s: float) -> None:
        if self._velocity_mode and not self._protective_stop:
            sim = self._world.sim
            target = sim.data.ctrl[sim._act] + self._target_qd_rad_s * dt_s
            sim.command_joint_position(self._clip_q(target))

    def _check_contact(self) -> None:
        if not self._protective_stop and self._world.sim.protective_stop_contact(self.protective_stop_n):
            self._hold()
            self._protective_stop = True


@register("sim_camera")
class SimCamera(_SimDevice, Camera):
    """The UR5 world's fixed "scene" camera at width x height: frame k is captured k / fps seconds after connect().

    A frame is rendered when first read, from the world as it is then (stepped up to now).
    render() raises drivers.mujoco_sim.RenderUnavailable where no GL backend works.
    """

    def __init__(
        self,
        *,
        name: str = "camera",
        width: int = 64,
        height: int = 64,
        fps: float = 30.0,
        camera: str = "scene",
        **common,
    ) -> None:
        super().__init__(name=name, **common)
        for what, size in (("width", width), ("height", height)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{self._owner}: {what} must be an integer >= 1, got {size!r}; pass e.g. {what}=64")
        self.width, self.height = width, height
        self.fps = float(fps)
        if not (math.isfinite(self.fps) and self.fps > 0.0):
            raise ValueError(f"{self._owner}: fps must be a finite number > 0, got {fps!r}")
        self.camera = camera
        self._device_t0_ns = 0
        self._frame: tuple[int, np.ndarray] | None = None

    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """image (height, width, 3) uint8."""
        return {"image": ((self.height, self.width, 3), "uint8")}

    def connect(self) -> None:
        if self._world is not None:
            return
        now_ns = self._host_clock()
        self._world = _acquire(self.world_name, now_ns)
        self._device_t0_ns = self.clock.to_device_ns(now_ns)
        self._frame = None

    def disconnect(self) -> None:
        world = self._world
        if world is not None:
            self._world = None
            _release(world)

    @property
    def sim(self):
        return None if self._world is None else self._world.sim

    def status(self) -> DeviceStatus:
        if self._world is None:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        return DeviceStatus()

    def read(self) -> Reading:
        world, now_ns = self._live()
        frame_number = self.newest_frame(self.clock.to_device_ns(now_ns) - self._device_t0_ns)
        if self._frame is None or self._frame[0] != frame_number:
            image = world.sim.render(self.width, self.height, self.camera)
            if self.noise_std > 0.0:
                noise = self._noise_rng.normal(0.0, self.noise_std, (self.height, self.width, 1))
                image = np.clip(image + noise + 0.5, 0.0, 255.0).astype(np.uint8)
            self._frame = (frame_number, image)
        hw_time_ns = self._device_t0_ns + self.capture_offset_ns(frame_number)
        return Reading({"image": self._frame[1].copy()}, hw_time_ns, now_ns, "hardware_clock",
                       frame_number=frame_number)
