"""Specification of the fixed-rate control clock, its statistics and real-time scheduling."""

import os

import pytest

from robotd.daemon.clock import FixedRateClock, PeriodStats, measure_jitter, try_realtime

MS = 1_000_000
START_NS = 5_000 * MS


class FakeTime:
    """A monotonic clock and sleep that advance only when told; sleeps can be made to oversleep."""

    def __init__(self, start_ns: int = START_NS, read_step_ns: int = 0) -> None:
        self.t_ns = start_ns
        self.read_step_ns = read_step_ns  # each read advances time, so busy-spins terminate
        self.oversleep_ns = 0  # added to the next sleep only
        self.sleeps_s: list[float] = []

    def now_ns(self) -> int:
        """Current fake time; advances by read_step_ns after each read."""
        t_ns = self.t_ns
        self.t_ns += self.read_step_ns
        return t_ns

    def sleep(self, seconds: float) -> None:
        """Advance exactly the requested time, plus any oversleep set for this call."""
        self.sleeps_s.append(seconds)
        self.t_ns += round(seconds * 1e9) + self.oversleep_ns
        self.oversleep_ns = 0

    def work(self, ms: float) -> None:
        """Let time pass as if the loop body took ``ms`` milliseconds."""
        self.t_ns += round(ms * MS)


def fake_clock(rate_hz: float = 50.0, **kwargs):
    """A FixedRateClock on fake time (no spin unless asked) and the FakeTime driving it."""
    fake = FakeTime(read_step_ns=kwargs.pop("read_step_ns", 0))
    clock = FixedRateClock(rate_hz, now_ns=fake.now_ns, sleep=fake.sleep, spin_s=kwargs.pop("spin_s", 0.0), **kwargs)
    return clock, fake


def test_ticks_fall_on_start_plus_k_periods():
    clock, _ = fake_clock(50.0)
    t0_ns = clock.start()
    assert t0_ns == START_NS
    assert [clock.wait_next() for _ in range(3)] == [(k, t0_ns + k * 20 * MS) for k in (1, 2, 3)]


def test_a_late_wake_does_not_shift_later_deadlines():
    clock, fake = fake_clock(50.0)
    t0_ns = clock.start()
    clock.wait_next()
    fake.oversleep_ns = 5 * MS
    assert clock.wait_next() == (2, t0_ns + 40 * MS)
    assert fake.t_ns == t0_ns + 45 * MS
    assert clock.wait_next() == (3, t0_ns + 60 * MS)
    assert fake.t_ns == t0_ns + 60 * MS


def test_period_error_is_wake_time_minus_deadline():
    clock, fake = fake_clock(50.0)
    clock.start()
    fake.oversleep_ns = 3 * MS
    clock.wait_next()
    assert clock.stats.summary()["period_error_ms"]["max"] == pytest.approx(3.0)


def test_a_tick_late_by_less_than_a_period_runs_at_once_without_sleeping():
    clock, fake = fake_clock(50.0)
    t0_ns = clock.start()
    clock.wait_next()
    fake.work(30)  # now 10 ms past tick 2's deadline
    sleeps_before = len(fake.sleeps_s)
    assert clock.wait_next() == (2, t0_ns + 40 * MS)
    assert len(fake.sleeps_s) == sleeps_before
    assert clock.stats.overruns == 0
    assert clock.wait_next() == (3, t0_ns + 60 * MS)


def test_deadlines_missed_by_more_than_a_period_are_skipped_and_counted_as_overruns():
    clock, fake = fake_clock(50.0)
    t0_ns = clock.start()
    clock.wait_next()
    fake.work(75)  # now t0 + 95 ms: ticks 2, 3 and 4 are already past
    assert clock.wait_next() == (5, t0_ns + 100 * MS)
    assert clock.stats.overruns == 3
    assert clock.wait_next() == (6, t0_ns + 120 * MS)


def test_a_tick_missed_by_exactly_one_period_is_still_delivered_late():
    clock, fake = fake_clock(50.0)
    t0_ns = clock.start()
    clock.wait_next()
    fake.work(40)  # tick 2 is exactly one period late
    assert clock.wait_next() == (2, t0_ns + 40 * MS)
    assert clock.stats.overruns == 0


def test_non_integer_periods_do_not_accumulate_rounding_error():
    clock, _ = fake_clock(3.0)
    t0_ns = clock.start()
    assert clock.deadline_ns(3) == t0_ns + 1_000 * MS
    assert clock.deadline_ns(3 * 86_400 * 365) == t0_ns + 86_400 * 365 * 1_000 * MS
    assert clock.deadline_ns(1) == t0_ns + 333_333_333


def test_normal_scheduling_sleeps_short_of_the_deadline_then_spins_onto_it():
    clock, fake = fake_clock(50.0, spin_s=0.0015, read_step_ns=1_000)
    t0_ns = clock.start()
    _, deadline_ns = clock.wait_next()
    assert fake.sleeps_s and fake.sleeps_s[0] == pytest.approx(0.0185, abs=1e-5)
    assert deadline_ns == t0_ns + 20 * MS
    assert 0 <= clock.stats.summary()["period_error_ms"]["max"] < 0.002


def test_realtime_mode_never_spins_and_sleeps_all_the_way_to_the_deadline():
    clock, fake = fake_clock(50.0, spin_s=0.0015, realtime=True)
    clock.start()
    clock.wait_next()
    assert fake.sleeps_s == [pytest.approx(0.02)]


def test_wait_until_reaches_an_intra_tick_deadline_and_returns_the_wake_time():
    clock, fake = fake_clock(50.0, spin_s=0.001, read_step_ns=500)
    t0_ns = clock.start()
    wake_ns = clock.wait_until(t0_ns + 12 * MS)
    assert t0_ns + 12 * MS <= wake_ns < t0_ns + 12 * MS + 2_000
    sleeps_before = len(fake.sleeps_s)
    assert clock.wait_until(t0_ns) >= wake_ns  # a deadline in the past returns at once
    assert len(fake.sleeps_s) == sleeps_before


def test_wait_next_before_start_is_a_readable_error():
    clock, _ = fake_clock(50.0)
    with pytest.raises(RuntimeError, match="call start"):
        clock.wait_next()


@pytest.mark.parametrize("rate_hz", [0, -5, float("nan"), float("inf")])
def test_rate_must_be_positive_and_finite(rate_hz):
    with pytest.raises(ValueError, match="rate_hz"):
        FixedRateClock(rate_hz)


def test_stats_percentiles_on_known_samples():
    stats = PeriodStats()
    for error_ms in range(1, 101):
        stats.add(error_ms * MS)
    summary = stats.summary()
    assert summary["count"] == 100
    assert summary["period_error_ms"]["p50"] == pytest.approx(50.5)
    assert summary["period_error_ms"]["p99"] == pytest.approx(99.01)
    assert summary["period_error_ms"]["max"] == pytest.approx(100.0)


def test_stats_keep_a_bounded_ring_but_count_everything_and_keep_the_true_max():
    stats = PeriodStats(capacity=10)
    stats.add(500 * MS)
    for _ in range(1_000):
        stats.add(1 * MS)
    summary = stats.summary()
    assert summary["count"] == 1_001
    assert summary["period_error_ms"]["p99"] == pytest.approx(1.0)
    assert summary["period_error_ms"]["max"] == pytest.approx(500.0)


def test_stats_measure_the_rate_from_tick_times():
    stats = PeriodStats()
    for k in range(11):
        stats.add_tick(START_NS + k * 10 * MS)
    assert stats.summary()["rate_hz"] == pytest.approx(100.0)


def test_empty_stats_report_no_numbers_rather_than_zeros():
    summary = PeriodStats().summary()
    assert summary["count"] == 0
    assert summary["period_error_ms"] == {"p50": None, "p99": None, "max": None}
    assert summary["rate_hz"] is None


def test_real_clock_at_100_hz_keeps_rate_and_low_period_error():
    clock = FixedRateClock(100.0)
    clock.start()
    for _ in range(50):
        clock.wait_next()
    summary = clock.stats.summary()
    assert summary["rate_hz"] == pytest.approx(100.0, rel=0.02)
    assert summary["period_error_ms"]["p50"] < 1.0


@pytest.fixture
def restore_scheduling():
    """try_realtime really changes this process's policy when permitted; put it back afterwards."""
    saved = (os.sched_getscheduler(0), os.sched_getparam(0))
    yield
    os.sched_setscheduler(0, *saved)


@pytest.mark.parametrize("priority", [50, 1, 10_000, -3, "high", None])
def test_try_realtime_reports_a_string_and_never_raises(priority, restore_scheduling):
    status = try_realtime(priority)
    assert isinstance(status, str)
    assert status == f"SCHED_FIFO({priority})" or status.startswith("SCHED_OTHER (")


def test_try_realtime_refuses_out_of_range_priorities_with_the_reason(restore_scheduling):
    status = try_realtime(10_000)
    assert status.startswith("SCHED_OTHER (") and "10000" in status


@pytest.mark.parametrize("realtime", [False, True])
def test_measure_jitter_reports_stats_and_leaves_scheduling_as_it_found_it(realtime):
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    report = measure_jitter(200.0, 0.1, realtime)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    assert report["count"] == 20
    assert set(report["period_error_ms"]) == {"p50", "p99", "max"}
    fifo = report["scheduling"].startswith("SCHED_FIFO")
    assert fifo <= realtime
    assert report["sleep_mode"] == ("sleep" if fifo else "sleep+spin")
