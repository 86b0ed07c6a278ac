"""Specification of the device-clock to host-clock mapping."""

import numpy as np
import pytest

from robotd.daemon.timesync import ClockOffsetEstimator, reading_age_ns

MS = 1_000_000
S = 1_000_000_000
HOURS_NS = 3_600 * S
MIN_DELAY_NS = 50_000  # the fastest a reading ever travels from device to host


def simulate(estimator, *, seconds, rate_hz=100.0, offset_ns=5 * HOURS_NS, drift_ppm=0.0, host_start_ns=10 * S, seed=0):
    """Feed samples from a device whose clock reads true_device(host); yield (hw_ns, true_host_ns) per sample.

    Host time of sampling t maps to hw = t - offset - drift*(t - host_start): with positive drift
    the host clock runs faster than the device's. Each reading arrives MIN_DELAY_NS plus an
    exponential jitter (mean 1 ms) after it was sampled.
    """
    rng = np.random.default_rng(seed)
    for k in range(round(seconds * rate_hz)):
        sampled_host_ns = host_start_ns + round(k * S / rate_hz)
        hw_ns = sampled_host_ns - offset_ns - round(drift_ppm * 1e-6 * (sampled_host_ns - host_start_ns))
        received_host_ns = sampled_host_ns + MIN_DELAY_NS + round(rng.exponential(1 * MS))
        estimator.update(hw_ns, received_host_ns)
        yield hw_ns, sampled_host_ns


def test_offset_of_hours_is_recovered_within_a_tenth_of_a_ms_from_jittered_samples():
    estimator = ClockOffsetEstimator(window_s=2.0)
    for _ in simulate(estimator, seconds=3.0, offset_ns=5 * HOURS_NS):
        pass
    assert abs(estimator.offset_ns - (5 * HOURS_NS + MIN_DELAY_NS)) < 0.1 * MS


def test_mapping_works_for_device_clocks_ahead_of_the_host():
    estimator = ClockOffsetEstimator()
    for hw_ns, sampled_host_ns in simulate(estimator, seconds=3.0, offset_ns=-7 * HOURS_NS):
        pass
    assert abs(estimator.to_host_ns(hw_ns) - (sampled_host_ns + MIN_DELAY_NS)) < 0.1 * MS


@pytest.mark.parametrize("drift_ppm", [50.0, -100.0, 100.0])
def test_drifting_device_clock_stays_mapped_over_a_minute(drift_ppm):
    estimator = ClockOffsetEstimator(window_s=2.0)
    worst_error_ns = 0
    for hw_ns, sampled_host_ns in simulate(estimator, seconds=60.0, drift_ppm=drift_ppm):
        if sampled_host_ns >= 10 * S + 2 * S:  # judged once a full window has been seen
            worst_error_ns = max(worst_error_ns, abs(estimator.to_host_ns(hw_ns) - (sampled_host_ns + MIN_DELAY_NS)))
    assert worst_error_ns < 0.5 * MS
    assert estimator.drift_ppm == pytest.approx(drift_ppm, abs=2.0)


def test_drift_estimate_shrugs_off_a_host_stall_that_delays_a_whole_block():
    estimator = ClockOffsetEstimator(window_s=2.0)
    for k in range(4_000):  # 40 s at 100 Hz, perfect transport except a 3 s stall adding 40 ms
        hw_ns = k * 10 * MS
        stalled = 2_000 <= k < 2_300
        estimator.update(hw_ns, hw_ns + HOURS_NS + MIN_DELAY_NS + (40 * MS if stalled else 0))
    assert abs(estimator.drift_ppm) < 1.0
    assert abs(estimator.offset_ns - (HOURS_NS + MIN_DELAY_NS)) < 0.01 * MS


def test_device_restart_with_time_running_backwards_reinitialises_the_mapping():
    estimator = ClockOffsetEstimator()
    for _ in simulate(estimator, seconds=20.0, offset_ns=2 * HOURS_NS, drift_ppm=80.0):
        pass
    assert estimator.restarts == 0
    host_ns = 40 * S
    estimator.update(hw_ns=1 * MS, host_ns=host_ns + MIN_DELAY_NS)  # restarted device counts from ~0
    assert estimator.restarts == 1
    assert estimator.drift_ppm == 0.0
    assert estimator.to_host_ns(1 * MS) == host_ns + MIN_DELAY_NS
    assert estimator.to_host_ns(11 * MS) == host_ns + 10 * MS + MIN_DELAY_NS


def test_device_clock_leaping_forward_reinitialises_the_mapping():
    estimator = ClockOffsetEstimator()
    for hw_ns, _ in simulate(estimator, seconds=5.0, offset_ns=HOURS_NS):
        pass
    leapt_hw_ns = hw_ns + 60 * S  # clock reset forward a minute, while the host moved on 10 ms
    estimator.update(leapt_hw_ns, 15 * S + MIN_DELAY_NS)
    assert estimator.restarts == 1
    assert estimator.to_host_ns(leapt_hw_ns) == 15 * S + MIN_DELAY_NS


def test_small_reordering_of_device_timestamps_is_not_a_restart():
    estimator = ClockOffsetEstimator()
    estimator.update(100 * MS, HOURS_NS + 100 * MS)
    estimator.update(90 * MS, HOURS_NS + 101 * MS)  # an older reading delivered late
    assert estimator.restarts == 0
    assert estimator.offset_ns == HOURS_NS


def test_old_minima_leave_the_window_so_a_slower_link_is_followed():
    estimator = ClockOffsetEstimator(window_s=1.0)
    for k in range(300):  # 3 s at 100 Hz; the link gets 2 ms slower after 1 s
        hw_ns = k * 10 * MS
        estimator.update(hw_ns, hw_ns + (0 if k < 100 else 2 * MS))
    assert estimator.offset_ns == 2 * MS


def test_reading_age_is_host_now_minus_the_mapped_reading_time():
    estimator = ClockOffsetEstimator()
    estimator.update(hw_ns=1_000 * MS, host_ns=HOURS_NS + 1_000 * MS)
    assert reading_age_ns(1_000 * MS, estimator, now_host_ns=HOURS_NS + 1_007 * MS) == 7 * MS
    assert reading_age_ns(995 * MS, estimator, now_host_ns=HOURS_NS + 1_007 * MS) == 12 * MS


def test_mapping_before_any_sample_is_a_readable_error():
    estimator = ClockOffsetEstimator()
    assert not estimator.ready
    with pytest.raises(RuntimeError, match="update"):
        estimator.to_host_ns(0)


@pytest.mark.parametrize("window_s", [0.0, -1.0, float("nan")])
def test_window_must_be_a_positive_duration(window_s):
    with pytest.raises(ValueError, match="window_s"):
        ClockOffsetEstimator(window_s)
