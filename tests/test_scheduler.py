"""Scheduler: one job per group, evaluated at once, then at k*interval + query_offset.

The wall clock is time-machine's, frozen and moved by the tests (APScheduler reads it
through ``datetime.now``, the scheduler through ``time.time``); after each move the
scheduler is woken and the event loop runs what became due. No test waits for time to
pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from time_machine import TimeMachineFixture

from bridge.rules import Group, load_rule_files
from bridge.scheduler import TICK_MARGIN, Scheduler
from tests.support.clock import run_ready
from tests.support.files import rules_yaml

T0 = 1795780800  # a multiple of 3600


def groups(tmp_path: Path) -> list[Group]:
    """``a``: 1 s windows read 1 s after they end; ``b``: 2 s windows read 1 s after."""
    a = rules_yaml(group="a", interval="1s", query_offset="1s")
    b = rules_yaml(group="b", interval="2s", query_offset="1s")
    path = tmp_path / "r.yaml"
    path.write_text(a + b.removeprefix("groups:\n"))
    return load_rule_files([str(path)], min_query_offset=0)


async def test_groups_run_at_once_then_each_tick_on_its_phase(
    tmp_path: Path, time_machine: TimeMachineFixture
) -> None:
    time_machine.move_to(T0 + 0.3, tick=False)
    calls: list[tuple[str, float]] = []

    async def evaluate(group: Group) -> None:
        calls.append((group.name, time.time()))

    scheduler = Scheduler(evaluate)
    scheduler.start(groups(tmp_path))
    try:
        await run_ready()
        assert sorted(calls) == [("a", T0 + 0.3), ("b", T0 + 0.3)]  # at once, to catch up
        # a ticks at k + TICK_MARGIN, b at 2k + 1 + TICK_MARGIN: just after a window is due
        ticks = {T0 + 1: ["a", "b"], T0 + 2: ["a"], T0 + 3: ["a", "b"], T0 + 4: ["a"]}
        for due, names in ticks.items():
            calls.clear()
            time_machine.move_to(due + TICK_MARGIN - 0.001)
            scheduler.wakeup()
            await run_ready()
            assert calls == [], f"a tick before {due} + TICK_MARGIN"
            time_machine.move_to(due + TICK_MARGIN + 0.001)
            scheduler.wakeup()
            await run_ready()
            assert sorted(name for name, _ in calls) == names, due
    finally:
        scheduler.shutdown()


async def test_a_slow_evaluation_is_not_run_twice_at_once(
    tmp_path: Path, time_machine: TimeMachineFixture
) -> None:
    time_machine.move_to(T0 + 0.3, tick=False)
    release = asyncio.Event()
    running = 0
    overlap = False
    calls = 0

    async def evaluate(group: Group) -> None:
        nonlocal running, overlap, calls
        calls += 1
        running += 1
        overlap = overlap or running > 1
        await release.wait()  # a slow Tempo query
        running -= 1

    scheduler = Scheduler(evaluate)
    scheduler.start(groups(tmp_path)[:1])
    try:
        await run_ready()
        assert calls == 1  # the run at start, still under way
        time_machine.move_to(T0 + 3.5)  # three ticks come due meanwhile
        scheduler.wakeup()
        await run_ready()
        assert calls == 1  # the tick waits for the run under way
        release.set()
        await run_ready()
        assert calls == 2  # then runs once: the ticks missed meanwhile are one run
        assert not overlap
        time_machine.move_to(T0 + 4.5)
        scheduler.wakeup()
        await run_ready()
        assert calls == 3
    finally:
        scheduler.shutdown()


async def test_replace_keeps_unchanged_groups(tmp_path: Path) -> None:
    async def evaluate(group: Group) -> None:
        return None

    scheduler = Scheduler(evaluate)
    first = groups(tmp_path)
    scheduler.start(first)
    try:
        changed = [first[0], dataclasses.replace(first[1], query_offset=2)]
        scheduler.replace(changed)
        assert scheduler.groups == changed
        scheduler.replace(changed[:1])
        assert [g.name for g in scheduler.groups] == ["a"]
    finally:
        scheduler.shutdown()


async def test_stop_cancels_evaluations_under_way(tmp_path: Path) -> None:
    started = asyncio.Event()
    cancelled = False

    async def evaluate(group: Group) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(60)  # a slow Tempo query
        except asyncio.CancelledError:
            cancelled = True
            raise

    scheduler = Scheduler(evaluate)
    scheduler.start(groups(tmp_path)[:1])
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(scheduler.stop(), 5)
    assert cancelled
