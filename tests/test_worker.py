"""The worker: functions run on its one thread, in order, while the event loop goes on."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from bridge.worker import Worker, run_on

HELD = 10.0
"""How long a held function waits for the loop before giving up (never, when it passes)."""


async def test_a_function_runs_on_the_worker_s_thread_and_gives_its_value(
    worker: Worker,
) -> None:
    name = await worker.run(lambda: threading.current_thread().name)
    assert name.startswith("tempo-bridge-worker")
    assert await worker.run(divmod, 7, 2) == (3, 1)


async def test_a_function_s_exception_reaches_the_caller(worker: Worker) -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await worker.run(fail)


async def test_the_event_loop_goes_on_while_a_function_runs(worker: Worker) -> None:
    # the function waits for the loop: run on the loop itself it could never see it
    loop_ran = threading.Event()

    async def the_loop() -> None:
        loop_ran.set()

    task = asyncio.ensure_future(the_loop())
    assert await worker.run(loop_ran.wait, HELD)
    await task


async def test_functions_run_one_at_a_time_in_the_order_given(worker: Worker) -> None:
    events: list[str] = []
    first_may_end = threading.Event()

    def first() -> None:
        events.append("first starts")
        assert first_may_end.wait(HELD)
        events.append("first ends")

    def second() -> None:
        events.append("second runs")

    both = asyncio.gather(worker.run(first), worker.run(second))
    await asyncio.sleep(0)  # both submitted; the second waits for the first
    first_may_end.set()
    await both
    assert events == ["first starts", "first ends", "second runs"]


async def test_context_variables_reach_the_function(worker: Worker) -> None:
    rule = contextvars.ContextVar("rule", default="")
    rule.set("cost")
    assert await worker.run(rule.get) == "cost"


async def test_a_closed_worker_takes_nothing_more(worker: Worker) -> None:
    worker.close()
    with pytest.raises(RuntimeError):
        await worker.run(int)


async def test_without_a_worker_a_function_runs_here() -> None:
    assert await run_on(None, lambda: threading.current_thread().name) == (
        threading.current_thread().name)


async def test_with_a_worker_a_function_runs_there(worker: Worker) -> None:
    assert (await run_on(worker, lambda: threading.current_thread().name)).startswith(
        "tempo-bridge-worker")
