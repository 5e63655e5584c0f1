"""A clock a test sets and moves: what the engine, the sender and the Tempo double call."""

from __future__ import annotations


class FakeClock:
    """Returns ``now`` (unix seconds) when called; the test sets or advances it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new time."""
        self.now += seconds
        return self.now
