"""Engine: evaluates a rule's due windows: plan, query Tempo, evaluate, commit.

One Tempo query is one evaluation and one state transaction. A failed query stops the
rule at the last committed window; the next tick starts again from there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from bridge.errors import StateError, TempoError
from bridge.evaluation import (
    EvaluationError,
    Sample,
    Window,
    accumulate,
    gauge_samples,
    windows_from_answer,
)
from bridge.metrics import Metrics
from bridge.rules import Group, Rule
from bridge.state import State
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
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._tempo = tempo
        self._state = state
        self._metrics = metrics
        self._max_duration = max_duration
        self._clock = clock
        self._on_commit = on_commit
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
            return await self._evaluate_rule(group, rule, rule_id, now)

    async def _evaluate_rule(self, group: Group, rule: Rule, rule_id: str, now: float) -> bool:
        stored = self._state.rule_state(rule_id)
        if stored is None:
            # Pin where a new rule begins, so a failing first query does not move it.
            checkpoint = initial_checkpoint(now, group.interval, group.query_offset, group.start)
            totals: dict[tuple[tuple[str, str], ...], float] = {}
            live: set[tuple[tuple[str, str], ...]] = set()
            self._state.commit_evaluation(
                rule_id=rule_id, group=group.name, record=rule.record, expr=rule.expr,
                kind=rule.kind, checkpoint=checkpoint,
            )
        else:
            checkpoint, totals, live = stored.checkpoint, stored.totals, stored.live_gauges
        due = due_windows(checkpoint, now, group.interval, group.query_offset)
        names = (group.name, rule.record)
        self._metrics.windows_behind.labels(*names).set(len(due))
        for query in plan_queries(due, group.interval, self._max_duration):
            started = time.monotonic()
            self._metrics.evaluations.labels(*names).inc()
            bound = log.bind(
                group=group.name, rule=rule.record, kind=query.kind,
                window_start=query.window_ends[0] - group.interval,
                window_end=query.window_ends[-1], windows=len(query.window_ends),
            )
            try:
                self._metrics.tempo_queries.labels(query.kind).inc()
                windows = await read_windows(self._tempo, group, rule, query)
                samples: Sequence[Sample]
                if rule.kind == "counter":
                    counter = accumulate(totals, windows, group.interval)
                    totals, samples = counter.totals, counter.samples
                    self._commit(group, rule, rule_id, query, samples, totals=totals)
                else:
                    gauge = gauge_samples(live, windows)
                    live, samples = gauge.live, gauge.samples
                    self._commit(group, rule, rule_id, query, samples, live=live)
            except (TempoError, EvaluationError, StateError) as exc:
                reason = getattr(exc, "reason", "state")
                self._metrics.evaluation_failures.labels(*names, reason).inc()
                bound.error("evaluation failed", reason=reason, error=str(exc))
                return False
            finally:
                self._metrics.evaluation_duration.labels(group.name).observe(
                    time.monotonic() - started
                )
            self._metrics.windows_evaluated.labels(*names).inc(len(query.window_ends))
            self._metrics.windows_behind.labels(*names).dec(len(query.window_ends))
            self._metrics.last_success.labels(*names).set(self._clock())
            self._metrics.checkpoint.labels(*names).set(query.window_ends[-1])
            bound.info(
                "evaluation", series=len(totals) if rule.kind == "counter" else len(live),
                samples=len(samples), duration=round(time.monotonic() - started, 4),
            )
            self._on_commit()
        return True

    def _commit(
        self,
        group: Group,
        rule: Rule,
        rule_id: str,
        query: Query,
        samples: Sequence[Sample],
        *,
        totals: dict[tuple[tuple[str, str], ...], float] | None = None,
        live: set[tuple[tuple[str, str], ...]] | None = None,
    ) -> None:
        self._state.commit_evaluation(
            rule_id=rule_id, group=group.name, record=rule.record, expr=rule.expr,
            kind=rule.kind, checkpoint=query.window_ends[-1], totals=totals,
            live_gauges=live, samples=samples,
        )


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
