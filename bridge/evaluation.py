"""Evaluation: one Tempo answer and a rule's stored state in, one update out. No I/O.

Totals are kept per *Tempo* series (the labels Tempo returned, see :data:`TempoKey`);
the Prometheus labels are computed from them when samples are written, so an edit of
labels, ``rename`` or ``missing_value`` re-labels the same totals. Tempo series that map
to one Prometheus label set are summed into it (and counted as merged).

Every function here is pure: :func:`evaluate` takes the rule, what the state holds
(:class:`Stored`), the windows one query read and the values kept for the windows it
read again, and returns an :class:`Update` that the state commits whole. The engine
then continues from :meth:`Stored.apply` of that update.

Samples of one series are only ever written at increasing timestamps: ``last_ts`` (what
was last queued for each series, by any rule) is consulted before each one, so no
receiver refuses a sample as out of order or as a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.rules import Group, Rule
from bridge.series import STALE_NAN, Labels, Sample
from bridge.tempo import InstantSeries, RangeSeries
from bridge.windows import Query, Window

TempoKey = tuple[tuple[str, str], ...]
"""A Tempo series: its labels as Tempo returned them (``span.model``, ``"nil"`` kept),
sorted by name. Values are text: two series that differ only by type (the int 3 and the
string "3") share a key, and are summed, as they would share Prometheus labels."""

GROWTH_TOLERANCE = 1e-12
"""A settled window value that grew by less than this share of itself did not grow: it is
float rounding in Tempo's sum, not a late span."""


class EvaluationError(Exception):
    """Tempo's answer cannot be turned into samples (more series than the rule's limit)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class WindowRead:
    """What one query read for one window: the value of each Tempo series present.

    A series is present in an instant answer when Tempo returns it (a query without
    ``by()`` always returns its one series, 0 when no span matched). Range answers give
    every series a sample in every bucket, 0 where it had no spans: there a zero bucket
    is absent, but for the series of a query without ``by()``, so that both kinds of
    answer say "present" the same way.
    """

    window: Window
    values: Mapping[TempoKey, float]
    merged: int = 0
    """Series of the answer summed into another with the same labels (see TempoKey)."""


def reads_from_answer(
    query: Query, answer: Sequence[InstantSeries] | Sequence[RangeSeries]
) -> list[WindowRead]:
    """Split a Tempo answer into one :class:`WindowRead` per window the query reads.

    Range answers carry an extra bucket before the first window (and may carry buckets
    outside the query's windows): only buckets stamped with one of the query's window
    ends are kept, so no window is counted twice. Series with the same key are summed.
    """
    per_end: dict[int, dict[TempoKey, float]] = {w.end * 1000: {} for w in query.windows}
    merged: dict[int, int] = dict.fromkeys(per_end, 0)
    keys: dict[tuple[tuple[str, str], ...], TempoKey] = {}
    for series in answer:
        items = tuple(sorted(series.labels.items()))
        key = keys.setdefault(items, items)
        if isinstance(series, InstantSeries):
            points: Iterable[tuple[int, float]] = ((query.end * 1000, series.value),)
            always = True
        else:
            points = series.samples
            always = all(name == "__name__" for name, _value in items)
        for ts_ms, value in points:
            if value == 0 and not always:
                continue
            values_at = per_end.get(ts_ms)
            if values_at is None:
                continue
            if key in values_at:
                merged[ts_ms] += 1
                values_at[key] += value
            else:
                values_at[key] = value
    return [WindowRead(w, per_end[w.end * 1000], merged[w.end * 1000]) for w in query.windows]


@dataclass
class Total:
    """A counter's running total for one Tempo series."""

    value: float
    last_grown: int
    """End of the last window in which it grew or first appeared (or the checkpoint of a
    settle pass that found it grown): it is written while this is less than
    ``idle_after`` ago."""


@dataclass(frozen=True)
class Stored:
    """What the state holds of one rule, as one evaluation needs it."""

    checkpoint: int
    """End of the last window recorded: a time, on the rule's grid or not."""
    totals: Mapping[TempoKey, Total] = field(default_factory=dict)
    live: frozenset[Labels] = frozenset()
    """Prometheus series written at the checkpoint (counters' active series, gauges' present
    series); those not written at the next window end get a stale marker."""
    settled: Mapping[int, int] = field(default_factory=dict)
    """Per settle age (seconds): the end of the last window read again at that age."""
    recorded: tuple[Window, ...] = ()
    """Windows whose values are kept for settling (not yet settled at every age)."""
    legacy: Mapping[Labels, float] = field(default_factory=dict)
    """Totals kept by tempo-bridge 0.1 per Prometheus series; a Tempo series that maps to
    one of them when it first grows continues from it."""

    def apply(self, update: Update) -> Stored:
        """This state with ``update`` committed."""
        totals = dict(self.totals)
        totals.update(update.totals)
        for key in update.dropped:
            totals.pop(key, None)
        kept = {w for w in self.recorded if w.end > update.prune_upto} | {
            w for w in update.keep if w.end > update.prune_upto
        }
        legacy = {k: v for k, v in self.legacy.items() if k not in update.adopted}
        return Stored(
            checkpoint=update.checkpoint, totals=totals, live=update.live,
            settled=dict(update.settled), recorded=tuple(sorted(kept)), legacy=legacy,
        )


@dataclass
class Stats:
    """What an evaluation did, for the self metrics and the log."""

    recorded: int = 0
    """Windows read for the first time."""
    settled: int = 0
    """Recorded windows read again."""
    grown: int = 0
    """Tempo series values of settled windows that had grown (late spans)."""
    merged: int = 0
    """Tempo series summed into a Prometheus series another one also maps to."""


@dataclass
class Update:
    """Everything one evaluation changes; the state commits it in one transaction."""

    checkpoint: int
    live: frozenset[Labels]
    settled: dict[int, int]
    samples: list[Sample] = field(default_factory=list)
    totals: dict[TempoKey, Total] = field(default_factory=dict)
    """Totals that changed (new ones included)."""
    dropped: set[TempoKey] = field(default_factory=set)
    """Totals removed: idle for longer than the state retention."""
    keep: dict[Window, dict[TempoKey, float]] = field(default_factory=dict)
    """Values of windows read now, kept for later settle passes."""
    prune_upto: int = 0
    """Kept values of windows ending at or before this are no longer needed."""
    adopted: set[Labels] = field(default_factory=set)
    """Legacy totals taken over by a Tempo series."""
    stats: Stats = field(default_factory=Stats)


@dataclass(frozen=True)
class Context:
    """What an evaluation needs besides the rule and the answer."""

    now: float
    since_ms: int = 0
    """Samples older than this are not written (the receiver would refuse them); the
    totals still count their windows."""
    last_ts: Mapping[Labels, int] = field(default_factory=dict)
    """The timestamp (ms) of the last sample queued for each series, by any rule."""
    retention: int = 0
    """Seconds after which an idle series' total is dropped; 0 keeps it forever."""


def series_labels(
    rule: Rule, group: Group, key: TempoKey,
    pairs: dict[tuple[str, str], tuple[str, str]] | None = None,
) -> Labels:
    """Prometheus labels of one Tempo series: mapped names, group and rule labels, record.

    ``pairs`` interns the (name, value) pairs: the series of one answer share most of
    them, and a label set is kept for as long as its series lives.
    """
    items = sorted(rule.map_labels(dict(key), group.labels).items())
    if pairs is None:
        return tuple(items)
    return tuple([pairs.setdefault(pair, pair) for pair in items])


class _Mapper:
    """Tempo keys to Prometheus labels for one evaluation, each key mapped once."""

    def __init__(self, rule: Rule, group: Group) -> None:
        self._rule, self._group = rule, group
        self._labels: dict[TempoKey, Labels] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def __call__(self, key: TempoKey) -> Labels:
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = series_labels(self._rule, self._group, key, self._pairs)
        return labels


def evaluate(
    group: Group,
    rule: Rule,
    stored: Stored,
    reads: Sequence[WindowRead],
    kept: Mapping[Window, Mapping[TempoKey, float]],
    context: Context,
) -> Update:
    """The update one query's answer makes to a rule.

    ``reads`` are the windows the query read, in order: those ending at or before the
    checkpoint are recorded windows read again for late spans (``kept`` holds their
    values as last read), the others are new. Raises :class:`EvaluationError` when a
    window holds more series than the rule's ``limit``.
    """
    mapper = _Mapper(rule, group)
    _check_limit(rule, reads, mapper)
    writer = _Writer(stored.live, context)
    if rule.kind == "counter":
        update = _Counter(group, rule, stored, mapper, writer, context).run(reads, kept)
    else:
        update = _gauge(stored, reads, mapper, writer)
    update.settled = _settled(stored, reads, context.now)
    update.samples = writer.samples
    update.live = writer.live
    if update.settled:
        update.prune_upto = min(update.settled.values())
        update.keep = {w: v for w, v in update.keep.items() if w.end > update.prune_upto}
    else:
        update.prune_upto = update.checkpoint
        update.keep = {}
    return update


def settle_ages(group: Group, rule: Rule, stored: Stored) -> Update | None:
    """The update that matches a rule's settle checkpoints with its group's ages, or None.

    A new age starts at the checkpoint (windows recorded before it are not read again at
    that age); a removed age's checkpoint is dropped, with the window values kept only
    for it.
    """
    ages = group.settle if rule.kind == "counter" else ()
    settled = {age: stored.settled.get(age, stored.checkpoint) for age in ages}
    if settled == dict(stored.settled):
        return None
    prune = min(settled.values()) if settled else stored.checkpoint
    return Update(stored.checkpoint, stored.live, settled, prune_upto=prune)


def retire(stored: Stored, interval: int, last_ts: Mapping[Labels, int]) -> Update:
    """A rule was removed: its live series end with stale markers at its next window end.

    The marker is on the rule's own grid, not at the wall clock, so a rule put back at
    once writes its next windows after it, not before.
    """
    writer = _Writer(stored.live, Context(now=0.0, last_ts=last_ts))
    end = (stored.checkpoint // interval + 1) * interval
    writer.end_window(end * 1000, {})
    return Update(stored.checkpoint, writer.live, dict(stored.settled),
                  samples=writer.samples, prune_upto=0)


# -- counters --------------------------------------------------------------------------


class _Counter:
    """One counter evaluation: settle growth, then each new window in order."""

    def __init__(self, group: Group, rule: Rule, stored: Stored, mapper: _Mapper,
                 writer: _Writer, context: Context) -> None:
        self.group, self.rule, self.stored = group, rule, stored
        self.map, self.writer, self.context = mapper, writer, context
        self.totals: dict[TempoKey, Total] = dict(stored.totals)
        self.changed: dict[TempoKey, Total] = {}
        self.adopted: set[Labels] = set()
        self.keep: dict[Window, dict[TempoKey, float]] = {}
        self.stats = Stats()
        self.checkpoint = stored.checkpoint
        # the Tempo keys of each Prometheus series, and when the series last grew
        self.keys: dict[Labels, list[TempoKey]] = {}
        self.grown_at: dict[Labels, int] = {}
        for key, total in self.totals.items():
            labels = mapper(key)
            self.keys.setdefault(labels, []).append(key)
            self.grown_at[labels] = max(self.grown_at.get(labels, total.last_grown),
                                        total.last_grown)

    def run(
        self, reads: Sequence[WindowRead], kept: Mapping[Window, Mapping[TempoKey, float]]
    ) -> Update:
        again = [r for r in reads if r.window.end <= self.stored.checkpoint]
        if again:
            self._settle(again, kept)
        for read in reads[len(again):]:
            self._record(read)
        return Update(
            self.checkpoint, frozenset(), {}, totals=self.changed, dropped=self._expire(),
            keep=self.keep, adopted=self.adopted, stats=self.stats,
        )

    def value(self, labels: Labels) -> float:
        """The value of a Prometheus series: the sum of its Tempo series' totals (before
        its first growth: a legacy total it will take over, or 0)."""
        keys = self.keys.get(labels)
        if keys is None:
            return 0.0 if labels in self.adopted else self.stored.legacy.get(labels, 0.0)
        if len(keys) == 1:
            return self.totals[keys[0]].value
        return math.fsum(self.totals[k].value for k in keys)

    def _add(self, key: TempoKey, labels: Labels, gain: float, at: int) -> None:
        """Grow ``key`` (of the Prometheus series ``labels``) by ``gain`` at time ``at``."""
        total = self.totals.get(key)
        if total is None:
            start = 0.0
            if labels not in self.adopted and labels in self.stored.legacy:
                start = self.stored.legacy[labels]
                self.adopted.add(labels)
            total = Total(start, at)
            self.keys.setdefault(labels, []).append(key)
        total = Total(total.value + gain, max(total.last_grown, at))
        self.totals[key] = self.changed[key] = total
        self.grown_at[labels] = max(self.grown_at.get(labels, at), at)

    def _settle(
        self, reads: Sequence[WindowRead], kept: Mapping[Window, Mapping[TempoKey, float]]
    ) -> None:
        """Add what recorded windows gained since they were last read (late spans).

        A value that shrank changes nothing (a counter never goes down), and the kept
        value stays the larger one, so that growing back is not counted twice. A series
        whose total grows while it is not written is written again from the next window
        end; first it gets its previous total at the checkpoint (a new one: 0), so that
        ``increase()`` counts the gain.
        """
        at = self.checkpoint
        for read in reads:
            counted = dict(kept.get(read.window, {}))
            previous: dict[Labels, float] = {}
            for key, value in read.values.items():
                gain = value - counted.get(key, 0.0)
                if not _counts(value) or gain <= GROWTH_TOLERANCE * value:
                    continue
                labels = self.map(key)
                if labels not in self.writer.live and labels not in previous:
                    previous[labels] = self.value(labels)
                self._add(key, labels, gain, at)
                counted[key] = value
                self.stats.grown += 1
            for labels, value in previous.items():
                self.writer.resume(labels, at * 1000, value)
            self.keep[read.window] = counted
            self.stats.settled += 1

    def _record(self, read: WindowRead) -> None:
        """Add one new window's values and write every active series at its end.

        A series that starts being written (new, grown again after being idle, or a new
        label set after an edit) first gets its previous value at the window's start, so
        that ``increase()`` counts this window.
        """
        window = read.window
        end = window.end
        previous: dict[Labels, float] = {}
        present: dict[Labels, int] = {}
        counted: dict[TempoKey, float] = {}
        live = self.writer.live
        for key, value in read.values.items():
            labels = self.map(key)
            present[labels] = present.get(labels, 0) + 1
            grows = _counts(value)
            if not grows and key in self.totals:
                continue
            if labels not in live and labels not in previous:
                previous[labels] = self.value(labels)
            self._add(key, labels, value if grows else 0.0, end)
            if grows:
                counted[key] = value
        self.keep[window] = counted
        self.checkpoint = end
        self.stats.recorded += 1
        self.stats.merged += read.merged + len(read.values) - len(present)
        if end * 1000 < self.context.since_ms:
            return  # too old for the receiver: counted, not written
        idle_after = self.group.idle_after
        active = end - idle_after
        values = {
            labels: self.value(labels) for labels in self.keys
            if not idle_after or self.grown_at[labels] > active
        }
        for labels, value in previous.items():
            if labels in values:
                self.writer.resume(labels, window.start * 1000, value)
        self.writer.end_window(end * 1000, values)

    def _expire(self) -> set[TempoKey]:
        """Totals of series idle for longer than the retention are dropped, together with
        every other Tempo series of the same Prometheus series, so that none of them
        ever goes down."""
        retention = self.context.retention
        if not retention:
            return set()
        cutoff = self.checkpoint - retention
        live = self.writer.live
        dropped: set[TempoKey] = set()
        for labels, keys in self.keys.items():
            if labels not in live and self.grown_at[labels] <= cutoff:
                dropped.update(keys)
        return dropped


def _counts(value: float) -> bool:
    """A counter adds positive finite values only: it never goes down."""
    return value > 0 and math.isfinite(value)


# -- gauges ------------------------------------------------------------------------------


def _gauge(
    stored: Stored, reads: Sequence[WindowRead], mapper: _Mapper, writer: _Writer
) -> Update:
    """Write each window's values; series no longer present get stale markers."""
    stats = Stats()
    checkpoint = stored.checkpoint
    for read in reads:
        if read.window.end <= stored.checkpoint:
            continue  # gauges are not read again
        values: dict[Labels, float] = {}
        stats.merged += read.merged
        for key, value in read.values.items():
            labels = mapper(key)
            if labels in values:
                stats.merged += 1
                values[labels] += value
            else:
                values[labels] = value
        checkpoint = read.window.end
        stats.recorded += 1
        if checkpoint * 1000 >= writer.since_ms:
            writer.end_window(checkpoint * 1000, values)
    return Update(checkpoint, frozenset(), {}, stats=stats)


# -- writing ---------------------------------------------------------------------------------


class _Writer:
    """The samples of one evaluation: each series' timestamps only ever increase."""

    def __init__(self, live: frozenset[Labels], context: Context) -> None:
        self.live: frozenset[Labels] = live
        self.since_ms = context.since_ms
        self._last_ts = context.last_ts
        self._written: dict[Labels, int] = {}
        self.samples: list[Sample] = []

    def _write(self, labels: Labels, ts_ms: int, value: float) -> None:
        last = self._written.get(labels)
        if last is None:
            last = self._last_ts.get(labels, -1)
        if ts_ms > last:
            self.samples.append((labels, ts_ms, value))
            self._written[labels] = ts_ms

    def resume(self, labels: Labels, ts_ms: int, value: float) -> None:
        """A series not written at the last window end starts again: its previous value at
        ``ts_ms`` (a window start), unless it already has a sample there (a stale marker
        written then: its last value before that is recent enough)."""
        if ts_ms >= self.since_ms:
            self._write(labels, ts_ms, value)
        self.live = self.live | {labels}

    def end_window(self, ts_ms: int, values: Mapping[Labels, float]) -> None:
        """Write ``values`` at a window end; live series missing from them end (stale)."""
        for labels in sorted(self.live - values.keys()):
            self._write(labels, ts_ms, STALE_NAN)
        for labels, value in values.items():
            self._write(labels, ts_ms, value)
        self.live = frozenset(values)


# -- settle checkpoints --------------------------------------------------------------------


def _settled(stored: Stored, reads: Sequence[WindowRead], now: float) -> dict[int, int]:
    """Settle checkpoints after reading ``reads``: a window read when already older than
    an age is settled at that age, if every window before it is."""
    settled = dict(stored.settled)
    for age in settled:
        limit = now - age
        for read in reads:
            window = read.window
            if window.end > limit:
                break
            if settled[age] >= window.start:
                settled[age] = max(settled[age], window.end)
    return settled


def _check_limit(rule: Rule, reads: Iterable[WindowRead], mapper: _Mapper) -> None:
    if not rule.limit:
        return
    for read in reads:
        series = {mapper(key) for key in read.values}
        if len(series) > rule.limit:
            raise EvaluationError(
                "limit",
                f"rule {rule.record}: {len(series)} series in the window ending "
                f"{read.window.end} exceed the limit of {rule.limit}",
            )
