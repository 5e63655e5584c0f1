"""Engine: evaluates a rule's due windows: plan, query Tempo, evaluate, commit.

One Tempo query is one evaluation and one state transaction. A failed query stops the
rule at the last committed window; the next tick starts again from there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.errors import StateError, TempoError
from bridge.evaluation import (
    EvaluationError,
    SettleUpdate,
    Window,
    accumulate,
    gauge_samples,
    settle,
    window_values,
    windows_from_answer,
)
from bridge.metrics import Metrics
from bridge.rules import Group, Rule
from bridge.series import STALE_NAN, Labels, Sample
from bridge.state import State
from bridge.status import Evaluation, StatusBoard, TempoContact
from bridge.tempo import InstantSeries, RangeSeries, TempoClient
from bridge.windows import Query, due_windows, initial_checkpoint, plan_queries

log = structlog.get_logger("bridge.engine")


class Engine:
    """Evaluates rules against Tempo and stores the results in the state."""

    def __init__(
        self,
        tempo: TempoClient,
        state: State,
        metrics: Metrics,
        *,
        max_duration: int,
        max_sample_age: float = 0.0,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[], None] = lambda: None,
        status: StatusBoard | None = None,
    ) -> None:
        self._tempo = tempo
        self._state = state
        self._metrics = metrics
        self._max_duration = max_duration
        self._max_sample_age = max_sample_age
        self._clock = clock
        self._on_commit = on_commit
        self._status = status
        self._locks: dict[str, asyncio.Lock] = {}

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
        rule_id = rule.rule_id(group.name)
        async with self._locks.setdefault(rule_id, asyncio.Lock()):
            self._metrics.evaluations.labels(group.name, rule.record).inc()
            started = time.monotonic()
            outcome = _Outcome()
            try:
                return await self._evaluate_rule(group, rule, rule_id, now, outcome)
            except (StateError, sqlite3.Error) as exc:
                # reading the state failed: nothing was recorded, the next tick retries
                self._metrics.evaluation_failures.labels(group.name, rule.record, "state").inc()
                log.error("evaluation failed", group=group.name, rule=rule.record,
                          reason="state", error=str(exc))
                outcome.failed("state", exc)
                return False
            finally:
                duration = time.monotonic() - started
                self._metrics.evaluation_duration.labels(group.name).observe(duration)
                self._report(group, rule, outcome, duration)

    async def retire(self, group: Group, rule: Rule) -> None:
        """A gauge rule was removed: end its live series with stale markers, now.

        A removed counter keeps its totals, so that putting it back continues them.
        """
        if rule.kind != "gauge":
            return
        rule_id = rule.rule_id(group.name)
        async with self._locks.setdefault(rule_id, asyncio.Lock()):
            stored = self._state.rule_state(rule_id)
            if stored is None or not stored.live_gauges:
                return
            ts_ms = int(self._clock() * 1000)
            try:
                self._state.commit_evaluation(
                    rule_id=rule_id, group=group.name, record=rule.record, expr=rule.expr,
                    kind=rule.kind, checkpoint=stored.checkpoint, live_gauges=(),
                    samples=[(k, ts_ms, STALE_NAN) for k in sorted(stored.live_gauges)],
                )
            except StateError as exc:
                log.error("cannot mark a removed rule's series stale", group=group.name,
                          rule=rule.record, error=str(exc))
                return
            log.info("rule removed, its series marked stale", group=group.name,
                     rule=rule.record, series=len(stored.live_gauges))
        self._on_commit()

    def _report(self, group: Group, rule: Rule, outcome: _Outcome, duration: float) -> None:
        """Record the evaluation on the status board."""
        if self._status is None:
            return
        status = self._status.rule(group.name, rule.record)
        if status is None:
            return
        run = outcome.run
        if run is not None:
            status.checkpoint = run.checkpoint
            status.settle = dict(run.settled)
            status.windows_behind = len(due_windows(
                run.checkpoint, self._clock(), group.interval, group.query_offset))
        series = 0 if run is None else len(run.totals) if rule.kind == "counter" else len(run.live)
        self._status.evaluated(group.name, rule.record, Evaluation(
            at=self._clock(), duration=duration, series=series, queries=dict(outcome.queries),
            windows=outcome.windows, error=outcome.error, reason=outcome.reason,
        ))

    async def _evaluate_rule(
        self, group: Group, rule: Rule, rule_id: str, now: float, outcome: _Outcome
    ) -> bool:
        run = self._load(group, rule, rule_id, now)
        run.outcome = outcome
        outcome.run = run
        reread: list[int] = []
        if rule.kind == "counter":
            catching_up = len(due_windows(run.checkpoint, now, group.interval,
                                          group.query_offset)) > 1
            # oldest age first: after a downtime its read covers the younger ages' windows
            for age in sorted(group.settle, reverse=True):
                due = self._settle_due(run, age, now)
                if catching_up and due and due[-1] == run.checkpoint:
                    # contiguous with the windows to catch up: read in the same queries
                    reread = due
                    break
                if not await self._settle(run, age, now):
                    return False
        return await self._record(run, now, reread)

    def _load(self, group: Group, rule: Rule, rule_id: str, now: float) -> _Run:
        """The rule's state; a new rule's first checkpoint is stored at once, so a
        failing first query does not move where it begins."""
        stored = self._state.rule_state(rule_id)
        if stored is None:
            checkpoint = initial_checkpoint(now, group.interval, group.query_offset, group.start)
            run = _Run(group, rule, rule_id, checkpoint, {}, set(), {})
        else:
            run = _Run(group, rule, rule_id, stored.checkpoint, stored.totals,
                       stored.live_gauges, stored.settled)
        if rule.kind == "counter":
            # a settle age the rule has not seen yet starts at the checkpoint: no retro-reads
            run.settled = {age: run.settled.get(age, run.checkpoint) for age in group.settle}
        if stored is None or run.settled != stored.settled:
            self._commit(run, settled=run.settled)
        return run

    async def _record(self, run: _Run, now: float, reread: list[int]) -> bool:
        """Read and record the windows due after the checkpoint.

        ``reread`` are recorded windows (a counter's, up to the checkpoint) due for a
        settle pass, read by the same queries: a catch-up then costs no extra query.
        """
        group, rule = run.group, run.rule
        due = due_windows(run.checkpoint, now, group.interval, group.query_offset)
        names = (group.name, rule.record)
        self._metrics.windows_behind.labels(*names).set(len(due))
        # samples the receiver would refuse as too old are not even queued
        since_ms = int((now - self._max_sample_age) * 1000) if self._max_sample_age else 0
        for query in plan_queries(reread + due, group.interval, self._max_duration):
            windows = await self._query(run, query, "evaluation")
            if windows is None:
                return False
            recorded = [w for w in windows if w.end <= run.checkpoint]
            windows = windows[len(recorded):]
            samples: list[Sample] = []
            try:
                if rule.kind == "counter":
                    values: dict[int, dict[Labels, float]] = {}
                    if recorded:
                        grown = self._settled(run, recorded)
                        samples, values = grown.samples, grown.values
                    counter = accumulate(run.totals, windows, group.interval, since_ms)
                    run.totals = counter.totals
                    samples += counter.samples
                    for age in group.settle:
                        run.settled[age] = _advance(
                            run.settled[age], query, group.interval, now - age
                        )
                    if group.settle:
                        values.update(window_values(windows))
                    run.checkpoint = max(run.checkpoint, query.window_ends[-1])
                    self._commit(run, samples, totals=run.totals, values=values or None,
                                 settled=run.settled)
                else:
                    gauge = gauge_samples(run.live, windows, since_ms)
                    run.live, samples = gauge.live, gauge.samples
                    run.checkpoint = query.window_ends[-1]
                    self._commit(run, samples, live=run.live)
            except StateError as exc:
                self._failed(run, query, "evaluation", "state", exc)
                return False
            run.outcome.windows += len(windows)
            self._metrics.windows_evaluated.labels(*names).inc(len(windows))
            self._metrics.windows_behind.labels(*names).dec(len(windows))
            self._metrics.last_success.labels(*names).set(self._clock())
            self._metrics.checkpoint.labels(*names).set(run.checkpoint)
            self._log(run, query).info(
                "evaluation", series=len(run.totals) if rule.kind == "counter" else len(run.live),
                samples=len(samples),
            )
            self._on_commit()
        return True

    def _settle_due(self, run: _Run, age: int, now: float) -> list[int]:
        """Recorded windows that reached ``age`` since the last settle pass at it."""
        interval = run.group.interval
        upto = min(run.checkpoint, int((now - age) // interval) * interval)
        return list(range(run.settled[age] + interval, upto + 1, interval))

    def _settled(self, run: _Run, windows: list[Window]) -> SettleUpdate:
        """Compare re-read windows with their recorded values; the totals grow by the gain."""
        recorded = self._state.window_values(
            run.rule_id, windows[0].end - run.group.interval, windows[-1].end
        )
        update = settle(run.totals, recorded, windows, run.checkpoint)
        run.totals = update.totals
        names = (run.group.name, run.rule.record)
        self._metrics.windows_settled.labels(*names).inc(len(windows))
        self._metrics.settle_growth.labels(*names).inc(update.grown)
        return update

    async def _settle(self, run: _Run, age: int, now: float) -> bool:
        """Read again the recorded windows that reached ``age``; a counter grows by what
        they gained since (late spans)."""
        group = run.group
        for query in plan_queries(self._settle_due(run, age, now), group.interval,
                                  self._max_duration):
            windows = await self._query(run, query, "settle")
            if windows is None:
                return False
            update = self._settled(run, windows)
            run.settled[age] = query.window_ends[-1]
            for other in group.settle:  # read at an age past theirs too: settled for them
                run.settled[other] = _advance(
                    run.settled[other], query, group.interval, now - other
                )
            try:
                self._commit(run, update.samples, totals=update.totals, values=update.values,
                             settled=run.settled)
            except StateError as exc:
                self._failed(run, query, "settle", "state", exc)
                return False
            self._log(run, query).info("settle", age=age, grown=update.grown)
            if update.samples:
                self._on_commit()
        return True

    async def _query(self, run: _Run, query: Query, what: str) -> list[Window] | None:
        """Read one query's windows; on failure count and log it and return None."""
        self._metrics.tempo_queries.labels(query.kind).inc()
        run.outcome.queries[query.kind] = run.outcome.queries.get(query.kind, 0) + 1
        started = time.monotonic()
        try:
            windows = await read_windows(self._tempo, run.group, run.rule, query)
        except TempoError as exc:
            self._contact(exc)
            self._failed(run, query, what, exc.reason, exc)
            return None
        except EvaluationError as exc:
            self._contact(None)
            self._failed(run, query, what, exc.reason, exc)
            return None
        finally:
            self._metrics.tempo_query_duration.labels(query.kind).observe(
                time.monotonic() - started
            )
        self._contact(None)
        return windows

    def _contact(self, error: TempoError | None) -> None:
        """Record on the status board whether Tempo answered."""
        if self._status is not None:
            self._status.tempo_answered(
                TempoContact(self._clock(), error is None, None if error is None else str(error))
            )

    def _failed(self, run: _Run, query: Query, what: str, reason: str, exc: Exception) -> None:
        run.outcome.failed(reason, exc)
        self._metrics.evaluation_failures.labels(run.group.name, run.rule.record, reason).inc()
        self._log(run, query).error(f"{what} failed", reason=reason, error=str(exc))

    def _log(self, run: _Run, query: Query) -> Any:
        return log.bind(
            group=run.group.name, rule=run.rule.record, kind=query.kind,
            window_start=query.window_ends[0] - run.group.interval,
            window_end=query.window_ends[-1], windows=len(query.window_ends),
        )

    def _commit(
        self,
        run: _Run,
        samples: Sequence[Sample] = (),
        *,
        totals: dict[Labels, float] | None = None,
        live: set[Labels] | None = None,
        values: dict[int, dict[Labels, float]] | None = None,
        settled: dict[int, int] | None = None,
    ) -> None:
        self._state.commit_evaluation(
            rule_id=run.rule_id, group=run.group.name, record=run.rule.record,
            expr=run.rule.expr, kind=run.rule.kind, checkpoint=run.checkpoint, totals=totals,
            live_gauges=live, samples=samples, window_values=values, settled=settled,
        )


@dataclass
class _Run:
    """One rule's state while it is being evaluated."""

    group: Group
    rule: Rule
    rule_id: str
    checkpoint: int
    totals: dict[Labels, float]
    live: set[Labels]
    settled: dict[int, int]
    outcome: _Outcome = field(default_factory=lambda: _Outcome())


@dataclass
class _Outcome:
    """What one evaluation did, for the status board."""

    run: _Run | None = None
    queries: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    error: str | None = None
    reason: str | None = None

    def failed(self, reason: str, exc: Exception) -> None:
        self.reason, self.error = reason, str(exc)


def _advance(settled: int, query: Query, interval: int, limit: float) -> int:
    """Windows first read when already older than a settle age need no re-read at it:
    move that age's checkpoint over them, when it has reached the query's first window."""
    if settled < query.window_ends[0] - interval:
        return settled
    old_enough = [end for end in query.window_ends if end <= limit]
    return max(settled, old_enough[-1]) if old_enough else settled

async def dry_run(
    tempo: TempoClient, group: Group, rule: Rule, start: float, end: float, max_duration: int
) -> list[Sample]:
    """Samples ``rule`` would write for the windows ending in ``(start, end]``, from zero.

    Nothing is read from or written to the state: counters start at 0 at ``start``.
    """
    checkpoint = int(start // group.interval) * group.interval
    due = due_windows(checkpoint, end, group.interval, 0)
    samples: list[Sample] = []
    totals: dict[tuple[tuple[str, str], ...], float] = {}
    live: set[tuple[tuple[str, str], ...]] = set()
    for query in plan_queries(due, group.interval, max_duration):
        windows = await read_windows(tempo, group, rule, query)
        if rule.kind == "counter":
            counter = accumulate(totals, windows, group.interval)
            totals = counter.totals
            samples.extend(counter.samples)
        else:
            gauge = gauge_samples(live, windows)
            live = gauge.live
            samples.extend(gauge.samples)
    return samples


async def read_windows(tempo: TempoClient, group: Group, rule: Rule, query: Query) -> list[Window]:
    """Run one planned query against Tempo and split its answer into windows."""
    answer: list[InstantSeries] | list[RangeSeries]
    if query.kind == "instant":
        answer = await tempo.instant(rule.expr, query.start, query.end, tenant=group.tenant)
    else:
        answer = await tempo.range(
            rule.expr, query.start, query.end, query.step, tenant=group.tenant
        )
    return windows_from_answer(rule, group, query, answer)
