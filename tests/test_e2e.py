"""End to end: spans in the Tempo double, the real daemon, a real Prometheus, PromQL results.

Every default rule (``rules/openrouter.yaml``) runs with one-second windows so that ten
windows pass in seconds; the expressions are the shipped ones. Results read back with
PromQL must equal the ground truth computed from the spans: integers exactly, floats
within 1e-9 relative.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.doubles.tempo import TempoDouble
from tests.support.e2e import (
    METRICS,
    Env,
    assert_totals_match,
    checkpoints,
    first_query_start,
    run_daemon_until,
    run_half_hour_catch_up,
    truth,
    write_config,
    write_rules,
)
from tests.support.prometheus import PrometheusServer
from tests.support.servers import serving
from tests.support.traffic import make_spans

pytestmark = pytest.mark.prometheus

INTERVAL = 1


@pytest.fixture
async def env(
    tmp_path: Path, prom: PrometheusServer, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    name = request.node.name
    tempo = TempoDouble(query_end_cutoff=0.0)
    async with serving(tempo) as url:
        config_path = tmp_path / "bridge.yaml"
        write_config(config_path, url, prom.write_url, name)
        yield Env(tmp_path, prom, tempo, config_path, name)


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
    # 31 one-minute windows per rule, caught up in one or two range queries each
    checkpoint, queries = await run_half_hour_catch_up(env, now)
    assert len(METRICS) <= len(queries) <= 2 * len(METRICS)
    start = first_query_start(env.tempo)
    assert start in ((int(now - 1 - 1800) // 60) * 60 - 60, (int(now - 1800) // 60) * 60 - 60)
    expected = truth(spans, start, checkpoint)
    assert_totals_match(env, expected, at=checkpoint)
