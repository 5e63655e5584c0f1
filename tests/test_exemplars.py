"""Exemplars end to end: the daemon, the Tempo double, a real Prometheus with exemplar storage.

The shipped default rules run in-process against the Tempo double, which picks exemplars as
Tempo 3.0.3 does and knows each span's trace ID, and write to a real Prometheus 2.42 started
with ``--enable-feature=exemplar-storage``. ``GET /api/v1/query_exemplars`` must give, per
series and window, exactly the exemplar the bridge picks from Tempo's answers (the largest
Tempo gave there), whose ``traceID`` is a span of that series that started in that window,
stamped with the span's start and valued as Tempo values it: the summed attribute, or for a
count the window's count; every series with spans has some. Steady windows are read with
one-window range queries, a catch-up with one range query per rule, a late span by a settle
pass; a group with ``exemplars: false`` reads instant queries and writes none. Then the
engine alone, on a frozen clock: a steady-state settle pass, a query of its own, keeps its
late spans' exemplars for the next window end."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.series import Exemplar
from bridge.tempo import parse_answer
from tests.doubles.tempo import Span, TempoDouble
from tests.support.e2e import (
    METRICS,
    Env,
    checkpoints,
    first_query_start,
    run_daemon_until,
    run_half_hour_catch_up,
    write_config,
    write_rules,
)
from tests.support.engine import T0, Harness, rule_yaml, rules_yaml
from tests.support.engine import span as engine_span
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.servers import serving
from tests.support.traffic import Key, make_spans, openrouter_spans

pytestmark = pytest.mark.prometheus

Window = tuple[str, Key, int]
"""(record, series labels without __name__ and test, window end s)."""
LABELS = {"span.gen_ai.request.model": "model", "span.gen_ai.provider.name": "provider",
          "span.trace.metadata.openrouter.api_key_name": "api_key_name"}
"""The default rules' by() attributes and the labels they become."""


@pytest.fixture(scope="module")
def prom_exemplars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus-exemplars"),
                          exemplar_storage=True) as server:
        yield server


@pytest.fixture
async def env(
    tmp_path: Path, prom_exemplars: PrometheusServer, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    name = request.node.name
    # every span recent (no split at now - query_backend_after, which moves with the
    # clock): a range query replayed after the daemon read it gets the same exemplars
    tempo = TempoDouble(query_end_cutoff=0.0, query_backend_after=7200.0)
    async with serving(tempo) as url:
        config_path = tmp_path / "bridge.yaml"
        write_config(config_path, url, prom_exemplars.write_url, name)
        yield Env(tmp_path, prom_exemplars, tempo, config_path, name)


def counted(span: Span) -> bool:
    """Whether the default rules count the span."""
    return span.name == "LLM Generation" and span.resource.get("service.name") == "openrouter"


def series_of(span: Span) -> Key:
    a = span.attributes
    labels = {"model": str(a["gen_ai.request.model"]),
              "provider": str(a["gen_ai.provider.name"])}
    if "trace.metadata.openrouter.api_key_name" in a:
        labels["api_key_name"] = str(a["trace.metadata.openrouter.api_key_name"])
    return tuple(sorted(labels.items()))


def window_end(start_ns: int, interval: int) -> int:
    """The end of the window ``(end - interval, end]`` a span starting at ``start_ns`` is in."""
    step = interval * 10**9
    return -(-start_ns // step) * interval


def windows_with_spans(spans: list[Span], interval: int, after: int, upto: int
                       ) -> dict[Window, list[Span]]:
    """Per rule, series and window in ``(after, upto]``: the spans it counts there."""
    found: dict[Window, list[Span]] = defaultdict(list)
    for span in spans:
        if not counted(span) or not after * 10**9 < span.start_ns <= upto * 10**9:
            continue
        for record in METRICS:
            found[(record, series_of(span), window_end(span.start_ns, interval))].append(span)
    return found


def tempo_picks(env: Env, interval: int) -> dict[Window, Exemplar]:
    """What the bridge must have written, from Tempo's answers: the range queries the daemon
    sent, replayed to the double, and per rule, Prometheus series and window, the largest
    of the exemplars Tempo gave there (the latest among equals), as the bridge picks one."""
    records = {f"sum_over_time(span.{a})" if a else "count_over_time()": r
               for r, a in METRICS.items()}
    picks: dict[Window, Exemplar] = {}
    for request in list(env.tempo.requests):
        if not request.path.endswith("/query_range"):
            continue
        query = request.params["q"]
        (record,) = [r for text, r in records.items() if text in query]
        answer = env.tempo.handle(request.path, request.params)
        assert answer.status == 200, answer.body
        start_ms = int(request.params["start"]) * 1000
        for series in parse_answer(answer.body, query, "range"):
            tempo_labels = dict(series.labels)
            labels = {name: tempo_labels[attribute] for attribute, name in LABELS.items()
                      if attribute in tempo_labels}
            key = tuple(sorted(labels.items()))
            for exemplar in series.exemplars:
                if exemplar.ts_ms <= start_ms:
                    continue  # the extra bucket's
                window = (record, key, -(-exemplar.ts_ms // (interval * 1000)) * interval)
                best = picks.get(window)
                if best is None or (exemplar.value, exemplar.ts_ms) > (best.value, best.ts_ms):
                    picks[window] = exemplar
    return picks


def check_exemplars(env: Env, spans: list[Span], interval: int, after: int, upto: int) -> int:
    """Prometheus holds, for the test's series, exactly the exemplars the bridge must have
    picked from Tempo's answers, one per series and window Tempo gave some for; each names
    a span of its series that started in its window in ``(after, upto]``, stamped with the
    span's start and valued as Tempo values it (the summed attribute, 0 when the span
    lacks it; for a count, the window's count); and every series with spans (for a sum,
    with its attribute) has some.
    Returns how many exemplars were checked."""
    expected = windows_with_spans(spans, interval, after, upto)
    picks = tempo_picks(env, interval)
    by_trace = {span.trace_id.lstrip("0"): span for span in spans if counted(span)}
    answer = env.prom.query_exemplars(
        f'{{__name__=~"openrouter_.+", test="{env.name}"}}', after - interval, upto + interval)
    stored: dict[Window, Exemplar] = {}
    for item in answer:
        labels = dict(item["seriesLabels"])
        record = labels.pop("__name__")
        assert labels.pop("test") == env.name
        series = tuple(sorted(labels.items()))
        for exemplar in item["exemplars"]:
            assert set(exemplar["labels"]) == {"traceID"}
            span = by_trace[exemplar["labels"]["traceID"]]
            ts_ms = round(exemplar["timestamp"] * 1000)
            assert ts_ms == span.start_ns // 10**6, (record, series, exemplar)
            window = (record, series, window_end(span.start_ns, interval))
            assert span in expected[window], (window, exemplar)
            attribute = METRICS[record]
            tempo_value = (len(expected[window]) if attribute is None
                           else float(span.attributes.get(attribute, 0)))
            assert float(exemplar["value"]) == tempo_value, (window, exemplar)
            assert window not in stored, f"two exemplars in {window}"
            stored[window] = Exemplar(exemplar["labels"]["traceID"], tempo_value, ts_ms)
    assert stored == picks
    with_spans = {  # for a sum, spans with its attribute: Tempo sums no other
        (record, series) for (record, series, _), its_spans in expected.items()
        if METRICS[record] is None or any(METRICS[record] in s.attributes for s in its_spans)
    }
    assert {(record, series) for record, series, _ in stored} == with_spans
    return len(stored)


async def test_steady_windows_carry_their_spans_exemplars(env: Env) -> None:
    now = time.time()
    spans = make_spans(now - 5, 25, seed=21)
    env.tempo.add_spans(spans)
    write_rules(env.tmp / "rules.yaml", 1, 1, "0s")
    await run_daemon_until(env, int(now) + 10)
    (checkpoint,) = checkpoints(env.tmp / "state")
    first = first_query_start(env.tempo)
    # every window was read with a one-window range query: (e-1, e], step 1s
    queries = [r for r in env.tempo.requests if r.path.startswith("/api/metrics/")]
    assert queries
    assert all(r.path.endswith("/query_range") for r in queries)
    assert {int(r.params["end"]) - int(r.params["start"]) for r in queries} == {1}
    checked = check_exemplars(env, spans, 1, first, checkpoint)
    assert checked > 10 * len(METRICS)


async def test_a_catch_up_writes_the_exemplars_of_its_range_queries(env: Env) -> None:
    now = time.time()
    # a request every 20 to 60 s: fewer than Tempo's 100 exemplars per query, at most two
    # in each fiftieth of the range, so that every series and window gets its own
    spans = make_spans(now - 1800, 1800, seed=22, gap=(20.0, 60.0))
    env.tempo.add_spans(spans)
    checkpoint, ranges = await run_half_hour_catch_up(env, now)
    # per rule, 31 windows: 20 first (its series not known yet), then the other 11
    assert all(r.path.endswith("/query_range") for r in ranges)
    assert len(ranges) == 2 * len(METRICS)
    assert {int(r.params["step"].removesuffix("s")) for r in ranges} == {60}
    checked = check_exemplars(env, spans, 60, first_query_start(env.tempo), checkpoint)
    assert checked > 20 * len(METRICS)


async def test_a_late_span_s_exemplar_comes_with_the_settle_pass(env: Env) -> None:
    now = time.time()
    spans = make_spans(now - 5, 12, seed=23)
    env.tempo.add_spans(spans)
    rules = env.tmp / "rules.yaml"
    write_rules(rules, 1, 1, "0s")
    rules.write_text(rules.read_text().replace("settle: [600s]", "settle: [4s]"))
    await run_daemon_until(env, int(now) + 3)
    (recorded,) = checkpoints(env.tmp / "state")
    # a request of a model never seen, in a window already recorded, reaches Tempo late;
    # the daemon comes back when that window is past its settle age: the settle pass reads
    # it again together with the windows missed meanwhile
    late = openrouter_spans((recorded - 1) * 10**9 + 250_000_000, random.Random(5),
                            model="late/model-1")
    env.tempo.add_spans(late)
    await asyncio.sleep(5)
    await run_daemon_until(env, recorded + 8)
    [total] = env.prom.query(
        f'openrouter_requests_total{{test="{env.name}", model="late/model-1"}}')
    assert float(total["value"][1]) == 1.0
    span = late[0]
    [item] = env.prom.query_exemplars(
        f'openrouter_requests_total{{test="{env.name}", model="late/model-1"}}',
        recorded - 5, recorded + 20)
    [exemplar] = item["exemplars"]
    assert exemplar["labels"] == {"traceID": span.trace_id.lstrip("0")}
    assert round(exemplar["timestamp"] * 1000) == span.start_ns // 10**6
    assert float(exemplar["value"]) == 1.0


async def test_a_group_without_exemplars_reads_instant_queries_and_writes_none(
    env: Env,
) -> None:
    now = time.time()
    spans = make_spans(now - 5, 15, seed=24)
    env.tempo.add_spans(spans)
    rules = env.tmp / "rules.yaml"
    write_rules(rules, 1, 1, "0s")
    text = rules.read_text()
    rules.write_text(text.replace("    rules:\n", "    exemplars: false\n    rules:\n", 1))
    await run_daemon_until(env, int(now) + 5)
    queries = [r for r in env.tempo.requests if r.path.startswith("/api/metrics/")]
    assert queries
    assert all(r.path.endswith("/query") for r in queries)
    assert env.prom.query(f'openrouter_requests_total{{test="{env.name}"}}')
    assert env.prom.query_exemplars(
        f'{{__name__=~"openrouter_.+", test="{env.name}"}}', now - 10, now + 30) == []


async def test_a_steady_settle_pass_writes_its_late_spans_exemplars(tmp_path: Path) -> None:
    h = Harness(tmp_path, [engine_span(T0 + 10, "a")], now=T0 + 120)
    group = h.load(rules_yaml(settle="[10m]", rules=[rule_yaml()]))
    assert await h.tick(group)  # records (T0, T0+60]
    late = Span(start_ns=(T0 + 30) * 10**9, attributes={"model": "late", "cost": 1.0},
                resource={"service.name": "svc"}, trace_id=f"{0xfeed:032x}")
    h.double.add_spans([late])
    for _ in range(10):  # one window a minute, up to (T0+600, T0+660]: the first is 10m old
        assert await h.tick(group, advance=60)
    windows = [(int(p["start"]) - T0, int(p["end"]) - T0) for _kind, p in h.queries()]
    # (T0, T0+60] was read again, 10 minutes old, by a query of its own
    assert windows[9:11] == [(0, 60), (540, 600)]
    late_series = (("__name__", "x"), ("model", "late"))
    assert h.totals(group, group.rules[0])[late_series] == 1.0
    assert [e.trace_id for (labels, _ts), found in h.exemplars.items()
            if labels == late_series for e in found] == ["feed"]
