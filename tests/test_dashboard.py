"""Grafana dashboard ``dashboards/openrouter-cost.json``: its structure, and every panel's PromQL
run against a real Prometheus holding what the real daemon wrote, compared with the truth.

The daemon runs in-process with the default rules and one-second windows (as in
``tests/test_e2e.py``, whose helpers this reuses), catching up 90 windows of spans. Each
panel target is then run with its template variables substituted as Grafana would
(``$model`` etc. as the ``.*`` of All or one regex-escaped value, ``$__range`` and
``$__interval`` as the test's durations) and its numbers compared with sums over the
spans: integers exactly, floats within 1e-9 relative. The Tempo links are resolved and
their TraceQL run against the Tempo double. The time series panels ask for exemplars, and
``dashboards/provisioning/datasources.yaml`` (shown in the operator guide as it is) links
their ``traceID`` to a Tempo data source.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from ruamel.yaml import YAML

from bridge.rulefmt import load_rule_files
from tests.doubles.tempo import Span, TempoDouble
from tests.support import grafana
from tests.support.e2e import (
    METRICS,
    Env,
    checkpoints,
    first_query_start,
    run_daemon_until,
    write_config,
    write_rules,
)
from tests.support.files import DEFAULT_RULES
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.traffic import make_spans

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "openrouter-cost.json"
CATCH_UP = 90  # seconds of one-second windows the daemon catches up at start
STEP = 10  # $__interval in the test, seconds
HALF = 40  # a second, shorter $__range: the last 40 s
KEY_ATTRIBUTE = "trace.metadata.openrouter.api_key_name"
NO_KEY = "(no key)"
LABEL_VARIABLES = ("model", "api_key_name", "provider")
# Template variable values: absent = All (".*"); a value = that one selected.
SCOPES: dict[str, dict[str, str]] = {
    "all": {},
    "model": {"model": "google/gemini-2.0-flash-001"},  # dots: regex-escaped by Grafana
    "api_key": {"api_key_name": "prod-backend"},
    "provider": {"provider": "anthropic"},
    "model_and_key": {"model": "openai/gpt-4o", "api_key_name": "dev-laptop"},
}


# -- the recorded data ----------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    prom: PrometheusServer
    tempo: TempoDouble
    spans: list[Span]
    start: int  # the first window the daemon recorded starts here
    end: int  # the last window the daemon recorded ends here


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with start_prometheus(tmp / "prometheus") as prom:
        yield asyncio.run(_record(tmp, prom))


async def _record(tmp: Path, prom: PrometheusServer) -> Recorded:
    now = time.time()
    # The first span comes well after the first window starts, so the truth does not
    # depend on the second in which the daemon happens to start.
    spans = make_spans(now - CATCH_UP + 5, CATCH_UP - 2, seed=31)
    tempo = TempoDouble(spans, query_end_cutoff=0.0)
    url = await tempo.start()
    try:
        config = tmp / "bridge.yaml"
        write_config(config, url, prom.write_url, "dashboard")
        write_rules(tmp / "rules.yaml", 1, 1, f"{CATCH_UP}s")
        await run_daemon_until(Env(tmp, prom, tempo, config, "dashboard"), int(now) - 1)
    finally:
        await tempo.stop()
    (end,) = checkpoints(tmp / "state")
    return Recorded(prom, tempo, spans, first_query_start(tempo), end)


# -- the truth ------------------------------------------------------------------------

FIELDS: dict[str, str | None] = {
    "cost": "gen_ai.usage.total_cost",
    "requests": None,
    "input": "gen_ai.usage.input_tokens",
    "output": "gen_ai.usage.output_tokens",
    "cached": "gen_ai.usage.cache_read.input_tokens",
}
LABEL_ATTRIBUTES = {"model": "gen_ai.request.model", "provider": "gen_ai.provider.name",
                    "api_key_name": KEY_ATTRIBUTE}

Values = dict[str | None, float]
"""A query's result: the value per group (``None`` for a query without ``by``)."""


class Truth:
    """Sums over the OpenRouter generation spans of one variable selection."""

    def __init__(self, spans: list[Span], scope: Mapping[str, str]) -> None:
        self.spans = [
            s for s in spans
            if s.name == "LLM Generation" and s.resource.get("service.name") == "openrouter"
            and all(s.attributes.get(LABEL_ATTRIBUTES[k]) == v for k, v in scope.items())
        ]

    def sum(self, field: str, after: int, upto: int, by: str | None = None) -> Values:
        attribute = FIELDS[field]
        result: Values = defaultdict(float)
        for span in self.spans:
            if not after * 10**9 < span.start_ns <= upto * 10**9:
                continue
            group = None if by is None else str(
                span.attributes.get(LABEL_ATTRIBUTES[by], NO_KEY))
            if attribute is None:
                result[group] += 1
            elif attribute in span.attributes:
                result[group] += float(span.attributes[attribute])
        if by is None:
            result[None] += 0
        return dict(result)


def plus(a: Values, b: Values) -> Values:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}


def ratio(a: Values, b: Values, scale: float = 1.0) -> Values:
    return {k: scale * a.get(k, 0.0) / v for k, v in b.items() if v}


def month_end(spend: Values, at: int) -> Values:
    when = datetime.fromtimestamp(at, UTC)
    days = calendar.monthrange(when.year, when.month)[1]
    elapsed = (when.day - 1) * 86400 + at % 86400
    return {k: v * days * 86400 / elapsed for k, v in spend.items()}


@dataclass(frozen=True)
class Check:
    """The expected result of one target over ``(after, upto]``; ``exact`` for integers."""

    expect: Callable[[Truth, int, int], Values]
    exact: bool


def total(field: str, by: str | None = None) -> Callable[[Truth, int, int], Values]:
    return lambda t, a, u: t.sum(field, a, u, by)


def tokens(by: str | None = None) -> Callable[[Truth, int, int], Values]:
    return lambda t, a, u: plus(t.sum("input", a, u, by), t.sum("output", a, u, by))


def per_request(by: str | None = None) -> Callable[[Truth, int, int], Values]:
    return lambda t, a, u: ratio(t.sum("cost", a, u, by), t.sum("requests", a, u, by))


def top_table(by: str) -> dict[str, Check]:
    return {"A": Check(total("cost", by), False), "B": Check(total("requests", by), True),
            "C": Check(tokens(by), True), "D": Check(per_request(by), False)}


# panel title -> target refId -> what it must return
EXPECTED: dict[str, dict[str, Check]] = {
    "Spend": {"A": Check(total("cost"), False)},
    "Requests": {"A": Check(total("requests"), True)},
    "Tokens": {"A": Check(tokens(), True)},
    "Average cost per request": {"A": Check(per_request(), False)},
    "Cost per million tokens": {"A": Check(
        lambda t, a, u: ratio(t.sum("cost", a, u), tokens()(t, a, u), 1e6), False)},
    "Projected month-end spend": {"A": Check(
        lambda t, a, u: month_end(t.sum("cost", a, u), u), False)},
    "Spend by model": {"A": Check(total("cost", "model"), False)},
    "Spend by API key": {"A": Check(total("cost", "api_key_name"), False)},
    "Spend by provider": {"A": Check(total("cost", "provider"), False)},
    "Top models by spend": top_table("model"),
    "Top API keys by spend": top_table("api_key_name"),
    "Input, output and cached tokens": {"A": Check(total("input"), True),
                                        "B": Check(total("output"), True),
                                        "C": Check(total("cached"), True)},
}


# -- the dashboard as Grafana would run it --------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return grafana.load_dashboard(DASHBOARD)


def substitute(expr: str, scope: Mapping[str, str], range_s: int) -> str:
    return grafana.substitute(
        expr, {name: scope.get(name) for name in LABEL_VARIABLES},
        {"__range": f"{range_s}s", "__interval": f"{STEP}s", "__rate_interval": f"{4 * STEP}s"},
    )


def group_label(expr: str) -> str | None:
    match = re.search(r"\bsum by \((\w+)\)", expr)
    return match.group(1) if match else None


# -- tests ----------------------------------------------------------------------------


def test_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "tempo-bridge-openrouter-cost"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "tempo_datasource", *LABEL_VARIABLES]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    assert (variables["tempo_datasource"]["type"], variables["tempo_datasource"]["query"]) == (
        "datasource", "tempo")
    for name in LABEL_VARIABLES:
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == grafana.PROMETHEUS
        assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*")
        assert var["query"]["query"] == var["definition"] == (
            f"label_values(openrouter_requests_total, {name})")

    (group,) = load_rule_files([str(DEFAULT_RULES)], min_query_offset=0)
    records = {rule.record for rule in group.rules}
    panels = grafana.query_panels(dashboard)
    assert {p["title"] for p in panels} == EXPECTED.keys()
    grafana.assert_layout(dashboard)
    grafana.assert_canonical_json(DASHBOARD)
    grafana.assert_no_datasource_uid(dashboard)
    for panel in panels:
        assert panel["datasource"] == grafana.PROMETHEUS
        assert panel.get("description"), panel["title"]
        assert {t["refId"] for t in panel["targets"]} == EXPECTED[panel["title"]].keys()
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["instant"] is (panel["type"] != "timeseries")
            assert target["range"] is (panel["type"] == "timeseries")
            # Grafana shows exemplars on time series panels' range queries only
            assert target.get("exemplar", False) is (panel["type"] == "timeseries")
            selectors = re.findall(r"\b(openrouter_\w+)\{([^}]*)\}", target["expr"])
            assert selectors, target["expr"]
            for metric, matchers in selectors:
                assert metric in records, metric
                assert sorted(m.strip() for m in matchers.split(",")) == sorted(
                    f'{n}=~"${n}"' for n in LABEL_VARIABLES), (panel["title"], matchers)
        if panel["type"] == "timeseries":
            assert panel["interval"] == "1m"  # never finer than the rules' windows
    projected = next(p for p in panels if p["title"] == "Projected month-end spend")
    assert projected["timeFrom"] == "now/M"
    assert "days_in_month()" in projected["description"]
    assert "day_of_month()" in projected["description"]
    assert all(r in METRICS for r in records)  # the end-to-end test checks every rule


@pytest.mark.parametrize("scope", SCOPES)
def test_every_panel_equals_the_truth(recorded: Recorded, scope: str) -> None:
    truth = Truth(recorded.spans, SCOPES[scope])
    prom, end = recorded.prom, recorded.end
    assert len(truth.spans) > 20
    checked = 0
    for panel in grafana.query_panels(load_dashboard()):
        for target in panel["targets"]:
            check = EXPECTED[panel["title"]][target["refId"]]
            label = group_label(target["expr"])
            where = f"{scope}: {panel['title']} {target['refId']}"
            if target["instant"]:
                # the whole recording, then only its last HALF seconds
                for after in (recorded.start, end - HALF):
                    promql = substitute(target["expr"], SCOPES[scope], end - after)
                    got = grafana.values_of(prom.query(promql, time=end), label)
                    grafana.assert_values(got, check.expect(truth, after, end), check.exact,
                                  f"{where} over ({after}, {end}]")
                    checked += 1
                continue
            promql = substitute(target["expr"], SCOPES[scope], 0)
            series = prom.query_range(promql, end - 8 * STEP, end, STEP)
            points: dict[int, Values] = defaultdict(dict)
            for item in series:
                group = None if label is None else item["metric"].get(label)
                for ts, value in item["values"]:
                    points[int(ts)][group] = float(value)
            for t in range(end - 8 * STEP, end + 1, STEP):
                grafana.assert_values(points.get(t, {}), check.expect(truth, t - STEP, t),
                              check.exact, f"{where} at {t}")
                checked += 1
    assert checked == 2 * 14 + 9 * 6  # 14 instant targets, 6 range targets


def test_variables_list_the_recorded_values(recorded: Recorded) -> None:
    truth = Truth(recorded.spans, {})
    for var in load_dashboard()["templating"]["list"][2:]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
        assert match, var["definition"]
        metric, label = match.groups()
        found = {s[label] for s in recorded.prom.series(metric) if label in s}
        attribute = LABEL_ATTRIBUTES[label]
        assert found == {str(s.attributes[attribute]) for s in truth.spans
                         if attribute in s.attributes}


def all_links(panel: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every link of a panel: panel links and data links, with where they are."""
    links = [("panel", link) for link in panel.get("links", [])]
    links += [("field", link) for link in panel["fieldConfig"]["defaults"].get("links", [])]
    for override in panel["fieldConfig"]["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "links":
                links += [("column " + override["matcher"]["options"], link)
                          for link in prop["value"]]
    return links


LINK_VALUES = {"model": "google/gemini-2.0-flash-001", "api_key_name": "prod-backend",
               "provider": "anthropic"}
# multi-value selections for panel links, joined as Grafana's :pipe format does
PIPE_SELECTIONS: list[dict[str, list[str]]] = [
    {},
    {"model": ["openai/gpt-4o", "google/gemini-2.0-flash-001"], "provider": ["openai", "google"]},
]


def resolve_link(url: str, selection: Mapping[str, list[str]], start: int, end: int) -> str:
    """The URL Grafana opens, for the ``LINK_VALUES`` row or series and ``selection``."""
    def variable(match: re.Match[str]) -> str:
        name, _, fmt = match.group(1).partition(":")
        if name == "tempo_datasource":
            return "tempo-uid"
        if name in ("__from", "__to"):
            return str((start if name == "__from" else end) * 1000)
        field = re.fullmatch(r"__(?:field\.labels|data\.fields)\.(\w+)", name)
        if field:
            assert fmt == "percentencode", "a label value must be URL-encoded"
            return quote(LINK_VALUES[field.group(1)], safe="")
        assert name in LABEL_VARIABLES, name
        assert fmt == "pipe", fmt
        return "|".join(selection[name]) if name in selection else ".*"

    return re.sub(r"\$\{([^}]+)\}", variable, url)


def test_links_open_tempo_on_the_traces_behind_the_panel(recorded: Recorded) -> None:
    start, end = recorded.start, recorded.end
    truth = Truth(recorded.spans, {})
    seen = 0
    for panel in grafana.query_panels(load_dashboard()):
        for where, link in all_links(panel):
            for selection in PIPE_SELECTIONS if where == "panel" else [{}]:
                url = urlsplit(resolve_link(link["url"], selection, start, end))
                assert url.path == "/explore"
                (panes,) = parse_qs(url.query)["panes"]
                (pane,) = json.loads(panes).values()
                assert pane["datasource"] == "tempo-uid"
                assert pane["range"] == {"from": str(start * 1000), "to": str(end * 1000)}
                (query,) = pane["queries"]
                assert (query["queryType"], query["datasource"]) == (
                    "traceql", {"type": "tempo", "uid": "tempo-uid"})
                answer = recorded.tempo.handle("/api/metrics/query", {
                    "q": query["query"] + " | count_over_time()",
                    "start": str(start), "end": str(end)})
                assert answer.status == 200, answer.body
                body = json.loads(answer.body)
                count = sum(float(s.get("value", 0)) for s in body.get("series", []))
                expect: float
                if where == "panel":
                    expect = sum(
                        1 for s in truth.spans if all(
                            re.fullmatch("|".join(selection.get(n, [".*"])),
                                         str(s.attributes[LABEL_ATTRIBUTES[n]]))
                            for n in ("model", "provider"))
                        and start * 10**9 < s.start_ns <= end * 10**9)
                else:
                    field = re.search(r"__(?:field\.labels|data\.fields)\.(\w+)", link["url"])
                    assert field, link["url"]
                    label = field.group(1)
                    expect = Truth(recorded.spans, {label: LINK_VALUES[label]}).sum(
                        "requests", start, end)[None]
                assert count == expect > 0, (panel["title"], where, selection)
                seen += 1
    assert seen >= 2 * 2 + 5  # two panel links, five data links


# -- exemplars: the Grafana data sources that link them to Tempo ----------------------

PROVISIONING = ROOT / "dashboards" / "provisioning" / "datasources.yaml"
GUIDE = ROOT / "docs" / "operator-guide.md"


def test_the_provisioned_prometheus_links_trace_ids_to_the_provisioned_tempo() -> None:
    provisioning = YAML(typ="safe").load(PROVISIONING.read_text())
    assert provisioning["apiVersion"] == 1
    sources = provisioning["datasources"]
    assert len({s["name"] for s in sources}) == len({s["uid"] for s in sources}) == len(sources)
    by_uid = {s["uid"]: s for s in sources}
    (prometheus,) = [s for s in sources if s["type"] == "prometheus"]
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # the label the bridge and Tempo's metrics-generator give exemplars
    (link,) = [d for d in destinations if d["name"] == "traceID"]
    assert "url" not in link, "an internal link: by data source uid, not a URL"
    assert by_uid[link["datasourceUid"]]["type"] == "tempo"
    for source in sources:
        assert (source["access"], source["url"].split("://")[0]) == ("proxy", "http")


def test_the_guide_shows_the_provisioning_file_as_it_is() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert PROVISIONING.read_text() in blocks
