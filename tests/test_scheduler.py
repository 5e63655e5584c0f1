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
