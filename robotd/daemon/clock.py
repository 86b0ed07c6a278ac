"""Fixed-rate loop timing: absolute-deadline ticks, period-error statistics, real-time scheduling."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np

_NS_PER_S = 1_000_000_000


class PeriodStats:
    """Period errors of a fixed-rate loop (wake time minus deadline, ns) plus tick and overrun counters.

    Errors are kept in a ring of the most recent ``capacity`` samples so a daemon that runs for
    days uses bounded memory; percentiles describe that recent window, while ``count`` and the
    maximum cover every sample ever added.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"PeriodStats capacity={capacity!r} must be at least 1; pass a positive sample count")
        self._ring_ns = np.zeros(capacity, dtype=np.int64)
        self._count = 0
        self._max_error_ns: int | None = None
        self._overruns = 0
        self._ticks = 0
        self._first_tick_ns: int | None = None
        self._last_tick_ns: int | None = None

    @property
    def count(self) -> int:
        """Number of error samples added since construction."""
        return self._count

    @property
    def overruns(self) -> int:
        """Number of ticks skipped because their deadline was missed by more than a period."""
        return self._overruns

    def add(self, error_ns: int) -> None:
        """Record one period error in ns (positive: woke after the deadline)."""
        error_ns = int(error_ns)
        self._ring_ns[self._count % self._ring_ns.size] = error_ns
        self._count += 1
        if self._max_error_ns is None or error_ns > self._max_error_ns:
            self._max_error_ns = error_ns

    def add_tick(self, wake_ns: int) -> None:
        """Record the wake time of a delivered tick; the measured rate is derived from these."""
        if self._first_tick_ns is None:
            self._first_tick_ns = wake_ns
        self._last_tick_ns = wake_ns
        self._ticks += 1

    def add_overruns(self, skipped_ticks: int) -> None:
        """Count ticks that were skipped rather than delivered late."""
        self._overruns += skipped_ticks

    def summary(self) -> dict:
        """Return count, period error percentiles in ms (None before any sample), overruns and measured rate."""
        retained_ns = self._ring_ns[: min(self._count, self._ring_ns.size)]
        if retained_ns.size:
            p50_ns, p99_ns = np.percentile(retained_ns, [50, 99])
            error_ms = {"p50": p50_ns / 1e6, "p99": p99_ns / 1e6, "max": self._max_error_ns / 1e6}
        else:
            error_ms = {"p50": None, "p99": None, "max": None}
        rate_hz = None
        if self._ticks >= 2 and self._last_tick_ns > self._first_tick_ns:
            rate_hz = (self._ticks - 1) * _NS_PER_S / (self._last_tick_ns - self._first_tick_ns)
        return {"count": self._count, "period_error_ms": error_ms, "overruns": self._overruns, "rate_hz": rate_hz}


class FixedRateClock:
    """Ticks at rate_hz on absolute deadlines (tick k at start + k*period; no drift accumulation).

    Deadlines are computed from the start time with exact rational arithmetic, so a late wake-up
    never shifts later deadlines. A deadline missed by more than a whole period is skipped
    (counted in ``stats.overruns``) instead of firing a burst of catch-up ticks.
    """

    def __init__(
        self,
        rate_hz: float,
        *,
        spin_s: float = 0.0015,
        realtime: bool = False,
        now_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
        stats_capacity: int = 100_000,
    ) -> None:
        if not (isinstance(rate_hz, numbers.Real) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"FixedRateClock rate_hz={rate_hz!r} must be a positive finite number; pass the loop rate, e.g. 50")
        if not (isinstance(spin_s, numbers.Real) and math.isfinite(spin_s) and spin_s >= 0):
            raise ValueError(f"FixedRateClock spin_s={spin_s!r} must be a finite number >= 0; pass e.g. 0.0015")
        self.rate_hz = float(rate_hz)
        self.period_s = 1.0 / self.rate_hz
        self.realtime = realtime
        self.stats = PeriodStats(stats_capacity)
        # period_ns = _NS_PER_S * den / num exactly; integer deadlines avoid float rounding over long runs.
        self._rate_num, self._rate_den = Fraction(self.rate_hz).as_integer_ratio()
        self._period_ns = _NS_PER_S * self._rate_den / self._rate_num
        self._spin_ns = round(spin_s * _NS_PER_S)
        self._now_ns = now_ns
        self._sleep = sleep
        self._start_ns: int | None = None
        self._tick_index = 0

    def start(self) -> int:
        """Set the start time (tick 0) to now and return it in ns."""
        self._start_ns = self._now_ns()
        self._tick_index = 0
        return self._start_ns

    def deadline_ns(self, tick_index: int) -> int:
        """Absolute deadline of tick ``tick_index`` in ns (start + tick_index * period, rounded to 1 ns)."""
        if self._start_ns is None:
            raise RuntimeError("FixedRateClock has no start time; call start() before asking for deadlines")
        scaled = tick_index * _NS_PER_S * self._rate_den
        return self._start_ns + (2 * scaled + self._rate_num) // (2 * self._rate_num)

    def wait_next(self) -> tuple[int, int]:
        """Sleep until the next deadline and return (tick_index, deadline_ns); records the period error."""
        if self._start_ns is None:
            raise RuntimeError("FixedRateClock.wait_next called before start(); call start() once before the loop")
        tick_index = self._tick_index + 1
        deadline_ns = self.deadline_ns(tick_index)
        now_ns = self._now_ns()
        if now_ns - deadline_ns > self._period_ns:
            # Running a burst of stale ticks would send a burst of stale commands; resume on the beat instead.
            next_index = self._first_tick_after(now_ns)
            self.stats.add_overruns(next_index - tick_index)
            tick_index = next_index
            deadline_ns = self.deadline_ns(tick_index)
        wake_ns = self.wait_until(deadline_ns)
        self.stats.add(wake_ns - deadline_ns)
        self.stats.add_tick(wake_ns)
        self._tick_index = tick_index
        return tick_index, deadline_ns

    def wait_until(self, deadline_ns: int) -> int:
        """Sleep until ``deadline_ns`` (monotonic ns) and return the wake time; returns at once if it has passed."""
        now_ns = self._now_ns()
        if self.realtime:
            # Under SCHED_FIFO the kernel wakes us promptly, and a spinning FIFO task could starve the other core's work.
            while now_ns < deadline_ns:
                self._sleep((deadline_ns - now_ns) / _NS_PER_S)
                now_ns = self._now_ns()
            return now_ns
        # Normal scheduling wakes late by up to a timer slack; sleep short of the deadline and spin the rest.
        while deadline_ns - now_ns > self._spin_ns:
            self._sleep((deadline_ns - now_ns - self._spin_ns) / _NS_PER_S)
            now_ns = self._now_ns()
        while now_ns < deadline_ns:
            now_ns = self._now_ns()
        return now_ns

    def _first_tick_after(self, now_ns: int) -> int:
        """Smallest tick index whose deadline is strictly after ``now_ns``."""
        index = (now_ns - self._start_ns) * self._rate_num // (_NS_PER_S * self._rate_den)
        while self.deadline_ns(index) <= now_ns:
            index += 1
        while index > 0 and self.deadline_ns(index - 1) > now_ns:
            index -= 1
        return index


class LockstepClock:
    """Simulated time for lockstep pacing: tick k is at origin + k * period of simulated time, delivered at once.

    Same interface as FixedRateClock (start, wait_next, stats), but wait_next never sleeps: the
    daemon steps as soon as the actor's action arrives. ``now_ns`` is the simulated clock that
    simulated devices are given as their host clock, so a mock's motion, a camera's frames and
    the recorded tick times advance by exactly one control period per step however fast the
    steps really come. ``stats`` records the real time of each step the daemon reports with
    ``stepped()`` (its rate is steps per real second while an actor is stepping); there are no
    period errors, since no tick has a real deadline.
    """

    def __init__(self, rate_hz: float, *, real_now_ns: Callable[[], int] = time.monotonic_ns,
                 stats_capacity: int = 100_000) -> None:
        if not (isinstance(rate_hz, numbers.Real) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"LockstepClock rate_hz={rate_hz!r} must be a positive finite number; pass the loop rate, e.g. 50")
        self.rate_hz = float(rate_hz)
        self.period_s = 1.0 / self.rate_hz
        self.realtime = False
        self.stats = PeriodStats(stats_capacity)
        self._rate_num, self._rate_den = Fraction(self.rate_hz).as_integer_ratio()
        self._real_now_ns = real_now_ns
        self._origin_ns = real_now_ns()
        self._tick_index = 0
        self._sim_ns = self._origin_ns

    def now_ns(self) -> int:
        """Simulated time now: the deadline of the current tick (the origin before the first)."""
        return self._sim_ns

    def start(self) -> int:
        """Tick 0 is at the simulated origin; returns it."""
        self._tick_index = 0
        self._sim_ns = self._origin_ns
        return self._origin_ns

    def deadline_ns(self, tick_index: int) -> int:
        """Simulated time of tick ``tick_index`` (origin + tick_index * period, rounded to 1 ns)."""
        scaled = tick_index * _NS_PER_S * self._rate_den
        return self._origin_ns + (2 * scaled + self._rate_num) // (2 * self._rate_num)

    def wait_next(self) -> tuple[int, int]:
        """Advance simulated time by one period at once and return (tick_index, simulated time)."""
        self._tick_index += 1
        self._sim_ns = self.deadline_ns(self._tick_index)
        return self._tick_index, self._sim_ns

    def stepped(self) -> None:
        """Record that the current tick's action was applied (for the real step rate)."""
        self.stats.add_tick(self._real_now_ns())


def try_realtime(priority: int = 50) -> str:
    """Try to put the calling process under SCHED_FIFO at ``priority``; return what was obtained. Never raises.

    Returns "SCHED_FIFO(<priority>)" on success, otherwise "SCHED_OTHER (<why FIFO was not set>)".
    """
    try:
        if not hasattr(os, "sched_setscheduler"):
            return "SCHED_OTHER (SCHED_FIFO not available on this platform)"
        lowest = os.sched_get_priority_min(os.SCHED_FIFO)
        highest = os.sched_get_priority_max(os.SCHED_FIFO)
        if not (isinstance(priority, numbers.Integral) and lowest <= priority <= highest):
            return f"SCHED_OTHER (SCHED_FIFO priority {priority!r} outside {lowest}..{highest})"
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
    except Exception as error:  # the contract is to report, never to raise
        return f"SCHED_OTHER (SCHED_FIFO not permitted: {error})"
    return f"SCHED_FIFO({priority})"


def measure_jitter(rate_hz: float, seconds: float, realtime: bool, *, spin_s: float = 0.0015) -> dict:
    """Run a FixedRateClock for ``seconds`` and return its stats summary plus how it was scheduled.

    With ``realtime`` the process is moved to SCHED_FIFO for the run and restored afterwards; if
    FIFO is refused the run falls back to sleep-then-spin, as the daemon would.
    """
    scheduling = "SCHED_OTHER (SCHED_FIFO not requested)"
    saved = _current_scheduling()
    if realtime:
        scheduling = try_realtime()
    fifo = scheduling.startswith("SCHED_FIFO")
    clock = FixedRateClock(rate_hz, spin_s=spin_s, realtime=fifo)
    try:
        clock.start()
        for _ in range(max(1, round(seconds * rate_hz))):
            clock.wait_next()
    finally:
        if fifo and saved is not None:
            os.sched_setscheduler(0, *saved)
    return {
        **clock.stats.summary(),
        "target_rate_hz": float(rate_hz),
        "seconds": float(seconds),
        "scheduling": scheduling,
        "sleep_mode": "sleep" if fifo else "sleep+spin",
    }


def _current_scheduling() -> tuple[int, os.sched_param] | None:
    """The calling process's (policy, param), or None where the platform cannot report it."""
    try:
        return os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):
        return None
