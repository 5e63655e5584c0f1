"""Backfill end to end: spans in the Tempo double, ``tempo-bridge backfill``, real promtool blocks,
a real Prometheus on those blocks, PromQL results equal to the ground truth from the spans.

The command runs in-process (``bridge.cli.main``) in a worker thread, since it starts its
own event loop, while the Tempo double serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.components import STATE_FILE
from bridge.engine import rule_key
from bridge.evaluation import Update
from bridge.rulefmt import load_rule_files
from bridge.state import State
from tests.doubles.tempo import Span, TempoDouble
from tests.support.e2e import (
    METRICS,
    Env,
    assert_totals_match,
    checkpoints,
    run_daemon_until,
    truth,
    write_rules,
)
from tests.support.e2e import write_config as write_e2e_config
from tests.support.files import DEFAULT_RULES, NOWHERE, write_config
from tests.support.prometheus import start_prometheus
from tests.support.promtool import promtool
from tests.support.servers import serving
from tests.support.traffic import MODELS, make_spans

pytestmark = pytest.mark.prometheus

HOUR = 3600
# A label value that needs every OpenMetrics escape: quote, backslash, newline.
ODD_MODEL = 'acme/"quoted" \\ model\nv2'
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+) (\d+)$')
EXEMPLAR = re.compile(
    r'^(?P<sample>.*?)(?: # \{traceID="(?P<trace>[0-9a-f]+)"\} (?P<value>\S+) '
    r'(?P<ts>\d+(?:\.\d{1,3})?))?$'
)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Exemplars = dict[tuple[str, str, int], tuple[str, float, float]]
"""(family, labels text, sample timestamp s) -> (trace ID, value, span start s)."""


@pytest.fixture
async def tempo() -> AsyncIterator[tuple[TempoDouble, str]]:
    double = TempoDouble()
    async with serving(double) as url:
        yield double, url


def backfill_config(
    directory: Path, tempo_url: str, rule_files: Sequence[Path], external: dict[str, str]
) -> Path:
    """A config with Tempo's default cutoff and ingest delay, as the double has them."""
    return write_config(
        directory, tempo_url, tempo={"query_end_cutoff": None, "ingest_delay": None},
        remote_write={"external_labels": external}, rule_files=[str(f) for f in rule_files],
    )


async def run_cli(*args: str | Path) -> int:
    return await asyncio.to_thread(main, [str(a) for a in args])


def parse_openmetrics(
    text: str, exemplars: Exemplars | None = None
) -> dict[str, tuple[str, list[tuple[str, str, float, int]]]]:
    """Family -> (type, [(sample name, labels text, value, timestamp s)]), checking the layout;
    the samples' exemplars go into ``exemplars``.

    Fails unless every line is a TYPE line or a sample of the family declared last, each
    family is declared once, timestamps are whole seconds, only counter samples carry an
    exemplar (one, labelled traceID), and the text ends with # EOF.
    """
    lines = text.split("\n")
    assert lines[-2:] == ["# EOF", ""], "the text must end with '# EOF' and a newline"
    families: dict[str, tuple[str, list[tuple[str, str, float, int]]]] = {}
    current = None
    for line in lines[:-2]:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"family {name} declared twice (interleaved)"
            families[name] = (kind, [])
            current = name
            continue
        split = EXEMPLAR.match(line)
        assert split
        match = SAMPLE.match(split["sample"])
        assert match, f"not an OpenMetrics sample line: {line!r}"
        assert current is not None, f"a sample before any # TYPE line: {line!r}"
        name, labels, value, ts = match.groups()
        kind, samples = families[current]
        assert name == (current + "_total" if kind == "counter" else current), line
        samples.append((name, labels or "", float(value), int(ts)))
        if split["trace"] is not None:
            assert kind == "counter", f"an exemplar on a {kind} sample: {line!r}"
            if exemplars is not None:
                exemplars[(current, labels or "", int(ts))] = (
                    split["trace"], float(split["value"]), float(split["ts"]))
    return families


def label_values(text: str) -> dict[str, str]:
    """The labels of ``{a="x",b="y"}``, OpenMetrics escapes undone."""
    escapes = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    return {name: re.sub(r'\\[\\"n]', lambda m: escapes[m[0]], value)
            for name, value in LABEL.findall(text)}


def check_exemplars(exemplars: Exemplars, spans: list[Span], interval: int) -> None:
    """Every exemplar names an ``LLM Generation`` span of its series that started in the
    window ending at its sample, stamped with the span's start, valued as Tempo values it:
    the summed attribute (0 when the span lacks it), or for a count the window's count."""
    by_trace = {span.trace_id.lstrip("0"): span for span in generations(spans)}
    for (family, labels, ts), (trace, value, start) in exemplars.items():
        record = family + "_total"
        span = by_trace[trace]
        attributes = span.attributes
        series = label_values(labels)
        assert series["model"] == attributes["gen_ai.request.model"]
        assert series["provider"] == attributes["gen_ai.provider.name"]
        assert series.get("api_key_name") == attributes.get(
            "trace.metadata.openrouter.api_key_name")
        assert (ts - interval) * 10**9 < span.start_ns <= ts * 10**9, (record, trace)
        assert round(start * 1000) == span.start_ns // 10**6
        attribute = METRICS[record]
        if attribute is None:
            in_window = [s for s in generations(spans)
                         if (ts - interval) * 10**9 < s.start_ns <= ts * 10**9
                         and key_of(s) == key_of(span)]
            assert value == len(in_window), (record, trace)
        else:
            assert value == float(attributes.get(attribute, 0)), (record, trace)


def key_of(span: Span) -> tuple[object, ...]:
    a = span.attributes
    return (a["gen_ai.request.model"], a["gen_ai.provider.name"],
            a.get("trace.metadata.openrouter.api_key_name"))


async def test_backfilled_blocks_equal_the_truth(
    tmp_path: Path, tempo: tuple[TempoDouble, str]
) -> None:
    double, url = tempo
    now = int(time.time())
    start, end = now - 4 * HOUR + 17, now - 10 * 60 - 23  # not on window boundaries
    spans = make_spans(start - 600, end - start + 1200, seed=11, gap=(5.0, 40.0),
                       models=[*MODELS, ODD_MODEL])
    double.add_spans(spans)
    config = backfill_config(tmp_path, url, [DEFAULT_RULES], {"test": "backfill"})
    out = tmp_path / "backfill.om"

    code = await run_cli("backfill", "--config", config, "--from", str(start),
                         "--to", str(end), "--out", out)

    assert code == 0
    first, last = start // 60 * 60, end // 60 * 60  # the 1m windows are (first, last]
    text = out.read_text()
    exemplars: Exemplars = {}
    families = parse_openmetrics(text, exemplars)
    assert families.keys() == {r.removesuffix("_total") for r in METRICS}
    for kind, samples in families.values():
        assert kind == "counter"
        assert {ts for *_, ts in samples} == set(range(first, last + 1, 60))
        assert all('test="backfill"' in labels for _, labels, _, _ in samples)
    assert 'model="acme/\\"quoted\\" \\\\ model\\nv2"' in text
    # exemplars from Tempo's range answer: at most 100 per query, for every rule
    check_exemplars(exemplars, spans, 60)
    per_family = {family: 0 for family in families}
    for family, _labels, _ts in exemplars:
        per_family[family] += 1
    assert all(count >= 20 for count in per_family.values()), per_family
    # two range queries per rule: the first (an hour of windows) finds how many series
    # the rule has, which sizes the next; the rest of the range fits in one
    ranges = [r for r in double.requests if r.path == "/api/metrics/query_range"]
    assert len(ranges) == 2 * len(METRICS)

    blocks = tmp_path / "blocks"
    promtool("tsdb", "create-blocks-from", "openmetrics", out, blocks)
    assert len([p for p in blocks.iterdir() if p.is_dir()]) >= 2  # 4 hours: 2h blocks

    with start_prometheus(tmp_path / "prometheus", storage_dir=blocks) as prom:
        env = Env(tmp_path, prom, double, config, "backfill")
        checked = 0
        for t in [*range(first + 60, last + 1, 17 * 60), last]:
            expected = truth(spans, first, t)
            assert_totals_match(env, expected, at=t)
            assert_totals_match(env, expected, at=t + 31)  # between samples: the last one
            checked += int(sum(expected["openrouter_requests_total"].values()))
        assert checked > 500
        odd = prom.query(f"openrouter_requests_total{{model={json.dumps(ODD_MODEL)}}}", time=last)
        assert odd
        assert all(item["metric"]["model"] == ODD_MODEL for item in odd)


GAUGE_RULES = """\
groups:
  - name: five-minutes
    interval: 5m
    query_offset: 2m
    rules:
      - record: openrouter_max_request_cost_usd
        expr: >-
          { resource.service.name = "openrouter" && name = "LLM Generation" }
          | max_over_time(span.gen_ai.usage.total_cost) by (span.gen_ai.request.model)
        kind: gauge
        rename: {gen_ai_request_model: model}
      - record: openrouter_requests_count
        expr: >-
          { resource.service.name = "openrouter" && name = "LLM Generation" }
          | count_over_time() by (span.gen_ai.provider.name)
        kind: counter
        rename: {gen_ai_provider_name: provider}
      - record: openrouter_not_backfilled_total
        expr: '{ name = "LLM Generation" } | count_over_time()'
        kind: counter
"""


def generations(spans: list[Span]) -> list[Span]:
    return [s for s in spans
            if s.name == "LLM Generation" and s.resource.get("service.name") == "openrouter"]


async def test_gauges_five_minute_windows_and_the_query_offset(
    tmp_path: Path, tempo: tuple[TempoDouble, str], capsys: pytest.CaptureFixture[str]
) -> None:
    double, url = tempo
    before = time.time()
    start = int(before) - 3 * HOUR
    spans = make_spans(start - 600, before - start + 600, seed=12, gap=(10.0, 90.0))
    double.add_spans(spans)
    rules = tmp_path / "rules.yaml"
    rules.write_text(GAUGE_RULES)
    config = backfill_config(tmp_path, url, [rules], {})
    out = tmp_path / "backfill.om"

    code = await run_cli(
        "backfill", "--config", config, "--from", str(start), "--to", "now", "--out", out,
        "--rule", "openrouter_max_request_cost_usd", "--rule", "openrouter_requests_count",
    )

    after = time.time()
    assert code == 0
    assert "not evaluated" in capsys.readouterr().err  # the windows younger than 2m
    families = parse_openmetrics(out.read_text())
    assert {k: kind for k, (kind, _) in families.items()} == {
        "openrouter_max_request_cost_usd": "gauge",
        "openrouter_requests_count": "unknown",  # a counter without _total
    }
    first = start // 300 * 300
    last = max(ts for *_, ts in families["openrouter_requests_count"][1])
    assert (before - 120) // 300 * 300 <= last <= after - 120

    # the truth, per 5m window
    maxima: dict[int, dict[str, float]] = defaultdict(dict)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for span in generations(spans):
        window = -(-span.start_ns // (300 * 10**9)) * 300  # the window (end - 5m, end]
        if not first < window <= last:
            continue
        model = str(span.attributes["gen_ai.request.model"])
        cost = float(span.attributes["gen_ai.usage.total_cost"])
        maxima[window][model] = max(maxima[window].get(model, cost), cost)
        for end in range(window, last + 1, 300):
            counts[end][str(span.attributes["gen_ai.provider.name"])] += 1

    blocks = tmp_path / "blocks"
    promtool("tsdb", "create-blocks-from", "openmetrics", out, blocks)
    with start_prometheus(tmp_path / "prometheus", storage_dir=blocks) as prom:
        for t in range(first + 300, last + 1, 300):
            got_max = {i["metric"]["model"]: float(i["value"][1])
                       for i in prom.query("openrouter_max_request_cost_usd", time=t)}
            for model, value in maxima[t].items():
                assert got_max.pop(model) == value, (t, model)
            # A model without spans in this window: its stale marker has no OpenMetrics
            # form, so the previous window's value is still seen within the lookback.
            for model, value in got_max.items():
                assert value == maxima[t - 300].get(model), (t, model)
            got_count = {i["metric"]["provider"]: float(i["value"][1])
                         for i in prom.query("openrouter_requests_count", time=t)}
            assert {p: v for p, v in got_count.items() if v} == counts[t], t
        assert prom.series("openrouter_not_backfilled_total") == []
    assert sum(len(m) for m in maxima.values()) > 60
    assert sum(counts[last].values()) > 100


def test_refuses_an_unknown_rule_and_an_empty_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = backfill_config(tmp_path, "http://127.0.0.1:9", [DEFAULT_RULES], {})
    out = tmp_path / "out.om"
    args = ["backfill", "--config", str(config), "--out", str(out)]
    assert main([*args, "--from", "2h", "--to", "1h", "--rule", "nope_total"]) == 1
    assert "no rule records nope_total" in capsys.readouterr().err
    assert main([*args, "--from", "1h", "--to", "2h"]) == 1
    assert "must be after --from" in capsys.readouterr().err
    assert not out.exists()


async def test_seeded_state_continues_the_counters_across_the_boundary(tmp_path: Path) -> None:
    """Backfill with --seed-state, blocks into Prometheus, then the daemon: one counter."""
    name = "seeded"
    now = time.time()
    spans = make_spans(now - 60, 70, seed=13)
    double = TempoDouble(spans, query_end_cutoff=0.0)
    async with serving(double) as url:
        config = tmp_path / "bridge.yaml"
        write_e2e_config(config, url, NOWHERE, name)
        write_rules(tmp_path / "rules.yaml", 1, 1, "0s")  # one-second windows
        start = int(now) - 50
        out = tmp_path / "backfill.om"
        code = await run_cli("backfill", "--config", config, "--from", str(start),
                             "--to", "now", "--out", out, "--seed-state")
        assert code == 0
        (seeded,) = checkpoints(tmp_path / "state")
        assert seeded >= int(now) - 1
        blocks = tmp_path / "blocks"
        promtool("tsdb", "create-blocks-from", "openmetrics", out, blocks)
        backfill_queries = len(double.requests)

        with start_prometheus(tmp_path / "prometheus", storage_dir=blocks) as prom:
            write_e2e_config(config, url, prom.write_url, name)
            env = Env(tmp_path, prom, double, config, name)
            await run_daemon_until(env, seeded + 4)
            (end,) = checkpoints(tmp_path / "state")
            # the daemon went on from the seeded checkpoint, not from its own start
            daemon_starts = {int(r.params["start"]) for r in double.requests[backfill_queries:]}
            assert min(daemon_starts) == seeded
            for t in [start + 10, start + 30, seeded, seeded + 1, end]:
                assert_totals_match(env, truth(spans, start, t), at=t)
            selector = f'openrouter_requests_total{{test="{name}"}}'
            assert prom.query(f"resets({selector}[5m]) > 0", time=end) == []
            # the dashboard's exact difference, across the boundary
            span_s = end - seeded + 10
            (answer,) = prom.query(
                f"sum({selector} - ({selector} offset {span_s}s or {selector} * 0))", time=end)
            expected = truth(spans, end - span_s, end)["openrouter_requests_total"]
            assert float(answer["value"][1]) == sum(expected.values()) > 0


def test_seed_state_refuses_a_rule_the_daemon_already_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bridge.yaml"
    write_e2e_config(config, "http://127.0.0.1:9", NOWHERE, "x")
    write_rules(tmp_path / "rules.yaml", 1, 1, "0s")
    (group,) = load_rule_files([str(tmp_path / "rules.yaml")], min_query_offset=0)
    rule = group.rules[0]
    state = State(tmp_path / "state" / STATE_FILE)
    state.commit(rule_key(group, rule), Update(60, frozenset(), {}))
    state.close()
    out = tmp_path / "out.om"
    assert main(["backfill", "--config", str(config), "--from", "2h", "--to", "1h",
                 "--out", str(out), "--seed-state"]) == 1
    assert f"already has openrouter/{rule.record}" in capsys.readouterr().err
    assert not out.exists()
