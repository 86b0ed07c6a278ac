"""The live status line of `robotd train`."""
import pytest

from robotd.status import LINE_WIDTH, format_line

SMALL = {
    "daemon": {"rate_hz": 25.0, "error_p99_ms": 0.2, "late_steps": 1},
    "actor": {"env_steps": 900, "episodes": 9, "finished_episodes": 8, "last_return": -1.5, "return_mean20": -2.25,
              "success_rate": 0.375, "last_success": 1, "policy_version": 7, "policy_age_s": 2.0, "unacked_chunks": 0},
    "learner": {"replay_steps": 900, "updates": 40, "updates_per_s": 2.5, "published_version": 8, "train_ratio": 63.6},
}

LARGE = {
    "daemon": {"rate_hz": 500.0, "error_p99_ms": 12.345, "late_steps": 12_345},
    "actor": {"env_steps": 1_000_000, "episodes": 10_000, "finished_episodes": 9_999, "last_return": -1234.56,
              "return_mean20": -1234.56, "success_rate": 1.0, "last_success": 1, "policy_version": 12_345,
              "policy_age_s": 12.0, "unacked_chunks": 1_234},
    "learner": {"replay_steps": 1_000_000, "updates": 2_000_000, "updates_per_s": 123.4, "published_version": 12_346,
                "train_ratio": 512.0},
}


def test_the_status_line_shows_each_process_with_the_rolling_return_and_success_rate():
    line = format_line(SMALL)
    assert line.startswith("25.0Hz late 1")
    assert "st 900 ep 9 ret -2.25 ok 38% v7" in line
    assert "rb 900 2.5u/s" in line
    assert len(line) <= LINE_WIDTH
    # Where room is left, the optional figures follow, the period error p99 first.
    assert "p99 0.20ms" in line
    assert format_line({"actor": SMALL["actor"]}) == "st 900 ep 9 ret -2.25 ok 38% v7 age 2s"
    assert format_line({"learner": SMALL["learner"]}) == "rb 900 2.5u/s ratio 64 pub v8"


@pytest.mark.parametrize("present", [("daemon", "actor", "learner"), ("actor",), ("daemon", "learner")])
def test_the_whole_line_fits_in_80_columns_with_large_counters(present):
    line = format_line({name: LARGE[name] for name in present})
    assert len(line) <= 80, line
    if "actor" in present:
        # The key figures survive: env steps, episodes, rolling return, success %, policy version.
        assert "st 1.00M ep 10.0k ret -1235 ok 100% v12.3k" in line
    if "daemon" in present:
        assert line.startswith("500Hz late 12.3k")
    if "learner" in present:
        assert "rb 1.00M 123u/s" in line


def test_realistic_large_figures_keep_the_group_separators():
    line = format_line({**LARGE, "daemon": {"rate_hz": 25.0, "error_p99_ms": 0.3, "late_steps": 1234},
                        "actor": {**LARGE["actor"], "policy_version": 1234}})
    assert line == "25.0Hz late 1234 | st 1.00M ep 10.0k ret -1235 ok 100% v1234 | rb 1.00M 123u/s"


def test_no_episode_finished_yet_shows_dashes_and_no_ratio_before_training():
    line = format_line({"actor": {**SMALL["actor"], "finished_episodes": 0, "episodes": 1},
                        "learner": {"replay_steps": 10, "updates": 0, "updates_per_s": 0.0, "published_version": 0,
                                    "train_ratio": 0.0}})
    assert "ret - ok -" in line
    assert "ratio" not in line and "rb 10 0.0u/s pub v0" in line
    assert format_line({}) == "waiting for processes..."


def test_a_counter_that_is_not_a_number_shows_a_question_mark():
    latest = {"daemon": {"rate_hz": "fast", "error_p99_ms": None, "late_steps": [1]},
              "actor": {"env_steps": "x", "episodes": None, "finished_episodes": "many", "return_mean20": {},
                        "success_rate": "all", "policy_version": float("nan"), "policy_age_s": "old",
                        "unacked_chunks": "some"},
              "learner": {"replay_steps": object(), "updates_per_s": "quick", "published_version": None,
                          "train_ratio": "high"},
              "other": "not a dict"}
    line = format_line(latest)
    assert line.startswith("?Hz late ?")
    assert "st ? ep ? ret ? ok ? v?" in line and "rb ? ?u/s" in line
    assert len(line) <= LINE_WIDTH
    assert format_line({"actor": "garbage"}) == "waiting for processes..."
