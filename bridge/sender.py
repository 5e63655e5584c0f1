"""Sender: drains the outbox to the remote-write receiver, in order, with retries."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.errors import ReceiverError, StateError
from bridge.metrics import Metrics
from bridge.remote_write import (
    RemoteWriteClient,
    add_external_labels,
    encode_write_request,
    retrying,
)
from bridge.series import Labels, format_labels
from bridge.state import OutboxRow, State
from bridge.status import ReceiverAnswer, StatusBoard

log = structlog.get_logger("bridge.sender")


class Sender:
    """Sends queued samples oldest first; a sample leaves the outbox once it is accepted.

    Retryable failures (5xx, 429, network) are retried with backoff for as long as it
    takes. A request the receiver refuses (other 4xx) is logged with its body and its
    samples are counted as dropped. Samples older than ``max_sample_age`` or older than
    the last one accepted for their series are dropped before sending.
    """

    def __init__(
        self,
        state: State,
        client: RemoteWriteClient,
        metrics: Metrics,
        *,
        max_samples_per_send: int,
        max_sample_age: float,
        external_labels: dict[str, str],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        status: StatusBoard | None = None,
    ) -> None:
        self._state = state
        self._client = client
        self._metrics = metrics
        self._batch = max_samples_per_send
        self._max_age_ms = int(max_sample_age * 1000)
        self._external = external_labels
        self._clock = clock
        self._sleep = sleep
        self._status = status
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Tell the sender that the outbox has new samples."""
        self._wake.set()

    async def run(self, idle: float = 5.0) -> None:
        """Drain the outbox whenever woken (or every ``idle`` seconds), until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except (StateError, sqlite3.Error) as exc:
                # the samples stay queued; try again at the next wake-up or after ``idle``
                log.error("cannot read or update the outbox", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)

    async def drain(self) -> None:
        """Send everything in the outbox; returns when it is empty."""
        while rows := self._state.outbox_head(self._batch):
            await self._send(rows)
        self.update_gauges()

    def update_gauges(self) -> None:
        depth = self._state.outbox_depth()
        self._metrics.outbox_samples.set(depth)
        oldest = self._state.outbox_oldest_ts_ms()
        age = 0.0 if oldest is None else max(self._clock() - oldest / 1000, 0.0)
        self._metrics.outbox_oldest_age.set(age)
        if self._status is not None:
            self._status.outbox(depth, age, self._clock())

    async def _send(self, rows: list[OutboxRow]) -> None:
        keep = self._sendable(rows)
        kept = {r.id for r in keep}
        stale = [r for r in rows if r.id not in kept]
        batch = self._group(keep)
        rejected = await self._deliver(batch) if batch else []
        rejected_ids = {r.id for s in rejected for r in s.rows}
        delivered = [r for r in keep if r.id not in rejected_ids]
        self._metrics.samples_sent.inc(len(delivered) - sum(s.dropped for s in batch))
        self._state.remove_from_outbox(
            delivered=delivered, dropped=stale + [r for s in rejected for r in s.rows]
        )

    async def _deliver(self, batch: list[_Series]) -> list[_Series]:
        """Send ``batch``, retrying what may succeed later; return the series refused.

        A 400 refuses the whole request for one bad sample (Prometheus keeps none of
        it), so a refused batch is split in halves until the bad series are found; the
        others are delivered. Other 4xx answers (auth, not found) refuse the batch.
        """
        body = encode_write_request([(s.labels, s.samples) for s in batch])
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
            if exc.status == 400 and len(batch) > 1:
                half = len(batch) // 2
                return await self._deliver(batch[:half]) + await self._deliver(batch[half:])
            if exc.status == 400 and len(batch[0].values) > 1:
                # Most often a resend after a lost acknowledgement: the receiver has the
                # older samples and refuses them as out of order. The newest carries on.
                series = batch[0]
                newest = max(series.values)
                only = _Series(series.labels, {newest: series.values[newest]}, series.rows)
                if not await self._deliver([only]):
                    series.dropped = len(series.values) - 1
                    self._metrics.samples_dropped.labels("out_of_order").inc(series.dropped)
                    log.warning(
                        "older samples refused, the newest accepted",
                        series=format_labels(series.labels), samples=series.dropped, error=str(exc),
                    )
                    return []
                return batch
            samples = sum(len(s.samples) for s in batch)
            self._metrics.samples_dropped.labels("rejected").inc(samples)
            log.error(
                "remote write rejected", reason=exc.reason, status=exc.status,
                series=len(batch), samples=samples,
                first_series=format_labels(batch[0].labels), error=str(exc),
            )
            return batch
        return []

    def _sendable(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Rows the receiver can still take: recent enough, not older than the last sent."""
        min_ts = int(self._clock() * 1000) - self._max_age_ms if self._max_age_ms else None
        last_sent = self._state.last_sent(r.series_id for r in rows)
        keep = []
        too_old = out_of_order = 0
        for row in rows:
            if min_ts is not None and row.ts_ms < min_ts:
                too_old += 1
            elif row.ts_ms <= last_sent.get(row.series_id, -1):
                out_of_order += 1
            else:
                keep.append(row)
        if too_old:
            self._metrics.samples_dropped.labels("too_old").inc(too_old)
        if out_of_order:
            self._metrics.samples_dropped.labels("out_of_order").inc(out_of_order)
            log.warning("samples older than the last sent dropped", samples=out_of_order)
        return keep

    def _group(self, rows: list[OutboxRow]) -> list[_Series]:
        """One time series per label set, samples in time order, one per timestamp."""
        by_series: dict[int, _Series] = {}
        for row in rows:
            series = by_series.get(row.series_id)
            if series is None:
                labels = add_external_labels(row.labels, self._external)
                series = by_series[row.series_id] = _Series(labels, {}, [])
            series.values[row.ts_ms] = row.value
            series.rows.append(row)
        return list(by_series.values())

    def _answered(self, status: int | None, error: str | None) -> None:
        if self._status is not None:
            self._status.receiver_answered(ReceiverAnswer(self._clock(), status, error))

    def _on_retry(self, reason: str, wait: float) -> None:
        self._metrics.send_retries.labels(reason).inc()
        # drain() returns only once the receiver takes the samples: while it fails, the
        # outbox gauges (and the status page) follow the outbox at every retry instead
        self.update_gauges()
        log.warning("remote write failed, retrying", reason=reason, retry_in=round(wait, 3))


@dataclass
class _Series:
    """One series of a batch: its labels, samples by timestamp, and the outbox rows."""

    labels: Labels
    values: dict[int, float]
    rows: list[OutboxRow]
    dropped: int = 0
    """Samples the receiver refused while it took the series' newest one."""

    @property
    def samples(self) -> list[tuple[int, float]]:
        return sorted(self.values.items())
