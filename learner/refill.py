"""Refilling replay from a session's episode files.

A learner that restarts on the same log directory as the actor (``robotd train`` on one
machine) reloads every step already logged, so its replay holds the whole session again and
chunks the actor resends are recognised as already stored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from robotd import session, steps
from robotd.episodes import episode_files, read_episode
from robotd.quality import quality_flags

log = logging.getLogger("learner.refill")


def refill_from_episodes(logdir: str | Path, spec: dict, ledger, store: Callable[[str, int, dict], None],
                         exclude: Callable[[str, int, int], bool] | None = None) -> int:
    """Stores every logged step not yet in ``ledger``; returns how many steps were loaded.

    An episode flagged for timing quality is stored too (the stream stays contiguous, so the actor's
    resent chunks are recognised) and its steps are passed to ``exclude``, keeping them out of training."""
    loaded = 0
    for path in episode_files(Path(logdir) / session.EPISODES):      # journal-only episodes too
        try:
            episode = read_episode(path)
        except ValueError as exc:
            log.warning("refill: %s skipped: %s", path.name, exc)
            continue
        data, attrs = episode.steps, episode.attrs
        problem = None if "stream" in attrs else "no stream attribute"
        n_steps = len(data.get(steps.REWARD, ()))
        if problem is None and n_steps:
            problem = steps.check_against(spec, {key: data.get(key) for key in spec if key in data}, n_steps)
        if problem:
            log.warning("refill: %s skipped: %s", path.name, problem)
            continue
        if n_steps == 0:
            continue
        stream_steps = data[steps.STREAM_STEP]
        if np.any(np.diff(stream_steps) != 1):
            log.warning("refill: %s skipped: its stream steps are not consecutive", path.name)
            continue
        stream = f"{attrs['actor_id']}/{attrs['stream']}"
        start = int(stream_steps[0])
        if exclude is not None and quality_flags(attrs.get("flags", ())):
            exclude(stream, start, n_steps)
        ledger.start_stream(stream, start)
        skip = ledger.already_stored_until(stream, start) - start
        if skip >= n_steps:
            continue
        store(stream, start + skip, {key: np.asarray(data[key][skip:]) for key in spec})
        ledger.record(stream, None, start + skip, n_steps - skip)
        loaded += n_steps - skip
    if loaded:
        log.info("refilled replay with %d logged steps from %s", loaded, Path(logdir) / session.EPISODES)
    return loaded
