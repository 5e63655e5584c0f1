"""Fault injection (``bench/faults.py``) in CI sizes, and the faults it found, as unit tests.

Each scenario runs the real daemon as a subprocess against the Tempo double and a real
Prometheus while one thing fails (Tempo or the receiver away or misbehaving, SIGKILLs,
late spans), then reads every counter back with PromQL: no window may be lost or counted
twice, and every counter must equal the truth computed from the spans (1e-9 relative).
The sizes are ``bench.faults.QUICK`` (3 windows down, 4 s of faults, 3 kills): about 45 s
for all six on two cores. ``uv run --frozen python bench/faults.py`` runs the full sizes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.faults import QUICK, SCENARIOS, TOLERANCE, run_scenario, table_row
from bridge.engine import Engine
from bridge.metrics import Metrics
from bridge.rules import Group, load_rule_files
from bridge.state import State
from bridge.tempo import TempoClient
from tests.doubles.tempo import Response, Span, TempoDouble
from tests.support.prometheus import PrometheusServer, start_prometheus


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.mark.prometheus
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_no_window_is_lost_or_counted_twice(
    scenario: str, prom: PrometheusServer, tmp_path: Path
) -> None:
    row = await run_scenario(scenario, QUICK, prom, tmp_path)
    print(table_row(row))
    assert row.problems == []
    assert row.expected >= 5
    assert row.recorded == row.expected
    assert (row.lost, row.double_counted) == (0, 0)
    assert row.max_error <= TOLERANCE


# -- findings -------------------------------------------------------------------------------

T0 = 1795780800  # a multiple of 3600
COUNT = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def one_minute_group(tmp_path: Path) -> Group:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(f"""\
        groups:
          - name: g
            interval: 60s
            query_offset: 60s
            settle: [600s]
            rules:
              - record: requests_total
                expr: '{COUNT}'
                kind: counter
        """))
    (group,) = load_rule_files([str(path)], min_query_offset=0)
    return group


def in_process(double: TempoDouble) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = double.handle(request.url.path, dict(request.url.params), dict(request.headers))
        assert isinstance(answer, Response)
        return httpx.Response(answer.status, content=answer.body,
                              headers={"Content-Type": answer.content_type})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("body", [b"{}", b'{"series": [{"labels": [], "samples": "none"}]}'])
async def test_a_body_that_is_not_a_metrics_answer_loses_no_window(
    tmp_path: Path, body: bytes
) -> None:
    """Found by ``bench/faults.py`` (tempo-faults): such a 200 answer was taken as a window
    without spans, and the window was lost unless a settle pass read it again.

    Tempo's answers always carry a ``metrics`` object (every capture of Tempo 3.0.3
    does); an empty object, or an instant series shaped like nothing Tempo sends, come
    from something else (a proxy, a cache, a misrouted URL) and must not be recorded."""
    clock = Clock(T0 + 120)  # the window (T0, T0 + 60] is due
    double = TempoDouble(
        [Span(start_ns=(T0 + 10) * 10**9, attributes={"model": "a"},
              resource={"service.name": "svc"})],
        clock=clock, query_end_cutoff=0,
    )
    state = State(tmp_path / "state.sqlite")
    engine = Engine(TempoClient("http://tempo", transport=in_process(double)), state,
                    Metrics(), max_duration=86400, clock=clock)
    group = one_minute_group(tmp_path)
    rule_id = group.rules[0].rule_id(group.name)

    double.inject(Response(200, "application/json", body))
    assert not await engine.evaluate_group(group), "the window was recorded from garbage"
    stored = state.rule_state(rule_id)
    assert stored is not None
    assert stored.checkpoint == T0
    assert await engine.evaluate_group(group)  # the retry reads the span
    stored = state.rule_state(rule_id)
    assert stored is not None
    assert stored.totals == {(("__name__", "requests_total"), ("model", "a")): 1.0}
