"""The live status line of `robotd train`."""
from robotd.status import format_line


def test_the_status_line_shows_each_process_and_the_achieved_train_ratio():
    latest = {
        "daemon": {"rate_hz": 25.0, "error_p99_ms": 0.2, "late_steps": 1},
        "actor": {"env_steps": 900, "episodes": 9, "last_return": -1.5, "policy_version": 7, "policy_age_s": 2.0,
                  "unacked_chunks": 0},
        "learner": {"replay_steps": 900, "updates": 40, "updates_per_s": 2.5, "published_version": 8,
                    "train_ratio": 63.6},
    }
    line = format_line(latest)
    assert line.startswith("ctrl 25.0Hz")
    assert "steps 900 eps 9 ret -1.50 policy v7 age 2s" in line
    assert "upd 40 (2.5/s) ratio 64 pub v8" in line


def test_no_ratio_is_shown_before_training_and_nothing_before_any_process_reports():
    line = format_line({"learner": {"replay_steps": 10, "updates": 0, "updates_per_s": 0.0, "published_version": 0,
                                    "train_ratio": 0.0}})
    assert "ratio" not in line and "upd 0 (0.0/s) pub v0" in line
    assert format_line({}) == "waiting for processes..."
