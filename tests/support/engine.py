"""The engine on a state file, the Tempo double and a clock the test moves, with rule
files written for it: for the tests of the engine and of rule edits."""

from __future__ import annotations

import dataclasses
import textwrap
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from bridge.engine import Engine, rule_key
from bridge.evaluation import series_labels
from bridge.metrics import Metrics
from bridge.remote_write import Batch, encode_batches
from bridge.rulefmt import load_rule_files
from bridge.rules import Group, Rule
from bridge.series import Exemplar, Labels, Sample
from bridge.state import State
from bridge.tempo import TempoClient
from bridge.windows import Limits
from bridge.worker import Worker
from tests.doubles.tempo import Span, TempoDouble
from tests.support.clock import FakeClock

T0 = 1795780800  # a multiple of 3600
COUNT = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'
SUM = '{ resource.service.name = "svc" } | sum_over_time(span.cost) by (span.model)'
LIMITS = Limits(max_duration=86400, max_intervals=10_000)


def span(t: float, model: str | int | None, cost: float = 1.0) -> Span:
    attributes: dict[str, str | int | float] = {"cost": cost}
    if model is not None:
        attributes["model"] = model
    return Span(start_ns=int(t * 1e9), attributes=attributes, resource={"service.name": "svc"})


def rules_yaml(
    *, interval: str = "60s", settle: str = "[]", labels: str = "{}", start: str = "0s",
    rules: Iterable[str] = (),
) -> str:
    body = "".join(textwrap.indent(textwrap.dedent(r), "      ") for r in rules)
    return textwrap.dedent(
        f"""\
        groups:
          - name: g
            interval: {interval}
            query_offset: 60s
            start: {start}
            settle: {settle}
            labels: {labels}
            rules:
        """
    ) + body


def rule_yaml(record: str = "x", expr: str = COUNT, kind: str = "counter", extra: str = "") -> str:
    return f"- record: {record}\n  expr: '{expr}'\n  kind: {kind}\n" + "".join(
        f"  {line}\n" for line in extra.splitlines()
    )


class Harness:
    """An engine on a state file, the Tempo double and a clock the test moves."""

    def __init__(self, tmp_path: Path, spans: Iterable[Span] = (), *, now: float = T0,
                 retention: int = 0, limits: Limits = LIMITS,
                 worker: Worker | None = None, state_worker: Worker | None = None) -> None:
        self.tmp = tmp_path
        self.worker = worker
        self.state_worker = state_worker
        self.clock = FakeClock(now)
        self.double = TempoDouble(spans, clock=self.clock, query_end_cutoff=0)
        self.retention = retention
        self.limits = limits
        self.state = State(tmp_path / "state.sqlite")
        self.metrics = Metrics()
        self.written: list[Sample] = []
        """Every sample committed, in the order the evaluations wrote them."""
        self.exemplars: dict[tuple[Labels, int], list[Exemplar]] = {}
        self._encoding: list[Sample] = []
        self.encoded_on: list[str] = []
        """The thread of each call of the encoder."""
        self.engine = self._engine()

    def _engine(self) -> Engine:
        client = TempoClient("http://tempo", transport=self.double.transport(),
                             worker=self.worker, canonical=self.state.canonical)
        return Engine(client, self.state, self.metrics, limits=self.limits,
                      retention=self.retention, clock=self.clock, encode=self._encode,
                      on_commit=self._committed, worker=self.worker,
                      state_worker=self.state_worker)

    def _encode(self, samples: Sequence[Sample],
                exemplars: Mapping[tuple[Labels, int], Sequence[Exemplar]]) -> list[Batch]:
        self._encoding = list(samples)
        self.encoded_on.append(threading.current_thread().name)
        self.exemplars.update({k: list(v) for k, v in exemplars.items()})
        return encode_batches(samples, exemplars, {}, 2000)

    def _committed(self, ids: Sequence[int], batches: Sequence[Batch]) -> None:
        self.written += self._encoding
        self._encoding = []

    def restart(self) -> None:
        self.state.close()
        self.state = State(self.tmp / "state.sqlite")
        self.metrics = Metrics()
        self.engine = self._engine()

    def load(self, text: str, idle_after: int | None = None) -> Group:
        path = self.tmp / "rules.yaml"
        path.write_text(text)
        (group,) = load_rule_files([str(path)], min_query_offset=0)
        if idle_after is not None:
            group = dataclasses.replace(group, idle_after=idle_after)
        return group

    async def tick(self, group: Group, advance: float = 0) -> bool:
        self.clock.now += advance
        return await self.engine.evaluate_group(group)

    async def retire_absent(self, groups: Iterable[Group]) -> None:
        loaded = {rule_key(g, r) for g in groups for r in g.rules}
        for known in self.state.known_rules():
            if known.removed_at is None and known.key not in loaded:
                await self.engine.retire(known.key, known.interval or 60)

    def outbox(self) -> list[tuple[dict[str, str], int, float]]:
        """The samples written, in order, timestamps in seconds."""
        return [(dict(labels), ts // 1000, value) for labels, ts, value in self.written]

    def totals(self, group: Group, rule: Rule) -> dict[Labels, float]:
        """The rule's counters: each Prometheus series' sum of its Tempo series' totals."""
        stored = self.state.load(rule_key(group, rule))
        assert stored is not None
        sums: dict[Labels, float] = defaultdict(float)
        for key, total in stored.totals.items():
            sums[series_labels(rule, group, key)] += total.value
        return dict(sums)

    def queries(self) -> list[tuple[str, dict[str, str]]]:
        return [(r.path.rsplit("/", 1)[-1], dict(r.params)) for r in self.double.requests]

    def failures(self, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "tempo_bridge_evaluation_failures_total", {"group": "g", "rule": "x", "reason": reason}
        )


def truth(
    spans: Iterable[Span], group: Group, rule: Rule, start: int, end: int,
    value: Callable[[Span], float] = lambda s: 1.0,
) -> dict[Labels, float]:
    """What a counter over the spans starting in ``(start, end]`` must hold."""
    sums: dict[Labels, float] = defaultdict(float)
    for s in spans:
        if start < s.start_ns / 1e9 <= end:
            key = tuple(sorted((f"span.{k}", str(v)) for k, v in s.attributes.items()
                               if k == "model"))
            sums[series_labels(rule, group, key)] += value(s)
    return dict(sums)


def assert_increasing(rows: Iterable[tuple[dict[str, str], int, float]]) -> None:
    """No series gets a sample at or before its previous one (Prometheus would refuse it)."""
    last: dict[tuple[tuple[str, str], ...], int] = {}
    for labels, ts, _value in rows:
        key = tuple(sorted(labels.items()))
        assert ts > last.get(key, -1), f"{labels} at {ts} after {last.get(key)}"
        last[key] = ts
