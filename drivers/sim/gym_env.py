"""Any Gymnasium environment as a simulated robot (``driver: gym``).

``args: {env_id: "Pendulum-v1", ...}``: the environment is ``gymnasium.make(env_id, **make_args)``.
The driver's args (``GymEnv.Args``; any other key is refused):

  env_id       the Gymnasium id (required), e.g. Pendulum-v1 or "module:namespace/Name-v0"
  make_args    a mapping of further keyword arguments to ``gymnasium.make`` (the environment's own
               constructor arguments, max_episode_steps, render_mode, ...); default {}
  pixels       also deliver the rendered frame as ``image`` (``render_mode="rgb_array"``),
               resized to ``image_size`` (height, width) uint8; default false
  vector_obs   deliver the environment's own observation; default true (false with pixels
               gives a pixels-only robot)
  image_size   [height, width] of ``image`` (and of image observations), default [64, 64]
  seed         seeds the first reset and the action space (the daemon passes the config's seed)

Readings: the observation flattened into keys (a Box is ``state``, float32 and flat; a Dict's
entries keep their names, nested ones joined with ``_``; Discrete becomes a one-hot; uint8
HxWxC Boxes are images), plus ``reward``, ``terminated``, ``truncated`` and ``success`` (float32
(1,)) of the last step; ``success`` is the step's ``info["is_success"]`` (0 where the environment
does not report one). The ``gym`` task turns those into reward, episode ends and the task's
success, and keeps them out of the policy's observation.

Actions are normalised: a Box action space takes ``prod(shape)`` values in [-1, 1], rescaled to
the space's bounds; a Discrete(n) space takes n scores, of which the largest wins (the policy
sends a one-hot). ``reset()`` starts a new episode; a step commanded after the episode ended
(a late reset in realtime pacing) resets instead of stepping, so the environment never steps
past its end.

Timing: a simulation does not move between steps, so a reading is stamped with the host clock
when it is read ("system_time" domain: the daemon sees age 0 and never a clock jump, however much
faster than real time lockstep pacing runs it). ``frame_number`` counts the steps taken since
connect(). Under lockstep pacing the daemon passes its simulated clock as ``host_clock``.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drivers.base import DeviceStatus, Reading, SteppedEnv
from drivers.registry import register
from drivers.settings import setting

SIGNAL_KEYS = ("reward", "terminated", "truncated", "success")
"""Reading keys that carry the last step's outcome rather than an observation."""


def _truthy(value) -> bool:
    """An environment's ``is_success`` (bool, number or one-element array) as a bool; anything else is False."""
    try:
        array = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return bool(array.size == 1 and np.isfinite(array[0]) and array[0] > 0.5)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (downscale) or nearest (upscale) resize of an (H, W, C) image to uint8 (height, width, C)."""
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image, dtype=np.uint8)
    in_h, in_w = image.shape[:2]
    rows = (np.arange(height) * in_h) // height
    cols = (np.arange(width) * in_w) // width
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float32), rows, axis=0), cols, axis=1)
    # reduceat gives the single element where a segment is empty (upscaling), so its count is 1.
    row_counts = np.maximum(np.diff(np.append(rows, in_h)), 1)
    col_counts = np.maximum(np.diff(np.append(cols, in_w)), 1)
    mean = sums / (row_counts[:, None, None] * col_counts[None, :, None])
    return np.clip(mean + 0.5, 0, 255).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) pixels as (H, W, 3)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


class _ObsFlattener:
    """Turns a Gymnasium observation space into named arrays (the reading keys) and back."""

    def __init__(self, space, image_size: tuple[int, int], owner: str):
        self.image_size = image_size
        self.owner = owner
        self.leaves: list[tuple[str, tuple, object, tuple[tuple[int, ...], str]]] = []
        self._walk(space, (), "state")

    def _walk(self, space, path: tuple, name: str) -> None:
        from gymnasium import spaces
        if isinstance(space, spaces.Dict):
            for key, sub in space.spaces.items():
                self._walk(sub, path + (key,), str(key) if not path else f"{name}_{key}")
            return
        if isinstance(space, spaces.Tuple):
            for index, sub in enumerate(space.spaces):
                self._walk(sub, path + (index,), f"{name}_{index}")
            return
        if isinstance(space, spaces.Box):
            shape = tuple(space.shape)
            if space.dtype == np.uint8 and len(shape) == 3 and shape[2] in (1, 3, 4):
                spec = ((*self.image_size, 3), "uint8")
                kind = "image"
                if name == "state":
                    name = "image"
            else:
                spec = ((max(1, math.prod(shape)),), "float32")
                kind = "vector"
        elif isinstance(space, spaces.Discrete):
            spec, kind = ((int(space.n),), "float32"), "one_hot"
        elif isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete)):
            spec, kind = ((max(1, math.prod(space.shape)),), "float32"), "vector"
        else:
            raise ValueError(f"{self.owner}: observation space {space} is not supported: use Box, Discrete, "
                             f"MultiBinary, MultiDiscrete, or a Dict/Tuple of those")
        if name in SIGNAL_KEYS or "." in name or "/" in name:
            raise ValueError(f"{self.owner}: observation key {name!r} clashes with a reserved name or contains "
                             f"'.' or '/': rename it in the environment")
        self.leaves.append((name, path, (kind, space), spec))

    def spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: spec for name, _, _, spec in self.leaves}

    def values(self, obs) -> dict[str, np.ndarray]:
        out = {}
        for name, path, (kind, space), ((shape), dtype) in self.leaves:
            value = obs
            for part in path:
                value = value[part]
            if kind == "image":
                out[name] = resize_image(_as_rgb(np.asarray(value)), *self.image_size)
            elif kind == "one_hot":
                one_hot = np.zeros(shape, np.float32)
                one_hot[int(value) - int(space.start)] = 1.0
                out[name] = one_hot
            else:
                out[name] = np.asarray(value, np.float32).reshape(shape)
        return out


@register("gym")
class GymEnv(SteppedEnv):
    """A Gymnasium environment stepped once per control tick; see the module docstring."""

    simulated = True

    @dataclass
    class Args:
        """The gym driver's settings: which environment, what it is made with, and what the robot observes."""
        env_id: str = setting("", help="the Gymnasium id, e.g. Pendulum-v1 (required)")
        make_args: dict = setting(default_factory=dict,
                                  help="further keyword arguments to gymnasium.make (the environment's own "
                                       "arguments, max_episode_steps, render_mode, ...)")
        seed: int = setting(0, range=(0, 2**63 - 1), help="seeds the first reset and the action space")
        pixels: bool = setting(False, help="also deliver the rendered frame as image")
        vector_obs: bool = setting(True, help="deliver the environment's own observation")
        image_size: list[int] = setting(default_factory=lambda: [64, 64], range=(1, 4096),
                                        help="[height, width] of image (and of image observations)")

        def __post_init__(self) -> None:
            if not self.env_id:
                raise ValueError("env_id is not given: set it to a Gymnasium id, e.g. env_id: Pendulum-v1")
            if not (self.pixels or self.vector_obs):
                raise ValueError("pixels and vector_obs are both false, so the robot observes nothing: "
                                 "set one of them")
            if len(self.image_size) != 2:
                raise ValueError(f"image_size = {self.image_size!r} has {len(self.image_size)} values, not 2: "
                                 f"give [height, width]")
            bad = [key for key in self.make_args if not isinstance(key, str) or not key.isidentifier()]
            if bad:
                raise ValueError(f"make_args key {bad[0]!r} is not a keyword argument name: give a mapping of "
                                 f"gymnasium.make's keyword arguments")

    def __init__(self, *, name: str = "env", host_clock: Callable[[], int] = time.monotonic_ns, **args) -> None:
        """Make the environment (not yet reset: connect() does that)."""
        self.name = name
        a = self.settings(args, self._owner)
        try:
            import gymnasium
            from gymnasium import spaces
        except ImportError:
            raise ValueError("driver 'gym' needs gymnasium: pip install -e '.[sim]'") from None
        self.env_id = a.env_id
        self.image_size = (a.image_size[0], a.image_size[1])
        self.pixels = pixels = a.pixels
        self.vector_obs = vector_obs = a.vector_obs
        self.seed = a.seed
        self._host_clock = host_clock
        make_kwargs = dict(a.make_args)
        if pixels:
            make_kwargs.setdefault("render_mode", "rgb_array")
        if make_kwargs.get("render_mode") == "rgb_array":
            # Off-screen frames need no display; without this SDL (pygame) complains on stderr.
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        self._make_kwargs = make_kwargs
        try:
            self.env = gymnasium.make(self.env_id, **make_kwargs)
        except gymnasium.error.Error as exc:
            raise ValueError(f"{self._owner}: gymnasium.make({self.env_id!r}) failed: {exc}") from None
        except TypeError as exc:
            if not a.make_args:
                raise
            # Most likely a make_args key the environment does not take.
            raise ValueError(f"{self._owner}: gymnasium.make({self.env_id!r}, **make_args) failed: {exc}; check "
                             f"make_args {sorted(a.make_args)} against the environment's arguments") from None
        self._flat = _ObsFlattener(self.env.observation_space, self.image_size, self._owner)
        if pixels and "image" in self._flat.spec() and vector_obs:
            raise ValueError(f"{self._owner}: the environment already observes an 'image'; pixels=true would add "
                             f"a second one: leave pixels false")
        space = self.env.action_space
        if isinstance(space, spaces.Discrete):
            self.action_discrete = True
            self.action_dim = int(space.n)
        elif isinstance(space, spaces.Box):
            low = np.asarray(space.low, np.float64).reshape(-1)
            high = np.asarray(space.high, np.float64).reshape(-1)
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ValueError(f"{self._owner}: action space {space} is unbounded, so [-1, 1] cannot be rescaled "
                                 f"to it: wrap the environment with bounded actions")
            self.action_discrete = False
            self.action_dim = int(low.size)
            self._low, self._high = low, high
        else:
            raise ValueError(f"{self._owner}: action space {space} is not supported: use Box or Discrete")
        self.action_space = space
        self.action_space.seed(self.seed)
        self._connected = False
        self._first_reset = True
        self._values: dict[str, np.ndarray] = {}
        self.steps = 0
        self.episodes = 0
        self.auto_resets = 0
        self._done = False
        self.last_env_action = None

    @property
    def _owner(self) -> str:
        env_id = getattr(self, "env_id", None)
        return f"GymEnv {getattr(self, 'name', '?')!r}" + (f" ({env_id})" if env_id is not None else "")

    # ---------------------------------------------------------------------------------------
    def reading_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The observation keys, ``image`` when pixels are on, and the step signals."""
        spec = self._flat.spec() if self.vector_obs else {}
        if self.pixels:
            spec["image"] = ((*self.image_size, 3), "uint8")
        for key in SIGNAL_KEYS:
            spec[key] = ((1,), "float32")
        return spec

    def connect(self) -> None:
        """(Re)make the environment if it was closed and start the first episode."""
        if self.env is None:
            import gymnasium
            self.env = gymnasium.make(self.env_id, **self._make_kwargs)
        self._connected = True
        self.reset()

    def disconnect(self) -> None:
        """Close the environment (its renderer included)."""
        self._connected = False
        if self.env is not None:
            self.env.close()
            self.env = None

    def status(self) -> DeviceStatus:
        if not self._connected:
            return DeviceStatus(ok=False, fault=f"{self._owner} is not connected; call connect() first")
        return DeviceStatus()

    def read(self) -> Reading:
        """The state after the last step (or reset) with that step's reward, terminated and truncated."""
        if not self._connected:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        now_ns = self._host_clock()
        values = {key: value.copy() for key, value in self._values.items()}
        return Reading(values, now_ns, now_ns, "system_time", frame_number=self.steps)

    def command_action(self, action: np.ndarray) -> None:
        """One environment step under the normalised action (a reset if the episode has ended)."""
        if not self._connected:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._done:
            self.auto_resets += 1
            self.reset()
            return
        env_action = self.env_action(action)
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self.last_env_action = env_action
        self.steps += 1
        self._done = bool(terminated or truncated)
        self._store(obs, float(reward), bool(terminated), bool(truncated), info)

    def env_action(self, action: np.ndarray):
        """The environment's action for a normalised one."""
        vector = np.asarray(action, np.float64).reshape(-1)
        if vector.shape != (self.action_dim,) or not np.all(np.isfinite(vector)):
            raise ValueError(f"{self._owner}: action must be {self.action_dim} finite numbers, got {vector.tolist()}")
        if self.action_discrete:
            return int(self.action_space.start) + int(np.argmax(vector))
        unit = np.clip(vector, -1.0, 1.0)
        scaled = self._low + (unit + 1.0) * 0.5 * (self._high - self._low)
        return scaled.reshape(self.action_space.shape).astype(self.action_space.dtype)

    def stop(self) -> None:
        """Nothing moves in a simulation that is not stepped."""

    def reset(self) -> None:
        """Start a new episode (the first one seeded with ``seed``)."""
        if not self._connected:
            raise RuntimeError(f"{self._owner} is not connected; call connect() first")
        if self._first_reset:
            obs, info = self.env.reset(seed=self.seed)
            self._first_reset = False
        else:
            obs, info = self.env.reset()
        self.episodes += 1
        self._done = False
        self._store(obs, 0.0, False, False, info)

    def _store(self, obs, reward: float, terminated: bool, truncated: bool, info=None) -> None:
        values = self._flat.values(obs) if self.vector_obs else {}
        if self.pixels:
            frame = self.env.render()
            if frame is None:
                raise RuntimeError(f"{self._owner}: render() returned nothing: the environment cannot render "
                                   f"rgb_array frames, so pixels=true cannot be used with it")
            values["image"] = resize_image(_as_rgb(np.asarray(frame)), *self.image_size)
        values["reward"] = np.array([reward], np.float32)
        values["terminated"] = np.array([float(terminated)], np.float32)
        values["truncated"] = np.array([float(truncated)], np.float32)
        success = info.get("is_success", False) if isinstance(info, dict) else False
        values["success"] = np.array([1.0 if _truthy(success) else 0.0], np.float32)
        self._values = values
