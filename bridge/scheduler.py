"""Scheduler: one APScheduler job per rule group, ticking once per interval.

A tick evaluates every window that is due, so a slow or missed tick is caught up by
the next one: windows come from the checkpoint, never from counting ticks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge.rules import Group

#: Ticks fire this long after a window becomes due, so clock jitter never makes it early.
TICK_MARGIN = 0.05


class Scheduler:
    """Runs ``evaluate(group)`` for each group at ``k * interval + query_offset``."""

    def __init__(
        self,
        evaluate: Callable[[Group], Awaitable[object]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._evaluate = evaluate
        self._clock = clock
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._groups: dict[str, Group] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: set[asyncio.Task[object]] = set()
        self._stopping = False

    @property
    def groups(self) -> list[Group]:
        return list(self._groups.values())

    def start(self, groups: Sequence[Group]) -> None:
        """Start ticking; every group is evaluated once right away to catch up."""
        self._scheduler.start()
        self.replace(groups)

    def replace(self, groups: Sequence[Group]) -> None:
        """Swap the running groups for ``groups``: a group whose definition is unchanged
        keeps its schedule (moved to another file or line, it is the same group); others
        are (re)scheduled and evaluated at once."""
        new = {g.name: g for g in groups}
        for name in list(self._groups):
            if new.get(name) != self._groups[name]:
                self._scheduler.remove_job(name)
                del self._groups[name]
        for name, group in new.items():
            if name not in self._groups:
                self._add(group)
        self._groups = new

    def wakeup(self) -> None:
        """Look for due ticks now. APScheduler plans its next look with an event-loop timer
        (monotonic time) from the wall clock of the last look; a wall clock moved since (a
        test's fake clock) is only seen here or at that timer."""
        if self._scheduler.running:
            self._scheduler.wakeup()

    def every(self, name: str, seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        """Run ``job`` every ``seconds`` from now on, beside the groups (housekeeping)."""
        self._scheduler.add_job(
            job, IntervalTrigger(seconds=seconds), id=f"every {name}", name=name,
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )

    def shutdown(self) -> None:
        """Stop ticking; evaluations under way go on (see :meth:`stop`)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def stop(self) -> None:
        """Stop ticking and cancel the evaluations under way, waiting for them to end.

        Cancelling is safe: an evaluation cancelled while it awaits Tempo or the worker
        stops there (the worker's result is dropped), one cancelled during its commit
        ends once the commit has (bridge.worker.run_to_end), so it stops either before or
        after a whole transaction.
        """
        self._stopping = True
        self.shutdown()
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _add(self, group: Group) -> None:
        now = self._clock()
        phase = group.query_offset % group.interval
        first = now - now % group.interval + phase + TICK_MARGIN
        self._scheduler.add_job(
            self._run,
            IntervalTrigger(
                seconds=group.interval, start_date=datetime.fromtimestamp(first, UTC)
            ),
            args=[group.name],
            id=group.name,
            name=f"group {group.name}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        # Catch up at once rather than at the first tick.
        self._scheduler.add_job(
            self._run,
            DateTrigger(datetime.fromtimestamp(now, UTC)),
            args=[group.name],
            name=f"group {group.name} (start)",
            misfire_grace_time=None,
        )

    async def _run(self, name: str) -> None:
        """Evaluate the group ``name`` as it is now defined (a reload may have moved it);
        runs of one group wait for each other, never overlap."""
        group = self._groups.get(name)
        if group is None:  # removed by a reload since the job fired
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with self._locks.setdefault(group.name, asyncio.Lock()):
                await self._evaluate(group)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # cancelled by stop(): the job ends quietly (APScheduler would log the
            # cancellation as the job's failure, with a traceback, at every restart)
        finally:
            self._running.discard(task)
