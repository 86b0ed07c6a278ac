"""The world-model size presets: one table, read by config loading (no torch) and by learner.dreamer.preset.

Each preset is the ModelConfig fields it sets; every other field keeps the published DreamerV3 value.
"""
from __future__ import annotations

# name: deter, hidden, classes, cnn_depth, units of the published presets (Hafner et al. 2024, size1m .. size400m;
# stoch 32 and 8 GRU blocks throughout).
_PAPER = {
    "1m": (512, 64, 4, 4, 64),
    "12m": (2048, 256, 16, 16, 256),
    "25m": (3072, 384, 24, 24, 384),
    "50m": (4096, 512, 32, 32, 512),
    "100m": (6144, 768, 48, 48, 768),
    "200m": (8192, 1024, 64, 64, 1024),
    "400m": (12288, 1536, 96, 96, 1536),
}

MODEL_PRESETS: dict[str, dict] = {
    # Small enough for the test suite on two cores (not for learning: see "small"); published hyperparameters,
    # horizon 15 included.
    "tiny": dict(deter=64, hidden=64, stoch=8, classes=8, blocks=8, units=64, layers=1, cnn_depth=4),
    # The small-compute preset (learner.profile small_cpu): sizes, learning rate and warm-up chosen from the
    # measured sweep in benchmarks/small_cpu/ so that simulated tasks learn in minutes on a 2-core CPU.
    "small": dict(deter=256, hidden=128, stoch=16, classes=16, blocks=8, units=128, layers=2, cnn_depth=16, lr=3e-4,
                  warmup=1),
    **{name: dict(deter=deter, hidden=hidden, classes=classes, cnn_depth=depth, units=units)
       for name, (deter, hidden, classes, depth, units) in _PAPER.items()},
}
"""Preset name -> the ModelConfig fields it sets: "tiny" for tests, "small" for learning on a CPU, then the
paper's sizes by parameter count."""

PRESET_NAMES = tuple(MODEL_PRESETS)
