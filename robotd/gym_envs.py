"""The simulated robot tasks as Gymnasium environments, run in this process (no daemon, no ZeroMQ).

``RobotEnv(config)`` builds the config's drivers, safety layer and task exactly as a session
does (through ``robotd.daemon.robot_io.RobotIO`` and ``robotd.tasks``) and steps them on a simulated
clock, one control period per ``step``, as the daemon does under lockstep pacing. Only configs
whose every device is a simulated driver are accepted.

    import gymnasium
    import robotd.gym_envs                       # registers the robotd/ ids (see below)
    env = gymnasium.make("robotd/SimUR5Reach-v0", overrides=["task.args.target_in_obs=true"])

Registered ids (``register_envs``): robotd/SimUR5Reach-v0, robotd/SimUR5ReachState-v0, robotd/SimUR5PickPlace-v0,
robotd/SimA1Stand-v0 and robotd/SimA1Walk-v0, each on its config in the repository's configs/.
The package declares ``register_envs`` under the "gymnasium.envs" entry points, which
Gymnasium 0.26-0.29 load when it is imported; Gymnasium 1.x no longer loads plugins, so there
import ``robotd.gym_envs`` first or name the module in the id:
``gymnasium.make("robotd.gym_envs:robotd/SimUR5Reach-v0")``.

Episodes follow the actor's bookkeeping: an episode holds at most ``task.episode_steps``
observations, its first (the one ``reset`` returns) included, so ``step`` truncates it at the
``episode_steps - 1``-th action. Importing this module imports neither mujoco nor torch.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from pathlib import Path

import gymnasium
import numpy as np
from gymnasium import spaces

import robotd
from robotd import config as config_module
from robotd import tasks
from robotd.daemon.clock import LockstepClock
from robotd.config import Config
from robotd.daemon.robot_io import RobotIO

CONFIG_DIR = Path(robotd.__file__).resolve().parents[1] / "configs"
"""Where the registered ids find their configs."""

ENV_CONFIGS = {
    "robotd/SimUR5Reach-v0": "sim_ur5_reach.yaml",
    "robotd/SimUR5ReachState-v0": "sim_ur5_reach_state.yaml",
    "robotd/SimUR5PickPlace-v0": "sim_ur5_pick_place.yaml",
    "robotd/SimA1Stand-v0": "sim_a1_stand.yaml",
    "robotd/SimA1Walk-v0": "sim_a1_walk.yaml",
}
"""Registered Gymnasium id -> config file name in CONFIG_DIR."""

SHARED_WORLD_DRIVERS = ("sim_ur5", "sim_camera")
"""Drivers that share one simulated world per ``world`` name within a process; each env gets its own."""

RENDER_SIZE = 256
"""Longest side of ``render()`` frames when the camera's simulator can render at any size."""

_ORIGIN_NS = 1_000_000_000_000
"""Simulated-clock origin of every env, so two envs with the same seed see the same device times."""

_env_numbers = itertools.count()


def config_path(env_id: str) -> Path:
    """The config file of a registered id; a missing file fails in one line naming it."""
    if env_id not in ENV_CONFIGS:
        raise ValueError(f"env id {env_id!r} is not a robotd environment: use one of {', '.join(ENV_CONFIGS)}")
    path = CONFIG_DIR / ENV_CONFIGS[env_id]
    if not path.is_file():
        raise ValueError(f"{env_id}: config file {path} does not exist: restore it or pass "
                         f"RobotEnv(config=<path of a simulated config>)")
    return path


class PointReach(gymnasium.Env):
    """A point in the plane that must move to a target and stay there: the smallest task that shows learning.

    Observation: ``concat(position, target)`` (2 x ``dim`` floats in [-1, 1]); an action in [-1, 1]^dim
    moves the point by ``speed`` times it (kept inside the box); reward ``-||position - target||`` on
    arriving; ``length`` steps per episode (a time limit, never terminal); ``info["is_success"]``
    within ``success_radius``. In the plane (``dim`` 2, the default) a uniform-random policy scores
    about -20 per 30-step episode, going straight to the target and staying about -4. Registered as
    ``robotd/PointReach-v0``; the test suite learns it (on a line, ``dim`` 1) through the whole stack."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 30, speed: float = 0.2, success_radius: float = 0.1, dim: int = 2) -> None:
        if not isinstance(dim, int) or not 1 <= dim <= 8:
            raise ValueError(f"PointReach: dim must be an integer in [1, 8], got {dim!r}; use e.g. dim=2")
        self.length, self.speed, self.success_radius = int(length), float(speed), float(success_radius)
        self.dim = dim
        self.observation_space = spaces.Box(-1.0, 1.0, (2 * dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self._rng = np.random.default_rng(0)
        self.position = np.zeros(dim)
        self.target = np.zeros(dim)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.position = self._rng.uniform(-1.0, 1.0, self.dim)
        self.target = self._rng.uniform(-1.0, 1.0, self.dim)
        self.steps = 0
        return self._obs(), {"is_success": self._distance() < self.success_radius}

    def step(self, action):
        action = np.clip(np.nan_to_num(np.asarray(action, np.float64).reshape(self.dim)), -1.0, 1.0)
        self.position = np.clip(self.position + self.speed * action, -1.0, 1.0)
        self.steps += 1
        distance = self._distance()
        return (self._obs(), -distance, False, self.steps >= self.length,
                {"is_success": distance < self.success_radius})

    def _distance(self) -> float:
        return float(np.linalg.norm(self.position - self.target))

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.position, self.target]).astype(np.float32)


def register_envs() -> None:
    """Registers every robotd id with Gymnasium (idempotent); the config is checked when an env is made."""
    if "robotd/PointReach-v0" not in gymnasium.registry:
        gymnasium.register(id="robotd/PointReach-v0", entry_point="robotd.gym_envs:PointReach")
    for env_id, name in ENV_CONFIGS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(id=env_id, entry_point="robotd.gym_envs:RobotEnv",
                           kwargs={"config": str(CONFIG_DIR / name)})


class _OriginThenReal:
    """A real-time source whose first reading is a fixed origin (the lockstep clock's), then time.monotonic_ns."""

    def __init__(self) -> None:
        self._first = True

    def __call__(self) -> int:
        if self._first:
            self._first = False
            return _ORIGIN_NS
        return time.monotonic_ns()


class RobotEnv(gymnasium.Env):
    """A simulated robot task of a robotd config as a Gymnasium environment, stepped in this process.

    ``config``: a YAML path or a ``Config``; ``overrides``: ``key=value`` strings as for ``--set``.
    Pacing is forced to lockstep; a config with a device that is not simulated is refused.

    Observation space: a Dict with one Box per task observation key (uint8 in [0, 255] for images,
    float32 otherwise). Action space: Box(-1, 1, (action_dim,)) in the policy's normalised units,
    or Discrete(n) for a discrete simulator (turned into the one-hot the safety layer expects).
    Every action goes through the same safety layer as the daemon's.

    ``reset(seed=s)`` rebuilds the drivers and the task with seed ``s`` (without a seed the first
    reset uses the config's seed). The robot is reset at the first reset, whenever the task asks
    for resets (``task.reset_request``), after an episode that ended in a terminal state, a task
    truncation or a protective stop, and with ``options={"robot_reset": True}``; otherwise (a
    reset-free task after its time limit) the new episode starts where the robot is, as in a session.

    ``step`` returns reward = ``task.reward``, terminated = ``task.is_terminal``, truncated =
    ``task.is_truncated``, the episode's time limit or a protective stop; info holds is_success,
    safety_clipped, protective_stop and robot_status. ``render()`` (render_mode "rgb_array") gives
    the first camera's view, larger when its simulator can render at any size.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, config: str | Path | Config = None, overrides=(), render_mode: str | None = None):
        if config is None:
            raise ValueError("RobotEnv: config is missing: pass config='configs/sim_ur5_reach.yaml' or a Config")
        if isinstance(overrides, str):
            overrides = [overrides]
        overrides = list(overrides)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"RobotEnv: render_mode {render_mode!r} is not supported: use 'rgb_array' or None")
        if isinstance(config, Config):
            data = config.to_dict()
            for text in overrides:
                config_module.apply_override(data, *config_module.parse_override(text))
            data.setdefault("control", {})["pacing"] = "realtime"
            base = config_module.from_dict(data)
        else:
            base = config_module.load(config, [*overrides, "control.pacing=realtime"])
        self._check_simulated(base)
        self.config = self._private_worlds(dataclasses.replace(
            base, control=dataclasses.replace(base.control, pacing="lockstep")))
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control.rate_hz}
        self.episode_steps = self.config.task.episode_steps
        self.io: RobotIO | None = None
        self._build(self.config.seed)
        self.action_dim = self.io.action_dim
        self.action_discrete = self.io.action_discrete
        self.observation_space = spaces.Dict({
            key: (spaces.Box(0, 255, tuple(shape), np.uint8) if np.dtype(dtype) == np.uint8
                  else spaces.Box(-np.inf, np.inf, tuple(shape), np.float32))
            for key, (shape, dtype) in self.obs_spec.items()})
        if self.action_discrete:
            self.action_space = spaces.Discrete(self.action_dim)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self._connected = False
        self._arrays: dict | None = None
        self._obs: dict | None = None
        self._episode_step = 0
        self._needs_robot_reset = True
        self.robot_status: dict = {}

    # ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_simulated(config: Config) -> None:
        device = config_module.non_simulated_device(config)
        if device is not None:
            raise ValueError(f"RobotEnv: {device} is not a simulated driver: RobotEnv steps simulated devices only "
                             f"(gym, mock_*, sim_*); drive real hardware with robotd daemon")

    @staticmethod
    def _private_worlds(config: Config) -> Config:
        """The config with this env's own simulated world, so envs in one process do not share physics."""
        config = copy.deepcopy(config)
        suffix = f"#env{next(_env_numbers)}"
        for device in [config.robot, *config.cameras]:
            if device.driver in SHARED_WORLD_DRIVERS:
                device.args = {**device.args, "world": str(device.args.get("world", "ur5")) + suffix}
        return config

    def _build(self, seed: int) -> None:
        """(Re)builds clock, drivers, safety layer and task with ``seed``; the devices connect on reset."""
        if self.io is not None:
            self.close()
        config = dataclasses.replace(self.config, seed=int(seed))
        self.clock = LockstepClock(config.control.rate_hz, real_now_ns=_OriginThenReal())
        self.io = RobotIO(config, host_clock=self.clock.now_ns)
        reading_spec = {device: {key: (tuple(shape), dtype) for key, (shape, dtype) in spec.items()}
                        for device, spec in self.io.reading_spec().items()}
        self.task = tasks.make(config.task.name, robot=self.io.robot.name, cameras=[c.name for c in self.io.cameras],
                               episode_steps=config.task.episode_steps, seed=config.seed, args=config.task.args)
        self.obs_spec = self.task.observation_spec(reading_spec)
        self.seed_in_use = int(seed)
        self._connected = False
        self._needs_robot_reset = True

    # ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Starts an episode; returns (observation, info). See the class docstring for when the robot resets."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - {"robot_reset"})
        if unknown:
            raise ValueError(f"RobotEnv.reset: unknown options {unknown}: the only option is robot_reset (bool)")
        if seed is not None and (self._connected or seed != self.seed_in_use):
            self._build(seed)
        if not self._connected:
            self.io.connect()
            self.clock.start()
            self._connected = True
        robot_reset = (self._needs_robot_reset or self.task.reset_request or bool(options.get("robot_reset"))
                       or self._arrays is None)
        if robot_reset:
            if not self.io.reset():
                raise RuntimeError(f"RobotEnv: robot reset failed ({self.config.robot.driver}); see the log for the "
                                   f"driver's error")
            self._advance()
        self._needs_robot_reset = False
        self.task.new_episode()
        self._episode_step = 0
        self._obs = self._observe()
        return self._obs, {"is_success": bool(self.task.is_success(self._obs)), "robot_reset": robot_reset,
                           "robot_status": self.robot_status}

    def step(self, action):
        """Applies ``action`` through the safety layer, advances one control period and observes."""
        if self._obs is None:
            raise RuntimeError("RobotEnv.step called before reset(): call env.reset() first")
        command = self.io.act(self._policy_action(action), self._arrays)
        self._advance()
        self._episode_step += 1
        obs = self._observe()
        self._obs = obs
        reward = float(self.task.reward(obs))
        terminated = bool(self.task.is_terminal(obs))
        task_truncated = bool(self.task.is_truncated(obs))
        stopped = bool(self.robot_status.get("protective_stop") or self.robot_status.get("emergency_stop"))
        time_limit = self._episode_step + 1 >= self.episode_steps
        truncated = (task_truncated or time_limit or stopped) and not terminated
        if terminated or task_truncated or stopped:
            self._needs_robot_reset = True
        info = {"is_success": bool(self.task.is_success(obs)), "safety_clipped": bool(command.clipped),
                "protective_stop": stopped, "robot_status": self.robot_status}
        return obs, reward, terminated, truncated, info

    def render(self):
        """The first camera's view as an RGB array (larger when its simulator allows), else the robot's
        simulator view, else the observation image; None when there is nothing to show."""
        if self.render_mode != "rgb_array":
            return None
        devices = list(self.io.cameras) + [self.io.robot]
        for device in devices:
            sim = getattr(device, "sim", None)
            if sim is None or not hasattr(sim, "render") or not self._connected:
                continue
            width, height = getattr(device, "width", RENDER_SIZE), getattr(device, "height", RENDER_SIZE)
            scale = max(1.0, RENDER_SIZE / max(width, height))
            try:
                if hasattr(device, "camera"):
                    return np.asarray(sim.render(round(width * scale), round(height * scale), device.camera))
                return np.asarray(sim.render(round(width * scale), round(height * scale)))
            except Exception:  # noqa: BLE001 - no GL backend: fall back to the observation image
                break
        if self._obs is not None:
            for key, value in self._obs.items():
                if value.dtype == np.uint8 and value.ndim == 3:
                    return value.copy()
        return None

    def close(self) -> None:
        """Stops and disconnects the devices."""
        if self.io is not None and self._connected:
            self.io.safe_stop("environment closed")
            self.io.disconnect()
        self._connected = False
        self._arrays = None
        self._obs = None

    # ----------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """One control period of simulated time, then every device is read and the robot's status checked."""
        _, t_tick_ns = self.clock.wait_next()
        self.clock.stepped()
        self._arrays, _ = self.io.read_all(t_tick_ns)
        self.robot_status = self.io.check_status()

    def _observe(self) -> dict[str, np.ndarray]:
        obs = self.task.observe(RobotIO.split(self._arrays))
        out = {}
        for key, space in self.observation_space.spaces.items():
            out[key] = np.asarray(obs[key], space.dtype).reshape(space.shape)
        return out

    def _policy_action(self, action) -> np.ndarray:
        """The normalised action vector the safety layer takes (a discrete choice becomes a one-hot)."""
        if self.action_discrete:
            index = np.asarray(action).reshape(-1)
            if index.size != 1 or not np.isfinite(index[0]) or not 0 <= int(index[0]) < self.action_dim:
                raise ValueError(f"RobotEnv.step: action {action!r} is not a choice in 0..{self.action_dim - 1}: "
                                 f"pass one integer of the Discrete({self.action_dim}) action space")
            one_hot = np.zeros(self.action_dim, np.float32)
            one_hot[int(index[0])] = 1.0
            return one_hot
        return np.asarray(action, np.float32).reshape(-1)


register_envs()
