"""Specification of metrics logging: JSON lines that survive a killed writer, and TensorBoard events."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from robotd.metrics import MetricsWriter, read_metrics


def test_each_write_is_one_json_line_read_back_in_order(tmp_path):
    with MetricsWriter(tmp_path, process="learner") as writer:
        writer.write(1, {"loss": 0.5}, wall_time=100.0)
        writer.write(2, {"loss": 0.25, "lr": 1e-4}, wall_time=101.0)

    assert read_metrics(tmp_path / "metrics" / "learner.jsonl") == [
        {"process": "learner", "step": 1, "time": 100.0, "loss": 0.5},
        {"process": "learner", "step": 2, "time": 101.0, "loss": 0.25, "lr": 1e-4},
    ]


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path):
    writer = MetricsWriter(tmp_path, process="actor")
    writer.write(7, {"episode/return": 3.0})

    assert read_metrics(writer.path)[0]["episode/return"] == 3.0
    writer.close()


def test_time_defaults_to_now(tmp_path, monkeypatch):
    monkeypatch.setattr("robotd.metrics.time.time", lambda: 1234.5)
    with MetricsWriter(tmp_path, process="actor") as writer:
        writer.write(0, {"x": 1.0})

    assert read_metrics(writer.path)[0]["time"] == 1234.5


def test_nan_and_infinities_are_written_as_null(tmp_path):
    with MetricsWriter(tmp_path, process="learner") as writer:
        writer.write(1, {"nan": float("nan"), "inf": float("inf"), "ok": 1.0})

    line = (tmp_path / "metrics" / "learner.jsonl").read_text()
    assert json.loads(line) == {"process": "learner", "step": 1, "time": json.loads(line)["time"], "nan": None, "inf": None, "ok": 1.0}


def test_each_process_writes_its_own_file(tmp_path):
    with MetricsWriter(tmp_path, process="actor") as actor, MetricsWriter(tmp_path, process="learner") as learner:
        actor.write(1, {"a": 1.0}, wall_time=10.0)
        learner.write(1, {"b": 2.0}, wall_time=11.0)

    assert sorted(path.name for path in (tmp_path / "metrics").iterdir()) == ["actor.jsonl", "learner.jsonl"]
    assert sorted(path.name for path in (tmp_path / "tb").iterdir()) == ["actor", "learner"]


def test_reading_a_logdir_merges_every_process_by_time(tmp_path):
    with MetricsWriter(tmp_path, process="actor") as actor, MetricsWriter(tmp_path, process="learner") as learner:
        actor.write(1, {"a": 1.0}, wall_time=12.0)
        learner.write(1, {"b": 2.0}, wall_time=11.0)

    assert [record["process"] for record in read_metrics(tmp_path)] == ["learner", "actor"]


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with MetricsWriter(tmp_path, process="learner") as writer:
        writer.write(1, {"loss/model": 0.5}, wall_time=100.0)
        writer.write(2, {"loss/model": 0.25}, wall_time=101.0)

    events = EventAccumulator(str(tmp_path / "tb" / "learner"))
    events.Reload()
    scalars = events.Scalars("loss/model")
    assert [(event.step, event.value, event.wall_time) for event in scalars] == [(1, 0.5, 100.0), (2, 0.25, 101.0)]


def test_truncated_last_line_of_a_killed_writer_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"process": "actor", "step": 1, "time": 1.0, "x": 1.0}\n{"process": "actor", "st')

    assert read_metrics(path) == [{"process": "actor", "step": 1, "time": 1.0, "x": 1.0}]


def test_new_writer_drops_the_truncated_line_before_appending(tmp_path):
    path = tmp_path / "metrics" / "actor.jsonl"
    path.parent.mkdir()
    path.write_text('{"process": "actor", "step": 1, "time": 1.0}\n{"process": "actor", "st')

    with MetricsWriter(tmp_path, process="actor") as writer:
        writer.write(2, {}, wall_time=2.0)

    assert [record["step"] for record in read_metrics(path)] == [1, 2]


def test_damaged_line_before_the_last_raises_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')

    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not JSON"):
        read_metrics(path)


def test_metric_named_like_a_record_key_is_rejected(tmp_path):
    with MetricsWriter(tmp_path, process="actor") as writer:
        with pytest.raises(ValueError, match="'step'"):
            writer.write(1, {"step": 3.0})


def test_metric_that_is_not_a_number_is_rejected_naming_it(tmp_path):
    with MetricsWriter(tmp_path, process="actor") as writer:
        with pytest.raises(ValueError, match="'phase' = 'warmup'"):
            writer.write(1, {"phase": "warmup"})


def test_process_name_that_cannot_name_a_file_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'../actor'"):
        MetricsWriter(tmp_path, process="../actor")


# ---- the actor's per-episode scalars ------------------------------------------------------------------------------

def _drive_actor_episodes(tmp_path, episodes):
    """Runs an Actor's step recorder (steps completed, episodes closed) without daemon or learner, then the actor's
    status from it.

    ``episodes`` is a list of (rewards, success at the last step, ended by the time limit)."""
    from pathlib import Path
    from types import SimpleNamespace

    import numpy as np

    from actor.loop import Actor
    from actor.recorder import StepRecorder
    from robotd import config as config_module, steps

    root = Path(__file__).resolve().parents[1]
    config = config_module.load(root / "configs" / "mock_arm.yaml", ["task.episode_steps=3"])
    actor = Actor(config, logdir=str(tmp_path), actor_id="actor0")
    actor.metrics = MetricsWriter(tmp_path, process="actor")
    published, chunks = [], []
    actor.status = SimpleNamespace(due=lambda: True, publish=lambda counters, force=False: published.append(counters))
    actor.stream = SimpleNamespace(pending=0, accepted=SimpleNamespace(is_set=lambda: True))
    actor.recorder = StepRecorder(config, logdir=tmp_path, actor_id="actor0", stream_id="s0", task_name="t",
                                  step_spec=steps.step_spec({"x": ((1,), "float32")}, 1, []), devices=[],
                                  first_episode_id=0, emit=lambda *chunk: chunks.append(chunk),
                                  metrics=actor.metrics, counters=actor.counters)
    tick = 0
    for rewards, success, time_limit in episodes:
        for t, reward in enumerate(rewards):
            last = t == len(rewards) - 1
            actor.recorder.begin(tick=tick, t_tick_ns=tick * 40_000_000, devices={}, obs={"x": np.zeros(1, np.float32)},
                                 reward=reward, is_first=t == 0, is_last=last, terminal=False,
                                 success=last and success, policy_version=0, sent_action=np.zeros(1, np.float32),
                                 flags=["time_limit"] if last and time_limit else [])
            actor.recorder.complete(None, None, force_last=last)
            tick += 1
        actor._publish_status(force=True)
    actor.metrics.close()
    # One chunk per episode (3 steps < chunk_steps), numbered on the stream without gaps.
    assert [chunk[0] for chunk in chunks] == list(range(len(episodes)))
    assert [chunk[3] for chunk in chunks] == [sum(len(r) for r, _, _ in episodes[:i]) for i in range(len(episodes))]
    return actor, published


def test_the_actor_writes_each_episodes_return_success_length_and_rolling_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from robotd.episodes import read_episode

    # 22 episodes that hit the time limit (episode i returns i, succeeds when i % 3 == 0), then one cut short.
    played = [([0.0, 0.0, float(i)], i % 3 == 0, True) for i in range(22)] + [([0.0, 50.0], True, False)]
    actor, published = _drive_actor_episodes(tmp_path, played)
    records = [record for record in read_metrics(tmp_path / "metrics" / "actor.jsonl") if "episode/return" in record]
    assert len(records) == 23
    assert [record["episode/success"] for record in records[:4]] == [1.0, 0.0, 0.0, 1.0]
    assert [record["episode/length"] for record in records[:2]] == [3, 3] and records[-1]["episode/length"] == 2
    assert [record["step"] for record in records[:2]] == [3, 6]                   # against env steps
    assert records[0]["episode/return_mean20"] == 0.0 and records[0]["episode/success_rate20"] == 1.0
    assert records[1]["episode/return_mean20"] == 0.5 and records[1]["episode/success_rate20"] == 0.5
    # Over the last 20 finished episodes (2..21); the episode cut short counts in neither.
    expected_mean, expected_rate = sum(range(2, 22)) / 20, sum(i % 3 == 0 for i in range(2, 22)) / 20
    assert records[21]["episode/return_mean20"] == pytest.approx(expected_mean)
    assert records[21]["episode/success_rate20"] == pytest.approx(expected_rate)
    assert records[22]["episode/finished"] == 0.0 and records[22]["episode/success"] == 1.0
    assert records[22]["episode/return_mean20"] == pytest.approx(expected_mean)
    events = EventAccumulator(str(tmp_path / "tb" / "actor"))
    events.Reload()
    for tag in ("episode/return", "episode/success", "episode/length", "episode/success_rate20", "episode/return_mean20"):
        assert len(events.Scalars(tag)) == 23, tag
    # The status counters.
    last = published[-1]
    assert (last["episodes"], last["finished_episodes"], last["last_success"], last["last_return"]) == (23, 22, 1, 50.0)
    assert last["return_mean20"] == pytest.approx(expected_mean) and last["success_rate"] == pytest.approx(expected_rate)
    assert published[0]["success_rate"] == 1.0 and published[0]["last_success"] == 1
    # The episode files' stats hold the success.
    files = sorted((tmp_path / "episodes").glob("*.h5"))
    assert [read_episode(path).stats["success"] for path in files[:4]] == [True, False, False, True]


def test_with_no_success_ever_the_rolling_rate_is_zero(tmp_path):
    actor, published = _drive_actor_episodes(tmp_path, [([1.0, 2.0], False, True)] * 3)
    assert published[-1]["success_rate"] == 0.0 and published[-1]["return_mean20"] == 3.0
    assert actor.rolling() == (3.0, 0.0)
