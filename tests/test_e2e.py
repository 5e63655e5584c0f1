"""End to end: spans in the Tempo double, the real daemon, a real Prometheus, PromQL results.

Every default rule (``rules/openrouter.yaml``) runs with one-second windows so that ten
windows pass in seconds; the expressions are the shipped ones. Results read back with
PromQL must equal the ground truth computed from the spans: integers exactly, floats
within 1e-9 relative.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.components import STATE_FILE, load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.state import State
from tests.doubles.tempo import Span, TempoDouble
from tests.prometheus_server import PrometheusServer, start_prometheus
from tests.traffic import Key, make_spans, span_truth

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "rules" / "openrouter.yaml"
INTERVAL = 1

# record -> (span attribute summed, or None for a count)
METRICS = {
    "openrouter_requests_total": None,
    "openrouter_cost_usd_total": "gen_ai.usage.total_cost",
    "openrouter_input_cost_usd_total": "gen_ai.usage.input_cost",
    "openrouter_output_cost_usd_total": "gen_ai.usage.output_cost",
    "openrouter_input_tokens_total": "gen_ai.usage.input_tokens",
    "openrouter_output_tokens_total": "gen_ai.usage.output_tokens",
    "openrouter_cached_input_tokens_total": "gen_ai.usage.cache_read.input_tokens",
}


def truth(spans: list[Span], after: int, upto: int) -> dict[str, dict[Key, float]]:
    """Expected totals of the default rules for spans starting in ``(after, upto]``."""
    return span_truth(spans, METRICS, after, upto)


def promql_totals(prom: PrometheusServer, selector: str, at: float) -> dict[Key, float]:
    result = {}
    for item in prom.query(selector, time=at):
        labels = {k: v for k, v in item["metric"].items() if k not in ("__name__", "test")}
        result[tuple(sorted(labels.items()))] = float(item["value"][1])
    return result


def assert_totals_match(env: Env, expected: dict[str, dict[Key, float]], at: float) -> None:
    for record, series in expected.items():
        got = promql_totals(env.prom, f'{record}{{test="{env.name}"}}', at)
        want = {k: v for k, v in series.items()}
        assert got.keys() >= want.keys(), record
        for key, value in got.items():
            expect = want.get(key, 0.0)
            if record.endswith("tokens_total") or record == "openrouter_requests_total":
                assert value == expect, (record, key)
            else:
                assert math.isclose(value, expect, rel_tol=1e-9, abs_tol=1e-12), (record, key)


@dataclass
class Env:
    tmp: Path
    prom: PrometheusServer
    tempo: TempoDouble
    config_path: Path
    name: str


def write_rules(path: Path, interval: int, query_offset: int, start: str) -> None:
    """The shipped default rules with a faster schedule; expressions unchanged."""
    text = DEFAULT_RULES.read_text()
    text = re.sub(r"(?m)^(\s+)interval: .*$", rf"\1interval: {interval}s", text)
    text = re.sub(r"(?m)^(\s+)query_offset: .*$", rf"\1query_offset: {query_offset}s\n"
                  rf"\1start: {start}", text)
    text = re.sub(r"(?m)^(\s+)settle: .*$", rf"\1settle: [{interval * 600}s]", text)
    path.write_text(text)


def write_config(path: Path, tempo_url: str, write_url: str, name: str) -> None:
    """A config for tests: no Tempo delays, series labelled ``test=name``, rules.yaml beside it."""
    path.write_text(
        f"""
tempo:
  url: {tempo_url}
  query_end_cutoff: 0s
  ingest_delay: 0s
remote_write:
  url: {write_url}
  external_labels: {{test: {name}}}
state_dir: state
rule_files: [rules.yaml]
web:
  listen_address: 127.0.0.1:0
"""
    )


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
async def env(
    tmp_path: Path, prom: PrometheusServer, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    name = request.node.name
    tempo = TempoDouble(query_end_cutoff=0.0)
    url = await tempo.start()
    config_path = tmp_path / "bridge.yaml"
    write_config(config_path, url, prom.write_url, name)
    yield Env(tmp_path, prom, tempo, config_path, name)
    await tempo.stop()


async def run_daemon_until(env: Env, checkpoint_at_least: int) -> Daemon:
    """Run the daemon until every rule passed ``checkpoint_at_least`` and the outbox is empty."""
    config = load_config(env.config_path)
    daemon = Daemon(env.config_path, config, load_rules(config))
    task = asyncio.create_task(daemon.run())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            assert not task.done(), task.exception()
            rules = daemon.state.known_rules()
            if (len(rules) == len(METRICS)
                    and all(r.checkpoint >= checkpoint_at_least for r in rules)
                    and daemon.state.outbox_samples() == 0):
                break
        else:
            pytest.fail("the daemon did not reach the checkpoint in time")
    finally:
        daemon.stop()
        await task
    return daemon


def first_query_start(tempo: TempoDouble) -> int:
    """Where the rules began: the start of the first window they queried (the daemon,
    not the test, decides which window is the latest due one at start-up)."""
    return min(int(r.params["start"]) for r in tempo.requests if "/metrics/" in r.path)


def checkpoints(state_dir: Path) -> set[int]:
    state = State(state_dir / STATE_FILE)
    try:
        return {rule.checkpoint for rule in state.known_rules()}
    finally:
        state.close()


async def test_ten_windows_equal_the_truth(env: Env) -> None:
    now = time.time()
    spans = make_spans(now - 5, 25, seed=1)
    env.tempo.add_spans(spans)
    write_rules(env.tmp / "rules.yaml", INTERVAL, 1, "0s")
    await run_daemon_until(env, int(now) + 10)
    (checkpoint,) = checkpoints(env.tmp / "state")
    first_window_start = first_query_start(env.tempo)
    assert first_window_start in (int(now) - 2, int(now) - 1)  # the latest due window
    assert checkpoint - first_window_start >= 10 * INTERVAL
    expected = truth(spans, first_window_start, checkpoint)
    assert sum(expected["openrouter_requests_total"].values()) > 20
    assert any(len(k) == 2 for k in expected["openrouter_requests_total"])  # no api key
    assert_totals_match(env, expected, at=checkpoint)


async def test_restart_loses_and_repeats_no_window(env: Env) -> None:
    now = time.time()
    spans = make_spans(now - 5, 40, seed=2)
    env.tempo.add_spans(spans)
    write_rules(env.tmp / "rules.yaml", INTERVAL, 1, "0s")
    await run_daemon_until(env, int(now) + 4)
    (stopped_at,) = checkpoints(env.tmp / "state")
    await asyncio.sleep(3.5)  # several windows pass while the daemon is down
    daemon = await run_daemon_until(env, stopped_at + 8)
    (checkpoint,) = checkpoints(env.tmp / "state")
    # the windows missed while down were caught up with range queries
    ranges = [r for r in env.tempo.requests if r.path.endswith("/query_range")]
    assert ranges, "no catch-up range query after the restart"
    (failures,) = daemon.metrics.evaluation_failures.collect()
    assert [s for s in failures.samples if s.value] == []
    expected = truth(spans, first_query_start(env.tempo), checkpoint)
    assert_totals_match(env, expected, at=checkpoint)


async def test_catch_up_from_start_uses_few_queries(env: Env) -> None:
    now = time.time()
    spans = make_spans(now - 1800, 1800, seed=3)
    env.tempo.add_spans(spans)
    write_rules(env.tmp / "rules.yaml", 60, 1, "30m")
    await run_daemon_until(env, (int(now - 1) // 60) * 60)
    (checkpoint,) = checkpoints(env.tmp / "state")
    queries = [r for r in env.tempo.requests if r.path.startswith("/api/metrics/")]
    # 31 one-minute windows per rule: one range query each
    assert len(queries) <= 2 * len(METRICS)
    start = first_query_start(env.tempo)
    assert start in ((int(now - 1 - 1800) // 60) * 60 - 60, (int(now - 1800) // 60) * 60 - 60)
    expected = truth(spans, start, checkpoint)
    assert_totals_match(env, expected, at=checkpoint)
