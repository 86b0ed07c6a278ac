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
