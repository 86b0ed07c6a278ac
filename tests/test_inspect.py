"""`robotd inspect`: the episode table, the report directory and its HTML page, on a real recorded session."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from learner import inspect
from robotd.episodes import EpisodeWriter, read_episode

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(recorded_session, tmp_path_factory):
    """The full report (open-loop video included) of the recorded session, written once outside it."""
    out_dir = tmp_path_factory.mktemp("inspect") / "report"
    started = time.monotonic()
    index = inspect.write_report(recorded_session, out_dir, episodes=2, model=True, device="cpu")
    print(f"write_report on the recorded session: {time.monotonic() - started:.1f} s")
    return index


def _gif_frames_and_duration(path: Path) -> tuple[int, int, tuple[int, int]]:
    with Image.open(path) as image:
        total = 0
        for frame in range(image.n_frames):
            image.seek(frame)
            total += image.info["duration"]
        return image.n_frames, total, image.size


def _references(index: Path) -> list[str]:
    return re.findall(r'src="([^"]+)"', index.read_text())


def test_table_matches_episode_files_and_summary(recorded_session):
    rows = inspect.episode_table(recorded_session)
    summary = json.loads((recorded_session / "summary.json").read_text())
    files = sorted((recorded_session / "episodes").glob("*.h5"))
    assert len(rows) == 3 == len(files)
    assert all(row["error"] is None for row in rows)
    assert sum(row["length"] for row in rows) == summary["logged_steps"]
    by_file = {row["file"]: row for row in rows}
    for path in files:
        episode = read_episode(path)
        row = by_file[path.name]
        assert row["length"] == len(episode.steps["reward"])
        assert row["return"] == pytest.approx(float(np.sum(episode.steps["reward"], dtype=np.float64)), abs=1e-6)
        assert row["return"] == pytest.approx(episode.stats["return"], abs=1e-3)
        assert row["late_steps"] == int(np.sum(episode.steps["timing/late"]))
        assert set(row["stale"]) == {"arm", "camera"}
        assert set(row["dropped_frames"]) == {"camera"}  # the arm has no frame numbers
        versions = episode.steps["timing/policy_version"]
        assert (row["policy_version_min"], row["policy_version_max"]) == (versions.min(), versions.max())
        assert row["flags"] == list(episode.attrs["flags"])
        assert row["target_period_ms"] == pytest.approx(1000.0 / episode.attrs["control_rate_hz"])
    text = inspect.format_table(rows)
    assert len(text.splitlines()) == 4
    line = inspect.summary_line(inspect.summarise(rows, summary))
    assert f"{summary['logged_steps']} steps" in line and "3 episodes (0 unreadable" in line


def test_report_files(report, recorded_session):
    out_dir = report.parent
    for name in inspect.PLOTS:
        path = out_dir / "plots" / f"{name}.png"
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            image.load()
            assert image.size[0] > 200 and image.size[1] > 200
            assert np.asarray(image.convert("L")).std() > 1.0, f"{name} plot is blank"
    rows = {row["file"]: row for row in inspect.episode_table(recorded_session)}
    last_two = sorted(rows)[-2:]
    for file in last_two:
        gif = out_dir / "videos" / f"{Path(file).stem}-image.gif"
        frames, duration_ms, size = _gif_frames_and_duration(gif)
        length = rows[file]["length"]
        # write_gif merges identical consecutive frames into one longer frame; the playing time keeps every step.
        assert 1 < frames <= length
        assert duration_ms == length * int(1000 / min(inspect.MAX_GIF_FPS, 1000 / rows[file]["target_period_ms"]))
        assert size == (64, 64)
    assert not (out_dir / "videos" / f"{Path(sorted(rows)[0]).stem}-image.gif").exists()
    frames, _, size = _gif_frames_and_duration(out_dir / "videos" / "openloop-image.gif")
    assert frames > 1 and size == (3 * 64, 64)  # recorded | model | difference


def test_index_references_every_file(report):
    out_dir = report.parent
    html_text = report.read_text()
    references = _references(report)
    written = {path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file()} - {"index.html"}
    assert set(references) == written
    for reference in references:
        assert not reference.startswith(("/", "http:", "https:", "file:"))
        assert (out_dir / reference).is_file()
    assert "<script" not in html_text and "http://" not in html_text and "https://" not in html_text
    assert "openloop-image.gif" in html_text and "No open-loop video" not in html_text


def test_page_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed, so the page cannot be rendered")
    base = ["timeout", "60", str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=70)
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10.0, "the rendered page is blank"
    dom = subprocess.run(base + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=70).stdout
    assert "<table>" in dom
    for episode in ("actor0/0", "actor0/1", "actor0/2"):
        assert f"<td>{episode}</td>" in dom


FRAMES = [0, 1, 2, 5, 6]


def _journal_only_episode(directory: Path, name: str, n_steps: int) -> None:
    """A journal as a writer killed after n_steps leaves it, with no HDF5 file beside it."""
    spec = {"obs/image": ((8, 8, 3), "uint8"), "action": ((2,), "float32"), "reward": ((), "float32"),
            "is_first": ((), "bool"), "timing/t_tick_ns": ((), "int64"), "timing/policy_version": ((), "int64"),
            "timing/late": ((), "bool"), "timing/cam/age_ns": ((), "int64"), "timing/cam/stale": ((), "bool"),
            "timing/cam/frame_number": ((), "int64")}
    attrs = {"session": "s", "actor_id": "actor9", "episode_id": 0, "robot": "mock_arm", "task": "t",
             "control_rate_hz": 25.0}
    scratch = directory / "scratch"
    writer = EpisodeWriter(scratch / name, spec, attrs)
    for step in range(n_steps):
        writer.append({"obs/image": np.full((8, 8, 3), step, np.uint8), "action": np.zeros(2, np.float32),
                       "reward": 1.0, "is_first": step == 0, "timing/t_tick_ns": step * 40_000_000,
                       "timing/policy_version": 2, "timing/late": False, "timing/cam/age_ns": 1000,
                       "timing/cam/stale": False, "timing/cam/frame_number": FRAMES[step]})
    shutil.copyfile(scratch / f"{name}.journal", directory / "episodes" / f"{name}.journal")
    writer.close()
    shutil.rmtree(scratch)


def test_damaged_and_open_episodes_are_listed(recorded_session, tmp_path, capsys):
    logdir = tmp_path / "session"
    shutil.copytree(recorded_session, logdir, ignore=shutil.ignore_patterns("inspect"))
    (logdir / "episodes" / "actor0-000099.h5").write_bytes(b"\x00garbage, not HDF5" * 64)
    _journal_only_episode(logdir, "actor9-000000.h5", 5)
    with h5py.File(logdir / "episodes" / "actor0-000001.h5", "r+") as file:
        file.attrs["flags"] = ["time_limit", "quality:period_p99 <b>bold</b> & co"]
    assert inspect.main([str(logdir), "--no-model", "--episodes", "1"]) == 0
    printed = capsys.readouterr().out
    assert "actor0-000099.h5  UNREADABLE: ValueError:" in printed
    assert "[open: from journal]" in printed
    rows = {row["file"]: row for row in inspect.episode_table(logdir)}
    assert len(rows) == 5
    assert rows["actor0-000099.h5"]["error"] and "actor0-000099.h5" in rows["actor0-000099.h5"]["error"]
    opened = rows["actor9-000000.h5"]
    assert (opened["length"], opened["complete"], opened["return"]) == (5, False, 5.0)
    assert opened["dropped_frames"] == {"cam": 2}  # frames 3 and 4 were never seen
    index = logdir / "inspect" / "index.html"
    page = index.read_text()
    assert "unreadable: ValueError:" in page and "actor9/0" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold" not in page
    assert "Skipped (--no-model)" in page
    for reference in _references(index):
        assert (index.parent / reference).is_file()
    # --episodes 1: only the last readable episode with images (the journal one) gets a camera video.
    assert sorted(path.name for path in (logdir / "inspect" / "videos").glob("actor*.gif")) == ["actor9-000000-image.gif"]


def test_missing_checkpoint_is_said_on_the_page(recorded_session, tmp_path):
    logdir = tmp_path / "session"
    shutil.copytree(recorded_session, logdir, ignore=shutil.ignore_patterns("inspect", "*.pt"))
    page = inspect.write_report(logdir, tmp_path / "out", episodes=0).read_text()
    assert "No open-loop video: no checkpoint at" in page
    assert "No camera video" in page


def test_bad_logdir_is_one_line_and_exit_2(tmp_path, capsys):
    assert inspect.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(tmp_path) in error
    missing = tmp_path / "no-such-session"
    result = subprocess.run([sys.executable, "-m", "robotd", "inspect", str(missing)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr and "session directory" in result.stderr
    assert result.stdout == ""
