"""Reading recorded episodes in plain Python: numpy arrays, no daemon, actor or learner needed.

This module imports only numpy, h5py and robotd.episodes, so it works in any environment
that has those two packages and a copy of the robotd package.

Step convention (the one every episode file follows, see robotd.steps). Step ``t`` of an
episode of ``T`` steps holds:

- ``obs/<key>[t]``: the observation at tick t,
- ``action[t]``: the action the policy chose after seeing observation t,
- ``reward[t]``: the reward received on arriving at observation t, that is for the
  transition t-1 -> t; ``reward[0]`` is 0 (DreamerV3's convention),
- ``is_first[t]`` (true at t = 0), ``is_last[t]`` (true at the last step of an episode that
  ended; an episode cut short by a stopped session has none), ``is_terminal[t]`` (the task
  ended the episode at t, so no value follows; a time limit sets is_last without it).

So ``action[T-1]`` is never followed by an observation, and ``Episode.to_transitions()``
gives the T-1 transitions (obs[t], action[t], reward[t+1], obs[t+1], is_terminal[t+1]).

Which files load. ``load_session`` reads ``LOGDIR/episodes/*.h5`` in name order, episodes
still open or whose writer died included (from their journal; ``Episode.complete`` is False).
A file that cannot be read (damaged, not an episode) is skipped with a warning naming it, or
raises ValueError with ``strict=True``. A file of a newer layout always raises
LayoutVersionError: skipping it would drop data that a newer robotd reads.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from robotd.episodes import LayoutVersionError, episode_files, read_episode

EPISODES_DIR = "episodes"
# Flags that keep an episode out of training (robotd.quality.QUALITY_PREFIX; repeated here so
# this module imports nothing else of robotd).
QUALITY_PREFIX = "quality:"
_OBS_PREFIX = "obs/"


class Transitions(NamedTuple):
    """An episode's T-1 transitions as arrays with a leading axis of T-1.

    ``obs`` and ``next_obs`` map each observation key (without ``obs/``) to its array;
    ``reward[t]`` is the reward for going from ``obs[t]`` with ``action[t]`` to ``next_obs[t]``;
    ``done[t]`` is true when ``next_obs[t]`` is terminal (a time limit is not done).
    """

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    next_obs: dict[str, np.ndarray]
    done: np.ndarray


@dataclass(frozen=True, eq=False)
class Episode:
    """One recorded episode: its steps (key -> array with a leading time axis), attrs and stats.

    ``complete`` is False for an episode still open or whose writer died (read from its journal).
    """

    path: Path
    steps: dict[str, np.ndarray]
    attrs: dict[str, Any]
    stats: dict[str, Any]
    complete: bool

    def __len__(self) -> int:
        return len(next(iter(self.steps.values()))) if self.steps else 0

    @property
    def flags(self) -> list[str]:
        """How the episode ended and what is wrong with it, e.g. ["time_limit", "quality:late_steps (...)"]."""
        return list(self.attrs.get("flags", []))

    @property
    def quality_flags(self) -> list[str]:
        """The flags that keep the episode out of training (empty when it is fit for training)."""
        return [flag for flag in self.flags if str(flag).startswith(QUALITY_PREFIX)]

    @property
    def observations(self) -> dict[str, np.ndarray]:
        """Observation key (without ``obs/``) -> array (T, ...)."""
        return {key[len(_OBS_PREFIX):]: value for key, value in self.steps.items() if key.startswith(_OBS_PREFIX)}

    @property
    def actions(self) -> np.ndarray:
        """The policy's actions (T, A); action[t] was chosen after observation t."""
        return self._key("action")

    @property
    def applied_actions(self) -> np.ndarray:
        """The commands that reached the robot after the safety layer (T, A)."""
        return self._key("applied_action")

    @property
    def rewards(self) -> np.ndarray:
        """Rewards (T,); reward[t] was received on arriving at observation t, reward[0] is 0."""
        return self._key("reward")

    @property
    def is_first(self) -> np.ndarray:
        """(T,) bool, true at the first step."""
        return self._key("is_first")

    @property
    def is_last(self) -> np.ndarray:
        """(T,) bool, true at the last step of an episode that ended."""
        return self._key("is_last")

    @property
    def is_terminal(self) -> np.ndarray:
        """(T,) bool, true where the task ended the episode (no value follows)."""
        return self._key("is_terminal")

    @property
    def is_success(self) -> np.ndarray:
        """(T,) bool, true where the task counts the state as solved."""
        return self._key("is_success")

    def to_transitions(self) -> Transitions:
        """The episode's T-1 transitions (obs[t], action[t], reward[t+1], obs[t+1], is_terminal[t+1]).

        An episode of one step or none has no transition: every array then has length 0.
        """
        n_transitions = max(len(self) - 1, 0)
        observations = self.observations
        return Transitions(
            obs={key: value[:n_transitions] for key, value in observations.items()},
            action=self.actions[:n_transitions],
            reward=self.rewards[1:n_transitions + 1],
            next_obs={key: value[1:n_transitions + 1] for key, value in observations.items()},
            done=self.is_terminal[1:n_transitions + 1],
        )

    def _key(self, key: str) -> np.ndarray:
        try:
            return self.steps[key]
        except KeyError:
            raise KeyError(f"episode {self.path} has no step key {key!r}; it has {sorted(self.steps)}") from None


def read(path: str | Path) -> Episode:
    """Reads one episode file (or the journal of an open one) as an Episode.

    Raises ValueError naming the file when it cannot be read, LayoutVersionError when
    it was written with a layout this build does not read.
    """
    data = read_episode(path)
    return Episode(path=Path(path), steps=data.steps, attrs=data.attrs, stats=data.stats, complete=data.complete)


def iter_episodes(paths: Iterable[str | Path], *, strict: bool = False) -> Iterator[Episode]:
    """Yields each readable episode of ``paths``, in the order given, reading one at a time.

    A file that cannot be read is skipped with a warning naming it (``strict=True`` raises
    its ValueError instead); a file of a layout this build does not read raises
    LayoutVersionError either way.
    """
    for path in paths:
        try:
            yield read(path)
        except LayoutVersionError:
            raise
        except (ValueError, OSError) as error:
            if strict:
                raise
            warnings.warn(f"episode file {path} skipped: {error}", stacklevel=2)


def episode_paths(logdir: str | Path) -> list[Path]:
    """The episode files of a session directory (``LOGDIR/episodes/*.h5``), in name order.

    An episode whose writer died before its HDF5 file existed is listed by its journal's name.
    Raises ValueError when ``logdir`` has no episodes folder.
    """
    folder = Path(logdir) / EPISODES_DIR
    if not folder.is_dir():
        raise ValueError(f"session directory {logdir} has no {EPISODES_DIR}/ folder; give the --logdir of a recorded session")
    return episode_files(folder)


def load_session(logdir: str | Path, *, include_flagged: bool = True, strict: bool = False) -> list[Episode]:
    """Every readable episode of a session directory, in file name order.

    ``include_flagged=False`` leaves out episodes with quality flags (those offline training
    leaves out). ``strict`` as in iter_episodes.
    """
    episodes = iter_episodes(episode_paths(logdir), strict=strict)
    return [episode for episode in episodes if include_flagged or not episode.quality_flags]
