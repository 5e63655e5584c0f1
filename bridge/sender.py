"""Sender: posts the outbox's requests to the remote-write receiver, in order, with retries.

Each committed evaluation's requests are handed over in memory right after the commit
(:meth:`Sender.enqueue`); the outbox is their durable copy, read back only after a
restart or when the memory queue was full. A request leaves the outbox once the receiver
took it, or once its samples are counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.errors import ReceiverError, StateError
from bridge.metrics import Metrics
from bridge.remote_write import (
    Batch,
    BatchEncoder,
    RemoteWriteClient,
    Series,
    decode_write_request,
    encode_write_request,
    retrying,
)
from bridge.series import Exemplar, Labels, Sample, format_labels
from bridge.state import State
from bridge.status import ReceiverAnswer, StatusBoard
from bridge.worker import Worker, run_on

log = structlog.get_logger("bridge.sender")

MEMORY_QUEUE_BYTES = 64 * 1024 * 1024
"""Requests handed over in memory beyond this many bytes are read back from the outbox."""

CONCURRENCY = 4
"""Requests of one evaluation whose series are in no other of its requests are posted up
to this many at a time: a steady evaluation of 100,000 series is 50 requests."""


class Sender:
    """Posts queued requests oldest first; a request leaves the outbox once it is accepted.

    Retryable failures (5xx, 429, network) are retried with backoff for as long as it
    takes. A request the receiver refuses with 400 (one bad sample refuses it all) is
    split until the refused series are found, which alone are dropped; other 4xx answers
    drop the request. Samples older than ``max_sample_age`` when their turn comes (after a
    long outage) are dropped before sending.
    """

    def __init__(
        self,
        state: State,
        client: RemoteWriteClient,
        metrics: Metrics,
        *,
        max_sample_age: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        status: StatusBoard | None = None,
        state_worker: Worker | None = None,
    ) -> None:
        self._state = state
        self._state_worker = state_worker  # where its calls into the state are made
        self._client = client
        self._metrics = metrics
        self._max_age_ms = int(max_sample_age * 1000)
        self._clock = clock
        self._sleep = sleep
        self._status = status
        self._wake = asyncio.Event()
        self._memory: dict[int, tuple[Batch, int]] = {}  # id -> request, evaluation
        self._memory_bytes = 0
        self._done = 0  # the outbox id of the last request taken care of

    def enqueue(self, ids: Sequence[int], batches: Sequence[Batch]) -> None:
        """Requests just committed to the outbox under ``ids``: keep them in memory (up to
        :data:`MEMORY_QUEUE_BYTES`) and wake the sender."""
        for request_id, batch in zip(ids, batches, strict=True):
            if self._memory_bytes + len(batch.body) > MEMORY_QUEUE_BYTES:
                break
            self._memory[request_id] = (batch, ids[0])
            self._memory_bytes += len(batch.body)
        self._wake.set()

    def wake(self) -> None:
        """Tell the sender that the outbox may have new requests."""
        self._wake.set()

    async def run(self, idle: float = 5.0) -> None:
        """Send whenever woken (or every ``idle`` seconds), until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except (StateError, sqlite3.Error) as exc:
                # the requests stay queued; try again at the next wake-up or after ``idle``
                log.error("cannot read or update the outbox", error=str(exc))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a wake-up that
            # came with a cancellation instead of raising it, and the sender would run on
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()

    async def drain(self) -> None:
        """Send everything queued; returns when the outbox is empty."""
        while requests := await self._next():
            if len(requests) > 1 and all(batch.independent for _, batch in requests):
                # requests of one evaluation with series of their own: side by side
                await asyncio.gather(*(self._send(i, batch) for i, batch in requests))
                self._done = requests[-1][0]
                continue
            for request_id, batch in requests:
                await self._send(request_id, batch)
                self._done = request_id
        await self.update_gauges()

    async def update_gauges(self) -> None:
        depth = await run_on(self._state_worker, self._state.outbox_samples)
        self._metrics.outbox_samples.set(depth)
        oldest = await run_on(self._state_worker, self._state.outbox_oldest_ts_ms)
        age = 0.0 if oldest is None else max(self._clock() - oldest / 1000, 0.0)
        self._metrics.outbox_oldest_age.set(age)
        if self._status is not None:
            self._status.outbox(depth, age, self._clock())

    async def _next(self) -> list[tuple[int, Batch]]:
        """The next requests in outbox order: the next one from memory when it is there,
        else a few read back from the outbox."""
        # requests handed over after the sender had found them in the outbox (the commit
        # and the hand-over are two steps apart when the state has a thread of its own)
        for sent in [i for i in self._memory if i <= self._done]:
            self._forget(sent)
        state, on = self._state, self._state_worker
        request_id = await run_on(on, state.next_outbox_id, after=self._done)
        if request_id is None:
            return []
        entry = self._memory.get(request_id)
        if entry is None:
            return await run_on(on, state.outbox, after=self._done, limit=16)
        batch, evaluation = entry
        taken = [(request_id, batch)]
        while batch.independent and len(taken) < CONCURRENCY:
            following = self._memory.get(taken[-1][0] + 1)
            if following is None or following[1] != evaluation:
                break
            taken.append((taken[-1][0] + 1, following[0]))
        return taken

    def _forget(self, request_id: int) -> None:
        entry = self._memory.pop(request_id, None)
        if entry is not None:
            self._memory_bytes -= len(entry[0].body)

    async def _send(self, request_id: int, batch: Batch) -> None:
        """Deliver one request (what is still young enough of it) and remove it."""
        min_ts = int(self._clock() * 1000) - self._max_age_ms if self._max_age_ms else None
        if min_ts is not None and batch.min_ts < min_ts:
            batch = self._without_old(batch, min_ts)
        if batch.samples:
            delivered = await self._deliver(batch.body, batch.samples, lambda: series_of(batch))
            self._metrics.samples_sent.inc(delivered)
        await run_on(self._state_worker, self._state.remove_from_outbox, [request_id])
        self._forget(request_id)

    def _without_old(self, batch: Batch, min_ts: int) -> Batch:
        """The request without the samples older than ``min_ts`` (the receiver would
        refuse them, and the whole request with them)."""
        kept: list[Series] = []
        dropped = count = 0
        low = batch.max_ts
        for labels, points, exemplars in decode_write_request(batch.body):
            young = [(ts, v) for ts, v in points if ts >= min_ts]
            dropped += len(points) - len(young)
            if young:
                kept.append((labels, young, exemplars))
                count += len(young)
                low = min(low, young[0][0])
        self._metrics.samples_dropped.labels("too_old").inc(dropped)
        log.warning("samples too old for the receiver dropped", samples=dropped)
        if not count:
            return Batch(b"", 0, batch.min_ts, batch.max_ts)
        return Batch(encode_write_request(kept), count, low, batch.max_ts)

    async def _deliver(
        self, body: bytes, samples: int, series: Callable[[], list[_Series]]
    ) -> int:
        """Send ``body``, retrying what may succeed later; how many samples the receiver
        took. A 400 refuses the whole request for one bad sample (Prometheus keeps none
        of it), so a refused request is split in halves until the bad series are found,
        and only their samples are dropped. Other 4xx answers (auth, not found) refuse it."""
        try:
            async for attempt in retrying(sleep=self._sleep, before_sleep=self._on_retry):
                with attempt:
                    try:
                        status = await self._client.send(body)
                    except ReceiverError as exc:
                        self._answered(exc.status, str(exc))
                        raise
                    self._answered(status, None)
        except ReceiverError as exc:
            if exc.status == 400:
                return await self._split(series(), exc)
            self._metrics.samples_dropped.labels("rejected").inc(samples)
            log.error("remote write rejected", reason=exc.reason, status=exc.status,
                      samples=samples, error=str(exc))
            return 0
        return samples

    async def _split(self, batch: list[_Series], exc: ReceiverError) -> int:
        """Find, by halves, the series the receiver refuses; deliver the others."""
        if len(batch) > 1:
            half = len(batch) // 2
            taken = 0
            for part in (batch[:half], batch[half:]):
                taken += await self._deliver(
                    _encode(part), sum(len(s.samples) for s in part), _given(part))
            return taken
        (series,) = batch
        if len(series.samples) > 1:
            # Most often a resend after a lost acknowledgement: the receiver has the older
            # samples and refuses them as out of order. The newest carries the total on.
            newest = [series.samples[-1]]
            only = _Series(series.labels, newest, [
                e for e in series.exemplars if e.ts_ms <= newest[0][0]][-1:])
            refused_before = len(series.samples) - 1
            if await self._deliver(_encode([only]), 1, _given([only])):
                self._metrics.samples_dropped.labels("out_of_order").inc(refused_before)
                log.warning("older samples refused, the newest accepted",
                            series=format_labels(series.labels), samples=refused_before,
                            error=str(exc))
                return 1
            self._metrics.samples_dropped.labels("rejected").inc(refused_before)
            return 0
        self._metrics.samples_dropped.labels("rejected").inc(1)
        log.error("remote write rejected", reason=exc.reason, status=exc.status,
                  series=format_labels(series.labels), samples=1, error=str(exc))
        return 0

    def _answered(self, status: int | None, error: str | None) -> None:
        if self._status is not None:
            self._status.receiver_answered(ReceiverAnswer(self._clock(), status, error))

    async def _on_retry(self, reason: str, wait: float) -> None:
        self._metrics.send_retries.labels(reason).inc()
        # drain() returns only once the receiver takes the samples: while it fails, the
        # outbox gauges (and the status page) follow the outbox at every retry instead
        await self.update_gauges()
        log.warning("remote write failed, retrying", reason=reason, retry_in=round(wait, 3))


@dataclass
class _Series:
    """One series of a refused request: its labels, samples and exemplars."""

    labels: Labels
    samples: list[tuple[int, float]]
    exemplars: list[Exemplar]


def series_of(batch: Batch) -> list[_Series]:
    return [_Series(labels, samples, exemplars)
            for labels, samples, exemplars in decode_write_request(batch.body)]


def _given(part: list[_Series]) -> Callable[[], list[_Series]]:
    return lambda: part


def _encode(part: Sequence[_Series]) -> bytes:
    return encode_write_request([(s.labels, s.samples, s.exemplars) for s in part])


def encoder(
    external: Mapping[str, str], max_samples: int,
) -> Callable[[Sequence[Sample], Mapping[tuple[Labels, int], Sequence[Exemplar]]], list[Batch]]:
    """How evaluations' samples become requests: external labels, request size."""
    return BatchEncoder(external, max_samples)
