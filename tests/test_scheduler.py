"""Scheduler: one job per group, evaluated at once, then at k*interval + query_offset.

The wall clock is time-machine's, frozen and moved by the tests (APScheduler reads it
through ``datetime.now``, the scheduler through ``time.time``); after each move the
scheduler is woken and the event loop runs what became due. No test waits for time to
pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest
from time_machine import TimeMachineFixture

from bridge.rulefmt import load_rule_files
from bridge.rules import Group
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


RULES = (
    "groups:\n"
    "  - name: a\n    interval: 1h\n    query_offset: 1s\n    settle: [2h]\n"
    "    rules:\n      - {record: a_total, expr: '{ } | count_over_time()', kind: counter}\n"
    "  - name: b\n    interval: 1h\n    query_offset: {b_offset}\n    settle: [2h]\n"
    "    rules: []\n"
)


def load(path: Path, text: str) -> list[Group]:
    path.write_text(text)
    return load_rule_files([str(path)], min_query_offset=0)


async def test_a_group_moved_or_commented_keeps_its_schedule(tmp_path: Path) -> None:
    """A comment above a group, or the group moved to another file, changes nothing: it is
    not rescheduled (a rescheduled group is evaluated at once), and its next runs see where
    it now is written."""
    evaluated: list[Group] = []
    seen = asyncio.Condition()

    async def evaluate(group: Group) -> None:
        async with seen:
            evaluated.append(group)
            seen.notify_all()

    async def evaluated_once_more(name: str) -> None:
        before = sum(g.name == name for g in evaluated)
        async with seen:
            await asyncio.wait_for(
                seen.wait_for(lambda: sum(g.name == name for g in evaluated) > before), 5)

    first = load(tmp_path / "a.yaml", RULES.replace("{b_offset}", "1s"))
    scheduler = Scheduler(evaluate)
    scheduler.start(first)
    try:
        async with seen:  # both evaluated at once when they start, then every hour
            await asyncio.wait_for(seen.wait_for(lambda: len(evaluated) == 2), 5)

        # A comment above group a, and group b changed: only b is rescheduled.
        commented = load(tmp_path / "a.yaml", "# a comment\n" + RULES.replace("{b_offset}", "2s"))
        assert commented[0] == first[0]
        assert commented[0].line == first[0].line + 1
        assert commented[1] != first[1]
        scheduler.replace(commented)
        await evaluated_once_more("b")  # a's immediate run, had there been one, came first
        assert [g.name for g in evaluated] == ["a", "b", "b"]

        # Both groups moved to another file, two lines down; only b changed (again).
        moved = load(tmp_path / "other.yaml", "\n\n" + RULES.replace("{b_offset}", "3s"))
        assert moved[0] == first[0]
        assert hash(moved[0]) == hash(first[0])
        assert moved[0].file != first[0].file
        scheduler.replace(moved)
        await evaluated_once_more("b")
        assert [g.name for g in evaluated] == ["a", "b", "b", "b"]
        assert [(g.file, g.line) for g in scheduler.groups] == [
            (moved[0].file, moved[0].line), (moved[1].file, moved[1].line)]
    finally:
        scheduler.shutdown()


async def test_a_tick_evaluates_the_group_as_now_written(
    tmp_path: Path, time_machine: TimeMachineFixture
) -> None:
    time_machine.move_to(T0 + 0.3, tick=False)
    evaluated: list[Group] = []

    async def evaluate(group: Group) -> None:
        evaluated.append(group)

    text = "groups:\n  - {name: a, interval: 1s, query_offset: 0s, settle: [60s], rules: []}\n"
    (first,) = load(tmp_path / "a.yaml", text)
    scheduler = Scheduler(evaluate)
    scheduler.start([first])
    try:
        await run_ready()
        assert len(evaluated) == 1
        (moved,) = load(tmp_path / "b.yaml", "# moved here\n" + text)
        scheduler.replace([moved])
        await run_ready()
        assert len(evaluated) == 1  # the same group: not rescheduled, not run at once
        time_machine.move_to(T0 + 1 + TICK_MARGIN + 0.001)  # its next tick
        scheduler.wakeup()
        await run_ready()
        assert len(evaluated) == 2
        assert (evaluated[-1].file, evaluated[-1].line) == (moved.file, 3)
    finally:
        scheduler.shutdown()


async def test_stop_cancels_evaluations_under_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop cancels the evaluation under way, and that is no failure of its job: nothing
    is logged (APScheduler logs a job's exception with its traceback)."""
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
    with caplog.at_level(logging.DEBUG, logger="apscheduler"):
        await asyncio.wait_for(scheduler.stop(), 5)
    assert cancelled
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
