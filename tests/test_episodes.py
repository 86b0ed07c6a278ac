"""Specification of episode files: what goes in comes back, and a killed writer loses at most one step."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from robotd.episodes import (
    LAYOUT_VERSION,
    EpisodeWriter,
    LayoutVersionError,
    count_steps,
    read_episode,
    recover,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "obs/image": ((8, 8, 3), "uint8"),
    "obs/joint_pos": ((7,), "float32"),
    "action": ((2,), "float64"),
    "reward": ((), "float32"),
    "is_first": ((), "bool"),
    "timing/t_tick_ns": ((), "int64"),
    "timing/arm/age_ns": ((), "int32"),
    "index": ((), "int64"),
}
ATTRS = {"session": "s1", "actor_id": 0, "episode_id": 7, "robot": "sim-arm", "task": "reach", "control_rate_hz": 50.0}


def step_for(index: int) -> dict:
    """The step a test writer appends as step number index, so readers can check every value."""
    return {
        "obs/image": np.full((8, 8, 3), index % 256, dtype=np.uint8),
        "obs/joint_pos": np.full(7, index, dtype=np.float32),
        "action": np.array([index, -index], dtype=np.float64),
        "reward": float(index) / 2,
        "is_first": index == 0,
        "timing/t_tick_ns": 1_000_000_000 + 20_000_000 * index,
        "timing/arm/age_ns": np.int32(index % 1000),
        "index": index,
    }


def assert_steps_are_the_first(steps: dict, n_steps: int) -> None:
    """Checks steps holds exactly step_for(0) ... step_for(n_steps - 1), key by key."""
    assert set(steps) == set(SPEC)
    for key, (shape, dtype) in SPEC.items():
        expected = np.array([step_for(index)[key] for index in range(n_steps)], dtype=dtype).reshape(n_steps, *shape)
        assert steps[key].dtype == np.dtype(dtype), key
        np.testing.assert_array_equal(steps[key], expected, err_msg=key)


def write_episode(path: Path, n_steps: int, **close_args) -> Path:
    """Writes and closes an episode of n_steps test steps."""
    writer = EpisodeWriter(path, SPEC, ATTRS)
    for index in range(n_steps):
        writer.append(step_for(index))
    writer.close(**close_args)
    return path


def journal_of(path: Path) -> Path:
    """Where the writer keeps an open episode's journal."""
    return path.with_name(path.name + ".journal")


def killed_episode(tmp_path: Path, n_steps: int) -> Path:
    """Leaves the files of a writer killed right after its n_steps-th append returned."""
    writer = EpisodeWriter(tmp_path / "live.h5", SPEC, ATTRS)
    for index in range(n_steps):
        writer.append(step_for(index))
    killed = tmp_path / "killed.h5"
    shutil.copyfile(writer.path, killed)
    shutil.copyfile(journal_of(writer.path), journal_of(killed))
    writer.close()
    return killed


def test_closed_episode_reads_back_every_step_with_its_shape_and_dtype(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 5)

    episode = read_episode(path)

    assert_steps_are_the_first(episode.steps, 5)


def test_closed_episode_keeps_attrs_stats_and_flags(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 3, stats={"return": 4.5, "length": 3, "outcome": "success"}, flags=["timeout", "estop"])

    episode = read_episode(path)

    assert {name: episode.attrs[name] for name in ATTRS} == ATTRS
    assert episode.attrs["layout_version"] == LAYOUT_VERSION
    assert episode.attrs["flags"] == ["timeout", "estop"]
    assert episode.stats == {"return": 4.5, "length": 3, "outcome": "success"}
    assert episode.complete is True


def test_extra_attrs_are_kept(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, {**ATTRS, "operator": "ana", "gains": [1.0, 2.0]})
    writer.close()

    attrs = read_episode(tmp_path / "ep.h5").attrs

    assert attrs["operator"] == "ana"
    np.testing.assert_array_equal(attrs["gains"], [1.0, 2.0])


def test_started_at_defaults_to_an_iso_time_and_can_be_given(tmp_path):
    EpisodeWriter(tmp_path / "default.h5", SPEC, ATTRS).close()
    EpisodeWriter(tmp_path / "given.h5", SPEC, {**ATTRS, "started_at": "2024-05-01T12:00:00+00:00"}).close()

    assert read_episode(tmp_path / "default.h5").attrs["started_at"][:2] == "20"
    assert read_episode(tmp_path / "given.h5").attrs["started_at"] == "2024-05-01T12:00:00+00:00"


def test_episode_closed_with_no_steps_reads_back_empty_steps(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 0)

    episode = read_episode(path)

    assert episode.complete is True
    assert episode.steps["obs/image"].shape == (0, 8, 8, 3)


def test_count_steps_agrees_with_the_steps_appended(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 4)

    assert count_steps(path) == 4


def test_n_steps_counts_appends(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)
    writer.append(step_for(0))
    writer.append(step_for(1))

    assert writer.n_steps == 2
    writer.close()


def test_missing_key_is_rejected_naming_the_key(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)
    step = step_for(0)
    del step["reward"]

    with pytest.raises(ValueError, match="'reward'"):
        writer.append(step)


def test_extra_key_is_rejected_naming_the_key(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)

    with pytest.raises(ValueError, match="'obs/depth'"):
        writer.append({**step_for(0), "obs/depth": np.zeros((8, 8))})


def test_wrong_shape_is_rejected_naming_key_shape_and_expected_shape(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)

    with pytest.raises(ValueError, match=r"'obs/joint_pos' has shape \(6,\), expected \(7,\)"):
        writer.append({**step_for(0), "obs/joint_pos": np.zeros(6, dtype=np.float32)})


def test_value_that_does_not_fit_the_dtype_is_rejected(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)

    with pytest.raises(ValueError, match="'obs/image' has dtype float64"):
        writer.append({**step_for(0), "obs/image": np.zeros((8, 8, 3))})


def test_rejected_step_writes_nothing(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)
    writer.append(step_for(0))
    with pytest.raises(ValueError):
        writer.append({**step_for(1), "action": np.zeros(3)})
    writer.append(step_for(1))
    writer.close()

    assert_steps_are_the_first(read_episode(tmp_path / "ep.h5").steps, 2)


def test_missing_required_attr_is_rejected_naming_it(tmp_path):
    attrs = {name: value for name, value in ATTRS.items() if name != "robot"}

    with pytest.raises(ValueError, match="'robot'"):
        EpisodeWriter(tmp_path / "ep.h5", SPEC, attrs)


def test_existing_episode_file_is_never_overwritten(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 2)

    with pytest.raises(FileExistsError, match="ep.h5"):
        EpisodeWriter(path, SPEC, ATTRS)
    assert count_steps(path) == 2


def test_append_after_close_is_rejected(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)
    writer.close()

    with pytest.raises(ValueError, match="closed"):
        writer.append(step_for(0))


def test_leaving_a_with_block_closes_the_episode(tmp_path):
    with EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS) as writer:
        writer.append(step_for(0))

    assert read_episode(tmp_path / "ep.h5").complete is True


def test_images_are_compressed_one_frame_per_chunk_and_other_steps_are_not(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 2)

    with h5py.File(path, "r") as file:
        image, joints = file["steps/obs/image"], file["steps/obs/joint_pos"]
        assert (image.compression, image.chunks[0], image.maxshape[0]) == ("gzip", 1, None)
        assert (joints.compression, joints.maxshape[0]) == (None, None)


def test_closing_removes_the_journal(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 2)

    assert sorted(tmp_path.iterdir()) == [path]


def test_open_episode_reads_back_the_steps_so_far_as_incomplete(tmp_path):
    writer = EpisodeWriter(tmp_path / "ep.h5", SPEC, ATTRS)
    writer.append(step_for(0))
    writer.append(step_for(1))

    episode = read_episode(writer.path)

    assert_steps_are_the_first(episode.steps, 2)
    assert episode.complete is False
    assert count_steps(writer.path) == 2
    writer.close()


def test_killed_episode_reads_back_from_its_journal(tmp_path):
    path = killed_episode(tmp_path, 3)

    episode = read_episode(path)

    assert_steps_are_the_first(episode.steps, 3)
    assert {name: episode.attrs[name] for name in ATTRS} == ATTRS
    assert (episode.stats, episode.complete) == ({}, False)


def test_step_cut_short_in_the_journal_is_not_counted(tmp_path):
    path = killed_episode(tmp_path, 3)
    with journal_of(path).open("ab") as journal:
        journal.write(b"\x07" * 100)

    assert_steps_are_the_first(read_episode(path).steps, 3)
    assert count_steps(path) == 3


def test_step_torn_inside_the_journal_is_not_counted(tmp_path):
    path = killed_episode(tmp_path, 3)
    journal = bytearray(journal_of(path).read_bytes())
    journal[-1] ^= 0xFF
    journal_of(path).write_bytes(journal)

    assert_steps_are_the_first(read_episode(path).steps, 2)
    assert count_steps(path) == 2


def test_journal_left_beside_a_closed_episode_is_ignored(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 2, flags=["done"])
    journal_of(path).write_bytes(b"left by a close() that was cut short")

    episode = read_episode(path)

    assert (episode.complete, episode.attrs["flags"]) == (True, ["done"])
    assert_steps_are_the_first(episode.steps, 2)


def test_killed_episode_without_its_journal_raises_naming_the_file(tmp_path):
    path = killed_episode(tmp_path, 2)
    journal_of(path).unlink()

    with pytest.raises(ValueError, match="killed.h5 cannot be opened .* no journal"):
        read_episode(path)


def test_recover_rewrites_a_killed_episode_as_a_plain_hdf5_file(tmp_path):
    path = killed_episode(tmp_path, 4)

    n_steps = recover(path)

    assert n_steps == 4
    assert not journal_of(path).exists()
    with h5py.File(path, "r") as file:
        assert file["steps/index"].shape == (4,)
    episode = read_episode(path)
    assert_steps_are_the_first(episode.steps, 4)
    assert (episode.complete, episode.attrs["flags"]) == (False, ["recovered"])


def test_recover_leaves_a_closed_episode_as_it_is(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 3, flags=["done"])

    assert recover(path) == 3
    assert read_episode(path).attrs["flags"] == ["done"]


def test_file_with_a_newer_layout_version_raises_naming_file_its_version_and_the_readable_ones(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 1)
    with h5py.File(path, "r+") as file:
        file.attrs["layout_version"] = 3

    with pytest.raises(LayoutVersionError, match=r"ep\.h5 has layout_version 3, but this build reads layout_version 1 or 2; upgrade robotd") as error:
        read_episode(path)
    assert "\n" not in str(error.value)
    with pytest.raises(LayoutVersionError, match="layout_version 3"):
        count_steps(path)


def test_file_with_an_unknown_layout_version_raises_without_suggesting_an_upgrade(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 1)
    with h5py.File(path, "r+") as file:
        file.attrs["layout_version"] = 0

    with pytest.raises(LayoutVersionError, match="layout_version 0, but this build reads layout_version 1 or 2; read it with"):
        read_episode(path)


def test_new_episodes_are_written_with_layout_version_2(tmp_path):
    path = write_episode(tmp_path / "ep.h5", 1)

    assert LAYOUT_VERSION == 2
    with h5py.File(path, "r") as file:
        assert file.attrs["layout_version"] == 2
    assert "upgraded_from_layout" not in read_episode(path).attrs


SPEC_V2 = {**SPEC, "action": ((2,), "float32"), "applied_action": ((2,), "float32"), "is_success": ((), "bool")}


def step_v2(index: int) -> dict:
    """A step of a layout 2 episode: step_for(index) with a success verdict and an applied action unlike the action."""
    return {**step_for(index), "action": np.array([index, -index], dtype=np.float32),
            "applied_action": np.array([index / 2, 0], dtype=np.float32), "is_success": index % 2 == 1}


def layout_1_episode(path: Path, n_steps: int) -> Path:
    """A closed episode as layout 1 wrote it: layout_version 1 and no is_success or applied_action."""
    with EpisodeWriter(path, SPEC_V2, ATTRS) as writer:
        for index in range(n_steps):
            writer.append(step_v2(index))
    with h5py.File(path, "r+") as file:
        file.attrs["layout_version"] = 1
        del file["steps/is_success"], file["steps/applied_action"]
    return path


def test_layout_1_file_loads_with_is_success_false_and_applied_action_equal_to_action(tmp_path):
    path = layout_1_episode(tmp_path / "old.h5", 4)

    episode = read_episode(path)

    np.testing.assert_array_equal(episode.steps["is_success"], np.zeros(4, dtype=bool))
    assert episode.steps["is_success"].dtype == np.bool_
    np.testing.assert_array_equal(episode.steps["applied_action"], [[index, -index] for index in range(4)])
    assert episode.steps["applied_action"].dtype == np.float32
    assert episode.steps["applied_action"] is not episode.steps["action"]
    assert episode.attrs["upgraded_from_layout"] == 1
    assert episode.attrs["layout_version"] == 2
    assert sorted(episode.attrs["filled_keys"]) == ["applied_action", "is_success"]
    assert episode.complete is True
    with h5py.File(path, "r") as file:
        assert file.attrs["layout_version"] == 1 and "is_success" not in file["steps"]


def test_layout_1_file_that_has_the_keys_keeps_its_values(tmp_path):
    path = tmp_path / "ep.h5"
    with EpisodeWriter(path, SPEC_V2, ATTRS) as writer:
        for index in range(3):
            writer.append(step_v2(index))
    with h5py.File(path, "r+") as file:
        file.attrs["layout_version"] = 1

    episode = read_episode(path)

    np.testing.assert_array_equal(episode.steps["is_success"], [False, True, False])
    np.testing.assert_array_equal(episode.steps["applied_action"][:, 0], [0, 0.5, 1])
    assert (episode.attrs["upgraded_from_layout"], episode.attrs["filled_keys"]) == (1, [])


def test_layout_1_journal_of_a_killed_writer_loads_and_recovers(tmp_path, monkeypatch):
    import robotd.episodes as episodes

    monkeypatch.setattr(episodes, "LAYOUT_VERSION", 1)
    killed = killed_episode(tmp_path, 3)
    monkeypatch.undo()
    with journal_of(killed).open("rb") as journal:
        assert b'"layout_version": 1' in journal.read(4096)

    episode = read_episode(killed)

    assert_steps_are_the_first({key: episode.steps[key] for key in SPEC}, 3)
    np.testing.assert_array_equal(episode.steps["applied_action"], episode.steps["action"])
    assert (episode.attrs["upgraded_from_layout"], episode.complete) == (1, False)
    assert count_steps(killed) == 3
    assert recover(killed) == 3
    recovered = read_episode(killed)
    assert (recovered.attrs["upgraded_from_layout"], recovered.attrs["flags"]) == (1, ["recovered"])
    np.testing.assert_array_equal(recovered.steps["is_success"], np.zeros(3, dtype=bool))


def test_journal_of_a_newer_layout_raises_naming_it(tmp_path, monkeypatch):
    import robotd.episodes as episodes

    monkeypatch.setattr(episodes, "LAYOUT_VERSION", 3)
    killed = killed_episode(tmp_path, 2)
    monkeypatch.undo()
    (tmp_path / "killed.h5").unlink()

    with pytest.raises(LayoutVersionError, match=r"killed\.h5\.journal has layout_version 3, .* upgrade robotd"):
        read_episode(killed)


def test_file_that_is_not_hdf5_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an episode" * 100)

    with pytest.raises(ValueError, match="garbage.h5 cannot be opened"):
        read_episode(path)


CHILD_APPENDING = """
import os, sys
from robotd.episodes import EpisodeWriter
from tests.test_episodes import ATTRS, SPEC, step_for
writer = EpisodeWriter(sys.argv[1], SPEC, ATTRS)
os.write(1, b"ready\\n")
while True:
    writer.append(step_for(writer.n_steps))
    os.write(1, b"%d\\n" % writer.n_steps)
"""

CHILD_CLOSING_EPISODES = """
import os, sys
from robotd.episodes import EpisodeWriter
from tests.test_episodes import ATTRS, SPEC, step_for
os.write(1, b"ready\\n")
episode = 0
while True:
    writer = EpisodeWriter(os.path.join(sys.argv[1], "ep%d.h5" % episode), SPEC, ATTRS)
    writer.append(step_for(0))
    writer.append(step_for(1))
    writer.close(stats={"return": 1.0}, flags=["done"])
    os.write(1, b"closed %d\\n" % episode)
    episode += 1
"""


def kill_at_random_moments(script: str, targets: list[Path], seed: int, max_delay_s: float) -> list[list[str]]:
    """Runs one child per target, SIGKILLs each at a random moment after it is ready, returns each one's report lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE)
        for target in targets
    ]
    for child in children:
        assert child.stdout.readline() == b"ready\n"
    rng = random.Random(seed)
    started = time.monotonic()
    for delay_s, child in sorted((rng.uniform(0, max_delay_s), child) for child in children):
        time.sleep(max(0.0, started + delay_s - time.monotonic()))
        child.send_signal(signal.SIGKILL)
    reports = []
    for child in children:
        output, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        reports.append(output.decode().split())
    return reports


def test_writer_killed_mid_episode_loses_no_step_whose_append_returned(tmp_path):
    paths = [tmp_path / f"ep{trial}.h5" for trial in range(5)]

    reports = kill_at_random_moments(CHILD_APPENDING, paths, seed=1, max_delay_s=0.4)

    for path, report in zip(paths, reports):
        last_reported = int(report[-1]) if report else 0
        episode = read_episode(path)
        n_steps = len(episode.steps["index"])
        # The step being written when the kill came may or may not have made it.
        assert last_reported <= n_steps <= last_reported + 1, path
        assert_steps_are_the_first(episode.steps, n_steps)
        assert count_steps(path) == n_steps
        assert episode.complete is False


def test_writer_killed_while_opening_or_closing_episodes_leaves_every_episode_readable(tmp_path):
    folders = [tmp_path / f"trial{trial}" for trial in range(3)]
    for folder in folders:
        folder.mkdir()

    reports = kill_at_random_moments(CHILD_CLOSING_EPISODES, folders, seed=2, max_delay_s=0.3)

    for folder, report in zip(folders, reports):
        n_reported_closed = len(report) // 2
        for path in sorted(folder.glob("*.h5")):
            episode = read_episode(path)
            episode_number = int(path.stem.removeprefix("ep"))
            if episode_number < n_reported_closed:
                assert episode.complete, path
            if episode.complete:
                assert (episode.stats, episode.attrs["flags"]) == ({"return": 1.0}, ["done"])
                assert_steps_are_the_first(episode.steps, 2)
            else:
                assert_steps_are_the_first(episode.steps, len(episode.steps["index"]))
        assert len(list(folder.glob("*.h5"))) >= n_reported_closed
