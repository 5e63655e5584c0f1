"""Sender: the outbox drained in order, 400s narrowed to the bad series, nothing resent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import respx

from bridge.errors import StateError
from bridge.evaluation import Update
from bridge.metrics import Metrics
from bridge.remote_write import RemoteWriteClient, decode_write_request
from bridge.sender import Sender
from bridge.series import Labels
from bridge.state import OutboxRow, RuleKey, State

URL = "http://receiver/api/v1/write"
NOW = 1795780800.0


def series(name: str) -> Labels:
    return (("__name__", "x_total"), ("model", name))


def fill(state: State, samples: list[tuple[Labels, int, float]]) -> None:
    state.commit(RuleKey("g", "x_total", "e", "counter"),
                 Update(0, frozenset(), {}, samples=samples))


async def no_sleep(_: float) -> None:
    return None


def make_sender(tmp_path: Path, **kwargs: object) -> tuple[Sender, State, Metrics]:
    state = State(tmp_path / "s.sqlite")
    metrics = Metrics()
    options: dict[str, object] = {
        "max_samples_per_send": 1000, "max_sample_age": 3000.0,
        "external_labels": {"cluster": "eu"},
    }
    options.update(kwargs)
    sender = Sender(
        state, RemoteWriteClient(URL), metrics, clock=lambda: NOW, sleep=no_sleep,
        **options,  # type: ignore[arg-type]
    )
    return sender, state, metrics


def record(bodies: list[bytes], request: httpx.Request) -> httpx.Response:
    bodies.append(request.content)
    return httpx.Response(204)


def dropped(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "tempo_bridge_samples_dropped_total", {"reason": reason}
    )


@respx.mock
async def test_a_400_drops_only_the_series_it_refuses(tmp_path: Path) -> None:
    received: list[Labels] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        batch = decode_write_request(request.content)
        if any(dict(labels)["model"] == "bad" for labels, _ in batch):
            return httpx.Response(400, text="out of order sample\n")
        received.extend(labels for labels, _ in batch)
        return httpx.Response(204)

    respx.post(URL).mock(side_effect=receiver)
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    fill(state, [(series(m), ts, 1.0) for m in ["a", "b", "bad", "c", "d"]])
    await sender.drain()
    assert sorted(dict(labels)["model"] for labels in received) == ["a", "b", "c", "d"]
    assert all(dict(labels)["cluster"] == "eu" for labels in received)
    assert state.outbox_depth() == 0
    assert dropped(metrics, "rejected") == 1
    assert metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") == 4


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
    fill(state, [(series("a"), int(NOW * 1000), 1.0)])
    await sender.drain()
    assert route.call_count == 4
    assert state.outbox_depth() == 0
    for reason in ("http_503", "http_429", "network"):
        assert metrics.registry.get_sample_value(
            "tempo_bridge_send_retries_total", {"reason": reason}
        ) == 1


@respx.mock
async def test_other_4xx_drop_the_batch_without_splitting(tmp_path: Path) -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(401, text="no auth"))
    sender, state, metrics = make_sender(tmp_path)
    fill(state, [(series(m), int(NOW * 1000), 1.0) for m in "abcd"])
    await sender.drain()
    assert route.call_count == 1
    assert state.outbox_depth() == 0
    assert dropped(metrics, "rejected") == 4


@respx.mock
async def test_too_old_and_not_newer_samples_are_not_sent(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, metrics = make_sender(tmp_path, max_sample_age=600.0)
    now_ms = int(NOW * 1000)
    fill(state, [(series("a"), now_ms - 601_000, 1.0), (series("a"), now_ms, 2.0)])
    await sender.drain()
    assert dropped(metrics, "too_old") == 1
    # a crash after sending and before the outbox was cleared: the same samples again
    fill(state, [(series("a"), now_ms, 2.0), (series("a"), now_ms - 1000, 1.5)])
    await sender.drain()
    assert dropped(metrics, "out_of_order") == 2
    assert len(bodies) == 1
    assert decode_write_request(bodies[0]) == [
        ((("__name__", "x_total"), ("cluster", "eu"), ("model", "a")), [(now_ms, 2.0)])
    ]


@respx.mock
async def test_batches_follow_max_samples_per_send_in_order(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    respx.post(URL).mock(side_effect=lambda request: record(bodies, request))
    sender, state, _ = make_sender(tmp_path, max_samples_per_send=2)
    ts = int(NOW * 1000)
    fill(state, [(series("a"), ts + i * 1000, float(i)) for i in range(5)])
    await sender.drain()
    got = [s for body in bodies for _, samples in decode_write_request(body) for s in samples]
    assert [len(decode_write_request(b)[0][1]) for b in bodies] == [2, 2, 1]
    assert got == [(ts + i * 1000, float(i)) for i in range(5)]
    sender.update_gauges()


@pytest.mark.parametrize("depth", [0, 3])
async def test_outbox_gauges(tmp_path: Path, depth: int) -> None:
    sender, state, metrics = make_sender(tmp_path)
    fill(state, [(series("a"), int(NOW * 1000) - 30_000 + i, 1.0) for i in range(depth)])
    sender.update_gauges()
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
        for labels, samples in batch:
            if samples[0][0] < stored.get(labels, 0):
                return httpx.Response(400, text="out of order sample\n")
        for labels, samples in batch:
            stored[labels] = samples[-1][0]
        return httpx.Response(204)

    respx.post(URL).mock(side_effect=prometheus)
    sender, state, metrics = make_sender(tmp_path)
    ts = int(NOW * 1000)
    resent = [(series("a"), ts - 60_000, 1.0), (series("a"), ts, 2.0), (series("b"), ts, 5.0)]
    fill(state, resent)
    await sender.drain()
    assert metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") == 3
    # a bridge whose acknowledgement was lost still has the same samples queued
    (tmp_path / "again").mkdir()
    sender, state, metrics = make_sender(tmp_path / "again")
    fill(state, resent)
    await sender.drain()
    assert state.outbox_depth() == 0
    assert dropped(metrics, "rejected") is None
    assert dropped(metrics, "out_of_order") == 1
    assert metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") == 2


@respx.mock
async def test_a_failing_state_does_not_stop_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    respx.post(URL).mock(return_value=httpx.Response(204))
    sender, state, _ = make_sender(tmp_path)
    fill(state, [(series("a"), int(NOW * 1000), 1.0)])
    real = state.remove_from_outbox
    failures: list[int] = []

    def failing_once(**kwargs: Sequence[OutboxRow]) -> None:
        if not failures:
            failures.append(1)
            raise StateError("cannot update the outbox: disk I/O error")
        real(**kwargs)

    monkeypatch.setattr(state, "remove_from_outbox", failing_once)
    task = asyncio.create_task(sender.run(idle=0.05))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if state.outbox_depth() == 0:
                break
    finally:
        task.cancel()
    assert failures == [1]
    assert state.outbox_depth() == 0  # sent again (an identical resend) and removed


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
            fill(state, [(series("b"), int(NOW * 1000) + i, 1.0) for i in range(4)])
        return httpx.Response(503 if attempts < 4 else 204)

    respx.post(URL).mock(side_effect=receiver)
    sender.update_gauges()
    fill(state, [(series("a"), int(NOW * 1000) - 30_000, 1.0)])
    await sender.drain()
    assert depths[:4] == [0.0, 1.0, 5.0, 5.0]
    assert metrics.registry.get_sample_value("tempo_bridge_outbox_samples") == 0
