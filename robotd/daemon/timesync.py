"""Online mapping of a sensor's device clock onto host monotonic time."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

_NS_PER_S = 1_000_000_000


class ClockOffsetEstimator:
    """Maps a device clock to host time online.

    Each sample gives d = host_receive_ns - hw_ns = offset + transport delay. Delay is never
    negative, so the minimum of d over a sliding window (``window_s`` of host time) is the offset
    plus the smallest delay seen, which is the best one-way estimate available. A slowly drifting
    device clock tilts d over time; the drift is estimated by a robust (Theil-Sen) line fit
    through the minima of consecutive half-window blocks, and window samples are compared after
    removing that trend so the minimum is not biased toward one end of the window.

    A device timestamp that runs backwards, or forwards faster than the host allows, by more than
    ``restart_tolerance_s`` means the device restarted or reset its clock: the estimator starts
    over from that sample (counted in ``restarts``).

    Cost per update is O(1) amortised: a monotonic deque keeps the window minimum, and the drift
    fit runs once per block over a bounded number of block minima.
    """

    def __init__(self, window_s: float = 2.0, *, drift_history_s: float = 60.0, restart_tolerance_s: float = 0.05) -> None:
        for name, value in (("window_s", window_s), ("drift_history_s", drift_history_s), ("restart_tolerance_s", restart_tolerance_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ClockOffsetEstimator {name}={value!r} must be a positive number of seconds")
        self._window_ns = round(window_s * _NS_PER_S)
        self._block_ns = max(1, self._window_ns // 2)
        # A slope from block minima a few ms apart in noise is worse than no slope; wait for a long baseline.
        self._min_fit_span_ns = 4 * self._window_ns
        self._max_blocks = max(3, math.ceil(drift_history_s * _NS_PER_S / self._block_ns) + 1)
        self._restart_tolerance_ns = round(restart_tolerance_s * _NS_PER_S)
        self._restarts = 0
        self._reset()

    def _reset(self) -> None:
        """Forget every sample and the drift estimate."""
        # Entries (host_ns, hw_ns, d_ns, detrended_ns), detrended_ns strictly increasing from the front.
        self._window: deque[tuple[int, int, int, int]] = deque()
        self._block_minima: deque[tuple[int, int]] = deque(maxlen=self._max_blocks)
        self._block_start_host_ns: int | None = None
        self._block_min: tuple[int, int] | None = None
        self._drift = 0.0  # d(host - hw) / d(hw), dimensionless
        self._anchor_hw_ns = 0
        self._last_hw_ns: int | None = None

    @property
    def ready(self) -> bool:
        """True once at least one sample has been seen since construction or the last restart."""
        return self._last_hw_ns is not None

    @property
    def restarts(self) -> int:
        """How many times a device clock jump made the estimator start over."""
        return self._restarts

    @property
    def offset_ns(self) -> int:
        """Current host_ns - hw_ns at the latest device timestamp (includes the smallest transport delay)."""
        self._require_ready("offset_ns")
        return self._offset_at(self._last_hw_ns)

    @property
    def drift_ppm(self) -> float:
        """Estimated drift in ppm; positive when host time advances faster than the device clock."""
        return self._drift * 1e6

    def update(self, hw_ns: int, host_ns: int) -> None:
        """Add one sample: the device timestamp of a reading and the host monotonic time it was received."""
        hw_ns, host_ns = int(hw_ns), int(host_ns)
        d_ns = host_ns - hw_ns
        if self.ready and self._is_clock_jump(hw_ns, d_ns):
            self._reset()
            self._restarts += 1
        if not self.ready:
            self._anchor_hw_ns = hw_ns
        detrended_ns = d_ns - round(self._drift * (hw_ns - self._anchor_hw_ns))
        while self._window and self._window[-1][3] >= detrended_ns:
            self._window.pop()
        self._window.append((host_ns, hw_ns, d_ns, detrended_ns))
        horizon_ns = host_ns - self._window_ns
        while self._window[0][0] < horizon_ns:
            self._window.popleft()
        self._last_hw_ns = hw_ns
        self._track_block(hw_ns, host_ns, d_ns)

    def to_host_ns(self, hw_ns: int) -> int:
        """Host monotonic time corresponding to device time ``hw_ns``."""
        self._require_ready("to_host_ns")
        hw_ns = int(hw_ns)
        return hw_ns + self._offset_at(hw_ns)

    def _offset_at(self, hw_ns: int) -> int:
        """Lower-envelope host - hw at device time ``hw_ns``, extrapolated along the drift."""
        return self._window[0][3] + round(self._drift * (hw_ns - self._anchor_hw_ns))

    def _is_clock_jump(self, hw_ns: int, d_ns: int) -> bool:
        """True if the sample cannot come from the clock being tracked (restart or reset)."""
        ran_backwards = hw_ns < self._last_hw_ns - self._restart_tolerance_ns
        # d below the envelope means the reading arrived before it was stamped: the device clock leapt ahead.
        leapt_ahead = d_ns < self._offset_at(hw_ns) - self._restart_tolerance_ns
        return ran_backwards or leapt_ahead

    def _track_block(self, hw_ns: int, host_ns: int, d_ns: int) -> None:
        """Fold the sample into the current block's minimum; on a block boundary refit the drift."""
        if self._block_start_host_ns is not None and host_ns - self._block_start_host_ns < self._block_ns:
            if d_ns < self._block_min[1]:
                self._block_min = (hw_ns, d_ns)
            return
        if self._block_min is not None:
            self._block_minima.append(self._block_min)
            self._refit_drift()
        self._block_start_host_ns = host_ns
        self._block_min = (hw_ns, d_ns)

    def _refit_drift(self) -> None:
        """Theil-Sen slope of block minima; median of pairwise slopes ignores blocks spoiled by host stalls."""
        minima = self._block_minima
        if len(minima) < 3 or minima[-1][0] - minima[0][0] < self._min_fit_span_ns:
            return
        hw0_ns, d0_ns = minima[0]
        hw_rel = np.array([hw - hw0_ns for hw, _ in minima], dtype=np.float64)
        d_rel = np.array([d - d0_ns for _, d in minima], dtype=np.float64)
        i, j = np.triu_indices(hw_rel.size, k=1)
        dx = hw_rel[j] - hw_rel[i]
        apart = dx > 0
        if not apart.any():
            return
        self._drift = float(np.median((d_rel[j] - d_rel[i])[apart] / dx[apart]))
        self._rekey_window()

    def _rekey_window(self) -> None:
        """Recompute detrended values with the new drift about the latest sample and restore monotonicity."""
        self._anchor_hw_ns = self._last_hw_ns
        entries = list(self._window)
        self._window.clear()
        for host_ns, hw_ns, d_ns, _ in entries:
            detrended_ns = d_ns - round(self._drift * (hw_ns - self._anchor_hw_ns))
            while self._window and self._window[-1][3] >= detrended_ns:
                self._window.pop()
            self._window.append((host_ns, hw_ns, d_ns, detrended_ns))

    def _require_ready(self, what: str) -> None:
        """Raise a readable error when asked for a mapping before any sample."""
        if not self.ready:
            raise RuntimeError(f"ClockOffsetEstimator.{what} needs at least one sample; call update(hw_ns, host_ns) first")


def reading_age_ns(hw_ns: int, estimator: ClockOffsetEstimator, now_host_ns: int) -> int:
    """How old a reading stamped ``hw_ns`` is at host time ``now_host_ns``.

    The mapping includes the smallest transport delay, so this is the age since the reading
    could first have been received; the true age since sampling is larger by that minimum delay.
    """
    return int(now_host_ns) - estimator.to_host_ns(hw_ns)
