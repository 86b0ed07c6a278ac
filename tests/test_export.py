"""Specification of the plain episode loader (tools.dataset) and the LeRobot v2.1 export (tools.export)."""

import builtins
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tools import dataset

from tools import export
from robotd.episodes import EpisodeWriter, LayoutVersionError, read_episode
from robotd.steps import step_spec

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed: pip install 'robotd[export]'")

REPO_ROOT = Path(__file__).resolve().parents[1]
OBS_SPEC = {"image": ((4, 5, 3), "uint8"), "joint_pos": ((2,), "float32"), "gripper": ((), "float32")}
ATTRS = {"session": "tiny", "actor_id": "actor0", "episode_id": 0, "robot": "tiny_arm", "task": "touch", "control_rate_hz": 10.0}
TICK_NS = 100_000_000


def tiny_step(episode: int, index: int, n_steps: int, tick_jitter_ns: int = 0) -> dict:
    """Step index of a tiny hand-built episode whose every value says where it comes from."""
    step = {key: np.zeros(shape, dtype) for key, (shape, dtype) in step_spec(OBS_SPEC, 2, ["arm"]).items()}
    step.update({
        "obs/image": np.full((4, 5, 3), 10 * index + episode, np.uint8),
        "obs/joint_pos": np.array([index, -index], np.float32),
        "obs/gripper": np.float32(index / 10),
        "action": np.array([index / 100, episode], np.float32),
        "applied_action": np.array([index / 200, episode], np.float32),
        "reward": np.float32(0.0 if index == 0 else index),
        "is_first": index == 0,
        "is_last": index == n_steps - 1,
        "is_terminal": index == n_steps - 1 and episode == 1,
        "is_success": index >= n_steps - 2,
        "timing/t_tick_ns": 5_000_000_000 + index * TICK_NS + (tick_jitter_ns if index % 2 else 0),
    })
    return step


def tiny_session(logdir: Path, lengths=(4, 3), tick_jitter_ns: int = 0, task: str = "touch") -> Path:
    """A session directory with one closed hand-built episode per entry of lengths."""
    spec = step_spec(OBS_SPEC, 2, ["arm"])
    for episode, n_steps in enumerate(lengths):
        path = logdir / "episodes" / f"actor0-{episode:06d}.h5"
        with EpisodeWriter(path, spec, {**ATTRS, "episode_id": episode, "task": task}) as writer:
            for index in range(n_steps):
                writer.append(tiny_step(episode, index, n_steps, tick_jitter_ns))
    return logdir


def add_flag(path: Path, flag: str) -> None:
    """Adds a flag to a closed episode file, as the actor's quality check would have."""
    with h5py.File(path, "r+") as file:
        flags = [item.decode() if isinstance(item, bytes) else item for item in file.attrs.get("flags", [])]
        file.attrs["flags"] = np.array([*flags, flag], dtype=h5py.string_dtype())


@pytest.fixture(scope="module")
def exported(recorded_session, tmp_path_factory) -> Path:
    """The recorded session exported once through the command line entry point."""
    out = tmp_path_factory.mktemp("lerobot") / "mock_arm"
    assert export.main([str(recorded_session), "--format", "lerobot", "--out", str(out), "--repo-id", "lab/mock_arm"]) == 0
    return out


def recorded_episodes(logdir: Path) -> list:
    """The recorded session's episodes with steps, in file order: the export's episodes."""
    episodes = [read_episode(path) for path in sorted((logdir / "episodes").glob("*.h5"))]
    return [episode for episode in episodes if len(episode.steps["reward"])]


def parquet_of(out: Path, episode_index: int):
    return pq.read_table(out / f"data/chunk-000/episode_{episode_index:06d}.parquet")


# ---- the loader -------------------------------------------------------------------------------


def test_load_session_gives_what_read_episode_gives(recorded_session):
    episodes = dataset.load_session(recorded_session)

    paths = sorted((recorded_session / "episodes").glob("*.h5"))
    assert [episode.path for episode in episodes] == paths and len(paths) >= 3
    for episode, path in zip(episodes, paths):
        expected = read_episode(path)
        assert set(episode.steps) == set(expected.steps)
        for key, value in expected.steps.items():
            np.testing.assert_array_equal(episode.steps[key], value, err_msg=key)
        assert (episode.attrs, episode.stats, episode.complete) == (expected.attrs, expected.stats, expected.complete)
        assert episode.flags == expected.attrs["flags"]
        assert episode.observations["image"].shape == (len(episode), 64, 64, 3)
        np.testing.assert_array_equal(episode.actions, expected.steps["action"])
        np.testing.assert_array_equal(episode.rewards, expected.steps["reward"])
        assert episode.is_first[0] and not episode.is_first[1:].any()


def test_to_transitions_pairs_each_action_with_the_reward_of_the_step_it_leads_to(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(4, 3))
    first, second = dataset.load_session(logdir)

    obs, action, reward, next_obs, done = first.to_transitions()

    assert action.shape == (3, 2) and reward.shape == (3,) and done.shape == (3,)
    assert set(obs) == set(next_obs) == {"image", "joint_pos", "gripper"}
    assert obs["image"].shape == next_obs["image"].shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(obs["joint_pos"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(next_obs["joint_pos"][:, 0], [1, 2, 3])
    np.testing.assert_allclose(action[:, 0], [0, 0.01, 0.02])
    # reward[t] of a step is for arriving there: the transition from t to t+1 earns reward[t+1].
    np.testing.assert_array_equal(reward, [1, 2, 3])
    # A time limit (is_last without is_terminal) is not done; the second episode terminates.
    np.testing.assert_array_equal(done, [False, False, False])
    np.testing.assert_array_equal(second.to_transitions().done, [False, True])


def test_to_transitions_of_a_one_step_episode_is_empty(tmp_path):
    (episode,) = dataset.load_session(tiny_session(tmp_path / "s", lengths=(1,)))

    transitions = episode.to_transitions()

    assert transitions.action.shape == (0, 2) and transitions.reward.shape == (0,)
    assert transitions.next_obs["image"].shape == (0, 4, 5, 3)


def test_unreadable_file_is_skipped_with_a_warning_naming_it_or_raises_when_strict(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2, 2))
    (logdir / "episodes" / "actor0-000005.h5").write_bytes(b"not hdf5" * 50)

    with pytest.warns(UserWarning, match="actor0-000005.h5 skipped"):
        episodes = dataset.load_session(logdir)
    assert [episode.path.name for episode in episodes] == ["actor0-000000.h5", "actor0-000001.h5"]
    with pytest.raises(ValueError, match="actor0-000005.h5 cannot be opened"):
        dataset.load_session(logdir, strict=True)


def test_file_of_a_newer_layout_is_never_skipped(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2,))
    with h5py.File(logdir / "episodes" / "actor0-000000.h5", "r+") as file:
        file.attrs["layout_version"] = 3

    with pytest.raises(LayoutVersionError, match="upgrade robotd"):
        dataset.load_session(logdir)


def test_include_flagged_false_leaves_out_quality_flagged_episodes_only(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2, 2, 2))
    add_flag(logdir / "episodes" / "actor0-000001.h5", "quality:late_steps (0.2, bound 0.05)")
    add_flag(logdir / "episodes" / "actor0-000002.h5", "time_limit")

    kept = dataset.load_session(logdir, include_flagged=False)

    assert [episode.path.name for episode in kept] == ["actor0-000000.h5", "actor0-000002.h5"]
    assert len(dataset.load_session(logdir)) == 3


def test_open_episode_is_loaded_from_its_journal_as_incomplete(tmp_path):
    spec = step_spec(OBS_SPEC, 2, ["arm"])
    writer = EpisodeWriter(tmp_path / "episodes" / "actor0-000000.h5", spec, ATTRS)
    writer.append(tiny_step(0, 0, 5))
    writer.append(tiny_step(0, 1, 5))

    (episode,) = dataset.load_session(tmp_path)

    assert (len(episode), episode.complete) == (2, False)
    writer.close()


def test_session_without_an_episodes_folder_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere has no episodes/ folder"):
        dataset.load_session(tmp_path / "nowhere")


# ---- the LeRobot export of the recorded session -----------------------------------------------


def test_info_json_describes_the_dataset(exported, recorded_session):
    info = json.loads((exported / "meta/info.json").read_text())
    episodes = recorded_episodes(recorded_session)

    assert info["codebase_version"] == "v2.1"
    n_episodes = len(episodes)
    assert n_episodes >= 3
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (n_episodes, sum(len(e.steps["reward"]) for e in episodes), 1)
    assert (info["fps"], info["chunks_size"], info["splits"], info["robot_type"]) == (25, 1000, {"train": f"0:{n_episodes}"}, "mock_arm")
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["video_path"] is None and info["total_videos"] == 0
    features = info["features"]
    assert features["observation.images.image"] == {"dtype": "image", "shape": [64, 64, 3], "names": ["height", "width", "channels"]}
    assert features["observation.state"]["shape"] == [18] and features["observation.state"]["names"][:2] == ["joint_pos.0", "joint_pos.1"]
    assert features["action"]["dtype"] == "float32" and features["action"]["shape"] == [6]
    for name, dtype in (("next.reward", "float32"), ("next.done", "bool"), ("next.success", "bool"), ("timestamp", "float32"),
                        ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")):
        assert features[name] == {"dtype": dtype, "shape": [1], "names": None}, name
    assert "lab/mock_arm" in (exported / "README.md").read_text()


def test_episodes_and_tasks_jsonl(exported, recorded_session):
    lines = [json.loads(line) for line in (exported / "meta/episodes.jsonl").read_text().splitlines()]
    tasks = [json.loads(line) for line in (exported / "meta/tasks.jsonl").read_text().splitlines()]
    lengths = [len(episode.steps["reward"]) for episode in recorded_episodes(recorded_session)]

    assert tasks == [{"task_index": 0, "task": "mock_reach"}]
    assert lengths[:3] == [100, 100, 100]
    assert [(line["episode_index"], line["tasks"], line["length"]) for line in lines] == [
        (i, ["mock_reach"], length) for i, length in enumerate(lengths)]


def test_one_parquet_per_episode_with_one_row_per_step_and_a_column_per_feature(exported, recorded_session):
    features = json.loads((exported / "meta/info.json").read_text())["features"]
    files = sorted((exported / "data").rglob("*.parquet"))
    episodes = recorded_episodes(recorded_session)

    assert [file.relative_to(exported).as_posix() for file in files] == [
        f"data/chunk-000/episode_{i:06d}.parquet" for i in range(len(episodes))]
    start = 0
    for index, episode in enumerate(episodes):
        table = parquet_of(exported, index)
        n_steps = len(episode.steps["reward"])
        assert table.num_rows == n_steps
        assert table.column_names == list(features)
        columns = table.to_pydict()
        assert columns["frame_index"] == list(range(n_steps))
        assert columns["episode_index"] == [index] * n_steps
        assert columns["index"] == list(range(start, start + n_steps))
        assert columns["task_index"] == [0] * n_steps
        start += n_steps


def test_images_decode_to_the_recorded_frames(exported, recorded_session):
    episode = recorded_episodes(recorded_session)[1]
    images = parquet_of(exported, 1).column("observation.images.image").to_pylist()

    assert images[0].keys() == {"bytes", "path"}
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(image["bytes"]))) for image in images])
    np.testing.assert_array_equal(decoded, episode.steps["obs/image"])


def test_state_action_and_timestamps_equal_the_recorded_steps(exported, recorded_session):
    names = json.loads((exported / "meta/info.json").read_text())["features"]["observation.state"]["names"]
    episode = recorded_episodes(recorded_session)[2]
    table = parquet_of(exported, 2)

    state = np.array(table.column("observation.state").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(state[:, names.index("tcp_pos.0"):names.index("tcp_pos.2") + 1], episode.steps["obs/tcp_pos"])
    np.testing.assert_array_equal(state[:, names.index("joint_vel.0"):names.index("joint_vel.5") + 1], episode.steps["obs/joint_vel"])
    np.testing.assert_array_equal(np.array(table.column("action").to_pylist(), np.float32), episode.steps["action"])
    ticks = episode.steps["timing/t_tick_ns"]
    np.testing.assert_allclose(table.column("timestamp").to_numpy(), (ticks - ticks[0]) / 1e9, rtol=0, atol=1e-6)
    assert table.column("timestamp").type == "float"


def test_next_reward_is_the_reward_of_the_step_the_action_leads_to(exported, recorded_session):
    episode = recorded_episodes(recorded_session)[0]
    table = parquet_of(exported, 0)

    next_reward = table.column("next.reward").to_numpy()
    np.testing.assert_array_equal(next_reward[:-1], episode.steps["reward"][1:])
    assert next_reward[-1] == 0.0
    assert np.any(next_reward[:-1] != 0)
    done = table.column("next.done").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(done, episode.steps["is_last"])
    assert done[-1] and not done[:-1].any()


def test_episodes_stats_match_the_parquet_data(exported):
    lines = [json.loads(line) for line in (exported / "meta/episodes_stats.jsonl").read_text().splitlines()]
    features = json.loads((exported / "meta/info.json").read_text())["features"]

    assert [line["episode_index"] for line in lines] == list(range(len(lines))) and len(lines) >= 3
    for line in lines:
        stats, table = line["stats"], parquet_of(exported, line["episode_index"])
        assert set(stats) == set(features)
        for name, feature_stats in stats.items():
            low, mean, high = (np.array(feature_stats[key], dtype=np.float64) for key in ("min", "mean", "max"))
            assert np.all(low <= mean + 1e-9) and np.all(mean <= high + 1e-9), name
            assert feature_stats["count"] == [table.num_rows], name
        state = np.array(table.column("observation.state").to_pylist(), dtype=np.float64)
        np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["observation.state"]["std"], state.std(axis=0), rtol=1e-6, atol=1e-9)
        assert stats["frame_index"]["max"] == [table.num_rows - 1]
        image = np.array(stats["observation.images.image"]["mean"])
        assert image.shape == (3, 1, 1) and np.all((image >= 0) & (image <= 1))


def test_parquet_files_carry_the_hf_datasets_features_so_images_decode_as_images(exported):
    table = parquet_of(exported, 0)

    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["observation.images.image"] == {"_type": "Image"}
    assert features["observation.state"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 18, "_type": "Sequence"}
    assert features["next.done"] == {"dtype": "bool", "_type": "Value"}
    state_type = table.schema.field("observation.state").type
    assert (state_type.list_size, str(state_type.value_type)) == (18, "float")


# ---- export choices and errors ------------------------------------------------------------------


def test_success_is_shifted_like_the_reward_and_tasks_are_numbered_by_first_use(tmp_path):
    first = tiny_session(tmp_path / "a", lengths=(4,), task="touch")
    second = tiny_session(tmp_path / "b", lengths=(3, 2), task="push")
    out = tmp_path / "out"

    info = export.export_lerobot([first, second], out)

    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["fps"]) == (3, 9, 2, 10)
    tasks = [json.loads(line) for line in (out / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": "touch"}, {"task_index": 1, "task": "push"}]
    table = parquet_of(out, 0).to_pydict()
    # Steps 2 and 3 of 4 are successes: next.success[t] is is_success[t+1], the last frame keeps its own.
    assert table["next.success"] == [False, True, True, True]
    assert table["next.reward"] == [1.0, 2.0, 3.0, 0.0]
    assert parquet_of(out, 2).to_pydict()["index"] == [7, 8]
    assert parquet_of(out, 2).to_pydict()["task_index"] == [1, 1]
    assert info["features"]["observation.state"]["names"] == ["gripper", "joint_pos.0", "joint_pos.1"]
    assert table["observation.state"][3] == pytest.approx([0.3, 3, -3])


def test_jittery_tick_times_are_reported_and_nominal_timestamps_follow_fps(tmp_path, capsys):
    logdir = tiny_session(tmp_path / "s", lengths=(4,), tick_jitter_ns=300_000)

    export.export_lerobot([logdir], tmp_path / "measured")
    warning = capsys.readouterr().err
    export.export_lerobot([logdir], tmp_path / "nominal", timestamps="nominal", fps=10)

    assert "3 timestamp step(s) differ from 1/fps" in warning and "tolerance_s=4e-04" in warning
    np.testing.assert_allclose(parquet_of(tmp_path / "measured", 0).column("timestamp").to_numpy(), [0, 0.1003, 0.2, 0.3003], atol=1e-6)
    np.testing.assert_allclose(parquet_of(tmp_path / "nominal", 0).column("timestamp").to_numpy(), [0, 0.1, 0.2, 0.3], atol=1e-7)
    assert capsys.readouterr().err == ""


def test_quality_flagged_episodes_are_exported_only_when_asked(tmp_path, capsys):
    logdir = tiny_session(tmp_path / "s", lengths=(2, 3))
    add_flag(logdir / "episodes" / "actor0-000000.h5", "quality:stale_readings (9, bound 0)")

    assert export.export_lerobot([logdir], tmp_path / "clean")["total_frames"] == 3
    assert "1 quality-flagged episode(s) left out" in capsys.readouterr().err
    assert export.export_lerobot([logdir], tmp_path / "all", include_flagged=True)["total_frames"] == 5


def test_layout_1_episodes_export_with_the_filled_keys(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(3,))
    with h5py.File(logdir / "episodes" / "actor0-000000.h5", "r+") as file:
        file.attrs["layout_version"] = 1
        del file["steps/is_success"], file["steps/applied_action"]

    export.export_lerobot([logdir], tmp_path / "out")

    assert parquet_of(tmp_path / "out", 0).to_pydict()["next.success"] == [False, False, False]


def test_existing_output_is_refused_and_replaced_only_with_overwrite(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2,))
    out = tmp_path / "out"
    export.export_lerobot([logdir], out)
    first_info = (out / "meta/info.json").read_text()

    with pytest.raises(ValueError, match="already holds files; .* --overwrite"):
        export.export_lerobot([logdir], out)
    tiny_session(tmp_path / "s2", lengths=(5,))
    export.export_lerobot([tmp_path / "s2"], out, overwrite=True)
    assert json.loads((out / "meta/info.json").read_text())["total_frames"] == 5 != json.loads(first_info)["total_frames"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a LeRobot dataset"):
        export.export_lerobot([logdir], other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*tmp*"))


def test_newer_layout_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    logdir = tiny_session(tmp_path / "s", lengths=(2, 2))
    with h5py.File(logdir / "episodes" / "actor0-000001.h5", "r+") as file:
        file.attrs["layout_version"] = 3

    assert export.main([str(logdir), "--out", str(tmp_path / "out")]) == 1

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "actor0-000001.h5 has layout_version 3" in error and "upgrade robotd" in error
    assert not (tmp_path / "out").exists()


def test_episodes_of_different_robots_are_refused_naming_the_file(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2,))
    other_obs = {"image": ((4, 5, 3), "uint8"), "joint_pos": ((3,), "float32")}
    spec = step_spec(other_obs, 2, ["arm"])
    with EpisodeWriter(logdir / "episodes" / "actor0-000001.h5", spec, ATTRS) as writer:
        writer.append({key: np.zeros(shape, dtype) for key, (shape, dtype) in spec.items()})

    with pytest.raises(ValueError, match="actor0-000001.h5 has other observation/action keys"):
        export.export_lerobot([logdir], tmp_path / "out")


def test_missing_pyarrow_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    logdir = tiny_session(tmp_path / "s", lengths=(2,))
    real_import = builtins.__import__

    def without_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_pyarrow)
    assert export.main([str(logdir), "--out", str(tmp_path / "out")]) == 1

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'robotd[export]'" in error


def test_robotd_export_runs_the_module(tmp_path):
    logdir = tiny_session(tmp_path / "s", lengths=(2,))

    result = subprocess.run([sys.executable, "-m", "robotd", "export", str(logdir), "--format", "lerobot", "--out",
                             str(tmp_path / "out"), "--fps", "10"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)

    assert result.returncode == 0, result.stderr
    assert "wrote 1 episodes, 2 frames at 10 fps" in result.stdout
    assert json.loads((tmp_path / "out/meta/info.json").read_text())["total_frames"] == 2
    shutil.rmtree(tmp_path / "out")
