"""Sender: drains the outbox to the remote-write receiver, in order, with retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bridge.errors import ReceiverError
from bridge.evaluation import Labels
from bridge.metrics import Metrics
from bridge.remote_write import (
    RemoteWriteClient,
    add_external_labels,
    encode_write_request,
    retrying,
)
from bridge.state import OutboxRow, State

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
    ) -> None:
        self._state = state
        self._client = client
        self._metrics = metrics
        self._batch = max_samples_per_send
        self._max_age_ms = int(max_sample_age * 1000)
        self._external = external_labels
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Tell the sender that the outbox has new samples."""
        self._wake.set()

    async def run(self, idle: float = 5.0) -> None:
        """Drain the outbox whenever woken (or every ``idle`` seconds), until cancelled."""
        while True:
            self._wake.clear()
            await self.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)

    async def drain(self) -> None:
        """Send everything in the outbox; returns when it is empty."""
        while rows := self._state.outbox_head(self._batch):
            await self._send(rows)
        self.update_gauges()

    def update_gauges(self) -> None:
        self._metrics.outbox_samples.set(self._state.outbox_depth())
        oldest = self._state.outbox_oldest_ts_ms()
        age = 0.0 if oldest is None else max(self._clock() - oldest / 1000, 0.0)
        self._metrics.outbox_oldest_age.set(age)

    async def _send(self, rows: list[OutboxRow]) -> None:
        keep = self._sendable(rows)
        if keep:
            body = encode_write_request(self._group(keep))
            try:
                async for attempt in retrying(sleep=self._sleep, before_sleep=self._on_retry):
                    with attempt:
                        await self._client.send(body)
            except ReceiverError as exc:
                self._metrics.samples_dropped.labels("rejected").inc(len(keep))
                log.error(
                    "remote write rejected", reason=exc.reason, status=exc.status,
                    samples=len(keep), error=str(exc),
                )
                self._state.delete_outbox(rows, delivered=False)
                return
            self._metrics.samples_sent.inc(len(keep))
        self._state.delete_outbox(keep, delivered=True)
        kept = {r.id for r in keep}
        dropped = [r for r in rows if r.id not in kept]
        if dropped:
            self._state.delete_outbox(dropped, delivered=False)

    def _sendable(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Rows the receiver can still take: recent enough, not older than the last sent."""
        min_ts = int(self._clock() * 1000) - self._max_age_ms if self._max_age_ms else None
        last_sent = self._state.last_sent(r.series_id for r in rows)
        keep = []
        too_old = out_of_order = 0
        for row in rows:
            if min_ts is not None and row.ts_ms < min_ts:
                too_old += 1
            elif row.ts_ms < last_sent.get(row.series_id, row.ts_ms):
                out_of_order += 1
            else:
                keep.append(row)
        if too_old:
            self._metrics.samples_dropped.labels("too_old").inc(too_old)
        if out_of_order:
            self._metrics.samples_dropped.labels("out_of_order").inc(out_of_order)
            log.warning("samples older than the last sent dropped", samples=out_of_order)
        return keep

    def _group(self, rows: list[OutboxRow]) -> list[tuple[Labels, list[tuple[int, float]]]]:
        """One time series per label set, samples in time order, one per timestamp."""
        by_series: dict[int, dict[int, float]] = {}
        labels: dict[int, Labels] = {}
        for row in rows:
            by_series.setdefault(row.series_id, {})[row.ts_ms] = row.value
            labels[row.series_id] = row.labels
        return [
            (add_external_labels(labels[sid], self._external), sorted(samples.items()))
            for sid, samples in by_series.items()
        ]

    def _on_retry(self, reason: str, wait: float) -> None:
        self._metrics.send_retries.labels(reason).inc()
        log.warning("remote write failed, retrying", reason=reason, retry_in=round(wait, 3))
