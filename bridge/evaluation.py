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

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.rules import Group, Rule
from bridge.series import STALE_NAN, Exemplar, Labels, Sample, Samples, TempoKey
from bridge.tempo import Buckets
from bridge.totals import Total, Totals
from bridge.windows import Query, Window

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
    exemplars: Mapping[TempoKey, Sequence[Exemplar]] = field(default_factory=dict)
    """Spans Tempo picked for each series, those that started in the window (range
    answers only)."""


def bucket_stamps(query: Query) -> list[int]:
    """The stamps (ms) of the buckets a query reads: its windows' ends. Range answers also
    carry a bucket before the first window (and may carry others): not one of these, it
    is not read, so no window is counted twice."""
    return [w.end * 1000 for w in query.windows]


def reads_from_buckets(query: Query, buckets: Buckets) -> list[WindowRead]:
    """One :class:`WindowRead` per window the query reads: the values of its bucket, and
    the exemplars of spans that started in it."""
    ends = bucket_stamps(query)
    picked: dict[int, dict[TempoKey, list[Exemplar]]] = {end: {} for end in ends}
    first_start = query.windows[0].start * 1000
    for key, exemplar in buckets.exemplars:
        end = _end_of(ends, exemplar.ts_ms)
        if end is not None and first_start < exemplar.ts_ms:
            picked[end].setdefault(key, []).append(exemplar)
    return [WindowRead(w, buckets.values[end], buckets.merged[end], picked[end])
            for w, end in zip(query.windows, ends, strict=True)]


def _end_of(ends: Sequence[int], ts_ms: int) -> int | None:
    """The first of ``ends`` (ascending) at or after ``ts_ms``: the end of its window."""
    i = bisect.bisect_left(ends, ts_ms)
    return ends[i] if i < len(ends) else None


@dataclass(frozen=True)
class Stored:
    """What the state holds of one rule, as one evaluation needs it."""

    checkpoint: int
    """End of the last window recorded: a time, on the rule's grid or not."""
    totals: Mapping[TempoKey, Total] = field(default_factory=dict)
    """A :class:`Totals` once an evaluation or the state made it."""
    live: frozenset[Labels] = frozenset()
    """Prometheus series written at the checkpoint (counters' active series, gauges' present
    series); those not written at the next window end get a stale marker."""
    settle_checkpoints: Mapping[int, int] = field(default_factory=dict)
    """Per settle age (seconds): the end of the last window read again at that age."""
    kept_windows: tuple[Window, ...] = ()
    """Windows whose values are kept for settling (not yet settled at every age)."""
    legacy: Mapping[Labels, float] = field(default_factory=dict)
    """Totals kept by tempo-bridge 0.1 per Prometheus series; a Tempo series that maps to
    one of them when it first grows continues from it."""
    ended: Mapping[Labels, int] = field(default_factory=dict)
    """Series given a stale marker at or after the checkpoint, and its timestamp (ms): no
    sample of theirs may be written there again."""
    late_exemplars: Mapping[Labels, Sequence[Exemplar]] = field(default_factory=dict)
    """Exemplars of late spans a settle pass found, to go with the next window end."""

    def apply(self, update: Update) -> Stored:
        """This state with ``update`` committed."""
        totals: Mapping[TempoKey, Total]
        if update.all_totals is not None:
            totals = update.all_totals
        elif update.totals or update.dropped:
            copied = dict(self.totals)
            copied.update(update.totals)
            for key in update.dropped:
                copied.pop(key, None)
            totals = copied
        else:
            totals = self.totals
        kept = {w for w in self.kept_windows if w.end > update.prune_upto} | {
            w for w in update.kept_values if w.end > update.prune_upto
        }
        legacy = {k: v for k, v in self.legacy.items() if k not in update.adopted}
        return Stored(
            checkpoint=update.checkpoint, totals=totals, live=update.live,
            ended=dict(update.ended), late_exemplars=update.late_exemplars,
            settle_checkpoints=dict(update.settle_checkpoints),
            kept_windows=tuple(sorted(kept)), legacy=legacy,
        )


@dataclass
class Stats:
    """What an evaluation did, for the self metrics and the log."""

    recorded: int = 0
    """Windows read for the first time."""
    reread: int = 0
    """Recorded windows read again (settle passes)."""
    grown: int = 0
    """Tempo series values of settled windows that had grown (late spans)."""
    merged: int = 0
    """Tempo series summed into a Prometheus series another one also maps to."""


@dataclass
class Update:
    """Everything one evaluation changes; the state commits it in one transaction."""

    checkpoint: int
    live: frozenset[Labels]
    settle_checkpoints: dict[int, int]
    samples: Sequence[Sample] = field(default_factory=list)
    """In the order written (a :class:`Samples`, from an evaluation)."""
    exemplars: dict[tuple[Labels, int], list[Exemplar]] = field(default_factory=dict)
    """Exemplars of samples, by the sample's series and timestamp (ms)."""
    ended: dict[Labels, int] = field(default_factory=dict)
    """What :attr:`Stored.ended` becomes."""
    late_exemplars: dict[Labels, list[Exemplar]] = field(default_factory=dict)
    """What :attr:`Stored.late_exemplars` becomes."""
    totals: Mapping[TempoKey, Total] = field(default_factory=dict)
    """Totals that changed (new ones included)."""
    dropped: set[TempoKey] = field(default_factory=set)
    """Totals removed: idle for longer than the state retention."""
    all_totals: Mapping[TempoKey, Total] | None = None
    """Every total after the update (what :meth:`Stored.apply` takes as it is), when the
    evaluation has it; None: the stored totals with ``totals`` and ``dropped`` applied."""
    kept_values: dict[Window, Mapping[TempoKey, float]] = field(default_factory=dict)
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


class LabelMapper:
    """Tempo keys to Prometheus labels for a rule, each key mapped once: kept from one
    evaluation to the next while the rule maps labels the same way.

    It also knows which Prometheus series several Tempo series share (:attr:`shared`),
    so that the common case, one Tempo series per Prometheus series, costs no summing.
    ``canonical`` gives an equal label set already held elsewhere (the state's), to be
    kept instead of the one made.
    """

    def __init__(
        self, rule: Rule, group: Group, canonical: Callable[[Labels], Labels] | None = None,
    ) -> None:
        self._rule, self._group = rule, group
        self._canonical = canonical
        self.labels_of: dict[TempoKey, Labels] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self.owner: dict[Labels, TempoKey] = {}
        """The first Tempo key mapped to each Prometheus series."""
        self.shared: dict[Labels, list[TempoKey]] = {}
        """Prometheus series that two or more mapped Tempo keys share: their keys."""
        self.signature = _mapping(rule, group)

    def fits(self, rule: Rule, group: Group) -> bool:
        """Whether ``rule`` of ``group`` maps labels as the one this mapper was made for."""
        return _mapping(rule, group) == self.signature

    def forget(self, keep: Iterable[TempoKey]) -> None:
        """Drop the mappings of every key but ``keep`` (series gone from the state)."""
        keys = list(keep)
        self.labels_of, self.owner, self.shared = {}, {}, {}
        for key in keys:
            self(key)

    def __call__(self, key: TempoKey) -> Labels:
        labels = self.labels_of.get(key)
        if labels is None:
            labels = series_labels(self._rule, self._group, key, self._pairs)
            if self._canonical is not None:
                labels = self._canonical(labels)
            self.labels_of[key] = labels
            owner = self.owner.setdefault(labels, key)
            if owner != key:
                self.shared.setdefault(labels, [owner]).append(key)
        return labels


def _mapping(rule: Rule, group: Group) -> tuple[object, ...]:
    return (rule.record, rule.by, tuple(rule.rename.items()), rule.missing_value,
            tuple(group.labels.items()), tuple(rule.labels.items()))


def evaluate(
    group: Group,
    rule: Rule,
    stored: Stored,
    reads: Sequence[WindowRead],
    kept: Mapping[Window, Mapping[TempoKey, float]],
    context: Context,
    mapper: LabelMapper | None = None,
) -> Update:
    """The update one query's answer makes to a rule.

    ``reads`` are the windows the query read, in order: those ending at or before the
    checkpoint are recorded windows read again for late spans (``kept`` holds their
    values as last read), the others are new. Raises :class:`EvaluationError` when a
    window holds more series than the rule's ``limit``.
    """
    if mapper is None or not mapper.fits(rule, group):
        mapper = LabelMapper(rule, group)
    _check_limit(rule, reads, mapper)
    writer = _Writer(stored, context)
    if rule.kind == "counter":
        update = _Counter(group, rule, stored, mapper, writer, context).run(reads, kept)
    else:
        update = _gauge(group, stored, reads, mapper, writer)
    update.settle_checkpoints = _advance_settle_checkpoints(stored, reads, context.now)
    update.samples = writer.samples
    update.exemplars = writer.exemplars
    update.live = frozenset(writer.live)
    update.ended = writer.ended
    if update.settle_checkpoints:
        update.prune_upto = min(update.settle_checkpoints.values())
        update.kept_values = {
            w: v for w, v in update.kept_values.items() if w.end > update.prune_upto
        }
    else:
        update.prune_upto = update.checkpoint
        update.kept_values = {}
    return update


def match_settle_ages(group: Group, rule: Rule, stored: Stored) -> Update | None:
    """The update that matches a rule's settle checkpoints with its group's ages, or None.

    A new age starts at the checkpoint (windows recorded before it are not read again at
    that age); a removed age's checkpoint is dropped, with the window values kept only
    for it.
    """
    ages = group.settle if rule.kind == "counter" else ()
    settled = {age: stored.settle_checkpoints.get(age, stored.checkpoint) for age in ages}
    if settled == dict(stored.settle_checkpoints):
        return None
    prune = min(settled.values()) if settled else stored.checkpoint
    return Update(stored.checkpoint, stored.live, settled, ended=dict(stored.ended),
                  prune_upto=prune, late_exemplars={k: list(v) for k, v in
                                                     stored.late_exemplars.items()})


def retire(stored: Stored, interval: int, last_ts: Mapping[Labels, int]) -> Update:
    """A rule was removed: its live series end with stale markers at its next window end.

    The marker is on the rule's own grid, not at the wall clock, so a rule put back at
    once writes its next windows after it, not before.
    """
    writer = _Writer(stored, Context(now=0.0, last_ts=last_ts))
    end = (stored.checkpoint // interval + 1) * interval
    writer.end_window(end * 1000, {})
    return Update(stored.checkpoint, frozenset(writer.live), dict(stored.settle_checkpoints),
                  samples=writer.samples, ended=writer.ended, prune_upto=0)


# -- counters --------------------------------------------------------------------------


class _Counter:
    """One counter evaluation: settle growth, then each new window in order."""

    def __init__(self, group: Group, rule: Rule, stored: Stored, mapper: LabelMapper,
                 writer: _Writer, context: Context) -> None:
        self.group, self.rule, self.stored = group, rule, stored
        self.map, self.writer, self.context = mapper, writer, context
        self.totals = Totals.of(stored.totals)  # copied at the first change
        self._copied = False
        self.adopted: set[Labels] = set()
        self.keep: dict[Window, Mapping[TempoKey, float]] = {}
        self.stats = Stats()
        self.exemplar_limit = group.exemplars_per_series if group.exemplars else 0
        # exemplars of late spans a settle pass found: written with the next window end
        self.late: dict[Labels, list[Exemplar]] = {
            labels: list(found) for labels, found in stored.late_exemplars.items()
        }
        self.checkpoint = stored.checkpoint
        labels_of = mapper.labels_of
        for key in stored.totals:  # a mapper new to these totals maps them once
            if key not in labels_of:
                mapper(key)

    def run(
        self, reads: Sequence[WindowRead], kept: Mapping[Window, Mapping[TempoKey, float]]
    ) -> Update:
        again = [r for r in reads if r.window.end <= self.stored.checkpoint]
        if again:
            self._add_late_growth(again, kept)
        for read in reads[len(again):]:
            self._record(read)
        dropped = self._expire()
        if dropped:
            self._writable().remove(dropped)
        return Update(
            self.checkpoint, frozenset(), {},
            totals=self.totals.changed() if self._copied else {}, dropped=dropped,
            all_totals=self.totals if self._copied else None,
            kept_values=dict(self.keep), adopted=self.adopted, stats=self.stats,
            late_exemplars=self.late,
        )

    def _writable(self) -> Totals:
        if not self._copied:
            self.totals = self.totals.copy()
            self._copied = True
        return self.totals

    def value(self, labels: Labels) -> float:
        """The value of a Prometheus series: the sum of its Tempo series' totals (before
        its first growth: a legacy total it will take over, or 0)."""
        at, values = self.totals.at, self.totals.value
        keys = self.map.shared.get(labels)
        if keys is not None:
            return math.fsum(values[at[k]] for k in keys if k in at)
        key = self.map.owner.get(labels)
        i = None if key is None else at.get(key)
        if i is None:
            return 0.0 if labels in self.adopted else self.stored.legacy.get(labels, 0.0)
        return values[i]

    def grown_at(self, labels: Labels) -> int:
        """When any of a Prometheus series' Tempo series last grew."""
        keys = self.map.shared.get(labels) or [self.map.owner[labels]]
        at, grown = self.totals.at, self.totals.last_grown
        return max((grown[at[k]] for k in keys if k in at), default=-1)

    def _add(self, key: TempoKey, labels: Labels, gain: float, at: int) -> None:
        """Grow ``key`` (of the Prometheus series ``labels``) by ``gain`` at time ``at``."""
        totals = self._writable()
        i = totals.at.get(key)
        if i is None:
            start = 0.0
            legacy = self.stored.legacy
            if legacy and labels not in self.adopted and labels in legacy:
                start = legacy[labels]
                self.adopted.add(labels)
            totals.add(key, start + gain, at)
        else:
            totals.grow(i, totals.value[i] + gain, at)

    def _add_late_growth(
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
            before = kept.get(read.window, {})
            counted: dict[TempoKey, float] | None = None
            previous: dict[Labels, float] = {}
            for key, value in read.values.items():
                gain = value - before.get(key, 0.0)
                if gain <= GROWTH_TOLERANCE * value or not _counts(value):
                    continue
                labels = self.map(key)
                if labels not in self.writer.live and labels not in previous:
                    previous[labels] = self.value(labels)
                self._add(key, labels, gain, at)
                if counted is None:
                    counted = dict(before)
                counted[key] = value
                self.stats.grown += 1
                if self.exemplar_limit and key in read.exemplars:
                    self.late.setdefault(labels, []).extend(read.exemplars[key])
            for labels, value in previous.items():
                self.writer.resume(labels, at * 1000, value)
            self.keep[read.window] = before if counted is None else counted
            self.stats.reread += 1

    def _record(self, read: WindowRead) -> None:
        """Add one new window's values and write every active series at its end.

        A series that starts being written (new, grown again after being idle, or a new
        label set after an edit) first gets its previous value at the window's start, so
        that ``increase()`` counts this window.
        """
        window = read.window
        end = window.end
        if end * 1000 < self.context.since_ms:
            self._count(read)  # too old for the receiver: counted, not written
            return
        previous: dict[Labels, float] = {}
        live = self.writer.live
        labels_of = self.map.labels_of
        shared = self.map.shared
        totals = self._writable()
        # the arrays, changed in place here for the common case (a live series grew)
        at, sums, last_grown, touched = totals.at, totals.value, totals.last_grown, totals.touched
        skipped = False  # a value the counter does not add (not kept for settling)
        grown: dict[Labels, float] = {}  # live series of one Tempo series each, grown now
        for key, value in read.values.items():
            labels = labels_of.get(key) or self.map(key)
            i = at.get(key)
            if value > 0 and value != math.inf:
                if i is not None and labels in live and (not shared or labels not in shared):
                    grown[labels] = value = sums[i] + value
                    sums[i] = value
                    last_grown[i] = end
                    touched[i] = 1
                    continue
            else:
                skipped = True
                if i is not None:
                    continue
                value = 0.0  # a new series without growth: it starts at 0
            if labels not in live and labels not in previous:
                previous[labels] = self.value(labels)
            self._add(key, labels, value, end)
            at = totals.at  # a series added: the positions may now be the copy's own
        self._recorded(read, skipped)
        # every total grew now, each its own series: what _values would find, found
        values = grown if len(grown) == len(totals) else self._values(end)
        for labels, value in previous.items():
            if labels in values:
                self.writer.resume(labels, window.start * 1000, value)
        exemplars = _exemplars(read, self.map, self.exemplar_limit, self.late)
        self.late = {}
        self.writer.end_window(end * 1000, values, exemplars)

    def _count(self, read: WindowRead) -> None:
        """Add one new window's values without writing them: no series is resumed or
        ended, so neither the Prometheus series nor their previous values matter here."""
        end = read.window.end
        labels_of = self.map.labels_of
        totals = self._writable()
        at, sums, last_grown, touched = totals.at, totals.value, totals.last_grown, totals.touched
        skipped = False
        for key, value in read.values.items():
            i = at.get(key)
            if value > 0 and value != math.inf:
                if i is not None:
                    sums[i] += value
                    last_grown[i] = end
                    touched[i] = 1
                    continue
            else:
                skipped = True
                if i is not None:
                    continue
                value = 0.0
            self._add(key, labels_of.get(key) or self.map(key), value, end)
            at = totals.at
        self._recorded(read, skipped)

    def _recorded(self, read: WindowRead, skipped: bool) -> None:
        """Book a window as recorded: its values kept for settling (only those a counter
        adds, when ``skipped`` says some are not), the checkpoint, the statistics."""
        values = read.values
        self.keep[read.window] = (values if not skipped else
                                  {k: v for k, v in values.items() if _counts(v)})
        self.checkpoint = read.window.end
        self.stats.recorded += 1
        self.stats.merged += read.merged
        if self.map.shared:
            labels_of = self.map.labels_of
            self.stats.merged += len(values) - len({labels_of[k] for k in values})

    def _values(self, end: int) -> dict[Labels, float]:
        """Every Prometheus series written at ``end``: those that grew within
        ``idle_after`` (all of them when it is 0), with their values."""
        idle_after = self.group.idle_after
        active = end - idle_after if idle_after else -math.inf
        labels_of = self.map.labels_of
        shared = self.map.shared
        values: dict[Labels, float] = {}
        sums, grown = self.totals.value, self.totals.last_grown
        for key, i in self.totals.at.items():
            labels = labels_of[key]
            if shared and labels in shared:
                if labels not in values and self.grown_at(labels) > active:
                    values[labels] = self.value(labels)
            elif grown[i] > active:
                values[labels] = sums[i]
        return values

    def _expire(self) -> set[TempoKey]:
        """Totals of series idle for longer than the retention are dropped, together with
        every other Tempo series of the same Prometheus series, so that none of them
        ever goes down."""
        retention = self.context.retention
        if not retention:
            return set()
        cutoff = self.checkpoint - retention
        live = self.writer.live
        labels_of = self.map.labels_of
        dropped: set[TempoKey] = set()
        grown = self.totals.last_grown
        for key, i in self.totals.at.items():
            if grown[i] > cutoff:
                continue
            labels = labels_of[key]
            if labels not in live and (labels not in self.map.shared
                                       or self.grown_at(labels) <= cutoff):
                dropped.add(key)
        return dropped


def _counts(value: float) -> bool:
    """A counter adds positive finite values only: it never goes down."""
    return value > 0 and math.isfinite(value)


# -- gauges ------------------------------------------------------------------------------


def _gauge(
    group: Group, stored: Stored, reads: Sequence[WindowRead], mapper: LabelMapper,
    writer: _Writer,
) -> Update:
    """Write each window's values; series no longer present get stale markers."""
    stats = Stats()
    limit = group.exemplars_per_series if group.exemplars else 0
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
            writer.end_window(checkpoint * 1000, values, _exemplars(read, mapper, limit, {}))
    return Update(checkpoint, frozenset(), {}, stats=stats)


def _exemplars(
    read: WindowRead, mapper: LabelMapper, limit: int, extra: Mapping[Labels, list[Exemplar]],
) -> dict[Labels, list[Exemplar]]:
    """The exemplars to write with each series' sample at the window's end: at most
    ``limit`` per series, from the spans Tempo picked (and ``extra`` ones)."""
    if not limit:
        return {}
    found: dict[Labels, list[Exemplar]] = {labels: list(e) for labels, e in extra.items()}
    for key, exemplars in read.exemplars.items():
        found.setdefault(mapper(key), []).extend(exemplars)
    return {labels: picked for labels, e in found.items() if (picked := _pick(e, limit))}


# -- writing ---------------------------------------------------------------------------------


class _Writer:
    """The samples of one evaluation: each series' timestamps only ever increase.

    Built for a million series: the live set is the stored one until a series resumes
    (copied then), a window end's is a frozenset made once, and what a window end wrote
    is noted in ``_written`` only when something is written after it (most evaluations
    write one window end, and nothing after it).
    """

    def __init__(self, stored: Stored, context: Context) -> None:
        self.live: frozenset[Labels] | set[Labels] = stored.live
        self.ended: dict[Labels, int] = dict(stored.ended)
        self.since_ms = context.since_ms
        self._last_ts = context.last_ts
        self._written: dict[Labels, int] = {}
        self._unnoted: tuple[Iterable[Labels], int, dict[Labels, int | None]] | None = None
        """The last window end's series, its time, and those of them it did not write
        (with what ``_written`` held for them): not in ``_written`` yet."""
        self.samples = Samples()
        self.exemplars: dict[tuple[Labels, int], list[Exemplar]] = {}

    def _note_written(self) -> None:
        """Note in ``_written`` what the last window end wrote."""
        if self._unnoted is None:
            return
        labels, ts_ms, skipped = self._unnoted
        self._unnoted = None
        written = self._written
        written.update(dict.fromkeys(labels, ts_ms))  # in one call: the hashes are known
        for one, held in skipped.items():
            if held is None:
                del written[one]
            else:
                written[one] = held

    def _write(self, labels: Labels, ts_ms: int, value: float) -> bool:
        self._note_written()
        last = self._written.get(labels)
        if last is None:
            last = self._last_ts.get(labels, -1)
        if ts_ms <= last:
            return False
        self.samples.append((labels, ts_ms, value))
        self._written[labels] = ts_ms
        return True

    def resume(self, labels: Labels, ts_ms: int, value: float) -> None:
        """A series not written at the last window end starts again: its previous value at
        ``ts_ms`` (a window start), unless it already has a sample there (a stale marker
        written then: its last value before that is recent enough)."""
        if ts_ms >= self.since_ms:
            self._write(labels, ts_ms, value)
        if not isinstance(self.live, set):
            self.live = set(self.live)
        self.live.add(labels)

    def end_window(
        self, ts_ms: int, values: Mapping[Labels, float],
        exemplars: Mapping[Labels, list[Exemplar]] | None = None,
    ) -> None:
        """Write ``values`` (and their exemplars) at a window end; live series missing from
        them end with a stale marker."""
        ended = {}
        for labels in sorted(self.live - values.keys()):
            if self._write(labels, ts_ms, STALE_NAN):
                ended[labels] = ts_ms
        self.ended = ended
        self._note_written()
        written = self._written
        last_ts = self._last_ts.get
        earlier = bool(written)  # some series were written before in this evaluation
        skipped: dict[Labels, int | None] = {}  # not written now: what ``written`` held
        for labels in values:  # _write, inlined: it runs for every series
            last = written.get(labels) if earlier else None
            held = last
            if last is None:
                last = last_ts(labels, -1)
            if ts_ms <= last:
                skipped[labels] = held
        if skipped:
            kept = [labels for labels in values if labels not in skipped]
            self.samples.add_columns(ts_ms, kept, [values[labels] for labels in kept])
        else:  # the usual case: every series, as columns made in one call each
            self.samples.add_columns(ts_ms, list(values), list(values.values()))
        self._unnoted = (values.keys(), ts_ms, skipped)
        if exemplars:
            for labels, picked in exemplars.items():
                if labels in values and labels not in skipped:
                    self.exemplars[(labels, ts_ms)] = picked
        self.live = frozenset(values)


def _pick(found: Iterable[Exemplar], limit: int) -> list[Exemplar]:
    """The exemplars that explain a value best: the largest contributions (for a sum),
    the latest among equals (for a count, whose exemplars carry the bucket's value)."""
    usable = [e for e in found if not math.isnan(e.value)]
    usable.sort(key=lambda e: (e.value, e.ts_ms), reverse=True)
    return usable[:limit]


# -- settle checkpoints --------------------------------------------------------------------


def _advance_settle_checkpoints(
    stored: Stored, reads: Sequence[WindowRead], now: float
) -> dict[int, int]:
    """Settle checkpoints after reading ``reads``: a window read when already older than
    an age is settled at that age, if every window before it is."""
    settled = dict(stored.settle_checkpoints)
    for age in settled:
        limit = now - age
        for read in reads:
            window = read.window
            if window.end > limit:
                break
            if settled[age] >= window.start:
                settled[age] = max(settled[age], window.end)
    return settled


def _check_limit(rule: Rule, reads: Iterable[WindowRead], mapper: LabelMapper) -> None:
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
