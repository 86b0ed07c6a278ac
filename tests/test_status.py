"""The live status line of `robotd train`, and the checks on what the status channel receives."""
import json
import logging
import threading
import time

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from robotd import wire
from robotd.netutil import AddressError, free_tcp_ports
from robotd.orchestrator import format_summary, summarize
from robotd.status import LINE_WIDTH, MAX_MESSAGE_BYTES, StatusCollector, format_line, status_problem

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


# ---- malformed status messages through a real ZeroMQ socket ---------------------------------------------------------

def raw_status(meta_text: str, kind: int = wire.Kind.STATUS) -> list[bytes]:
    """A status message with the meta frame exactly as given (JSON the encoder would refuse to write)."""
    meta = meta_text.encode()
    return [wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION, kind, len(meta), 0), meta]


def status_frames(meta: dict, arrays=None) -> list:
    return wire.encode(wire.Kind.STATUS, meta, arrays)


GOOD = {"daemon": {"rate_hz": 25.0, "error_p99_ms": 0.2, "late_steps": 1, "ticks": 100, "stale_readings": 0,
                   "actor_connected": True},
        "actor": {"env_steps": 900, "episodes": 9, "finished_episodes": 8, "return_mean20": -2.25,
                  "success_rate": 0.375, "policy_version": 7, "policy_age_s": -1.0, "last_return": -1.5,
                  "last_success": 1, "unacked_chunks": 0, "learner_connected": True},
        "learner": {"replay_steps": 900, "updates": 40, "updates_per_s": 2.5, "published_version": 8,
                    "train_ratio": 63.6}}

# (frames, the sender it is counted under)
MALFORMED = [
    # A counter that is not a number: what once ended robotd train with "Unknown format code 'f'".
    (status_frames({"process": "actor", "counters": {"success_rate": "all"}}), "actor"),
    (status_frames({"process": "daemon", "counters": {"rate_hz": "fast"}}), "daemon"),
    (status_frames({"process": "learner", "counters": {"updates_per_s": "quick"}}), "learner"),
    (raw_status('{"process": "actor", "counters": {"return_mean20": NaN}}'), "actor"),
    (raw_status('{"process": "daemon", "counters": {"error_p99_ms": Infinity}}'), "daemon"),
    (raw_status('{"process": "actor", "counters": {"env_steps": 1' + "0" * 400 + '}}'), "actor"),
    (raw_status('{"process": "actor", "counters": {"env_steps": 1' + "0" * 5000 + '}}'), "unknown"),
    (status_frames({"process": "actor", "counters": {"env_steps": True}}), "actor"),
    (status_frames({"process": "actor", "counters": {"episodes": -1}}), "actor"),
    (status_frames({"process": "actor", "counters": {"env_steps": 1.5}}), "actor"),
    (status_frames({"process": "actor", "counters": {"success_rate": 1.5}}), "actor"),
    (status_frames({"process": "learner", "counters": {"replay_steps": {"nested": 1}}}), "learner"),
    (status_frames({"process": "learner", "counters": {"replay_steps": [900]}}), "learner"),
    (status_frames({"process": "actor", "counters": {"1": 5}}), "actor"),                   # an unknown counter
    (status_frames({"process": "actor", "counters": {"episodes": 9, "finished_episodes": 10}}), "actor"),
    (status_frames({"process": "actor", "counters": {"env_steps": 3, "episodes": 9}}), "actor"),
    (status_frames({"process": "daemon", "counters": [1, 2]}), "daemon"),
    (status_frames({"process": "daemon"}), "daemon"),                                     # no counters
    (status_frames({"process": "daemon", "counters": {}, "extra": 1}), "daemon"),
    (status_frames({"process": "daemon", "counters": {}}, {"x": np.zeros(2)}), "daemon"),
    (raw_status('{"counters": {"env_steps": 1}}'), "unknown"),                              # no process
    (raw_status('{"process": 7, "counters": {}}'), "unknown"),
    (status_frames({"process": "actor0", "counters": {}}), "unknown"),
    (status_frames({"process": "x" * 10_000, "counters": {}}), "unknown"),
    (raw_status('["process", "actor"]'), "unknown"),
    (raw_status('{"process": "actor", "counters": {', ), "unknown"),                        # not JSON
    (raw_status('{"process": "actor", "counters": {}}', kind=wire.Kind.OBS), "unknown"),
    ([b"hello"], "unknown"),
    (status_frames({"process": "actor", "counters": {}, "pad": "x" * MAX_MESSAGE_BYTES}), "unknown"),
]


def test_malformed_status_messages_on_a_real_socket_are_dropped_counted_and_logged_once_per_sender(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="robotd.status")
    address = f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}"
    context = zmq.Context()
    collector = StatusCollector(context, address)
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.connect(address)
    try:
        # PUB drops what it sends before the connection is up: a good message first, until it arrives.
        deadline = time.monotonic() + 10
        while "daemon" not in collector.latest and time.monotonic() < deadline:
            publisher.send_multipart(status_frames({"process": "daemon", "counters": GOOD["daemon"]}))
            collector.poll(50)
        assert collector.latest == {"daemon": GOOD["daemon"]}
        for _ in range(2):                               # twice: counted twice, logged once
            for frames, _sender in MALFORMED:
                publisher.send_multipart(frames)
        for process in ("actor", "learner"):
            publisher.send_multipart(status_frames({"process": process, "counters": GOOD[process]}))
        deadline = time.monotonic() + 10
        while "learner" not in collector.latest and time.monotonic() < deadline:
            collector.poll(50)
    finally:
        publisher.close(0)
        collector.close()
        context.term()
    expected: dict[str, int] = {}
    for _frames, sender in MALFORMED:
        expected[sender] = expected.get(sender, 0) + 2
    assert collector.malformed == expected
    # Only the well-formed counters are kept, as copies.
    assert collector.latest == GOOD
    warnings = [record.getMessage() for record in caplog.records if record.name == "robotd.status"]
    assert len(warnings) == len(expected), warnings
    assert all(len(text) < 400 for text in warnings)
    assert any("'success_rate' is 'all'" in text for text in warnings)
    line = format_line(collector.latest)
    assert line.startswith("25.0Hz late 1") and "st 900 ep 9 ret -2.25 ok 38% v7" in line
    # summary.json counts them per sender; the actor's checked counters stand in for its missing stats.
    (tmp_path / "episodes").mkdir()
    summary = summarize(tmp_path, reason="r", wall_s=1.0, exit_codes={}, status=collector.latest,
                        malformed_status=collector.malformed)
    assert summary["malformed_status"] == expected and summary["env_steps"] == 900
    json.dumps(summary, allow_nan=False)
    total = sum(expected.values())
    assert f"status channel: {total} malformed messages dropped (actor {expected['actor']}," in format_summary(
        summary, tmp_path)


@pytest.mark.parametrize("frames, sender", MALFORMED)
def test_each_malformed_status_message_is_refused_by_the_collector(frames, sender):
    context = zmq.Context()
    collector = StatusCollector(context, f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}")
    try:
        assert collector.take(frames) is False
        assert collector.latest == {} and collector.malformed == {sender: 1}
    finally:
        collector.close()
        context.term()


def test_well_formed_counters_of_every_process_pass_the_check():
    for process, counters in GOOD.items():
        assert status_problem({"process": process, "counters": counters}) == (process, None)
    assert status_problem({"process": "learner", "counters": {}}) == ("learner", None)   # every counter optional
    assert status_problem("text") == ("unknown", "meta is a str, expected an object")


def test_huge_and_odd_values_never_break_the_status_line():
    line = format_line({"daemon": {"rate_hz": 10**400, "late_steps": -(10**30)},
                        "actor": {"env_steps": 1e300, "episodes": float("inf"), "success_rate": 10**400,
                                  "policy_age_s": 10**400, "unacked_chunks": 10**400, "finished_episodes": 10**400},
                        "learner": {"train_ratio": 10**400, "replay_steps": float("-inf")}})
    assert len(line) <= LINE_WIDTH and "?" in line
    assert format_line(None) == format_line([]) == "waiting for processes..."


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["daemon", "actor", "learner", "other"]),
                       st.dictionaries(st.sampled_from(sorted({k for c in GOOD.values() for k in c}) + ["x"]), _json)
                       | _json))
def test_any_counters_give_a_line_within_the_width(latest):
    line = format_line(latest)
    assert isinstance(line, str) and len(line) <= LINE_WIDTH
    for process, counters in latest.items():
        sender, problem = status_problem({"process": process, "counters": counters})
        assert sender in ("daemon", "actor", "learner", "unknown") and (problem is None or isinstance(problem, str))
        if problem is None:
            json.dumps(counters, allow_nan=False)            # what passes is plain, finite JSON


def test_a_fleets_robots_publish_under_their_names_and_others_are_refused():
    from robotd.status import status_problem
    assert status_problem({"process": "actor.robot1", "counters": {"env_steps": 3}}) == ("actor.robot1", None)
    assert status_problem({"process": "daemon.arm-2", "counters": {"ticks": 3}}) == ("daemon.arm-2", None)
    for name in ("learner.robot1", "actor.", "actor.two words", "actor.robot1.x", "robot1.actor"):
        sender, problem = status_problem({"process": name, "counters": {}})
        assert sender == "unknown" and problem is not None, name
    # a robot's counters are checked against its kind's names
    assert status_problem({"process": "daemon.robot0", "counters": {"env_steps": 3}})[1] is not None


def test_the_status_line_of_a_fleet_sums_its_robots():
    from robotd.status import format_line
    latest = {"daemon.robot0": {"rate_hz": 50.0, "late_steps": 2}, "daemon.robot1": {"rate_hz": 48.5, "late_steps": 1},
              "actor.robot0": {"env_steps": 1200, "episodes": 6, "finished_episodes": 5, "return_mean20": -10.0,
                               "success_rate": 0.5, "policy_version": 7},
              "actor.robot1": {"env_steps": 800, "episodes": 4, "finished_episodes": 3, "return_mean20": -20.0,
                               "success_rate": 0.0, "policy_version": 6},
              "learner": {"replay_steps": 2000, "updates": 10, "updates_per_s": 2.5}}
    line = format_line(latest, width=200)
    assert line.startswith("2 robots 48.5Hz late 3 | st 2000 (1200/800) ep 10 ret -15.0 ok 25% v6 | rb 2000 "
                           "2.5u/s"), line
    assert "(1200/800)" not in format_line(latest, width=80)      # the last thing shown, where room is left


def test_a_collector_that_cannot_bind_says_so_in_one_line_and_leaves_no_socket_open():
    context = zmq.Context()
    holder = context.socket(zmq.PUB)
    address = f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}"
    holder.bind(address)
    with pytest.raises(AddressError, match=r"status collector \(network.status\): tcp://127.0.0.1:\d+ is already in use"):
        StatusCollector(context, address)
    holder.close(0)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (context.term(), done.set()), daemon=True)
    thread.start()
    assert done.wait(5.0), "context.term() waited on the collector's socket"


def test_robotd_trains_line_names_a_running_process_gone_silent_but_not_one_that_ended():
    from robotd.orchestrator import status_line
    context = zmq.Context()
    collector = StatusCollector(context, f"tcp://127.0.0.1:{free_tcp_ports(1)[0]}")
    try:
        for name, counters in (("daemon.robot0", {"rate_hz": 50.0, "late_steps": 0}),
                               ("actor.robot0", {"env_steps": 10, "episodes": 0}),
                               ("actor.robot1", {"env_steps": 20, "episodes": 0})):
            assert collector.take(wire.encode(wire.Kind.STATUS, {"process": name, "counters": counters}))
        now = time.monotonic()
        collector.received_at["actor.robot1"] = now - 12.0       # last heard 12 s ago
        collector.received_at["actor.robot0"] = now - 30.0
        line = status_line(collector, {"daemon.robot0", "actor.robot1", "learner"}, now, 200)
        assert "1 silent (actor.robot1 12s)" in line            # actor.robot0 ended: robotd train says how
        assert "silent" not in status_line(collector, {"daemon.robot0"}, now, 200)
    finally:
        collector.close()
        context.term()
