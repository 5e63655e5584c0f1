"""Evaluation: Tempo series to Prometheus samples; counter totals and gauge staleness.

Pure functions: they take what Tempo answered and what the state holds, and return
the samples to write and the state to keep. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.rules import Group, Rule
from bridge.series import STALE_NAN, Labels, Sample, format_labels
from bridge.tempo import InstantSeries, RangeSeries
from bridge.windows import Query


class EvaluationError(Exception):
    """Tempo's answer cannot be turned into a series set (duplicates, over the limit)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Window:
    """The value of every series Tempo returned for one window (absent series are 0)."""

    end: int
    values: Mapping[Labels, float]


def series_labels(
    rule: Rule, group: Group, tempo_labels: Mapping[str, str],
    pairs: dict[tuple[str, str], tuple[str, str]] | None = None,
) -> Labels:
    """Prometheus labels of one Tempo series: mapped names, group and rule labels, record.

    ``pairs`` interns the (name, value) pairs: the series of one answer share most of
    them, and a label set is kept for as long as its series lives.
    """
    items = sorted(rule.map_labels(tempo_labels, group.labels).items())
    if pairs is None:
        return tuple(items)
    return tuple([pairs.setdefault(pair, pair) for pair in items])


def windows_from_answer(
    rule: Rule,
    group: Group,
    query: Query,
    answer: Sequence[InstantSeries] | Sequence[RangeSeries],
) -> list[Window]:
    """Split a Tempo answer into one :class:`Window` per window the query reads.

    Range answers carry an extra bucket before the first window (and may carry buckets
    outside the query's windows): only buckets stamped with one of ``query.window_ends``
    are kept, so no window is counted twice.
    """
    per_window: dict[int, dict[Labels, float]] = {end: {} for end in query.window_ends}
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    for series in answer:
        labels = series_labels(rule, group, series.labels, pairs)
        if isinstance(series, InstantSeries):
            points: Iterable[tuple[int, float]] = [(query.end * 1000, series.value)]
        else:
            points = series.samples
        for ts_ms, value in points:
            if ts_ms % 1000:
                continue
            values = per_window.get(ts_ms // 1000)
            if values is None:
                continue
            if labels in values:
                raise EvaluationError(
                    "duplicate_series",
                    f"rule {rule.record}: two Tempo series map to the same labels "
                    f"{format_labels(labels)}; rename a label or set missing_value",
                )
            values[labels] = value
    windows = [Window(end, values) for end, values in per_window.items()]
    for window in windows:
        if rule.limit and len(window.values) > rule.limit:
            raise EvaluationError(
                "limit",
                f"rule {rule.record}: {len(window.values)} series in window ending "
                f"{window.end} exceed the limit of {rule.limit}",
            )
    return windows


@dataclass
class CounterUpdate:
    """What one counter evaluation writes: samples, and the totals to keep."""

    samples: list[Sample] = field(default_factory=list)
    totals: dict[Labels, float] = field(default_factory=dict)


def accumulate(
    totals: Mapping[Labels, float],
    windows: Sequence[Window],
    interval: int,
    since_ms: int = 0,
) -> CounterUpdate:
    """Add each window's values to the running totals, in window order.

    Every known series is written at every window end. A series seen for the first time
    is first written as 0 at the end of the previous window, so ``increase()`` counts
    its first window. Values that are not finite numbers, or are negative, are ignored:
    a counter never goes down. Windows ending before ``since_ms`` (too old for the
    receiver, in a long catch-up) add to the totals but write no samples.
    """
    update = CounterUpdate(totals=dict(totals))
    running = update.totals
    for window in windows:
        ts_ms = window.end * 1000
        write = ts_ms >= since_ms
        for labels, value in window.values.items():
            if labels not in running:
                running[labels] = 0.0
                if write:
                    update.samples.append((labels, ts_ms - interval * 1000, 0.0))
            if math.isfinite(value) and value > 0:
                running[labels] += value
        if write:
            update.samples.extend((labels, ts_ms, total) for labels, total in running.items())
    return update


@dataclass
class GaugeUpdate:
    """What one gauge evaluation writes: samples, and the set of live series to keep."""

    samples: list[Sample] = field(default_factory=list)
    live: set[Labels] = field(default_factory=set)


def gauge_samples(
    live: Iterable[Labels], windows: Sequence[Window], since_ms: int = 0
) -> GaugeUpdate:
    """Write each window's values; a series live before and absent now gets a stale marker.

    Windows ending before ``since_ms`` (too old for the receiver) write nothing.
    """
    update = GaugeUpdate(live=set(live))
    for window in windows:
        ts_ms = window.end * 1000
        if ts_ms >= since_ms:
            for labels in sorted(update.live - window.values.keys()):
                update.samples.append((labels, ts_ms, STALE_NAN))
            update.samples.extend((k, ts_ms, v) for k, v in window.values.items())
        update.live = set(window.values)
    return update


@dataclass
class SettleUpdate:
    """What re-reading settled windows changes: totals, the kept window values, samples."""

    totals: dict[Labels, float]
    values: dict[int, dict[Labels, float]]
    samples: list[Sample] = field(default_factory=list)
    grown: int = 0


def settle(
    totals: Mapping[Labels, float],
    recorded: Mapping[int, Mapping[Labels, float]],
    windows: Sequence[Window],
    checkpoint: int,
) -> SettleUpdate:
    """Add to the totals whatever a window gained since it was recorded (late spans).

    ``recorded`` holds each window's values as last read. A value that grew adds the
    difference to its series' total; one that shrank (or vanished) changes nothing: a
    counter never goes down. A series first seen now is written as 0 at ``checkpoint``
    (the last window end already written), so ``increase()`` counts what it gained;
    the new totals themselves are written at the next window end.
    """
    update = SettleUpdate(totals=dict(totals), values={})
    for window in windows:
        before = recorded.get(window.end, {})
        changed: dict[Labels, float] = {}
        for labels, value in window.values.items():
            if not math.isfinite(value) or value <= 0:
                continue
            gain = value - before.get(labels, 0.0)
            if gain <= 0:
                continue
            if labels not in update.totals:
                update.totals[labels] = 0.0
                update.samples.append((labels, checkpoint * 1000, 0.0))
            update.totals[labels] += gain
            changed[labels] = value
            update.grown += 1
        if changed:
            update.values[window.end] = changed
    return update


def window_values(windows: Sequence[Window]) -> dict[int, dict[Labels, float]]:
    """The values to keep for settling: positive finite values only (absent means 0)."""
    return {
        w.end: {k: v for k, v in w.values.items() if math.isfinite(v) and v > 0}
        for w in windows
    }
