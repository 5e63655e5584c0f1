"""Worker: work run off the event loop, on a thread of its own, one job at a time.

Parsing Tempo's answer, evaluating it and encoding its samples are plain Python that runs
for seconds on a big rule (about 30 s for the first evaluation of 1,000,000 series, 12 s
for a steady one); committing the first evaluation of such a rule stores 2,000,000 label
sets in SQLite (about 12 s). On the event loop that would stop everything else meanwhile:
the systemd watchdog pings (``WatchdogSec=30s``: the daemon would be killed, again at each
restart, before its first commit), the health and metrics endpoints (scrapes time out),
the sender. The daemon has two workers: one parses, evaluates and encodes (never two of
those at once, so the caches they share need no locks), the other makes every call into
the state database (its commits, the sender's reads and removals, maintenance), so that
neither a commit nor the sender's calls wait behind an evaluation (the sender's wait at
most for a commit under way, without holding the loop). The loop goes on
meanwhile: the interpreter hands it the GIL every few milliseconds, and SQLite lets go of
it while it works; but not within one long call into C that keeps it (decoding a whole
answer, building a dictionary of a million entries).
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

    def __init__(self, name: str = "worker") -> None:
        one_malloc_arena()  # its allocations in the loop's heap, not one of its own
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tempo-bridge-{name}")

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


async def run_to_end(
    worker: Worker | None, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """:func:`run_on`, but a caller cancelled meanwhile waits for ``fn`` to end before its
    cancellation goes on: a commit never runs on behind the evaluation that made it (the
    next one would judge by a state it is still changing; the daemon closes the state
    once its evaluations have ended)."""
    if worker is None:
        return fn(*args, **kwargs)
    job = asyncio.ensure_future(worker.run(fn, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        if not job.cancelled():
            job.exception()  # its outcome is the caller's to ignore: it was cancelled
        raise
