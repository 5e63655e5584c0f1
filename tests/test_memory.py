"""The garbage collector's pause: nested, overlapping across tasks, restored as found."""

from __future__ import annotations

import asyncio
import gc
import platform
import threading
from collections.abc import Iterator

import pytest

from bridge.memory import gc_paused, one_malloc_arena


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_nested_pauses_end_with_the_outer_one() -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_a_failing_block_ends_its_pause() -> None:
    gc.enable()
    with pytest.raises(ValueError, match="boom"), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


async def test_overlapping_pauses_of_tasks_end_with_the_last_one() -> None:
    # task a pauses, b pauses, a ends first: b's block still runs paused
    gc.enable()
    a_paused, b_paused, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[bool] = []

    async def a() -> None:
        with gc_paused():
            a_paused.set()
            await b_paused.wait()
        a_done.set()

    async def b() -> None:
        await a_paused.wait()
        with gc_paused():
            b_paused.set()
            await a_done.wait()
            seen.append(gc.isenabled())

    await asyncio.gather(a(), b())
    assert seen == [False]
    assert gc.isenabled()


def test_pauses_overlap_across_threads() -> None:
    # the worker thread parses with the collector paused while an evaluation's step
    # holds its own pause on the event loop's thread
    gc.enable()
    inner_done = threading.Event()

    def worker_pause() -> None:
        with gc_paused():
            assert not gc.isenabled()
        inner_done.set()

    with gc_paused():
        thread = threading.Thread(target=worker_pause)
        thread.start()
        thread.join()
        assert inner_done.is_set()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_the_process_keeps_to_one_malloc_arena_on_glibc() -> None:
    # glibc's mallopt says 1 when it took the setting; other C libraries have none
    glibc = platform.libc_ver()[0] == "glibc"
    assert one_malloc_arena() is glibc
