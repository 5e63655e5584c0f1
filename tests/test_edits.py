"""Random sequences of rule edits, restarts and downtime while spans (some late) arrive:
after every step every counter equals the truth of its windows, and no sample would be
refused by Prometheus.

A model-based test: the model is the rule file an operator keeps editing; the check is
computed from the spans the Tempo double holds and the queries it answered, not from the
bridge's own bookkeeping.

*The truth of a counter* is, for each Prometheus series under the rule's current labels,
the sum over every window the rule read of the spans that had arrived when that window
was last read. The windows must partition the time from the rule's first window to its
checkpoint (none lost, none read as two different windows), so a counter equal to its
truth counted every window exactly once, with its latest value.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.engine import rule_key
from bridge.rules import Group, Rule
from bridge.series import Labels, is_stale_nan
from bridge.state import RuleKey
from tests.doubles.tempo import RecordedRequest, Span
from tests.support.engine import Harness

T0 = 1795780800
REQUESTS = "{ } | count_over_time() by (span.model, span.key)"
COST = "{ } | sum_over_time(span.cost) by (span.model)"
INTERVALS = (10, 20, 30, 60, 120)  # each divides a day and 120 s
SETTLES = ((), (120,), (240,), (120, 600))  # multiples of every interval
MODELS: tuple[str | int | None, ...] = ("a", "b", "", None, 3, "3")
KEYS: tuple[str | None, ...] = ("k1", "k2", None)


@dataclass
class Model:
    """The rule file as the operator last wrote it."""

    interval: int = 60
    settle: tuple[int, ...] = (120,)
    idle_after: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    missing_value: str | None = None
    cost_kind: str = "counter"
    cost_present: bool = True

    def yaml(self) -> str:
        def mapping(m: Mapping[str, str]) -> str:
            return "{" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "}"

        def rule(record: str, expr: str, kind: str) -> str:
            text = (f"      - record: {record}\n        expr: '{expr}'\n        kind: {kind}\n"
                    f"        rename: {mapping(self.rename)}\n")
            if self.missing_value is not None:
                text += f"        missing_value: {self.missing_value}\n"
            return text

        settle = "[" + ", ".join(f"{a}s" for a in self.settle) + "]"
        text = (
            "groups:\n  - name: g\n"
            f"    interval: {self.interval}s\n    query_offset: 30s\n    settle: {settle}\n"
            f"    idle_after: {self.idle_after}s\n    labels: {mapping(self.labels)}\n"
            "    rules:\n" + rule("requests_total", REQUESTS, "counter")
        )
        if self.cost_present:
            text += rule("cost", COST, self.cost_kind)
        return text


def edit(rng: random.Random, model: Model) -> str:
    """Change one thing an operator changes; returns what, for the failure message."""
    what = rng.choice(["interval", "settle", "idle_after", "labels", "rename",
                       "missing_value", "kind", "presence"])
    if what == "interval":
        model.interval = rng.choice(INTERVALS)
        if model.idle_after:
            model.idle_after = max(model.idle_after, model.interval)
    elif what == "settle":
        model.settle = rng.choice(SETTLES)
    elif what == "idle_after":
        model.idle_after = rng.choice((0, 120, 600))
    elif what == "labels":
        model.labels = rng.choice([{}, {"team": "llm"}, {"team": "ml", "env": "prod"}])
    elif what == "rename":
        model.rename = rng.choice([{}, {"model": "m"}, {"model": "llm_model"}])
    elif what == "missing_value":
        model.missing_value = rng.choice([None, "a", "none"])  # "a" is a real model too
    elif what == "kind":
        model.cost_kind = "gauge" if model.cost_kind == "counter" else "counter"
    else:
        model.cost_present = not model.cost_present
    return f"{what} -> {model}"


def random_span(rng: random.Random, t: float) -> Span:
    attributes: dict[str, str | int | float] = {"cost": rng.randrange(1, 16) / 8}
    model, key = rng.choice(MODELS), rng.choice(KEYS)
    if model is not None:
        attributes["model"] = model
    if key is not None:
        attributes["key"] = key
    return Span(start_ns=int(t * 1e9), attributes=attributes)


@dataclass
class Arrived:
    span: Span
    at: float


def windows_read(requests: Iterable[RecordedRequest]) -> dict[tuple[int, int], float]:
    """Each window a query read, and when it was last read."""
    read: dict[tuple[int, int], float] = {}
    for request in requests:
        start, end = int(request.params["start"]), int(request.params["end"])
        if request.path.endswith("/query"):
            windows = [(start, end)]
        else:
            step = int(request.params["step"].rstrip("s"))
            windows = [(t - step, t) for t in range(start + step, end + 1, step)]
        for window in windows:
            read[window] = max(read.get(window, request.at), request.at)
    return read


def read_times(requests: Iterable[RecordedRequest]) -> dict[tuple[int, int], list[float]]:
    """Each window a query read, and every time it was read."""
    times: dict[tuple[int, int], list[float]] = defaultdict(list)
    for request in requests:
        for window in windows_read([request]):
            times[window].append(request.at)
    return times


@dataclass(frozen=True)
class Step:
    """An evaluation: when, the identities the rule file held, its settle ages."""

    at: float
    keys: frozenset[RuleKey]
    settle: tuple[int, ...]


def assert_settled(key: RuleKey, requests: list[RecordedRequest], steps: list[Step]) -> None:
    """Every window was read again at each settle age that stayed in the rule file (with
    the rule) from its first read until an evaluation at least that old."""
    for (start, end), times in read_times(requests).items():
        first = min(times)
        for age in {a for step in steps for a in step.settle}:
            due = next((s.at for s in steps if s.at >= end + age), None)
            if due is None:
                continue
            held = all(key in s.keys and age in s.settle for s in steps if first <= s.at <= due)
            if held:
                assert max(times) >= end + age, (
                    f"{key.record}: window ({start}, {end}] read at {times}, never at age {age}"
                )


def by_labels(rule: Rule, group: Group, span: Span) -> Labels:
    """The Prometheus series a span counts in, as the rule maps it now."""
    tempo = {a: str(span.attributes[a.removeprefix("span.")]) for a in rule.by
             if a.removeprefix("span.") in span.attributes}
    return tuple(sorted(rule.map_labels(tempo, group.labels).items()))


def truth(h: Harness, group: Group, rule: Rule, arrived: list[Arrived],
          requests: list[RecordedRequest], checkpoint: int) -> dict[Labels, float]:
    read = windows_read(requests)
    windows = sorted(read)
    if not windows:
        return {}  # a rule that replaced another begins at its checkpoint: nothing due yet
    # the windows partition (first start, checkpoint]: none lost, none read on two grids
    for before, after in itertools.pairwise(windows):
        assert before[1] == after[0], f"windows {before} and {after} do not meet"
    assert windows[-1][1] == checkpoint
    sums: dict[Labels, float] = defaultdict(float)
    starts = [w[0] for w in windows]
    for item in arrived:
        t = item.span.start_ns / 1e9
        i = _window_index(starts, t)
        if i is None or t > windows[i][1] or item.at > read[windows[i]]:
            continue
        value = 1.0 if rule.record == "requests_total" else float(item.span.attributes["cost"])
        sums[by_labels(rule, group, item.span)] += value
    return dict(sums)


def _window_index(starts: list[int], t: float) -> int | None:
    lo, hi = 0, len(starts)
    while lo < hi:  # the last window starting before t
        mid = (lo + hi) // 2
        if starts[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo else None


def assert_prometheus_would_take(h: Harness) -> None:
    last: dict[Labels, int] = {}
    for labels, ts, _value in h.written:
        assert ts > last.get(labels, -1), (
            f"{labels} at {ts} after {last.get(labels)}: refused as out of order"
        )
        last[labels] = ts


@pytest.mark.parametrize("seed", range(20))
async def test_random_edits_keep_every_counter_exact(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    h = Harness(tmp_path, now=T0)
    model = Model()
    arrived: list[Arrived] = []
    # which identity each query served: the rule file's at the time of the query
    served: dict[RuleKey, list[RecordedRequest]] = defaultdict(list)
    spans_until = T0 - 3600.0
    history: list[str] = []
    steps: list[Step] = []
    for step in range(40):
        action = rng.random()
        evaluate = True
        if action < 0.35:
            history.append(edit(rng, model))
        elif action < 0.45:
            history.append("restart")
            h.restart()
        elif action < 0.55:
            history.append("down")
            evaluate = False
        h.clock.now += rng.choice((15, 30, 45, 60, 120, 300))
        # spans that start before now, and a few late ones for windows already read
        new = [random_span(rng, spans_until + (h.clock.now - spans_until) * rng.random())
               for _ in range(rng.randrange(2, 12))]
        new += [random_span(rng, h.clock.now - rng.uniform(40, 700))
                for _ in range(rng.choice((0, 0, 1, 3)))]
        spans_until = h.clock.now
        h.double.add_spans(new)
        arrived += [Arrived(s, h.clock.now) for s in new]
        if not evaluate:
            continue
        group = h.load(model.yaml())
        await h.retire_absent([group])
        before = {k.key: k.checkpoint for k in h.state.known_rules()}
        asked = len(h.double.requests)
        assert await h.engine.evaluate_group(group), history
        for request in h.double.requests[asked:]:
            rule = next(r for r in group.rules if r.expr == request.params["q"])
            served[rule_key(group, rule)].append(request)
        steps.append(Step(h.clock.now, frozenset(rule_key(group, r) for r in group.rules),
                          group.settle))
        context = f"seed {seed}, step {step}: {history[-3:]}"
        assert_prometheus_would_take(h)
        for rule in group.rules:
            key = rule_key(group, rule)
            if rule.kind != "counter":
                continue
            stored = h.state.load(key)
            assert stored is not None
            want = truth(h, group, rule, arrived, served[key], stored.checkpoint)
            assert_settled(key, served[key], steps)
            got = h.totals(group, rule)
            assert got.keys() == want.keys(), context
            for labels, value in want.items():
                assert got[labels] == pytest.approx(value, rel=1e-12), (context, labels)
            if before.get(key) == stored.checkpoint:
                continue  # no new window: a settle pass's growth is written at the next one
            # after a new window, what Prometheus holds of each live series is its total
            if rule.record != "requests_total":
                # the cost rule's kind flips: where the gauge of the same name wrote a
                # series at a window end, the counter replacing it leaves that sample be
                continue
            written = _last_written(h, stored.live, stored.checkpoint * 1000)
            assert written.keys() == stored.live, context
            for labels, value in written.items():
                assert value == pytest.approx(got[labels], rel=1e-12), (context, labels)


def _last_written(h: Harness, live: Iterable[Labels], ts_ms: int) -> dict[Labels, float]:
    wanted = set(live)
    found: dict[Labels, float] = {}
    for labels, ts, value in h.written:
        if labels in wanted and ts == ts_ms and not is_stale_nan(value):
            found[labels] = value
    return found


