"""Sender: queued requests posted in order, 400s narrowed to the bad series, too old samples
left out, memory and outbox in step."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest
import respx

from bridge.errors import StateError
from bridge.evaluation import Update
from bridge.metrics import Metrics
from bridge.remote_write import RemoteWriteClient, decode_write_request
from bridge.sender import Sender, encoder
from bridge.series import Exemplar, Labels, Sample
from bridge.state import RuleKey, State
from bridge.worker import Worker

URL = "http://receiver/api/v1/write"
NOW = 1795780800.0
RULE = RuleKey("g", "x_total", "e", "counter")


def series(name: str) -> Labels:
    return (("__name__", "x_total"), ("model", name))


def fill(state: State, sender: Sender | None, samples: list[Sample], *, per_request: int = 1000,
         exemplars: dict[tuple[Labels, int], list[Exemplar]] | None = None) -> None:
    """Commit ``samples`` as an evaluation would; hand them to ``sender`` in memory."""
    batches = encoder({"cluster": "eu"}, per_request)(samples, exemplars or {})
    ids = state.commit(RULE, Update(0, frozenset(), {}, samples=samples), batches)
    if sender is not None:
        sender.enqueue(ids, batches)


async def no_sleep(_: float) -> None:
    return None


def make_sender(
    tmp_path: Path, max_sample_age: float = 3000.0, state_worker: Worker | None = None,
) -> tuple[Sender, State, Metrics]:
    state = State(tmp_path / "s.sqlite")
    metrics = Metrics()
    sender = Sender(state, RemoteWriteClient(URL), metrics, clock=lambda: NOW, sleep=no_sleep,
                    max_sample_age=max_sample_age, state_worker=state_worker)
    return sender, state, metrics


def record(bodies: list[bytes], request: httpx.Request) -> httpx.Response:
    bodies.append(request.content)
    return httpx.Response(204)


def dropped(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "tempo_bridge_samples_dropped_total", {"reason": reason}
    )


def sent(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("tempo_bridge_samples_sent_total")


def models(bodies: Iterable[bytes]) -> list[str]:
    return [dict(labels)["model"] for body in bodies for labels, _, _ in decode_write_request(body)]


@respx.mock
async def test_a_400_drops_only_the_series_it_refuses(tmp_path: Path) -> None:
    received: list[Labels] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        batch = decode_write_request(request.content)
        if any(dict(labels)["model"] == "bad" for labels, _, _ in batch):
            return httpx.Response(400, text="out of order sample\n")
        received.extend(labels for labels, _, _ in batch)
        return httpx.Response(204)

    respx.post(URL).mock(side_effect=receiver)
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    fill(state, sender, [(series(m), ts, 1.0) for m in ["a", "b", "bad", "c", "d"]])
    await sender.drain()
    assert sorted(dict(labels)["model"] for labels in received) == ["a", "b", "c", "d"]
    assert all(dict(labels)["cluster"] == "eu" for labels in received)
    assert state.outbox_samples() == 0
    assert dropped(metrics, "rejected") == 1
    assert sent(metrics) == 4


@respx.mock
async def test_a_series_refused_whole_counts_all_its_samples_as_dropped(tmp_path: Path) -> None:
    respx.post(URL).mock(return_value=httpx.Response(400, text="out of bounds\n"))
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    fill(state, sender, [(series("a"), ts - 2000, 1.0), (series("a"), ts - 1000, 2.0),
                         (series("a"), ts, 3.0)])
    await sender.drain()
    assert dropped(metrics, "rejected") == 3  # the newest alone refused too: all three
    assert dropped(metrics, "out_of_order") is None
    assert not sent(metrics)
    assert state.outbox_samples() == 0


@respx.mock
async def test_retryable_failures_are_retried_until_accepted(tmp_path: Path) -> None:
    route = respx.post(URL).mock(
        side_effect=[
            httpx.Response(503, text="busy"),
            httpx.Response(429, headers={"Retry-After": "1"}),
            httpx.ConnectError("refused"),
            httpx.Response(204),
        ]
    )
    sender, state, metrics = make_sender(tmp_path)
    fill(state, sender, [(series("a"), int(NOW * 1000), 1.0)])
    await sender.drain()
    assert route.call_count == 4
    assert state.outbox_samples() == 0
    for reason in ("http_503", "http_429", "network"):
        assert metrics.registry.get_sample_value(
            "tempo_bridge_send_retries_total", {"reason": reason}
        ) == 1


@respx.mock
async def test_other_4xx_drop_the_request_without_splitting(tmp_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(401, text="no auth"))
    sender, state, metrics = make_sender(tmp_path)
    fill(state, sender, [(series(m), int(NOW * 1000), 1.0) for m in "abcd"])
    await sender.drain()
    assert route.call_count == 1
    assert state.outbox_samples() == 0
    assert dropped(metrics, "rejected") == 4


@respx.mock
async def test_samples_too_old_when_their_turn_comes_are_left_out(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, metrics = make_sender(tmp_path, max_sample_age=600.0)
    now_ms = int(NOW * 1000)
    trace = Exemplar("abc", 1.0, now_ms - 5000)
    fill(state, sender, [(series("a"), now_ms - 601_000, 1.0), (series("a"), now_ms, 2.0),
                         (series("b"), now_ms - 700_000, 3.0)],
         exemplars={(series("a"), now_ms): [trace]})
    await sender.drain()
    assert dropped(metrics, "too_old") == 2
    assert [decode_write_request(body) for body in bodies] == [[
        ((("__name__", "x_total"), ("cluster", "eu"), ("model", "a")), [(now_ms, 2.0)],
         [trace]),
    ]]
    assert sent(metrics) == 1


@respx.mock
async def test_requests_are_sent_in_outbox_order_from_memory_or_from_the_outbox(
    tmp_path: Path,
) -> None:
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, _ = make_sender(tmp_path)
    ts = int(NOW * 1000)
    # queued by an earlier run (only in the outbox), then handed over in memory
    fill(state, None, [(series("old"), ts, 1.0)])
    fill(state, sender, [(series(m), ts, 1.0) for m in "ab"], per_request=1)
    fill(state, None, [(series("c"), ts, 1.0)])  # the memory queue was full
    fill(state, sender, [(series("d"), ts, 1.0)])
    await sender.drain()
    assert models(bodies) == ["old", "a", "b", "c", "d"]
    assert state.outbox_samples() == 0
    assert state.outbox() == []


@respx.mock
async def test_requests_handed_over_after_they_were_sent_are_not_kept(tmp_path: Path) -> None:
    """With the state on a thread of its own, the sender can find an evaluation's requests
    in the outbox before the engine hands them over: they are sent once, and the late
    hand-over does not keep their bodies in memory (the memory queue would fill up)."""
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, _ = make_sender(tmp_path)
    samples = [(series(m), int(NOW * 1000), 1.0) for m in "ab"]
    batches = encoder({"cluster": "eu"}, 1)(samples, {})
    ids = state.commit(RULE, Update(0, frozenset(), {}, samples=samples), batches)
    await sender.drain()  # found in the outbox
    sender.enqueue(ids, batches)  # the hand-over, late
    fill(state, sender, [(series("c"), int(NOW * 1000), 1.0)])
    await sender.drain()
    assert models(bodies) == ["a", "b", "c"]
    assert sender._memory == {}
    assert sender._memory_bytes == 0


@respx.mock
async def test_with_a_state_worker_the_outbox_is_read_and_updated_on_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_worker: Worker,
) -> None:
    """The daemon's commits run on the state's worker: the sender's calls wait there for
    the one under way rather than holding the event loop (seconds, for a big rule)."""
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, _ = make_sender(tmp_path, state_worker=state_worker)
    ts = int(NOW * 1000)
    fill(state, None, [(series("old"), ts, 1.0)])
    fill(state, sender, [(series(m), ts, 1.0) for m in "ab"], per_request=1)
    threads: set[str] = set()

    def noting(call: Callable[..., object]) -> Callable[..., object]:
        def noted(*args: object, **kwargs: object) -> object:
            threads.add(threading.current_thread().name)
            return call(*args, **kwargs)
        return noted

    for name in ("next_outbox_id", "outbox", "remove_from_outbox", "outbox_oldest_ts_ms",
                 "outbox_samples"):
        monkeypatch.setattr(state, name, noting(getattr(state, name)))
    await sender.drain()
    (thread,) = threads
    assert thread.startswith("tempo-bridge-state")
    assert models(bodies) == ["old", "a", "b"]
    assert state.outbox() == []


@pytest.mark.parametrize("depth", [0, 3])
async def test_outbox_gauges(tmp_path: Path, depth: int) -> None:
    sender, state, metrics = make_sender(tmp_path)
    fill(state, None, [(series(str(i)), int(NOW * 1000) - 30_000 + i, 1.0) for i in range(depth)])
    await sender.update_gauges()
    assert metrics.registry.get_sample_value("tempo_bridge_outbox_samples") == depth
    age = metrics.registry.get_sample_value("tempo_bridge_outbox_oldest_sample_age_seconds")
    assert age == (30.0 if depth else 0.0)


@respx.mock
async def test_a_resend_the_receiver_already_has_is_not_counted_as_rejected(
    tmp_path: Path,
) -> None:
    """The acknowledgement of a stored request was lost: resent, its older samples are
    refused as out of order; the newest is accepted and the series carries on."""
    stored: dict[Labels, int] = {}

    def prometheus(request: httpx.Request) -> httpx.Response:
        batch = decode_write_request(request.content)
        for labels, samples, _ in batch:
            if samples[0][0] < stored.get(labels, 0):
                return httpx.Response(400, text="out of order sample\n")
        for labels, samples, _ in batch:
            stored[labels] = samples[-1][0]
        return httpx.Response(204)

    respx.post(URL).mock(side_effect=prometheus)
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    resent = [(series("a"), ts - 60_000, 1.0), (series("a"), ts, 2.0), (series("b"), ts, 5.0)]
    fill(state, sender, resent)
    await sender.drain()
    assert sent(metrics) == 3
    # a bridge whose acknowledgement was lost still has the same request queued
    (tmp_path / "again").mkdir()
    sender, state, metrics = make_sender(tmp_path / "again")
    fill(state, None, resent)
    await sender.drain()
    assert state.outbox_samples() == 0
    assert dropped(metrics, "rejected") is None
    assert dropped(metrics, "out_of_order") == 1
    assert sent(metrics) == 2


@respx.mock
async def test_a_failing_state_does_not_stop_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(204))
    sender, state, _ = make_sender(tmp_path)
    fill(state, sender, [(series("a"), int(NOW * 1000), 1.0)])
    real = state.remove_from_outbox
    failures: list[int] = []

    def failing_once(ids: Iterable[int]) -> None:
        if not failures:
            failures.append(1)
            raise StateError("cannot update the outbox: disk I/O error")
        real(ids)

    monkeypatch.setattr(state, "remove_from_outbox", failing_once)
    task = asyncio.create_task(sender.run(idle=0.05))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if state.outbox_samples() == 0:
                break
    finally:
        task.cancel()
    assert failures == [1]
    assert state.outbox_samples() == 0  # sent again (an identical resend) and removed
    assert route.call_count == 2



async def test_cancelling_the_run_ends_it_even_with_a_wake_up_pending(tmp_path: Path) -> None:
    """Found by a daemon test that hung in stopping: a commit woke the sender just as the
    daemon cancelled it, and ``asyncio.wait_for`` (Python 3.11) returned the wake-up
    instead of raising the cancellation, so the sender ran on and the daemon waited."""
    sender, state, _ = make_sender(tmp_path)
    run = asyncio.create_task(sender.run(idle=60))
    for _ in range(5):  # the outbox is empty: the sender waits for a wake-up
        await asyncio.sleep(0)
    sender.wake()
    run.cancel()
    try:
        done, _ = await asyncio.wait([run], timeout=5)
        assert done == {run}, "the sender ran on after it was cancelled"
        assert run.cancelled()
    finally:
        run.cancel()  # waiting again, it takes the cancellation
        await asyncio.wait([run], timeout=5)
        state.close()



@respx.mock
async def test_outbox_gauges_follow_the_outbox_while_the_receiver_fails(
    tmp_path: Path,
) -> None:
    """drain() does not return during an outage; the gauges must not freeze at the value
    of the last drain (the outbox alerts read them)."""
    sender, state, metrics = make_sender(tmp_path)
    depths: list[float | None] = []
    attempts = 0

    def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        depths.append(metrics.registry.get_sample_value("tempo_bridge_outbox_samples"))
        if attempts == 2:  # samples committed during the outage
            fill(state, None, [(series("b"), int(NOW * 1000) + i, 1.0) for i in range(4)])
        return httpx.Response(503 if attempts < 4 else 204)

    respx.post(URL).mock(side_effect=receiver)
    await sender.update_gauges()
    fill(state, sender, [(series("a"), int(NOW * 1000) - 30_000, 1.0)])
    await sender.drain()
    assert depths[:4] == [0.0, 1.0, 5.0, 5.0]
    assert metrics.registry.get_sample_value("tempo_bridge_outbox_samples") == 0


@respx.mock
async def test_requests_of_one_evaluation_go_side_by_side_and_evaluations_in_order(
    tmp_path: Path,
) -> None:
    in_flight: list[str] = []
    overlaps: list[set[str]] = []
    order: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        (labels, samples, _), *_ = decode_write_request(request.content)
        name = f"{dict(labels)['model']}@{samples[0][0]}"
        in_flight.append(name)
        overlaps.append(set(in_flight))
        await asyncio.sleep(0.01)
        in_flight.remove(name)
        order.append(name)
        return httpx.Response(204)

    respx.post(URL).mock(side_effect=receiver)
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    # two evaluations of the same series, one request per series each
    fill(state, sender, [(series(m), ts, 1.0) for m in "abcd"], per_request=1)
    fill(state, sender, [(series(m), ts + 60_000, 2.0) for m in "abcd"], per_request=1)
    await sender.drain()
    assert sent(metrics) == 8
    assert max(len(names) for names in overlaps) > 1  # side by side
    # never a request of the second evaluation while one of the first is under way
    for names in overlaps:
        assert len({name.split("@")[1] for name in names}) == 1
    assert all(o.endswith(str(ts)) for o in order[:4])
    assert state.outbox_samples() == 0
