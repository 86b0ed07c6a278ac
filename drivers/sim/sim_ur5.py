"""The MuJoCo UR5 (drivers/mujoco_sim.UR5Sim) as simulated drivers: an Arm `sim_ur5` and a Camera `sim_camera`.

Both are ``simulated`` so a session may run them under ``control.pacing: lockstep``. They share
one UR5Sim per ``world`` name (default "ur5"): a small module-level registry creates the world
when the first device of that name connects and closes it when the last one disconnects.

Physics advances with the elapsed time of the driver's ``host_clock`` (time.monotonic_ns in
realtime; the daemon passes its simulated clock in lockstep, as it does for the mocks), one
physics step (an inner tick of 2 ms) at a time: a world remembers the host time it has been
stepped to and steps up to now whenever a device attached to it is read or commanded. Around every
inner tick the arm applies the commands that have become due, integrates its velocity targets,
checks for a protective stop and, with sensor latency, records a snapshot of its readings.

mujoco is imported only when a driver is constructed, so `import drivers` never needs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers.base import Arm, Camera, DeviceStatus, Reading
from drivers.device_clock import DeviceClock
from drivers.sim.realism import DelayLine, DeviceArgs, History, LatencyArgs
from drivers.registry import register
from drivers.settings import check_box, setting

_NS_PER_S = 1_000_000_000


def _mujoco_sim():
    """drivers.sim.mujoco_sim, imported on first use (it imports mujoco)."""
    from drivers.sim import mujoco_sim

    return mujoco_sim


class _World:
    """One UR5Sim shared by the devices naming the same world, and the host time it has been stepped to."""

    def __init__(self, name: str, host_ns: int) -> None:
        self.name = name
        self.sim = _mujoco_sim().UR5Sim()
        self.step_ns = max(1, round(self.sim.timestep_s * _NS_PER_S))
        self.t_ns = host_ns
        self.users = 0
        # Hooks run with the world time before each physics step (the arm applies due commands and
        # integrates velocity targets there) and after it (protective stop, sensor snapshots).
        self.before_step: list[Callable[[int], None]] = []
        self.after_step: list[Callable[[int], None]] = []

    def advance(self, host_ns: int) -> None:
        """Step the physics one step at a time up to host time host_ns (never backwards)."""
        step_ns = self.step_ns
        while self.t_ns + step_ns <= host_ns:
            for hook in self.before_step:
                hook(self.t_ns)
            self.sim.step(1)
            self.t_ns += step_ns
            for hook in self.after_step:
                hook(self.t_ns)


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


class _SimDevice:
    """Connection to a shared world, the device clock and the seeded random streams."""

    simulated = True

    @dataclass
    class Args(DeviceArgs):
        """Settings of every device on a shared UR5 world: which world, and DeviceArgs (seed, noise, clock)."""
        world: str = setting("ur5", help="name of the shared simulation; devices naming the same one share it")

        def __post_init__(self) -> None:
            if not self.world:
                raise ValueError("world = '' is empty: name the shared simulation, e.g. world: ur5")

    def __init__(self, *, name: str, settings: _SimDevice.Args, host_clock: Callable[[], int]) -> None:
        """``settings``: the device's Args, checked already (``self.settings``)."""
        self.name = name
        self.world_name = settings.world
        self.noise_std = settings.noise_std
        self._host_clock = host_clock
        self.clock = DeviceClock(settings.clock_offset_s, settings.clock_drift_ppm, host_clock)
        # Independent streams: sensor noise, resets (pose noise, objects, targets), latency jitter, frame drops,
        # command loss (spawned children do not depend on how many are spawned, so the first four stay as they were).
        self._noise_rng, self._reset_rng, self._jitter_rng, self._drop_rng, self._loss_rng = (
            np.random.default_rng(settings.seed).spawn(5))
        self._world: _World | None = None
        _mujoco_sim()  # fail at construction, with mujoco's ImportError, when mujoco is missing

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


# Default box the reach target is drawn from, base frame (x points away from the bins): above the
# table between and over the bins, reachable with the gripper pointing down, inside the scene camera's view.
TARGET_MIN_M = (-0.6, -0.25, 0.1)
TARGET_MAX_M = (-0.3, 0.25, 0.3)
_ORIENTATION_GAIN = 4.0  # 1/s: angular velocity per radian of tool orientation error under orientation_hold
_MAX_HOLD_RAD_S = 1.0
_DLS_DAMPING = 1e-3  # damped least squares: J^T (J J^T + damping I)^-1


@register("sim_ur5")
class SimUR5(_SimDevice, Arm):
    """The MuJoCo UR5 with its parallel gripper behind the Arm interface.

    Readings: joint_pos, joint_vel (6,), tcp_pos (3,) the tool centre point between the fingertips
    (as a UR reports it with its TCP configured for the gripper), gripper_pos (1,) 0 open .. 1 closed
    when ``gripper``, and world state for rewards, never for the policy: scene_target_pos (3,) (zeros
    with ``target`` off), scene_object_pos (3, 3) box centres, scene_grasped (3,) 0/1 and
    scene_object_bin (3,) 0 elsewhere / 1 in bin_a / 2 in bin_b, every position in the base frame.

    command_joint_position sets the servo targets; command_joint_velocity moves them at the commanded
    speed; command_tcp_velocity moves them by the damped least squares J^+ v every inner tick (held until
    the next command, like speedL), optionally holding the tool pointing straight down
    (``orientation_hold``). Joint speeds are clamped to max_vel_rad_s and targets to the joint limits.
    stop() holds the current pose. Every command waits command_latency_s plus up to latency_jitter_s
    (stop(), reset() and a protective stop act at once and drop the commands in flight), and a
    command_loss share of the commands never arrives (seeded; counted in commands_lost); readings show
    the state of sensor_latency_s ago, stamped with its capture time (for sensor_latency_s after
    connect() or reset() nothing older exists: reads show that first state). An arm link pushing on anything
    harder than protective_stop_n (checked every inner tick) latches a protective stop: the arm holds
    where it is, commands are ignored and status() reports it until reset().

    reset() puts the arm at home plus noise, opens the gripper, re-randomises the boxes in bin_a
    (``randomize_objects``) and draws a new target from [target_min_m, target_max_m] (``target``).
    """

    @dataclass
    class Args(LatencyArgs, _SimDevice.Args):
        """The simulated arm's settings: world, seed, noise and clock (_SimDevice.Args), its transport
        (LatencyArgs), its limits, gripper, reach target box and object randomisation."""
        max_vel_rad_s: float = setting(math.pi, range=(0.001, 10.0), help="joint speed limit of velocity commands")
        reset_noise_rad: float = setting(0.01, range=(0.0, math.pi),
                                         help="std of the joint noise on reset()'s home pose")
        protective_stop_n: float = setting(50.0, range=(0.001, 1e15),
                                           help="contact force on an arm link that latches a protective stop")
        gripper: bool = setting(True, help="the parallel gripper is fitted (gripper_pos reading, command_gripper)")
        target: bool = setting(True, help="draw a reach target on reset() (scene_target_pos; zeros without)")
        target_min_m: list[float] = setting(default_factory=lambda: list(TARGET_MIN_M), range=(-10.0, 10.0),
                                            help="[x, y, z] low corner of the target box, base frame")
        target_max_m: list[float] = setting(default_factory=lambda: list(TARGET_MAX_M), range=(-10.0, 10.0),
                                            help="[x, y, z] high corner of the target box, base frame")
        randomize_objects: bool = setting(True, help="re-randomise the boxes in bin_a on reset()")
        orientation_hold: bool = setting(True, help="tcp velocity commands keep the tool pointing straight down")

        def __post_init__(self) -> None:
            super().__post_init__()
            check_box("target_min_m", self.target_min_m, "target_max_m", self.target_max_m, "metres (base frame)")

    def __init__(self, *, name: str = "arm", host_clock: Callable[[], int] = time.monotonic_ns, **args) -> None:
        self.name = name
        a = self.settings(args, self._owner)
        super().__init__(name=name, settings=a, host_clock=host_clock)
        self.dof = 6
        self.max_vel_rad_s = a.max_vel_rad_s
        self.reset_noise_rad = a.reset_noise_rad
        self.protective_stop_n = a.protective_stop_n
        self.has_gripper = a.gripper
        self.target = a.target
        self.randomize_objects = a.randomize_objects
        self.orientation_hold = a.orientation_hold
        self.target_min_m = np.asarray(a.target_min_m, dtype=np.float64)
        self.target_max_m = np.asarray(a.target_max_m, dtype=np.float64)
        self.command_latency_s = a.command_latency_s
        self.latency_jitter_s = a.latency_jitter_s
        self.sensor_latency_s = a.sensor_latency_s
        self.command_loss = a.command_loss
        self.commands_sent = 0
        self.commands_lost = 0
        self._commands = DelayLine(self.command_latency_s, self.latency_jitter_s, self._jitter_rng, owner=self._owner)
        self._sensor_latency_ns = round(self.sensor_latency_s * _NS_PER_S)
        self._history = History(self.sensor_latency_s + 0.1, owner=self._owner)
        fk = _fk_sim()
        self.joint_limits_rad = fk.joint_limits_rad.copy()
        self.home_q_rad = np.asarray(fk.home_q_rad, dtype=np.float64).copy()
        self._home_rotation = fk.flange_pose(self.home_q_rad)[1]
        self._mode = "position"  # or "joint_velocity" / "tcp_velocity"
        self._target_qd_rad_s = np.zeros(self.dof)
        self._tcp_twist = np.zeros(6)
        self._protective_stop = False

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Attach to (or create) the shared world; the arm starts holding wherever the world's arm is."""
        if self._world is not None:
            return
        world = _acquire(self.world_name, self._host_clock())
        self._world = world
        world.before_step.append(self._before_step)
        world.after_step.append(self._after_step)
        self._protective_stop = False
        self._commands.clear()
        self._hold()
        if not self.target:
            world.sim.hide_target()
        self._history.clear()
        self._snapshot(world.t_ns)

    def disconnect(self) -> None:
        """Hold the arm where it is and detach from the world."""
        world = self._world
        if world is None:
            return
        world.advance(self._host_clock())
        self._commands.clear()
        self._hold()
        world.before_step.remove(self._before_step)
        world.after_step.remove(self._after_step)
        self._world = None
        _release(world)

    @property
    def sim(self):
        """The shared UR5Sim (None while disconnected)."""
        return None if self._world is None else self._world.sim

    # --- Device -------------------------------------------------------------------------------
    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The arm's readings (see Arm.reading_spec) plus the scene_* world state, all float32."""
        n_boxes = len(_mujoco_sim().UR5Sim.BOXES)
        spec = super().reading_spec()
        spec.update({
            "scene_target_pos": ((3,), "float32"),
            "scene_object_pos": ((n_boxes, 3), "float32"),
            "scene_grasped": ((n_boxes,), "float32"),
            "scene_object_bin": ((n_boxes,), "float32"),
        })
        return spec

    def _capture(self) -> tuple[np.ndarray, ...]:
        """The raw state the readings derive from, cheap enough to keep for every inner tick."""
        sim = self._world.sim
        target = sim.target_position() if self.target and sim.target_shown else np.zeros(3)
        return (sim.q(), sim.dq(), sim.gripper_closure(), target, sim.object_positions(),
                sim.finger_contacts().all(axis=1))

    def _state(self, captured: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """The noise-free readings from a captured state."""
        sim = self._world.sim
        q, dq, closure, target, objects, pinched = captured
        # tcp by exact forward kinematics of the reported joints (the live body poses lag a physics step behind).
        state = {"joint_pos": q, "joint_vel": dq, "tcp_pos": sim.tcp_position(q)}
        if self.has_gripper:
            state["gripper_pos"] = np.array([closure])
        state["scene_target_pos"] = target
        state["scene_object_pos"] = objects
        state["scene_grasped"] = sim.grasped(objects, pinched)
        state["scene_object_bin"] = sim.object_bins(objects)
        return state

    def _snapshot(self, t_ns: int) -> None:
        if self._sensor_latency_ns > 0:
            self._history.record(t_ns, self._capture())

    def read(self) -> Reading:
        """The arm's readings: now, or sensor_latency_s ago; hw_time_ns is when that state was captured."""
        world, now_ns = self._live()
        if self._sensor_latency_ns > 0:
            captured_ns, captured = self._history.at(now_ns - self._sensor_latency_ns)
        else:
            # The state is the physics state at the last whole step, which is when it was "captured".
            captured_ns, captured = world.t_ns, self._capture()
        values = {}
        for key, value in self._state(captured).items():
            values[key] = np.array(value, dtype=np.float32) if key.startswith("scene_") else self._with_noise(value)
        return Reading(values, self.clock.to_device_ns(captured_ns), now_ns, "hardware_clock")

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
    def _finite(self, what: str, value: object, n: int | None = None) -> np.ndarray:
        n = self.dof if n is None else n
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (n,):
            raise ValueError(f"{self._owner}: {what} must have shape ({n},), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{self._owner}: {what} must be finite, got {array.tolist()}")
        return array

    def _clip_q(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1])

    def _send(self, kind: str, value: np.ndarray | float) -> None:
        """Apply a command now, or queue it for command_latency_s (+ jitter); ignored during a protective stop.

        A lost command (probability command_loss, seeded) never takes effect."""
        world, now_ns = self._live()
        if self._protective_stop:
            return
        self.commands_sent += 1
        if self.command_loss > 0.0 and self._loss_rng.random() < self.command_loss:
            self.commands_lost += 1
            return
        if self._commands.delays:
            self._commands.push(now_ns, (kind, value))
        else:
            self._apply(kind, value)

    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """Servo towards q_rad (clamped to the joint limits); leaves velocity mode; ignored during a protective stop."""
        self._send("joint_position", self._finite("command_joint_position q_rad", q_rad))

    def command_joint_velocity(self, qd_rad_s: np.ndarray) -> None:
        """Move the servo targets at qd_rad_s (clamped to max_vel_rad_s); ignored during a protective stop."""
        self._send("joint_velocity", self._finite("command_joint_velocity qd_rad_s", qd_rad_s))

    def command_tcp_velocity(self, v: np.ndarray) -> None:
        """Move the tcp at v (6,): linear m/s then angular rad/s, base frame, held until the next command.

        With orientation_hold the angular part is replaced by a correction towards the home orientation
        (tool pointing straight down). Ignored during a protective stop.
        """
        self._send("tcp_velocity", self._finite("command_tcp_velocity v", v, 6))

    def command_gripper(self, closure: float) -> None:
        """Set the gripper target: 0 fully open .. 1 fully closed (clipped); ignored during a protective stop."""
        if not self.has_gripper:
            super().command_gripper(closure)
        value = float(self._finite("command_gripper closure", np.atleast_1d(closure), 1)[0])
        self._send("gripper", float(np.clip(value, 0.0, 1.0)))

    def stop(self) -> None:
        """Hold the current pose at once (the servos brake to it) and drop the commands in flight."""
        self._live()
        self._commands.clear()
        self._hold()

    def reset(self) -> None:
        """Home pose plus seeded noise (std reset_noise_rad), gripper open, boxes re-randomised in bin_a,
        a new target; drops the commands in flight and clears a protective stop."""
        world, _ = self._live()
        sim = world.sim
        q = self._clip_q(self.home_q_rad + self._reset_rng.normal(0.0, self.reset_noise_rad, self.dof))
        sim.reset(q)
        if self.randomize_objects:
            sim.randomize_objects(self._reset_rng)
        if self.target:
            sim.set_target(self._reset_rng.uniform(self.target_min_m, self.target_max_m))
        else:
            sim.hide_target()
        self._commands.clear()
        self._hold()
        self._protective_stop = False
        self._history.clear()
        self._snapshot(world.t_ns)

    def tcp_position(self, q_rad: np.ndarray) -> np.ndarray:
        """Forward kinematics: tool centre point (between the fingertips) for q_rad, (3,) metres, base frame."""
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != (self.dof,):
            raise ValueError(f"{self._owner}: tcp_position q_rad must have shape ({self.dof},), got {q.shape}")
        sim = self.sim if self._world is not None else _fk_sim()
        return sim.tcp_position(q)

    # --- applying commands and world hooks ----------------------------------------------------
    def _apply(self, kind: str, value) -> None:
        sim = self._world.sim
        if kind == "joint_position":
            sim.command_joint_position(self._clip_q(value))
            self._mode = "position"
        elif kind == "gripper":
            sim.command_gripper((1.0 - value) * sim.GRIPPER_MAX_OPENING_M)
        else:
            if self._mode == "position":
                # Integrate from where the arm is, not from a stale position target.
                sim.command_joint_position(self._clip_q(sim.hold_target()))
            if kind == "joint_velocity":
                self._target_qd_rad_s = np.clip(value, -self.max_vel_rad_s, self.max_vel_rad_s)
            else:
                self._tcp_twist = value.copy()
            self._mode = kind

    def _hold(self) -> None:
        if self._world is not None:
            sim = self._world.sim
            sim.command_joint_position(self._clip_q(sim.hold_target()))
        self._mode = "position"
        self._target_qd_rad_s = np.zeros(self.dof)
        self._tcp_twist = np.zeros(6)

    def _tcp_joint_velocity(self) -> np.ndarray:
        """Joint velocities for the held tcp twist at the current pose (damped least squares, speed-clamped)."""
        sim = self._world.sim
        twist = self._tcp_twist.copy()
        if self.orientation_hold:
            # Rotation vector (small-angle) from the current to the home orientation, base frame.
            turn = self._home_rotation @ sim.tcp_rotation().T
            error = 0.5 * np.array([turn[2, 1] - turn[1, 2], turn[0, 2] - turn[2, 0], turn[1, 0] - turn[0, 1]])
            omega = _ORIENTATION_GAIN * error
            norm = float(np.linalg.norm(omega))
            twist[3:] = omega if norm <= _MAX_HOLD_RAD_S else omega * (_MAX_HOLD_RAD_S / norm)
        jacobian = sim.tcp_jacobian()
        qd = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + _DLS_DAMPING * np.eye(6), twist)
        fastest = float(np.abs(qd).max())
        if fastest > self.max_vel_rad_s:
            qd *= self.max_vel_rad_s / fastest  # keep the direction, slow every joint alike
        return qd

    def _before_step(self, t_ns: int) -> None:
        if self._protective_stop:
            return
        for _, (kind, value) in self._commands.pop_due(t_ns):
            self._apply(kind, value)
        if self._mode == "position":
            return
        sim = self._world.sim
        qd = self._target_qd_rad_s if self._mode == "joint_velocity" else self._tcp_joint_velocity()
        # The servo targets themselves (command_joint_position's checks are redundant on clipped targets).
        sim.data.ctrl[sim._act] = self._clip_q(sim.data.ctrl[sim._act] + qd * sim.timestep_s)

    def _after_step(self, t_ns: int) -> None:
        if not self._protective_stop and self._world.sim.protective_stop_contact(self.protective_stop_n):
            self._commands.clear()
            self._hold()
            self._protective_stop = True
        self._snapshot(t_ns)


@register("sim_camera")
class SimCamera(_SimDevice, Camera):
    """The UR5 world's fixed "scene" camera at width x height, colour and optionally depth.

    Frame k is captured k / fps seconds after connect() on the device clock; read() returns the newest
    delivered frame with hw_time_ns = that capture time and frame_number = k. A frame is rendered the
    first time a read returns it, from the world as stepped up to that read (so the image may show up
    to one frame period more of motion than its timestamp says; in lockstep at the camera's rate it is
    exact to the physics step). With drop_rate each frame after frame 0 is lost with that probability
    (seeded): a lost frame is never delivered, frame numbers show the gap and reads keep returning the
    newest delivered frame. depth adds "depth" (height, width) uint16 millimetres along the camera
    axis (65535 where nothing is hit). render() raises drivers.sim.mujoco_sim.RenderUnavailable where no
    GL backend works.
    """

    @dataclass
    class Args(_SimDevice.Args):
        """The simulated camera's settings: world, seed, noise (pixel values) and clock (_SimDevice.Args), its
        image size, frame rate, which camera of the model, depth, and frame loss."""
        width: int = setting(64, range=(1, 4096), help="image width, pixels")
        height: int = setting(64, range=(1, 4096), help="image height, pixels")
        fps: float = setting(30.0, range=(0.01, 10000.0), help="frame rate on the device clock")
        camera: str = setting("scene", help="the model's camera to render (the UR5 world's fixed one is scene)")
        depth: bool = setting(False, help="add a depth image (uint16 millimetres)")
        drop_rate: float = setting(0.0, range=(0.0, 0.999), help="probability that a frame after the first is lost")

    def __init__(self, *, name: str = "camera", host_clock: Callable[[], int] = time.monotonic_ns, **args) -> None:
        self.name = name
        a = self.settings(args, self._owner)
        super().__init__(name=name, settings=a, host_clock=host_clock)
        self.width, self.height = a.width, a.height
        self.fps = a.fps
        self.camera = a.camera
        self.depth = a.depth
        self.drop_rate = a.drop_rate
        self._device_t0_ns = 0
        self._frame: tuple[int, dict[str, np.ndarray]] | None = None
        self._decided = -1  # frames up to this number have been decided delivered or lost
        self._delivered = 0  # newest delivered frame number

    def connect(self) -> None:
        if self._world is not None:
            return
        now_ns = self._host_clock()
        self._world = _acquire(self.world_name, now_ns)
        self._device_t0_ns = self.clock.to_device_ns(now_ns)
        self._frame = None
        self._decided, self._delivered = -1, 0

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

    def _newest_delivered(self, newest: int) -> int:
        """Decide (seeded, once per frame, in order) which frames up to newest are lost; the newest delivered."""
        if newest > self._decided:
            first = self._decided + 1
            kept = np.ones(newest - first + 1, dtype=bool)
            if self.drop_rate > 0.0:
                kept = self._drop_rng.random(kept.size) >= self.drop_rate
            if first == 0:
                kept[0] = True  # the first frame always arrives
            if kept.any():
                self._delivered = first + int(np.flatnonzero(kept)[-1])
            self._decided = newest
        return self._delivered

    def read(self) -> Reading:
        world, now_ns = self._live()
        newest = self.newest_frame(self.clock.to_device_ns(now_ns) - self._device_t0_ns)
        frame_number = self._newest_delivered(newest)
        if self._frame is None or self._frame[0] != frame_number:
            image = world.sim.render(self.width, self.height, self.camera)
            if self.noise_std > 0.0:
                noise = self._noise_rng.normal(0.0, self.noise_std, (self.height, self.width, 1))
                image = np.clip(image + noise + 0.5, 0.0, 255.0).astype(np.uint8)
            values = {"image": image}
            if self.depth:
                values["depth"] = world.sim.render_depth(self.width, self.height, self.camera)
            self._frame = (frame_number, values)
        hw_time_ns = self._device_t0_ns + self.capture_offset_ns(frame_number)
        return Reading({k: v.copy() for k, v in self._frame[1].items()}, hw_time_ns, now_ns, "hardware_clock",
                       frame_number=frame_number)
