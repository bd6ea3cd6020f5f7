"""The clock the unit tests set by hand: code under test is given ``clock`` (and ``sleep``), never the machine's."""

from __future__ import annotations


class FakeClock:
    """``clock()`` answers ``now``; a test moves it (``clock.now += 5``) or code sleeps on it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """A sleep moves the time on at once; the sleeps are recorded."""
        self.sleeps.append(seconds)
        self.now += seconds
