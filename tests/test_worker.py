"""The worker: functions run on its one thread, in order, while the event loop goes on."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from bridge.worker import Worker, run_on, run_to_end

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


async def test_a_worker_s_thread_is_named_after_its_job() -> None:
    state = Worker("state")
    try:
        assert (await state.run(lambda: threading.current_thread().name)).startswith(
            "tempo-bridge-state")
    finally:
        state.close()


async def test_run_to_end_without_a_worker_runs_here() -> None:
    assert await run_to_end(None, lambda: threading.current_thread().name) == (
        threading.current_thread().name)


async def test_a_caller_cancelled_meanwhile_waits_for_the_function_to_end(
    worker: Worker,
) -> None:
    """A commit is never left running behind the evaluation that made it: the cancelled
    caller ends once the function has, and the cancellation goes on."""
    loop, started, release = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
    ended: list[str] = []

    def commit() -> str:
        loop.call_soon_threadsafe(started.set)
        assert release.wait(HELD)
        ended.append("committed")
        return "ids"

    caller = asyncio.ensure_future(run_to_end(worker, commit))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done()  # still waiting for the function
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ended == ["committed"]


async def test_run_to_end_gives_the_function_s_value_or_exception(worker: Worker) -> None:
    assert await run_to_end(worker, lambda: 42) == 42

    def failing() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await run_to_end(worker, failing)
