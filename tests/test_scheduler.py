"""Scheduler: one job per group, evaluated at once, then at k*interval + query_offset."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from bridge.rulefmt import load_rule_files
from bridge.rules import Group
from bridge.scheduler import TICK_MARGIN, Scheduler


def groups(tmp_path: Path, offset: str = "1s") -> list[Group]:
    path = tmp_path / "r.yaml"
    path.write_text(
        "groups:\n"
        f"  - {{name: a, interval: 1s, query_offset: {offset}, settle: [60s], rules: []}}\n"
        "  - {name: b, interval: 2s, query_offset: 1s, settle: [60s], rules: []}\n"
    )
    return load_rule_files([str(path)], min_query_offset=0)


async def test_groups_run_at_once_then_on_their_phase(tmp_path: Path) -> None:
    calls: list[tuple[str, float]] = []

    async def evaluate(group: Group) -> None:
        calls.append((group.name, time.time()))

    scheduler = Scheduler(evaluate)
    scheduler.start(groups(tmp_path))
    try:
        await asyncio.sleep(4.3)
    finally:
        scheduler.shutdown()
    a = [t for name, t in calls if name == "a"]
    b = [t for name, t in calls if name == "b"]
    assert len(a) in (4, 5, 6)
    assert len(b) in (2, 3, 4)
    for t in a[1:]:  # ticks fire just after a window becomes due, never before
        assert TICK_MARGIN - 0.001 <= t % 1 < 0.6
    for t in b[1:]:
        assert 1 + TICK_MARGIN - 0.001 <= t % 2 < 1.6


async def test_a_slow_evaluation_is_not_run_twice_at_once(tmp_path: Path) -> None:
    running = 0
    overlap = False
    calls = 0

    async def evaluate(group: Group) -> None:
        nonlocal running, overlap, calls
        calls += 1
        running += 1
        overlap = overlap or running > 1
        await asyncio.sleep(1.6)  # longer than the interval: the next tick must wait
        running -= 1

    scheduler = Scheduler(evaluate)
    scheduler.start(groups(tmp_path)[:1])
    try:
        await asyncio.sleep(3.5)
    finally:
        scheduler.shutdown()
    assert not overlap
    assert calls >= 2


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


async def test_a_tick_evaluates_the_group_as_now_written(tmp_path: Path) -> None:
    evaluated: list[Group] = []
    seen = asyncio.Condition()

    async def evaluate(group: Group) -> None:
        async with seen:
            evaluated.append(group)
            seen.notify_all()

    text = "groups:\n  - {name: a, interval: 1s, query_offset: 0s, settle: [60s], rules: []}\n"
    (first,) = load(tmp_path / "a.yaml", text)
    scheduler = Scheduler(evaluate)
    scheduler.start([first])
    try:
        async with seen:
            await asyncio.wait_for(seen.wait_for(lambda: len(evaluated) == 1), 5)
        (moved,) = load(tmp_path / "b.yaml", "# moved here\n" + text)
        scheduler.replace([moved])
        count = len(evaluated)
        async with seen:  # the next tick, within a second
            await asyncio.wait_for(seen.wait_for(lambda: len(evaluated) > count), 5)
        assert (evaluated[-1].file, evaluated[-1].line) == (moved.file, 3)
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
