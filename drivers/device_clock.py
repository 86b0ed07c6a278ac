"""A simulated device clock: the host clock seen through a fixed offset and a constant rate error."""

from __future__ import annotations

import time
from collections.abc import Callable


class DeviceClock:
    """A device's free-running clock, derived deterministically from host time.

    device_ns = offset_ns + (1 + drift_ppm * 1e-6) * host_ns, so a test that controls the
    host clock controls the device clock exactly.
    """

    def __init__(
        self,
        offset_s: float = 0.0,
        drift_ppm: float = 0.0,
        host_clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """Build a clock offset_s ahead of the host that runs drift_ppm parts per million fast."""
        self.offset_ns = round(offset_s * 1e9)
        self.drift_ppm = float(drift_ppm)
        self._host_clock = host_clock

    def to_device_ns(self, host_ns: int) -> int:
        """Return the device time at host time host_ns."""
        # Only the small drift correction goes through floating point, so the result keeps
        # nanosecond resolution even for host times far beyond 2**53 ns.
        return self.offset_ns + host_ns + round(host_ns * self.drift_ppm * 1e-6)

    def now_ns(self) -> int:
        """Return the device time now."""
        return self.to_device_ns(self._host_clock())
