"""Engine: evaluates a rule's due windows: load, plan, query Tempo, evaluate, commit.

For each rule the engine loads the stored state once, plans the queries (settle
re-reads, then the windows due), and for each query reads Tempo's answer, evaluates it
(:func:`bridge.evaluation.evaluate`, pure) and commits the update in one transaction. A
failed query stops the rule at the last committed window; the next tick starts again
from there. The same loop runs against an in-memory store for ``eval`` and ``backfill``
(:func:`dry_run`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge.errors import StateError, TempoError
from bridge.evaluation import (
    Context,
    EvaluationError,
    LabelMapper,
    Stored,
    Update,
    WindowRead,
    bucket_stamps,
    evaluate,
    match_settle_ages,
    reads_from_buckets,
    retire,
)
from bridge.memory import gc_paused
from bridge.metrics import Metrics
from bridge.remote_write import Batch
from bridge.rules import Group, Rule
from bridge.series import Exemplar, Labels, Sample, TempoKey
from bridge.state import RuleKey
from bridge.status import Evaluation, StatusBoard, TempoContact
from bridge.tempo import Buckets, TempoClient
from bridge.windows import (
    Limits,
    Query,
    Window,
    align_down,
    due_windows,
    initial_checkpoint,
    plan_queries,
)
from bridge.worker import Worker, run_on, run_to_end

log = structlog.get_logger("bridge.engine")

Encode = Callable[[Sequence[Sample], Mapping[tuple[Labels, int], Sequence[Exemplar]]], list[Batch]]
"""Turns an evaluation's samples and exemplars into remote-write requests."""


def rule_key(group: Group, rule: Rule) -> RuleKey:
    """The identity of a rule's state: its group, record, expression and kind."""
    return RuleKey(group.name, rule.record, rule.expr, rule.kind)


class Store(Protocol):
    """Where the engine keeps rules' state: :class:`bridge.state.State`, or a
    :class:`MemoryStore` for dry runs."""

    @property
    def last_ts(self) -> Mapping[Labels, int]: ...

    def load(self, key: RuleKey) -> Stored | None: ...

    def canonical(self, labels: Labels) -> Labels: ...

    def kept_values(
        self, key: RuleKey, windows: Iterable[Window]
    ) -> Mapping[Window, Mapping[TempoKey, float]]: ...

    def commit(
        self, key: RuleKey, update: Update, batches: Sequence[Batch] = (), *,
        after: Stored | None = None, interval: int | None = None, tenant: str | None = None,
    ) -> list[int]: ...

    def mark_removed(
        self, key: RuleKey, at: float, update: Update | None = None,
        batches: Sequence[Batch] = (),
    ) -> list[int]: ...

    def last_checkpoint(self, group: str, record: str) -> int | None: ...


class MemoryStore:
    """A store that keeps everything in memory: the samples of a dry run and each rule's
    final state (``backfill --seed-state`` copies it into the real state)."""

    def __init__(self) -> None:
        self.rules: dict[RuleKey, Stored] = {}
        self.samples: dict[RuleKey, list[Sample]] = {}
        self.exemplars: dict[RuleKey, dict[tuple[Labels, int], list[Exemplar]]] = {}
        self._kept: dict[RuleKey, dict[Window, Mapping[TempoKey, float]]] = {}
        self._last: dict[Labels, int] = {}
        self.last_ts: Mapping[Labels, int] = self._last

    def load(self, key: RuleKey) -> Stored | None:
        return self.rules.get(key)

    def canonical(self, labels: Labels) -> Labels:
        return labels  # nothing read back: no copies to share

    def kept_values(
        self, key: RuleKey, windows: Iterable[Window]
    ) -> dict[Window, Mapping[TempoKey, float]]:
        kept = self._kept.get(key, {})
        return {w: kept[w] for w in windows if w in kept}

    def commit(
        self, key: RuleKey, update: Update, batches: Sequence[Batch] = (), *,
        after: Stored | None = None, interval: int | None = None, tenant: str | None = None,
    ) -> list[int]:
        stored = self.rules.get(key)
        self.rules[key] = after or (stored or Stored(update.checkpoint)).apply(update)
        self.exemplars.setdefault(key, {}).update(update.exemplars)
        kept = self._kept.setdefault(key, {})
        kept.update(update.kept_values)
        for window in [w for w in kept if w.end <= update.prune_upto]:
            del kept[window]
        self.samples.setdefault(key, []).extend(update.samples)
        for labels, ts, _value in update.samples:
            self._last[labels] = max(self._last.get(labels, ts), ts)
        return []

    def mark_removed(
        self, key: RuleKey, at: float, update: Update | None = None,
        batches: Sequence[Batch] = (),
    ) -> list[int]:
        return self.commit(key, update) if update is not None else []

    def last_checkpoint(self, group: str, record: str) -> int | None:
        return None


class Engine:
    """Evaluates rules against Tempo and keeps the results in a store."""

    def __init__(
        self,
        tempo: TempoClient,
        store: Store,
        metrics: Metrics,
        *,
        limits: Limits,
        max_sample_age: float = 0.0,
        retention: float = 0.0,
        clock: Callable[[], float] = time.time,
        encode: Encode | None = None,
        on_commit: Callable[[Sequence[int], Sequence[Batch]], None] = lambda ids, batches: None,
        status: StatusBoard | None = None,
        worker: Worker | None = None,
        state_worker: Worker | None = None,
    ) -> None:
        self._tempo = tempo
        self._store = store
        self._metrics = metrics
        self._limits = limits
        self._max_sample_age = max_sample_age
        self._retention = int(retention)
        self._clock = clock
        self._encode = encode
        self._on_commit = on_commit
        self._status = status
        self._worker = worker
        self._state_worker = state_worker  # where the store's calls are made, if not here
        self._locks: dict[RuleKey, asyncio.Lock] = {}
        # held from a step's evaluation to its commit (and over a removed rule's end): no
        # other rule commits in between, as when nothing there awaited the worker, so the
        # series' last timestamps the evaluation judged by still hold at its commit
        self._serial = asyncio.Lock()
        self._mappers: dict[RuleKey, LabelMapper] = {}

    async def evaluate_group(self, group: Group) -> bool:
        """Evaluate every rule of ``group`` up to now; True if all of them succeeded."""
        now = self._clock()
        ok = True
        for rule in group.rules:
            ok = await self.evaluate_rule(group, rule, now) and ok
        return ok

    async def evaluate_rule(self, group: Group, rule: Rule, now: float) -> bool:
        """Record every due window of ``rule``, in order; False at the first failure.

        A rule is evaluated by one caller at a time (a reload can overlap two ticks).
        """
        key = rule_key(group, rule)
        async with self._locks.setdefault(key, asyncio.Lock()):
            self._metrics.evaluations.labels(group.name, rule.record).inc()
            started = time.monotonic()
            run = _Run(group, rule, key, now)
            try:
                return await self._evaluate(run)
            except (StateError, sqlite3.Error) as exc:
                # the state failed: what was committed stays, the next tick goes on from it
                run.failed("state", exc)
                self._metrics.evaluation_failures.labels(group.name, rule.record, "state").inc()
                log.error("evaluation failed", group=group.name, rule=rule.record,
                          reason="state", error=str(exc))
                return False
            finally:
                duration = time.monotonic() - started
                self._metrics.evaluation_duration.labels(group.name).observe(duration)
                self._report(run, duration)

    async def retire(self, key: RuleKey, interval: int) -> None:
        """A rule left the rule files: its live series end with stale markers at its next
        window end, and its state is kept (putting the rule back continues it) until the
        retention has passed."""
        async with self._locks.setdefault(key, asyncio.Lock()), self._serial:
            store = self._store
            stored = await run_on(self._state_worker, store.load, key)
            if stored is None:
                return
            update = retire(stored, interval, store.last_ts)
            # the encoder's caches are the worker's (an evaluation cancelled meanwhile
            # may still be encoding there)
            batches = await run_on(self._worker, self._batches, update)
            ids = await run_to_end(self._state_worker, store.mark_removed, key, self._clock(),
                                   update, batches)
            self._mappers.pop(key, None)
            log.info("rule removed", group=key.group, rule=key.record, kind=key.kind,
                     series_ended=len(stored.live))
        if batches:
            self._on_commit(ids, batches)

    async def _evaluate(self, run: _Run) -> bool:
        group, rule = run.group, run.rule
        stored = await run_to_end(self._state_worker, self._load, run)
        run.stored = stored
        due = due_windows(stored.checkpoint, run.now, group.interval, group.query_offset)
        self._metrics.windows_behind.labels(group.name, rule.record).set(len(due))
        reread: list[Window] = []
        # oldest age first: after a downtime its read covers the younger ages' windows
        for age in sorted(stored.settle_checkpoints, reverse=True):
            pending = self._due_again(stored, age, run.now)
            if not pending:
                continue
            if len(due) > 1 and pending[-1].end == stored.checkpoint:
                # contiguous with the windows to catch up: read in the same queries
                reread = pending
                break
            for query in plan_queries(pending, self._limits, single_range=group.exemplars,
                                      series=_series_hint(stored, self._limits)):
                settled = await self._step(run, stored, query, "settle")
                if settled is None:
                    return False
                stored = settled
        pending = reread + due
        while pending:
            # planned again after each query: the series it found size the next one
            query = plan_queries(pending, self._limits, single_range=group.exemplars,
                                 series=_series_hint(stored, self._limits))[0]
            next_state = await self._step(run, stored, query, "evaluation")
            if next_state is None:
                return False
            stored = next_state
            pending = pending[len(query.windows):]
        return True

    def _load(self, run: _Run) -> Stored:
        """The rule's state. A new rule's first checkpoint is stored at once, so a failing
        first query does not move where it begins; settle ages added or removed since
        the last evaluation are stored too. Only store calls: run where those are made."""
        group, rule = run.group, run.rule
        stored = self._store.load(run.key)
        if stored is None:
            checkpoint = initial_checkpoint(
                run.now, group.interval, group.query_offset, group.start
            )
            # a rule replacing another of the same record (its expression or kind edited)
            # begins where that one ended: no window is in both
            replaced = self._store.last_checkpoint(group.name, rule.record)
            if replaced is not None and replaced > checkpoint:
                checkpoint = replaced
            ages = group.settle if rule.kind == "counter" else ()
            update = Update(checkpoint, frozenset(), dict.fromkeys(ages, checkpoint),
                            prune_upto=checkpoint)
            self._commit(run, update)
            return Stored(checkpoint).apply(update)
        update_ages = match_settle_ages(group, rule, stored)
        if update_ages is not None:
            self._commit(run, update_ages)
            stored = stored.apply(update_ages)
        return stored

    @staticmethod
    def _due_again(stored: Stored, age: int, now: float) -> list[Window]:
        """Recorded windows that reached ``age`` since the last settle pass at it."""
        upto = min(stored.checkpoint, now - age)
        after = stored.settle_checkpoints[age]
        return [w for w in stored.kept_windows if after < w.end <= upto]

    async def _step(self, run: _Run, stored: Stored, query: Query, what: str) -> Stored | None:
        """Read one query, evaluate it and commit the update; None when it failed.

        The garbage collector is paused from the answer's parse to the commit (millions
        of objects, no cycles: see bridge.memory), and runs after the step's answer,
        samples and requests are freed.
        """
        with gc_paused():
            return await self._read_and_commit(run, stored, query, what)

    async def _read_and_commit(
        self, run: _Run, stored: Stored, query: Query, what: str
    ) -> Stored | None:
        group, rule = run.group, run.rule
        started = time.monotonic()
        reads = await self._read(run, query, what)
        if reads is None:
            return None
        since_ms = 0
        if self._max_sample_age:
            # from the time of this step, not the evaluation's start: a long catch-up's
            # first windows would be too old for the receiver by the time they are sent
            at = run.now + time.monotonic() - run.started
            since_ms = int((at - self._max_sample_age) * 1000)
        context = Context(run.now, since_ms, self._store.last_ts, self._retention)
        again = [r.window for r in reads if r.window.end <= stored.checkpoint]
        mapper = self._mappers.get(run.key)
        if mapper is None or not mapper.fits(rule, group):
            mapper = self._mappers[run.key] = LabelMapper(rule, group, self._store.canonical)
        async with self._serial:
            try:
                kept = (await run_on(self._state_worker, self._store.kept_values, run.key, again)
                        if again else {})
                update, after, batches = await run_on(
                    self._worker, self._evaluate_step, group, rule, stored, reads, kept,
                    context, mapper)
            except EvaluationError as exc:
                self._failed(run, query, what, exc.reason, exc)
                return None
            try:
                ids = await run_to_end(self._state_worker, self._commit, run, update, batches,
                                       after)
            except StateError as exc:
                self._failed(run, query, what, "state", exc)
                return None
        if update.dropped:
            mapper.forget(after.totals)
        run.stored = after
        self._observe(run, query, update, time.monotonic() - started)
        if batches:
            self._on_commit(ids, batches)
        return after

    def _evaluate_step(
        self, group: Group, rule: Rule, stored: Stored, reads: Sequence[WindowRead],
        kept: Mapping[Window, Mapping[TempoKey, float]], context: Context,
        mapper: LabelMapper,
    ) -> tuple[Update, Stored, list[Batch]]:
        """The update of one step, the stored state after it, and its requests: no I/O."""
        update = evaluate(group, rule, stored, reads, kept, context, mapper)
        return update, stored.apply(update), self._batches(update)

    def _batches(self, update: Update) -> list[Batch]:
        """The remote-write requests that carry the update's samples."""
        if self._encode is None or not update.samples:
            return []
        return self._encode(update.samples, update.exemplars)

    async def _read(self, run: _Run, query: Query, what: str) -> list[WindowRead] | None:
        """Run one query against Tempo; on failure count and log it and return None."""
        group, rule = run.group, run.rule
        self._metrics.tempo_queries.labels(query.kind).inc()
        run.queries[query.kind] = run.queries.get(query.kind, 0) + 1
        started = time.monotonic()
        try:
            buckets = await read_buckets(self._tempo, group, rule, query)
        except TempoError as exc:
            self._contact(exc)
            self._failed(run, query, what, exc.reason, exc)
            return None
        finally:
            self._metrics.tempo_query_duration.labels(query.kind).observe(
                time.monotonic() - started
            )
        self._contact(None)
        return reads_from_buckets(query, buckets)

    def _commit(
        self, run: _Run, update: Update, batches: Sequence[Batch] = (),
        after: Stored | None = None,
    ) -> list[int]:
        return self._store.commit(run.key, update, batches, after=after,
                                  interval=run.group.interval, tenant=run.group.tenant)

    def _observe(self, run: _Run, query: Query, update: Update, seconds: float) -> None:
        names = (run.group.name, run.rule.record)
        stats, metrics = update.stats, self._metrics
        run.windows += stats.recorded
        metrics.windows_evaluated.labels(*names).inc(stats.recorded)
        metrics.windows_behind.labels(*names).dec(stats.recorded)
        if stats.reread:
            metrics.windows_settled.labels(*names).inc(stats.reread)
        if stats.grown:
            metrics.settle_growth.labels(*names).inc(stats.grown)
        if stats.merged:
            metrics.series_merged.labels(*names).inc(stats.merged)
        metrics.last_success.labels(*names).set(self._clock())
        metrics.checkpoint.labels(*names).set(update.checkpoint)
        self._log(run, query).info(
            "evaluation", recorded=stats.recorded, reread=stats.reread, grown=stats.grown,
            merged=stats.merged, series=len(update.live), samples=len(update.samples),
            seconds=round(seconds, 3),
        )

    def _failed(self, run: _Run, query: Query, what: str, reason: str, exc: Exception) -> None:
        run.failed(reason, exc)
        self._metrics.evaluation_failures.labels(run.group.name, run.rule.record, reason).inc()
        self._log(run, query).error(f"{what} failed", reason=reason, error=str(exc))

    def _log(self, run: _Run, query: Query) -> Any:
        return log.bind(
            group=run.group.name, rule=run.rule.record, kind=query.kind,
            window_start=query.start, window_end=query.end, windows=len(query.windows),
        )

    def _contact(self, error: TempoError | None) -> None:
        """Record on the status board whether Tempo answered."""
        if self._status is None:
            return
        if error is None:
            contact = TempoContact(self._clock(), True)
        else:
            contact = TempoContact(
                self._clock(), False, str(error), error.reason,
                reachable=error.reason not in ("network", "timeout"),
            )
        self._status.tempo_answered(contact)

    def _report(self, run: _Run, duration: float) -> None:
        """Record the evaluation on the status board."""
        if self._status is None:
            return
        status = self._status.rule(run.group.name, run.rule.record)
        stored = run.stored
        if status is None:
            return
        series = 0
        if stored is not None:
            status.checkpoint = stored.checkpoint
            status.settle = dict(stored.settle_checkpoints)
            status.windows_behind = len(due_windows(
                stored.checkpoint, self._clock(), run.group.interval, run.group.query_offset))
            series = len(stored.live)
        self._status.evaluated(run.group.name, run.rule.record, Evaluation(
            at=self._clock(), duration=duration, series=series, queries=dict(run.queries),
            windows=run.windows, error=run.error, reason=run.reason,
        ))


UNKNOWN_SERIES_WINDOWS = 20
"""Windows a rule whose series are not known yet reads in its first range query."""


def _series_hint(stored: Stored, limits: Limits) -> int:
    """How many series the rule's answers hold, to size range queries by points: what it
    holds now, or, not known yet, as many as bring its first query to at most
    :data:`UNKNOWN_SERIES_WINDOWS` windows."""
    known = max(len(stored.totals), len(stored.live))
    return known or limits.max_points // UNKNOWN_SERIES_WINDOWS


@dataclass
class _Run:
    """One evaluation of one rule."""

    group: Group
    rule: Rule
    key: RuleKey
    now: float
    stored: Stored | None = None
    started: float = field(default_factory=time.monotonic)
    queries: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    error: str | None = None
    reason: str | None = None

    def failed(self, reason: str, exc: Exception) -> None:
        self.reason, self.error = reason, str(exc)


async def read_buckets(
    tempo: TempoClient, group: Group, rule: Rule, query: Query
) -> Buckets:
    """Run one planned query against Tempo: the values of the windows it reads."""
    if query.kind == "instant":
        return await tempo.instant_buckets(rule.expr, query.start, query.end,
                                           tenant=group.tenant)
    return await tempo.range_buckets(rule.expr, query.start, query.end, query.step,
                                     bucket_stamps(query), tenant=group.tenant)


@dataclass(frozen=True)
class DryRun:
    """What one rule wrote in a dry run, from zero, and where it ended."""

    group: Group
    rule: Rule
    samples: list[Sample]
    stored: Stored | None
    """The rule's final state; None when the range held no whole window."""
    exemplars: Mapping[tuple[Labels, int], Sequence[Exemplar]] = field(default_factory=dict)
    """The exemplars of the samples, by the sample's series and timestamp (ms)."""


async def dry_run(
    tempo: TempoClient,
    groups: Sequence[Group],
    start: float,
    end: float,
    limits: Limits,
    *,
    now: float,
    only: Sequence[str] | None = None,
) -> list[DryRun]:
    """The samples every rule (or those recorded as one of ``only``) would write for the
    windows after ``start`` that end by ``end``, counters starting from zero at ``start``.

    Windows younger than their group's ``query_offset`` at ``now`` are left out, as the
    daemon would not read them yet. Nothing is read again for late spans: the range is
    read once, already settled or not. Raises TempoError or EvaluationError.
    """
    runs = []
    for group in groups:
        flat = dataclasses.replace(group, settle=(), start=0)
        upto = min(end + group.query_offset, now)
        checkpoint = align_down(start, group.interval)
        for rule in group.rules:
            if only and rule.record not in only:
                continue
            store = MemoryStore()
            key = rule_key(group, rule)
            if due_windows(checkpoint, upto, group.interval, group.query_offset):
                store.rules[key] = Stored(checkpoint)
                engine = _DryEngine(tempo, store, limits)
                if not await engine.evaluate_rule(flat, rule, upto):
                    raise engine.error
            runs.append(DryRun(group, rule, store.samples.get(key, []), store.rules.get(key),
                               store.exemplars.get(key, {})))
    return runs


class _DryEngine(Engine):
    """The engine of a dry run: a failure is raised, not only logged and counted."""

    def __init__(self, tempo: TempoClient, store: MemoryStore, limits: Limits) -> None:
        super().__init__(tempo, store, Metrics(), limits=limits)
        self.error: Exception = RuntimeError("dry run failed")

    def _failed(self, run: _Run, query: Query, what: str, reason: str, exc: Exception) -> None:
        self.error = exc
