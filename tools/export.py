"""Exports recorded sessions to the LeRobot dataset format (codebase_version v2.1).

    robotd export LOGDIR [LOGDIR...] --format lerobot --out DIR [--repo-id NAME] [--fps F]
                  [--include-flagged] [--timestamps measured|nominal] [--overwrite]

Writes what ``lerobot.common.datasets.lerobot_dataset.LeRobotDataset(repo_id, root=DIR)`` of
LeRobot's v2.1 codebase reads::

    DIR/meta/info.json              codebase_version "v2.1", fps, totals, path templates, features
    DIR/meta/episodes.jsonl         {"episode_index", "tasks", "length"} per episode (+ source, flags)
    DIR/meta/tasks.jsonl            {"task_index", "task"}: the episodes' task attrs
    DIR/meta/episodes_stats.jsonl   per episode and feature: min, max, mean, std, count
    DIR/data/chunk-000/episode_000000.parquet   one row per step
    DIR/README.md                   a Hub dataset card titled with --repo-id

Mapping of an episode's steps (see robotd.steps) to a LeRobot frame t:

- ``observation.state``: the vector observation keys, flattened and concatenated in key order
  (float32; info.json names each element, e.g. "joint_pos.0")
- ``observation.images.<key>``: each HxWx3 uint8 observation, a PNG in the HF datasets Image
  struct {bytes, path}
- ``action``: ``action[t]``, the policy's action after observation t (float32)
- ``next.reward``: the reward for the action of frame t, which robotd stores with the step it
  leads to: ``reward[t+1]``; the last frame's is 0 (its action is followed by no observation)
- ``next.done``: ``is_last[t]``, so true on the last frame of an episode that ended (time limit
  or termination) and false throughout one cut short by a stopped session
- ``next.success``: ``is_success[t+1]``, the last frame repeating its own ``is_success[T-1]``
- ``timestamp``: seconds since the episode's first step (float32); ``--timestamps measured``
  (default) takes them from ``timing/t_tick_ns``, ``nominal`` uses frame_index / fps.
  LeRobotDataset checks that timestamps are 1/fps apart within ``tolerance_s`` (1e-4 s by
  default); measured ones off by more are reported, so either load with a larger
  ``tolerance_s`` or export with ``--timestamps nominal``.
- ``frame_index``, ``episode_index``, ``index`` (over the whole dataset), ``task_index``

Episodes are taken from each LOGDIR's episodes/ folder in name order, the LOGDIRs in the order
given; quality-flagged ones only with ``--include-flagged``; empty ones are left out. Needs
pyarrow (``pip install 'robotd[export]'``) and Pillow.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robotd.cli import program_parser
from tools.dataset import Episode, episode_paths, iter_episodes
from robotd.episodes import LayoutVersionError

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
# LeRobotDataset's default tolerance_s when it checks timestamps against fps.
LEROBOT_TOLERANCE_S = 1e-4
_PNG_COMPRESS_LEVEL = 1
_OBS_PREFIX = "obs/"
_SCALAR_SHAPE = [1]


class ExportError(ValueError):
    """A session that cannot be exported as asked."""


def export_lerobot(
    logdirs: Sequence[str | Path],
    out: str | Path,
    *,
    repo_id: str | None = None,
    fps: float | None = None,
    include_flagged: bool = False,
    timestamps: str = "measured",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the episodes of ``logdirs`` as a LeRobot v2.1 dataset in ``out``; returns its info.json.

    ``fps`` defaults to the episodes' control_rate_hz (they must agree). ``out`` must not exist
    or be empty; with ``overwrite`` a previous LeRobot dataset there is replaced. The dataset is
    written aside and moved into place, so ``out`` never holds half an export.
    """
    pyarrow, parquet = _pyarrow()
    if timestamps not in ("measured", "nominal"):
        raise ExportError(f"--timestamps {timestamps!r} is not a choice; use measured or nominal")
    out = Path(out)
    _check_out(out, overwrite)
    paths = [path for logdir in logdirs for path in episode_paths(logdir)]
    episodes = [episode for episode in iter_episodes(paths) if len(episode) > 0]
    n_left_out = 0 if include_flagged else sum(1 for episode in episodes if episode.quality_flags)
    episodes = [episode for episode in episodes if include_flagged or not episode.quality_flags]
    if n_left_out:
        _note(f"{n_left_out} quality-flagged episode(s) left out (export them with --include-flagged)")
    if not episodes:
        raise ExportError(f"no episode with steps found in {', '.join(str(logdir) for logdir in logdirs)}")
    layout = _Layout.of(episodes[0])
    for episode in episodes[1:]:
        layout.check(episode)
    fps = _fps(episodes, fps)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tasks: dict[str, int] = {}
    episode_lines, stats_lines = [], []
    total_frames, worst_timestamp_error_s, n_off = 0, 0.0, 0
    try:
        for episode_index, episode in enumerate(episodes):
            task = str(episode.attrs.get("task", ""))
            task_index = tasks.setdefault(task, len(tasks))
            columns = layout.frame_columns(episode, fps, timestamps)
            n_frames = len(episode)
            columns["frame_index"] = np.arange(n_frames, dtype=np.int64)
            columns["episode_index"] = np.full(n_frames, episode_index, dtype=np.int64)
            columns["index"] = np.arange(total_frames, total_frames + n_frames, dtype=np.int64)
            columns["task_index"] = np.full(n_frames, task_index, dtype=np.int64)
            error_s = np.abs(np.diff(columns["timestamp"].astype(np.float64)) - 1.0 / fps)
            n_off += int(np.count_nonzero(error_s > LEROBOT_TOLERANCE_S))
            worst_timestamp_error_s = max(worst_timestamp_error_s, float(error_s.max(initial=0.0)))
            data_path = tmp / DATA_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE, episode_index=episode_index)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            parquet.write_table(layout.table(pyarrow, columns), data_path)
            episode_lines.append({"episode_index": episode_index, "tasks": [task], "length": n_frames,
                                  "source": str(episode.path), "flags": episode.flags})
            stats_lines.append({"episode_index": episode_index, "stats": layout.stats(columns)})
            total_frames += n_frames
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": _robot_type(episodes),
            "total_episodes": len(episodes),
            "total_frames": total_frames,
            "total_tasks": len(tasks),
            "total_videos": 0,
            "total_chunks": math.ceil(len(episodes) / CHUNKS_SIZE),
            "chunks_size": CHUNKS_SIZE,
            "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": layout.features(),
        }
        _write_card(tmp / "README.md", repo_id, info)
        _write_json(tmp / "meta" / "info.json", info)
        _write_jsonl(tmp / "meta" / "episodes.jsonl", episode_lines)
        _write_jsonl(tmp / "meta" / "tasks.jsonl", [{"task_index": index, "task": task} for task, index in tasks.items()])
        _write_jsonl(tmp / "meta" / "episodes_stats.jsonl", stats_lines)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if n_off:
        _note(f"{n_off} timestamp step(s) differ from 1/fps by more than LeRobot's default tolerance_s "
              f"{LEROBOT_TOLERANCE_S:g} s (worst {worst_timestamp_error_s * 1e3:.3f} ms): load with "
              f"LeRobotDataset(..., tolerance_s={_tolerance_hint(worst_timestamp_error_s)}) or export with --timestamps nominal")
    return info


class _Layout:
    """How one session's step keys become LeRobot features; every exported episode must share it."""

    def __init__(self, source: Path, state_keys: list[tuple[str, tuple[int, ...]]], image_keys: list[tuple[str, tuple[int, ...]]],
                 action_dim: int, has_success: bool) -> None:
        self.source = source
        self.state_keys = state_keys
        self.image_keys = image_keys
        self.action_dim = action_dim
        self.has_success = has_success

    @classmethod
    def of(cls, episode: Episode) -> _Layout:
        """The layout of an episode's steps; raises ExportError for steps LeRobot cannot hold."""
        missing = [key for key in ("action", "reward", "is_last") if key not in episode.steps]
        if missing:
            raise ExportError(f"episode file {episode.path} lacks step key(s) {missing}; it is not a robotd session episode")
        state_keys, image_keys = [], []
        for key, value in sorted(episode.observations.items()):
            shape = value.shape[1:]
            if value.dtype == np.uint8 and len(shape) == 3 and shape[2] == 3:
                image_keys.append((key, shape))
            elif len(shape) <= 1 and value.dtype.kind in "biuf":
                state_keys.append((key, shape))
            else:
                raise ExportError(f"observation {key!r} of {episode.path} has shape {shape} and dtype {value.dtype}; "
                                  "the LeRobot export takes vectors and HxWx3 uint8 images")
        action = episode.steps["action"]
        if action.ndim != 2:
            raise ExportError(f"step key 'action' of {episode.path} has shape {action.shape[1:]}; the LeRobot export takes a vector action")
        return cls(episode.path, state_keys, image_keys, action.shape[1], "is_success" in episode.steps)

    def check(self, episode: Episode) -> None:
        """Raises ExportError naming the file when an episode's steps do not have this layout."""
        other = _Layout.of(episode)
        mine = (self.state_keys, self.image_keys, self.action_dim, self.has_success)
        theirs = (other.state_keys, other.image_keys, other.action_dim, other.has_success)
        if mine != theirs:
            raise ExportError(f"episode file {episode.path} has other observation/action keys or shapes than {self.source}; "
                              "export episodes of one robot and config together")

    def state_names(self) -> list[str]:
        """One name per element of observation.state, e.g. "joint_pos.0"."""
        names = []
        for key, shape in self.state_keys:
            size = math.prod(shape)
            names.extend([key] if shape == () else [f"{key}.{index}" for index in range(size)])
        return names

    def features(self) -> dict[str, dict[str, Any]]:
        """info.json's features, in column order."""
        features: dict[str, dict[str, Any]] = {}
        if self.state_keys:
            names = self.state_names()
            features[STATE] = {"dtype": "float32", "shape": [len(names)], "names": names}
        for key, (height, width, channels) in self.image_keys:
            features[IMAGE_PREFIX + key] = {"dtype": "image", "shape": [height, width, channels],
                                            "names": ["height", "width", "channels"]}
        features["action"] = {"dtype": "float32", "shape": [self.action_dim],
                              "names": [f"action.{index}" for index in range(self.action_dim)]}
        features["next.reward"] = {"dtype": "float32", "shape": _SCALAR_SHAPE, "names": None}
        features["next.done"] = {"dtype": "bool", "shape": _SCALAR_SHAPE, "names": None}
        if self.has_success:
            features["next.success"] = {"dtype": "bool", "shape": _SCALAR_SHAPE, "names": None}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            features[name] = {"dtype": dtype, "shape": _SCALAR_SHAPE, "names": None}
        return features

    def frame_columns(self, episode: Episode, fps: float, timestamps: str) -> dict[str, Any]:
        """The columns of an episode's frames, apart from the indices (see the module docstring)."""
        n_frames = len(episode)
        observations = episode.observations
        columns: dict[str, Any] = {}
        if self.state_keys:
            parts = [observations[key].reshape(n_frames, -1).astype(np.float32) for key, _ in self.state_keys]
            columns[STATE] = np.concatenate(parts, axis=1)
        for key, _ in self.image_keys:
            columns[IMAGE_PREFIX + key] = observations[key]
        columns["action"] = episode.actions.astype(np.float32)
        columns["next.reward"] = np.append(episode.rewards[1:], 0.0).astype(np.float32)
        columns["next.done"] = episode.is_last.astype(bool)
        if self.has_success:
            success = episode.is_success.astype(bool)
            columns["next.success"] = np.append(success[1:], success[-1:])
        if timestamps == "measured" and "timing/t_tick_ns" in episode.steps:
            ticks = episode.steps["timing/t_tick_ns"].astype(np.int64)
            columns["timestamp"] = ((ticks - ticks[0]) / 1e9).astype(np.float32)
        elif timestamps == "measured":
            raise ExportError(f"episode file {episode.path} has no timing/t_tick_ns; export it with --timestamps nominal")
        else:
            columns["timestamp"] = (np.arange(n_frames) / fps).astype(np.float32)
        return columns

    def table(self, pyarrow: Any, columns: dict[str, Any]) -> Any:
        """The episode's parquet table, with the HF datasets features in its schema metadata.

        LeRobotDataset loads the parquet files with datasets.load_dataset("parquet") and no
        features of its own: the metadata is what makes the image columns decode to images.
        """
        arrays, hf_features = {}, {}
        for name, feature in self.features().items():
            value = columns[name]
            if feature["dtype"] == "image":
                arrays[name] = pyarrow.array([{"bytes": _png(frame), "path": None} for frame in value],
                                             type=pyarrow.struct([("bytes", pyarrow.binary()), ("path", pyarrow.string())]))
                hf_features[name] = {"_type": "Image"}
            elif feature["shape"] == _SCALAR_SHAPE:
                arrays[name] = pyarrow.array(value, type=pyarrow.from_numpy_dtype(np.dtype(feature["dtype"])))
                hf_features[name] = {"dtype": feature["dtype"], "_type": "Value"}
            else:
                size = feature["shape"][0]
                flat = pyarrow.array(np.ascontiguousarray(value).reshape(-1), type=pyarrow.from_numpy_dtype(value.dtype))
                arrays[name] = pyarrow.FixedSizeListArray.from_arrays(flat, size)
                hf_features[name] = {"feature": {"dtype": feature["dtype"], "_type": "Value"}, "length": size, "_type": "Sequence"}
        table = pyarrow.table(arrays)
        metadata = {b"huggingface": json.dumps({"info": {"features": hf_features}}).encode()}
        return table.replace_schema_metadata(metadata)

    def stats(self, columns: dict[str, Any]) -> dict[str, dict[str, list]]:
        """Per-feature min, max, mean, std and count as LeRobot v2.1 computes them.

        Vectors: per element over the frames. Images: per channel over every pixel of every
        frame, scaled to [0, 1], with shape (3, 1, 1).
        """
        stats = {}
        for name, feature in self.features().items():
            value = columns[name]
            if feature["dtype"] == "image":
                stats[name] = _image_stats(value)
                continue
            data = np.asarray(value)
            numeric = data.astype(np.float64)
            extremes = (data.min(axis=0, keepdims=data.ndim == 1), data.max(axis=0, keepdims=data.ndim == 1))
            stats[name] = {
                "min": extremes[0].tolist(),
                "max": extremes[1].tolist(),
                "mean": np.atleast_1d(numeric.mean(axis=0)).tolist(),
                "std": np.atleast_1d(numeric.std(axis=0)).tolist(),
                "count": [len(data)],
            }
        return stats


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats of uint8 frames (T, H, W, C), scaled to [0, 1], frame by frame to bound memory."""
    channels = frames.shape[-1]
    total = np.zeros(channels)
    total_squares = np.zeros(channels)
    low = np.full(channels, 255)
    high = np.zeros(channels, dtype=np.int64)
    for frame in frames:
        pixels = frame.reshape(-1, channels)
        total += pixels.sum(axis=0, dtype=np.float64)
        wide = pixels.astype(np.float64)
        total_squares += np.einsum("ij,ij->j", wide, wide)
        low = np.minimum(low, pixels.min(axis=0))
        high = np.maximum(high, pixels.max(axis=0))
    n_values = len(frames) * math.prod(frames.shape[1:3])
    mean = total / n_values
    std = np.sqrt(np.maximum(total_squares / n_values - mean**2, 0.0))

    def per_channel(values: np.ndarray) -> list:
        return (np.asarray(values, dtype=np.float64) / 255.0).reshape(channels, 1, 1).tolist()

    return {"min": per_channel(low), "max": per_channel(high), "mean": per_channel(mean), "std": per_channel(std),
            "count": [len(frames)]}


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ExportError("the LeRobot export needs pyarrow, which is not installed; pip install 'robotd[export]'") from None
    return pyarrow, pyarrow.parquet


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory that does not exist yet")
    if not overwrite:
        raise ExportError(f"--out {out} already holds files; give a new directory, or --overwrite to replace a previous export")
    if not (out / "meta" / "info.json").is_file():
        raise ExportError(f"--out {out} holds files but no meta/info.json, so it is not a LeRobot dataset; "
                          "--overwrite replaces only a previous export: give a new directory")


def _fps(episodes: list[Episode], fps: float | None) -> int | float:
    if fps is None:
        rates = sorted({float(episode.attrs.get("control_rate_hz", 0.0)) for episode in episodes})
        if len(rates) != 1 or rates[0] <= 0:
            raise ExportError(f"the episodes have control rates {rates} Hz; give the dataset's rate with --fps")
        fps = rates[0]
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ExportError(f"--fps {fps} is not a positive rate in Hz; give e.g. --fps 25")
    return int(fps) if float(fps).is_integer() else float(fps)


def _robot_type(episodes: list[Episode]) -> str | None:
    robots = sorted({str(episode.attrs["robot"]) for episode in episodes if "robot" in episode.attrs})
    return ",".join(robots) or None


def _tolerance_hint(error_s: float) -> str:
    # One significant digit, rounded up from a 10% margin, so the hint passes despite float32 rounding.
    margin_s = error_s * 1.1
    exponent = math.floor(math.log10(margin_s))
    return f"{math.ceil(margin_s / 10**exponent) * 10**exponent:.0e}"


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4) + "\n")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _write_card(path: Path, repo_id: str | None, info: dict) -> None:
    """A Hugging Face Hub dataset card: the front matter the Hub reads, then info.json."""
    title = repo_id or "robotd export"
    path.write_text(
        "---\ntags:\n- LeRobot\n- robotd\ntask_categories:\n- robotics\nconfigs:\n- config_name: default\n"
        "  data_files: data/*/*.parquet\n---\n\n"
        f"# {title}\n\nRecorded with robotd and exported to the LeRobot dataset format {CODEBASE_VERSION} "
        f"(next.reward[t] is the reward after the action of frame t).\n\n"
        f"meta/info.json:\n\n```json\n{json.dumps(info, indent=4)}\n```\n"
    )


def _note(text: str) -> None:
    print(f"robotd export: {text}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``robotd export``."""
    parser = program_parser(
        "robotd export",
        "Export recorded sessions to the LeRobot dataset format (v2.1): one parquet file per episode with "
        "observation.state, observation.images.<key>, action, next.reward, next.done, next.success and "
        "timestamps, plus meta/info.json, episodes, tasks and per-episode statistics. Needs pyarrow "
        "(pip install 'robotd[export]') and Pillow.",
        ("two sessions as one dataset",
         "robotd export runs/demo runs/demo2 --out datasets/ur5_reach --repo-id lab/ur5_reach"),
        ("timestamps frame_index / fps instead of the measured tick times, replacing an earlier export",
         "robotd export runs/demo --out datasets/demo --timestamps nominal --overwrite"))
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="session directories (each with an episodes/ folder)")
    parser.add_argument("--format", default="lerobot", choices=["lerobot"], help="output format")
    parser.add_argument("--out", required=True, help="dataset directory to write (must not exist or be empty)")
    parser.add_argument("--repo-id", default=None, help="dataset name, e.g. lab/ur5_reach (recorded in info.json)")
    parser.add_argument("--fps", type=float, default=None, help="frames per second (default: the episodes' control rate)")
    parser.add_argument("--include-flagged", action="store_true", help="also export episodes with quality flags")
    parser.add_argument("--timestamps", default="measured", choices=["measured", "nominal"],
                        help="timestamp column: measured, from the recorded tick times, or nominal, frame_index / fps")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``robotd export``; returns the exit status (1 with a one-line error on bad input)."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        info = export_lerobot(args.logdirs, args.out, repo_id=args.repo_id, fps=args.fps, include_flagged=args.include_flagged,
                              timestamps=args.timestamps, overwrite=args.overwrite)
    except (ValueError, LayoutVersionError, FileNotFoundError) as error:
        print(f"robotd export: error: {error}", file=sys.stderr)
        return 1
    print(f"robotd export: wrote {info['total_episodes']} episodes, {info['total_frames']} frames at {info['fps']} fps "
          f"to {args.out} (LeRobot {CODEBASE_VERSION}) in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
