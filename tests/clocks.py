"""A host clock that tests move by hand, shared by the simulator and the Ray start tests."""
from __future__ import annotations


class FakeClock:
    """Called, it gives the time: integer nanoseconds, or float seconds with ``seconds=True``. ``tick(n)`` moves it
    ``n`` periods of ``period_ns``, ``advance(ns)`` by ``ns``, and ``sleep(s)`` by ``s`` seconds, recording each
    sleep in ``sleeps`` (a stand-in for ``time.sleep`` beside it)."""

    def __init__(self, *, period_ns: int = 1, seconds: bool = False, start_ns: int = 1_000_000_000) -> None:
        self.ns = int(start_ns)
        self.period_ns = int(period_ns)
        self.seconds = seconds
        self.sleeps: list[float] = []

    def __call__(self) -> int | float:
        return self.now if self.seconds else self.ns

    @property
    def now(self) -> float:
        """The time in seconds."""
        return self.ns / 1e9

    def tick(self, n: int = 1) -> None:
        self.ns += n * self.period_ns

    def advance(self, ns: float) -> None:
        self.ns += round(ns)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds * 1e9)
