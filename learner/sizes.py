"""Model size from a config section: a preset plus per-dimension overrides."""
from __future__ import annotations

import dataclasses

from learner.dreamer import ModelConfig, preset


def model_config(section) -> ModelConfig:
    """``section`` has ``preset`` (name) and ``overrides`` (ModelConfig fields); unknown fields fail clearly."""
    base = preset(section.preset)
    known = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for key, value in section.overrides.items():
        if key not in known:
            raise ValueError(f"config: learner.model.overrides.{key} is not a model setting: "
                             f"choose from {', '.join(sorted(known))}")
        expected = type(getattr(base, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ValueError(f"config: learner.model.overrides.{key} = {value!r} is not a {expected.__name__}: "
                             f"give a {expected.__name__}")
    overrides = {key: float(v) if type(getattr(base, key)) is float else v for key, v in section.overrides.items()}
    return dataclasses.replace(base, **overrides)
