"""World-model reports on disk: open-loop prediction videos as animated GIFs next to the metrics.

``Dreamer.report`` returns per-head losses and, for every image observation, videos of the
recorded frames, the model's frames (a few context steps filtered with observations, then
imagined from the recorded actions alone) and their difference, side by side. The learner
writes the scalars to its metrics and the videos to ``LOGDIR/reports/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPORTS = "reports"


def write_gif(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write uint8 frames ``(T, H, W, C)`` (C = 1 or 3) as a looping GIF; returns the path."""
    from PIL import Image

    if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be uint8 (T, H, W, 1 or 3), got {frames.dtype} {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    images = [Image.fromarray(frame) for frame in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path


def write_report_videos(logdir: Path, updates: int, videos: dict[str, np.ndarray]) -> list[Path]:
    """Each video ``(N, T, H, W, C)`` becomes one GIF with the N sequences stacked vertically."""
    written = []
    for name, video in videos.items():
        stacked = np.concatenate(list(video), axis=1)  # (T, N * H, W, C)
        file_name = f"{name.replace('/', '-')}-{updates:08d}.gif"
        written.append(write_gif(Path(logdir) / REPORTS / file_name, stacked))
    return written
