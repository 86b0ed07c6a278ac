"""Model size from a config section: a preset plus per-dimension overrides."""
from __future__ import annotations

import dataclasses

from learner.dreamer import ModelConfig, preset


def model_config(section) -> ModelConfig:
    """``section`` has ``preset`` (name) and ``overrides`` (ModelConfig fields); bad fields fail in one line."""
    base = preset(section.preset)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {}
    for key, value in section.overrides.items():
        if key not in known:
            raise ValueError(f"config: learner.model.overrides.{key} is not a model setting: "
                             f"choose from {', '.join(sorted(known))}")
        current = getattr(base, key)
        expected = type(current)
        if expected is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
                raise ValueError(f"config: learner.model.overrides.{key} = {value!r} is not a list of integers: "
                                 f"give e.g. {list(current)}")
            value = tuple(value)
        else:
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
                raise ValueError(f"config: learner.model.overrides.{key} = {value!r} is not a "
                                 f"{expected.__name__}: give a {expected.__name__}")
        overrides[key] = value
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as error:
        raise ValueError(f"config: learner.model.overrides: {error}") from None
