"""Grafana dashboard ``dashboards/tempo-bridge.json``, the bridge's own health: its structure,
and every panel's PromQL run against a real Prometheus that scrapes a running daemon.

The daemon runs in-process with the default rules and one-second windows (the config of
``tests/test_e2e.py``), reading the Tempo double and writing through a receiver that fails
on demand (``tests/support/receiver.py``) into a real Prometheus, which scrapes the
daemon's ``/metrics`` every second. The test provokes what the panels are for, in two
bridges one after the other on the same address (a restart: every counter starts again
from 0): in the first, Tempo answers 500 to three queries (evaluation failures), the
receiver answers 503 twice (send retries) and then 403 (a refused request: dropped
samples); in the second, Tempo answers 400 once, the receiver 429 once, and a reload of a
bad rule file fails. Each bridge is frozen before it stops (the scheduler stopped, every
rule brought up to date, so that the metrics hold still) and scraped frozen.

Each panel target is run as Grafana runs it, for several selections of the instance, group
and rule variables (regex-escaped values, or the ``.*`` of All), and compared with what
the two bridges' own frozen metrics predict. A stat or table over the whole run counts
both bridges (a counter's increase over the run is the sum of its values in each, as
Prometheus scraped both from their first values on); a gauge is the second bridge's
value; an age the query time minus it. Each time series target is run over the whole run
with a short step, where a counter's increases add up to its values in both bridges and
a gauge's last point is its value, and as one point whose ``$__interval`` is the whole
run, which counts from the restart (the second bridge's values; for a quantile, what
Prometheus's histogram_quantile gives for its buckets).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from bridge import __version__
from bridge.components import load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.metrics import Metrics
from tests.doubles.tempo import Response, TempoDouble
from tests.support import grafana
from tests.support.e2e import checkpoints, write_config, write_rules
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.receiver import FaultyReceiver, Refused
from tests.support.traffic import make_spans

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "tempo-bridge.json"
VARIABLES = ("instance", "group", "rule")
STEP = 2  # seconds: the short step and $__interval of the runs in short steps
CATCH_UP = 20  # seconds of one-second windows the rules begin with
# what each bridge meets: Tempo's answers to its first queries, the receiver's to its first
# write requests
TEMPO_FAULTS = ((500, 500, 500), (400,))
RECEIVER_FAULTS = ((503, 503, 403), (429,))


# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sample of a daemon's metrics, with the labels Prometheus adds when scraping."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Run:
    prom: PrometheusServer
    instance: str  # both bridges' address, Prometheus's instance label
    before: list[Sample]  # the first bridge's metrics, frozen before it stopped
    before_at: float  # the first bridge's last scrape, frozen
    metrics: list[Sample]  # the second bridge's, frozen
    start: float  # before the first bridge started: nothing scraped before
    at: float  # query time: the second bridge frozen and scraped, a multiple of STEP
    refused: list[Refused]  # write requests the receiver answered with an injected status
    forwarded_samples: int  # samples the receiver behind accepted
    tempo_queries: dict[str, int]  # queries the Tempo double received, by kind
    checkpoints: set[int]  # the state's checkpoints after the run
    reload_error: str | None
    records: list[str]  # the rules' record names

    @property
    def both(self) -> list[Sample]:
        return self.before + self.metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("bridge-dashboard")
    targets = tmp / "targets.json"
    with start_prometheus(tmp / "prometheus", scrape_targets_file=targets) as prom:
        yield asyncio.run(_run(tmp, prom, targets))


async def until(what: str, done: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await done():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {within:.0f} s: {what}")
        await asyncio.sleep(0.1)


def frozen(daemon: Daemon, instance: str) -> list[Sample]:
    return [Sample(s.name, {**s.labels, "instance": instance, "job": "tempo-bridge"}, s.value)
            for family in daemon.metrics.registry.collect() for s in family.samples
            if not s.name.endswith("_created")]


class Bridge:
    """One daemon of the run, scraped by Prometheus from the moment it serves /metrics."""

    def __init__(self, tmp: Path, prom: PrometheusServer, targets: Path) -> None:
        self.tmp, self.prom, self.targets = tmp, prom, targets
        config = load_config(tmp / "bridge.yaml")
        self.groups = load_rules(config)
        self.daemon = Daemon(tmp / "bridge.yaml", config, self.groups)
        self.task: asyncio.Task[None] | None = None
        self.instance = ""

    async def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.run())
        await until("the daemon serves /metrics", self._serving)
        self.instance = f"127.0.0.1:{self.daemon.web.port}"
        (self.tmp / "targets.tmp").write_text(json.dumps([{"targets": [self.instance]}]))
        (self.tmp / "targets.tmp").replace(self.targets)

    async def _serving(self) -> bool:
        assert self.task is not None
        assert not self.task.done(), self.task.exception()
        return self.daemon.web.port != 0

    async def last_scrape(self) -> float:
        """When Prometheus last scraped it successfully (0: never)."""
        answer = await asyncio.to_thread(
            self.prom.query, f'timestamp(tempo_bridge_rules{{instance="{self.instance}"}})')
        return float(answer[0]["value"][1]) if answer else 0.0

    async def wait_caught_up(self, since: float, *faults: Callable[[], int]) -> None:
        """Until the faults are served, every rule has recorded windows past ``since``,
        the outbox is empty, and Prometheus has scraped it."""
        state = self.daemon.state

        async def done() -> bool:
            assert self.task is not None
            assert not self.task.done(), self.task.exception()
            rules = [r for r in state.known_rules() if r.removed_at is None]
            return (not any(pending() for pending in faults)
                    and len(rules) == len(self.groups[0].rules)
                    and all(r.checkpoint >= since for r in rules)
                    and state.outbox_samples() == 0 and await self.last_scrape() > since)

        await until("faults served, rules caught up, samples sent, a scrape", done)

    async def freeze(self) -> tuple[list[Sample], float]:
        """Stop ticking, bring every rule up to date, send everything; wait until the
        frozen metrics have been scraped for ``STEP`` seconds. Returns them and the last
        scrape's time: every instant from ``STEP`` before it to it sees them."""
        await self.daemon.scheduler.stop()
        for group in self.groups:
            await self.daemon.engine.evaluate_group(group)

        async def sent() -> bool:
            outbox = [s.value for s in frozen(self.daemon, "")
                      if s.name == "tempo_bridge_outbox_samples"]
            return self.daemon.state.outbox_samples() == 0 and outbox == [0.0]

        await until("the last samples sent", sent)
        metrics = frozen(self.daemon, self.instance)
        frozen_at = time.time()

        async def scraped() -> bool:
            return await self.last_scrape() >= frozen_at + STEP + 1

        await until("scrapes of the frozen metrics", scraped)
        assert frozen(self.daemon, self.instance) == metrics, "the metrics moved"
        return metrics, await self.last_scrape()

    async def stop(self) -> None:
        self.daemon.stop()
        if self.task is not None:
            await self.task


async def _run(tmp: Path, prom: PrometheusServer, targets: Path) -> Run:
    start = time.time()
    tempo = TempoDouble(make_spans(start - CATCH_UP, CATCH_UP + 120, seed=41),
                        query_end_cutoff=0.0)
    receiver = FaultyReceiver(prom.write_url)
    config = tmp / "bridge.yaml"
    write_config(config, await tempo.start(), await receiver.start(), "bridge-dashboard")
    write_rules(tmp / "rules.yaml", 1, 1, f"{CATCH_UP}s")
    # without exemplars, live windows are read with instant queries: both kinds are seen
    rules = tmp / "rules.yaml"
    rules.write_text(
        rules.read_text().replace("    interval:", "    exemplars: false\n    interval:", 1))

    def pending_faults() -> int:
        return tempo.pending_faults + receiver.pending_faults

    bridges: list[Bridge] = []
    try:
        # the first bridge
        tempo.inject(*[Response.text(status, "injected") for status in TEMPO_FAULTS[0]])
        receiver.inject(*RECEIVER_FAULTS[0])
        first = Bridge(tmp, prom, targets)
        bridges.append(first)
        await first.start()
        await first.wait_caught_up(start + 3, pending_faults)
        before, before_at = await first.freeze()
        await first.stop()

        async def down() -> bool:  # a failed scrape: Prometheus marks the series stale
            answer = await asyncio.to_thread(prom.query, f'up{{instance="{first.instance}"}}')
            return bool(answer) and answer[0]["value"][1] == "0"

        await until("a failed scrape of the stopped bridge", down)

        # the second, on the same address, continuing the first one's state
        config.write_text(config.read_text().replace(
            "listen_address: 127.0.0.1:0", f"listen_address: {first.instance}"))
        tempo.inject(*[Response.text(status, "injected") for status in TEMPO_FAULTS[1]])
        receiver.inject(*RECEIVER_FAULTS[1])
        second = Bridge(tmp, prom, targets)
        bridges.append(second)
        restarted = time.time()
        await second.start()
        assert second.instance == first.instance
        await second.wait_caught_up(restarted + 1, pending_faults)
        (tmp / "rules.yaml").write_text("groups:\n  - name: openrouter\n    interval: soon\n")
        reload_error = await second.daemon.reload()
        metrics, scraped = await second.freeze()
    finally:
        for bridge in bridges:
            await bridge.stop()
        await tempo.stop()
        await receiver.stop()
    kinds: dict[str, int] = defaultdict(int)
    for request in tempo.requests:
        if request.path.startswith("/api/metrics/"):
            kinds["range" if request.path.endswith("query_range") else "instant"] += 1
    # a multiple of STEP, so that subqueries' steps end on it; before the stop's stale markers
    at = float(math.floor(scraped / STEP) * STEP)
    return Run(prom, first.instance, before, before_at, metrics, start, at, receiver.refused,
               receiver.forwarded_samples, dict(kinds), checkpoints(tmp / "state"),
               reload_error, [rule.record for rule in first.groups[0].rules])


# -- what each target must return -------------------------------------------------------

Key = tuple[str, ...]
PER_RULE = ("instance", "group", "rule")


@dataclass(frozen=True)
class Expect:
    """What one target returns, predicted from the daemon's frozen metrics.

    ``increase``: the counter's values, summed per ``by`` group (the run's increase: scraped
    from its first value). ``value``: the gauge's values per group, combined. ``age``: the
    query time minus each value, combined. ``quantile``: histogram_quantile(q) of the
    histogram's buckets summed per group.
    """

    kind: Literal["increase", "value", "age", "quantile"]
    metric: str
    by: Key = ()
    combine: Callable[[list[float]], float] = sum
    q: float = 0.0


def count(values: list[float]) -> float:
    return float(len(values))


FAILURES = "tempo_bridge_evaluation_failures_total"
DROPPED = "tempo_bridge_samples_dropped_total"
CHECKPOINT = "tempo_bridge_checkpoint_timestamp_seconds"
RELOAD = "tempo_bridge_config_last_reload_successful"
EVALUATION = "tempo_bridge_evaluation_duration_seconds"
TEMPO_QUERY = "tempo_bridge_tempo_query_duration_seconds"

# panel title -> target refId -> what it must return
EXPECTED: dict[str, dict[str, Expect]] = {
    "Windows behind": {"A": Expect("value", "tempo_bridge_windows_behind", combine=max)},
    "Age of the newest data": {"A": Expect("age", CHECKPOINT, combine=max)},
    "Failed evaluations": {"A": Expect("increase", FAILURES)},
    "Samples waiting": {"A": Expect("value", "tempo_bridge_outbox_samples")},
    "Samples dropped": {"A": Expect("increase", DROPPED)},
    "Last rule reload": {"A": Expect("value", RELOAD, combine=min)},
    "Windows behind by rule": {
        "A": Expect("value", "tempo_bridge_windows_behind", PER_RULE, max)},
    "Age of the newest data by rule": {"A": Expect("age", CHECKPOINT, PER_RULE, max)},
    "Time since the last successful evaluation": {
        "A": Expect("age", "tempo_bridge_last_success_timestamp_seconds", PER_RULE, max)},
    "Evaluation failures by reason": {"A": Expect("increase", FAILURES, ("reason",))},
    "Evaluation failures by rule": {
        "A": Expect("increase", FAILURES, ("group", "rule", "reason"))},
    "Evaluation duration": {
        "A": Expect("quantile", EVALUATION, ("group",), q=0.5),
        "B": Expect("quantile", EVALUATION, ("group",), q=0.99)},
    "Tempo query latency": {
        "A": Expect("quantile", TEMPO_QUERY, ("kind",), q=0.5),
        "B": Expect("quantile", TEMPO_QUERY, ("kind",), q=0.9),
        "C": Expect("quantile", TEMPO_QUERY, ("kind",), q=0.99)},
    "Tempo queries by kind": {
        "A": Expect("increase", "tempo_bridge_tempo_queries_total", ("kind",))},
    "Outbox": {
        "A": Expect("value", "tempo_bridge_outbox_samples", ("instance",)),
        "B": Expect("value", "tempo_bridge_outbox_oldest_sample_age_seconds", ("instance",),
                    max)},
    "Send retries by reason": {
        "A": Expect("increase", "tempo_bridge_send_retries_total", ("reason",))},
    "Samples sent and dropped": {
        "A": Expect("increase", "tempo_bridge_samples_sent_total"),
        "B": Expect("increase", DROPPED, ("reason",))},
    "Rule reloads": {"A": Expect("value", RELOAD, ("instance",), min)},
    "Rules loaded": {"A": Expect("value", "tempo_bridge_rules"),
                     "B": Expect("value", "tempo_bridge_rule_groups")},
    "Version": {"A": Expect("value", "tempo_bridge_build_info", ("version",), count)},
}


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile for cumulative ``(upper bound, count)`` buckets,
    +Inf last (promql/quantile.go, bucketQuantile: linear within the bucket)."""
    buckets = sorted(buckets)
    assert math.isinf(buckets[-1][0])
    observations = buckets[-1][1]
    if len(buckets) < 2 or observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, (end, in_bucket) = 0.0, buckets[b]
    if b > 0:
        start = buckets[b - 1][0]
        in_bucket -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / in_bucket)


def selected(labels: Mapping[str, str], scope: Mapping[str, str]) -> bool:
    """A sample the variables select: a variable filters the metrics that have its label."""
    return all(labels.get(name, value) == value for name, value in scope.items())


def predict(expect: Expect, samples: list[Sample], scope: Mapping[str, str],
            at: float) -> dict[Key, float]:
    """What ``expect``'s target returns at ``at`` for ``samples``, the frozen metrics of one
    bridge, or of both (a counter's values, and histogram buckets, then add up)."""
    name = expect.metric + ("_bucket" if expect.kind == "quantile" else "")
    groups: dict[Key, list[float]] = defaultdict(list)
    buckets: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for sample in samples:
        if sample.name != name or not selected(sample.labels, scope):
            continue
        key = tuple(sample.labels.get(label, "") for label in expect.by)
        if expect.kind == "quantile":
            buckets[key][float(sample.labels["le"])] += sample.value
        else:
            groups[key].append(at - sample.value if expect.kind == "age" else sample.value)
    if expect.kind == "quantile":
        return {k: bucket_quantile(expect.q, list(b.items())) for k, b in buckets.items()}
    if expect.kind == "increase":
        return {k: sum(v) for k, v in groups.items()}
    return {k: expect.combine(v) for k, v in groups.items()}


def across_restart(expect: Expect, run: Run) -> tuple[list[Sample], int]:
    """The samples an interval from the first bridge's frozen scrape to the second one's
    sees: for a counter (histogram buckets too) each series' difference, or after a reset
    (the second value below the first) the second value; a gauge's second value. And how
    many series went down."""
    if expect.kind in ("value", "age"):
        return run.metrics, 0
    name = expect.metric + ("_bucket" if expect.kind == "quantile" else "")
    first = {tuple(sorted(s.labels.items())): s.value for s in run.before if s.name == name}
    samples, resets = [], 0
    for s in run.metrics:
        if s.name != name:
            continue
        difference = s.value - first.get(tuple(sorted(s.labels.items())), 0.0)
        resets += difference < 0
        samples.append(Sample(s.name, s.labels, s.value if difference < 0 else difference))
    return samples, resets


def result(items: list[dict[str, Any]], by: Key, where: str) -> dict[Key, list[float]]:
    """A query's points per ``by`` group (one point for an instant query)."""
    points: dict[Key, list[float]] = {}
    for item in items:
        key = tuple(item["metric"].get(label, "") for label in by)
        assert key not in points, f"{where}: two results for {key}"
        values = item["values"] if "values" in item else [item["value"]]
        points[key] = [float(v) for _, v in values]
    return points


def assert_same(got: Mapping[Key, float], want: Mapping[Key, float], where: str) -> None:
    assert got.keys() == want.keys(), f"{where}: {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        assert (math.isnan(value) and math.isnan(got[key])) or math.isclose(
            got[key], value, rel_tol=1e-9, abs_tol=1e-9), f"{where} {key}: {got[key]} != {value}"


def scopes(run: Run) -> dict[str, dict[str, str]]:
    """Variable selections: absent = All; another instance selects nothing."""
    failed = next(s for s in run.both if s.name == FAILURES and s.value)
    return {
        "all": {},
        "this instance": {"instance": run.instance},
        "one rule": {"group": failed.labels["group"], "rule": failed.labels["rule"]},
        "another instance": {"instance": "127.0.0.1:1"},
    }


def substitute(expr: str, scope: Mapping[str, str], durations: Mapping[str, str]) -> str:
    return grafana.substitute(expr, {name: scope.get(name) for name in VARIABLES}, durations)


# -- tests ------------------------------------------------------------------------------


def test_structure() -> None:
    dashboard = grafana.load_dashboard(DASHBOARD)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "tempo-bridge-health"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", *VARIABLES]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    definitions = {
        "instance": "label_values(tempo_bridge_build_info, instance)",
        "group": 'label_values(tempo_bridge_evaluations_total{instance=~"$instance"}, group)',
        "rule": 'label_values(tempo_bridge_evaluations_total{instance=~"$instance", '
                'group=~"$group"}, rule)',
    }
    for name in VARIABLES:
        var = variables[name]
        assert (var["type"], var["datasource"]) == ("query", grafana.PROMETHEUS)
        assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*")
        assert var["query"]["query"] == var["definition"] == definitions[name]
    grafana.assert_layout(dashboard)
    grafana.assert_canonical_json(DASHBOARD)
    grafana.assert_no_datasource_uid(dashboard)
    panels = grafana.query_panels(dashboard)
    assert [p["title"] for p in panels] == list(EXPECTED)
    for panel in panels:
        assert panel["datasource"] == grafana.PROMETHEUS
        assert panel.get("description"), panel["title"]
        assert {t["refId"] for t in panel["targets"]} == EXPECTED[panel["title"]].keys()
        over_time = panel["type"] in ("timeseries", "state-timeline")
        assert over_time or panel["type"] in ("stat", "table"), panel["type"]
        if over_time:
            assert panel["interval"] == "1m"  # Prometheus's default scrape interval
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert (target["instant"], target["range"]) == (not over_time, over_time)


def test_panels_read_only_metrics_the_bridge_exposes_with_every_variable(run: Run) -> None:
    families = list(Metrics().registry.collect())
    exposed = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    exposed |= {f"{f.name}_bucket" for f in families if f.type == "histogram"}
    exposed |= {f"{f.name}_info" for f in families if f.type == "info"}
    labels: dict[str, set[str]] = defaultdict(set)
    for sample in run.both:
        labels[sample.name] |= set(sample.labels)
    used = set()
    for panel in grafana.query_panels(grafana.load_dashboard(DASHBOARD)):
        for target in panel["targets"]:
            for metric, matchers in re.findall(r"\b(tempo_bridge_\w+)\{([^}]*)\}",
                                               target["expr"]):
                used.add(metric)
                # each variable that applies to the metric, and no other
                wanted = {"instance"} | (labels[metric] & {"group", "rule"})
                assert sorted(m.strip() for m in matchers.split(",")) == sorted(
                    f'{n}=~"${n}"' for n in wanted), (panel["title"], metric)
    assert used <= exposed, used - exposed
    assert all(labels[metric] for metric in used), "a metric the run has no sample of"


def test_the_run_provoked_what_the_panels_show(run: Run) -> None:
    def values(name: str, samples: list[Sample]) -> dict[str, float]:
        """Non-zero values, by their labels other than instance and job."""
        return {",".join(f"{k}={v}" for k, v in sorted(s.labels.items())
                         if k not in ("instance", "job")): s.value
                for s in samples if s.name == name and s.value}

    for samples, statuses in ((run.before, TEMPO_FAULTS[0]), (run.metrics, TEMPO_FAULTS[1])):
        failures = values(FAILURES, samples)
        assert sum(failures.values()) == len(statuses)
        assert {key.split("reason=")[1].split(",")[0] for key in failures} == {
            f"http_{status}" for status in statuses}
    assert values("tempo_bridge_send_retries_total", run.before) == {"reason=http_503": 2}
    assert values("tempo_bridge_send_retries_total", run.metrics) == {"reason=http_429": 1}
    assert [r.status for r in run.refused] == [*RECEIVER_FAULTS[0], *RECEIVER_FAULTS[1]]
    first_request = run.refused[0].samples  # sent three times, refused twice, then dropped
    assert [r.samples for r in run.refused[:3]] == [first_request] * 3
    assert values(DROPPED, run.before) == {"reason=rejected": first_request}
    assert values(DROPPED, run.metrics) == {}
    assert sum(sum(values("tempo_bridge_samples_sent_total", samples).values())
               for samples in (run.before, run.metrics)) == run.forwarded_samples
    assert values(RELOAD, run.before) == {"": 1}
    assert values(RELOAD, run.metrics) == {}  # 0: the second bridge's reload failed
    assert run.reload_error is not None
    assert "rules.yaml" in run.reload_error
    assert values("tempo_bridge_windows_behind", run.metrics) == {}  # every rule up to date
    assert set(values(CHECKPOINT, run.metrics).values()) == run.checkpoints
    queries: dict[str, float] = defaultdict(float)
    for samples in (run.before, run.metrics):
        for key, value in values("tempo_bridge_tempo_queries_total", samples).items():
            queries[key.removeprefix("kind=")] += value
    assert queries == run.tempo_queries
    assert set(run.tempo_queries) == {"instant", "range"}  # live windows and catch-ups
    assert values("tempo_bridge_build_info", run.metrics) == {f"version={__version__}": 1}


def test_variables_list_what_prometheus_scraped(run: Run) -> None:
    for var in grafana.load_dashboard(DASHBOARD)["templating"]["list"][1:]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert match, var["definition"]
        selector = substitute(match.group(1), {}, {})
        found = {s[match.group(2)] for s in run.prom.series(selector, run.start, run.at)}
        assert found == {"instance": {run.instance}, "group": {"openrouter"},
                         "rule": set(run.records)}[var["name"]]


@pytest.mark.parametrize("scope", ["all", "this instance", "one rule", "another instance"])
def test_every_panel_equals_the_bridges_metrics(run: Run, scope: str) -> None:
    variables = scopes(run)[scope]
    steps = math.ceil((run.at - run.start) / STEP) + 1
    first = run.at - steps * STEP  # a step before the first bridge started
    span = f"{steps * STEP}s"
    short = {"__range": span, "__interval": f"{STEP}s", "__rate_interval": f"{4 * STEP}s"}
    whole = {"__range": span, "__interval": span, "__rate_interval": span}
    across = f"{round((run.at - run.before_at) * 1000)}ms"
    checked = resets = 0
    for panel in grafana.query_panels(grafana.load_dashboard(DASHBOARD)):
        for target in panel["targets"]:
            expect = EXPECTED[panel["title"]][target["refId"]]
            since_restart = predict(expect, run.metrics, variables, run.at)
            over_both = predict(expect, run.both, variables, run.at)
            where = f"{scope}: {panel['title']} {target['refId']}"
            assert bool(over_both) is (scope != "another instance"), where
            if target["instant"]:
                # a stat or table over the whole run: counts of both bridges
                promql = substitute(target["expr"], variables, short)
                items = run.prom.query(promql, time=run.at)
                want = over_both if expect.kind == "increase" else since_restart
                got = {k: v[-1] for k, v in result(items, expect.by, where).items()}
                assert_same(got, want, f"{where} over the run")
                checked += 1
                continue
            # a graph of the run in short steps: a counter's increases add up over both
            # bridges; a gauge ends at the second one's value
            promql = substitute(target["expr"], variables, short)
            series = result(run.prom.query_range(promql, first, run.at, STEP), expect.by,
                            where)
            assert series.keys() <= over_both.keys(), where
            if expect.kind == "increase":
                assert_same({k: sum(v) for k, v in series.items()}, over_both,
                            f"{where} summed")
            elif expect.kind != "quantile":
                assert_same({k: v[-1] for k, v in series.items()}, since_restart,
                            f"{where} at the end")
            # one point whose interval is the whole run: it counts from the restart
            promql = substitute(target["expr"], variables, whole)
            items = run.prom.query_range(promql, run.at, run.at, STEP)
            got = {k: v[-1] for k, v in result(items, expect.by, where).items()}
            assert_same(got, since_restart, f"{where} since the restart")
            # one point whose interval reaches back to the first bridge's frozen scrape: a
            # counter that went down at the restart counts from 0
            promql = substitute(target["expr"], variables, {**short, "__interval": across})
            items = run.prom.query_range(promql, run.at, run.at, STEP)
            got = {k: v[-1] for k, v in result(items, expect.by, where).items()}
            samples, went_down = across_restart(expect, run)
            resets += went_down
            assert_same(got, predict(expect, samples, variables, run.at),
                        f"{where} across the restart")
            checked += 1
    assert checked == sum(len(targets) for targets in EXPECTED.values())
    assert resets or scope == "another instance", "no counter went down at the restart"
