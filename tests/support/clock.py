"""A clock a test sets and moves (what the engine, the sender and the Tempo double call),
and letting the event loop catch up after a fake clock moved."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Returns ``now`` (unix seconds) when called; the test sets ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def run_ready(turns: int = 20) -> None:
    """Let the event loop run what is ready now, without waiting for any timer: after a
    fake clock moved, what that made due (a scheduler's tick started by its wake-up, the
    tasks it creates) has run when this returns, if it takes at most ``turns`` turns."""
    for _ in range(turns):
        await asyncio.sleep(0)
