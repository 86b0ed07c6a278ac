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

from tools import inspect
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
        assert row["success"] == episode.stats["success"] == bool(episode.steps["is_success"][-1])
    # The session's summary.json counts the same successes (every episode here hit the time limit).
    assert summary["finished_episodes"] == 3 == summary["first20"]["episodes"] == summary["last20"]["episodes"]
    assert summary["episodes_succeeded"] == sum(row["success"] for row in rows)
    assert summary["last20"]["return_mean"] == pytest.approx(np.mean([row["return"] for row in rows]), abs=1e-3)
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


# ---- success and the learning curve, on a hand-made session (no processes) ---------------------------------------

def _hand_made_episode(episodes: Path, episode_id: int, rewards, *, success_last: bool, versions, flags=("time_limit",),
                       close: bool = True) -> None:
    spec = {"action": ((1,), "float32"), "reward": ((), "float32"), "is_first": ((), "bool"), "is_last": ((), "bool"),
            "is_terminal": ((), "bool"), "is_success": ((), "bool"), "timing/t_tick_ns": ((), "int64"),
            "timing/stream_step": ((), "int64"), "timing/policy_version": ((), "int64"), "timing/late": ((), "bool")}
    attrs = {"session": "s", "actor_id": "actor0", "episode_id": episode_id, "robot": "mock_arm", "task": "t",
             "control_rate_hz": 25.0, "started_at": f"2024-01-01T00:{episode_id // 60:02d}:{episode_id % 60:02d}+00:00"}
    writer = EpisodeWriter(episodes / f"actor0-{episode_id:06d}.h5", spec, attrs)
    for t, (reward, version) in enumerate(zip(rewards, versions)):
        last = t == len(rewards) - 1
        writer.append({"action": [0.0], "reward": reward, "is_first": t == 0, "is_last": last and close,
                       "is_terminal": False, "is_success": last and success_last, "timing/t_tick_ns": t * 40_000_000,
                       "timing/stream_step": 10 * episode_id + t, "timing/policy_version": version,
                       "timing/late": False})
    if close:
        writer.close(stats={}, flags=list(flags))


def _session_with_successes(root: Path, *, policy_from_step: int | None = 23) -> Path:
    """12 finished episodes of 10 steps (episode i returns i and succeeds when i is odd), the policy taking over
    at session step policy_from_step, then one episode cut off by the end of the session."""
    episodes = root / "episodes"
    episodes.mkdir(parents=True)
    for i in range(12):
        versions = [int(policy_from_step is not None and 10 * i + t >= policy_from_step) for t in range(10)]
        _hand_made_episode(episodes, i, [0.0] * 9 + [float(i)], success_last=i % 2 == 1, versions=versions)
    _hand_made_episode(episodes, 12, [0.0, 50.0], success_last=True, versions=[int(policy_from_step is not None)] * 2,
                       flags=())
    return root


def test_the_table_has_a_success_column_and_the_summary_a_success_rate(tmp_path):
    logdir = _session_with_successes(tmp_path / "s")
    rows = inspect.episode_table(logdir)
    assert [row["success"] for row in rows[:4]] == [False, True, False, True]
    assert [row["finished"] for row in rows] == [True] * 12 + [False]
    lines = inspect.format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["episode", "steps", "return", "success"]
    assert lines[1].split()[3] == "no" and lines[2].split()[3] == "yes" and lines[13].split()[3] == "-"
    figures = inspect.summarise(rows)
    assert (figures["finished"], figures["succeeded"], figures["success_rate"]) == (12, 6, 0.5)
    assert "6 of 12 finished episodes succeeded (50%)" in inspect.summary_line(figures)


def test_the_learning_curve_has_rolling_return_and_success_and_the_end_of_the_prefill(tmp_path):
    scan = inspect.scan_session(_session_with_successes(tmp_path / "s"))
    curve = inspect.learning_curve(scan)
    assert list(curve["end_step"]) == [10 * (i + 1) for i in range(12)] + [122]
    assert list(curve["finished_end_step"]) == [10 * (i + 1) for i in range(12)]
    # Rolling over the last 10 finished episodes: after 12 episodes, episodes 2..11.
    assert curve["return_mean"][-1] == pytest.approx(np.mean(np.arange(2, 12)))
    assert curve["return_mean"][0] == 0.0 and curve["return_mean"][1] == pytest.approx(0.5)
    assert curve["success_rate"][-1] == pytest.approx(0.5) and curve["success_rate"][1] == pytest.approx(0.5)
    assert (curve["prefill_end"], curve["prefill_source"]) == (23, "first step of the policy")


def test_without_policy_steps_the_prefill_end_comes_from_the_config(tmp_path):
    from robotd import config
    logdir = _session_with_successes(tmp_path / "s", policy_from_step=None)
    assert inspect.learning_curve(inspect.scan_session(logdir))["prefill_end"] is None      # no config.yaml
    config.save(config.load(REPO_ROOT / "configs" / "mock_arm.yaml", ["actor.prefill_steps=70"]), logdir / "config.yaml")
    curve = inspect.learning_curve(inspect.scan_session(logdir))
    assert curve["prefill_end"] == 70 and "actor.prefill_steps" in curve["prefill_source"]


def test_the_page_and_the_plot_show_the_success_rate(tmp_path):
    logdir = _session_with_successes(tmp_path / "s")
    (logdir / "summary.json").write_text(json.dumps({
        "episodes": 13, "finished_episodes": 12, "episodes_succeeded": 6, "success_rate": 0.5,
        "first20": {"episodes": 12, "return_mean": 5.5, "success_rate": 0.5},
        "last20": {"episodes": 12, "return_mean": 5.5, "success_rate": 0.5}}))
    index = inspect.write_report(logdir, tmp_path / "out", episodes=0, model=False)
    page = index.read_text()
    assert "6 of 12 finished episodes succeeded (50%)" in page
    assert "50% of the finished episodes" in page and "12 episodes, return mean 5.50, success 50%" in page
    assert "rolling success rate" in page and "<th>success</th>" in page
    with Image.open(tmp_path / "out" / "plots" / "learning_curve.png") as image:
        assert image.size[1] > image.size[0]          # four panels stacked
