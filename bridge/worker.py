"""Worker: the CPU-heavy stages of evaluations, run off the event loop.

Parsing Tempo's answer, evaluating it and encoding its samples are plain Python that runs
for seconds on a big rule (about 30 s for the first evaluation of 1,000,000 series, 12 s
for a steady one). On the event loop that would stop everything else meanwhile: the
systemd watchdog pings (``WatchdogSec=30s``: the daemon would be killed, again at each
restart, before its first commit), the health and metrics endpoints (scrapes time out),
the sender. The worker runs those stages on one thread of its own, one at a time, so
that they never overlap one another (the caches they share need no locks), and the loop
goes on meanwhile: the interpreter hands it the GIL every few milliseconds, but not
within one long call into C (decoding a whole answer, building a dictionary of a million
entries). Everything that touches the state database stays on the loop: its commit is
what still holds the loop longest (bench.daemon's health probe: about 2 s in a steady
window of 1,000,000 series, 12 s in the first).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from bridge.memory import one_malloc_arena

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Worker:
    """One thread that runs functions for the event loop, one at a time, in order."""

    def __init__(self) -> None:
        one_malloc_arena()  # its allocations in the loop's heap, not one of its own
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempo-bridge-worker")

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` on the worker's thread (in the caller's context
        variables, for the logs); its value or its exception."""
        call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Let the thread end once the function it runs returns; nothing more is taken."""
        self._pool.shutdown(wait=False, cancel_futures=True)


async def run_on(
    worker: Worker | None, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``fn(*args, **kwargs)`` on ``worker``'s thread, or here when there is none (the
    commands that run one evaluation and exit, and most tests)."""
    if worker is None:
        return fn(*args, **kwargs)
    return await worker.run(fn, *args, **kwargs)
