"""Contract tests: ``bridge.tempo.TempoClient`` against a real Tempo and against the Tempo double.

Every test runs twice, with the same assertions: on the Tempo double (always), and on a real
Tempo when ``TEMPO_URL`` is set (``TEMPO_OTLP_URL`` defaults to that host, port 4318,
``/v1/traces``; ``TEMPO_TENANT`` sets ``X-Scope-OrgID``). Spans are pushed once per backend,
as OTLP/HTTP JSON to the real Tempo and with ``add_spans`` to the double, under a service name
of their own; the real Tempo is then polled until they are queryable (about 45 s).

The spans start in the last two minutes, so that a Tempo with the default
``ingestion_time_range_slack`` (2m) keeps them, and at least 35 s ago, so that the 30 s
``query_end_cutoff`` does not hide them.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from bridge.errors import TempoError
from bridge.series import Exemplar
from bridge.tempo import InstantSeries, TempoClient
from tests.doubles.tempo import AttrValue, Span, TempoDouble

TEMPO_URL = os.environ.get("TEMPO_URL", "")
TEMPO_TENANT = os.environ.get("TEMPO_TENANT") or None
DOUBLE_TENANT = "contract-tenant"
FRESHNESS_TIMEOUT = 90.0

pytestmark = pytest.mark.asyncio(loop_scope="module")

real_tempo = pytest.param(
    "real",
    marks=[
        pytest.mark.contract,
        pytest.mark.skipif(
            not TEMPO_URL,
            reason="TEMPO_URL not set: contract tests ran against the Tempo double only",
        ),
    ],
)


@dataclass(frozen=True)
class Pushed:
    """A backend holding this module's spans: a client to it, and where the spans are."""

    client: TempoClient
    service: str
    window_end: int  # unix seconds, on a minute: the spans start in (window_end - 60, window_end]

    def query(self, pipeline: str, condition: str = "") -> str:
        extra = f" && {condition}" if condition else ""
        return f'{{ resource.service.name = "{self.service}"{extra} }} | {pipeline}'


def contract_spans(service: str, window_end: int) -> list[Span]:
    """Five spans in the minute ending at ``window_end``; the last exactly on it."""
    rows: list[tuple[int, str, str | None, float, int]] = [
        (-20, "m-a", "k1", 0.25, 100),
        (-15, "m-a", "k2", 0.5, 200),
        (-10, "m-b", "k1", 1.25, 300),
        (-5, "m-b", None, 2.0, 400),  # no API key: grouped under "nil"
        (0, "m-a", "k1", 0.125, 50),  # on the window end: inside (end is inclusive)
    ]
    spans = []
    for offset, model, key, cost, tokens in rows:
        attributes: dict[str, AttrValue] = {
            "gen_ai.request.model": model,
            "gen_ai.usage.total_cost": cost,
            "gen_ai.usage.total_tokens": tokens,
        }
        if key is not None:
            attributes["trace.metadata.openrouter.api_key_name"] = key
        spans.append(
            Span(
                start_ns=(window_end + offset) * 1_000_000_000,
                attributes=attributes,
                resource={"service.name": service},
                duration_ns=2_000_000_000,
            )
        )
    return spans


def otlp_json(spans: Sequence[Span]) -> dict[str, Any]:
    """Spans as an OTLP/HTTP JSON ExportTraceServiceRequest (one resource per span)."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _otlp_attributes(span.resource)},
                "scopeSpans": [
                    {
                        "scope": {"name": "tempo-bridge-contract-tests"},
                        "spans": [
                            {
                                "traceId": span.trace_id,
                                "spanId": secrets.token_hex(8),
                                "name": span.name,
                                "kind": 1,
                                "startTimeUnixNano": str(span.start_ns),
                                "endTimeUnixNano": str(span.start_ns + span.duration_ns),
                                "attributes": _otlp_attributes(span.attributes),
                            }
                        ],
                    }
                ],
            }
            for span in spans
        ]
    }


def _otlp_attributes(attributes: Mapping[str, AttrValue]) -> list[dict[str, Any]]:
    def any_value(value: AttrValue) -> dict[str, Any]:
        if isinstance(value, bool):
            return {"boolValue": value}
        if isinstance(value, int):
            return {"intValue": str(value)}
        if isinstance(value, float):
            return {"doubleValue": value}
        return {"stringValue": value}

    return [{"key": key, "value": any_value(value)} for key, value in attributes.items()]


def otlp_url() -> str:
    if url := os.environ.get("TEMPO_OTLP_URL"):
        return url
    parts = urlsplit(TEMPO_URL)
    return f"{parts.scheme}://{parts.hostname}:4318/v1/traces"


async def push_to_real_tempo(spans: Sequence[Span]) -> None:
    headers = {"X-Scope-OrgID": TEMPO_TENANT} if TEMPO_TENANT else {}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(otlp_url(), json=otlp_json(spans), headers=headers)
    assert answer.status_code == 200, f"OTLP push refused: {answer.status_code} {answer.text}"


async def wait_until_queryable(pushed: Pushed, expected: int) -> None:
    """Poll an instant count over the spans' minute until Tempo sees them all."""
    deadline = time.monotonic() + FRESHNESS_TIMEOUT
    count = pushed.query("count_over_time()")
    seen = 0.0
    while time.monotonic() < deadline:
        series = await pushed.client.instant(count, pushed.window_end - 60, pushed.window_end)
        seen = series[0].value if series else 0.0
        if seen >= expected:
            return
        await asyncio.sleep(2)
    pytest.fail(f"Tempo shows {seen} of {expected} pushed spans after {FRESHNESS_TIMEOUT:.0f} s")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["double", real_tempo])
async def pushed(request: pytest.FixtureRequest) -> AsyncIterator[Pushed]:
    now = time.time()
    window_end = int((now - 35) // 60 * 60)
    service = f"tempo-bridge-contract-{uuid.uuid4().hex[:8]}"
    spans = contract_spans(service, window_end)
    double: TempoDouble | None = None
    if request.param == "double":
        double = TempoDouble(require_tenant=DOUBLE_TENANT)
        base_url = await double.start()
        double.add_spans(spans)
        client = TempoClient(base_url, tenant=DOUBLE_TENANT)
    else:
        await push_to_real_tempo(spans)
        client = TempoClient(TEMPO_URL, tenant=TEMPO_TENANT)
    result = Pushed(client, service, window_end)
    try:
        await wait_until_queryable(result, expected=len(spans))
        yield result
    finally:
        await client.aclose()
        if double is not None:
            await double.stop()


def instant_values(series: Sequence[InstantSeries]) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in series}


def assert_values(got: Mapping[Any, float], want: Mapping[Any, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-9), (key, got[key], value)


async def test_instant_sum_by_model(pushed: Pushed) -> None:
    query = pushed.query(
        "sum_over_time(span.gen_ai.usage.total_cost) by (span.gen_ai.request.model)"
    )
    series = await pushed.client.instant(query, pushed.window_end - 60, pushed.window_end)
    assert_values(
        instant_values(series),
        {
            (("span.gen_ai.request.model", "m-a"),): 0.875,
            (("span.gen_ai.request.model", "m-b"),): 3.25,
        },
    )


async def test_instant_count_groups_a_missing_attribute_under_nil(pushed: Pushed) -> None:
    key = "span.trace.metadata.openrouter.api_key_name"
    query = pushed.query(f"count_over_time() by ({key})")
    series = await pushed.client.instant(query, pushed.window_end - 60, pushed.window_end)
    assert instant_values(series) == {((key, "k1"),): 3, ((key, "k2"),): 1, ((key, "nil"),): 1}


async def test_instant_window_excludes_start_and_includes_end(pushed: Pushed) -> None:
    query = pushed.query("count_over_time()")
    series = await pushed.client.instant(query, pushed.window_end - 20, pushed.window_end)
    assert instant_values(series) == {(("__name__", "count_over_time"),): 4}
    before = await pushed.client.instant(query, pushed.window_end - 120, pushed.window_end - 60)
    assert instant_values(before) == {(("__name__", "count_over_time"),): 0}


async def test_instant_without_match_and_a_by_clause_has_no_series(pushed: Pushed) -> None:
    query = pushed.query("sum_over_time(span.gen_ai.usage.total_cost) by (span.x)", 'name = "no"')
    assert await pushed.client.instant(query, pushed.window_end - 60, pushed.window_end) == []


async def test_range_buckets_end_inclusive_with_the_extra_leading_bucket(pushed: Pushed) -> None:
    end = pushed.window_end
    count = await pushed.client.range(pushed.query("count_over_time()"), end - 120, end, 60)
    assert [(s.labels, s.samples) for s in count] == [(
        (("__name__", "count_over_time"),),
        [((end - 120) * 1000, 0.0), ((end - 60) * 1000, 0.0), (end * 1000, 5.0)],
    )]
    # five traces, far fewer than the 100 exemplars and in five of the 50 slices of the
    # range: each gives its exemplar, valued with its bucket's count
    spans = contract_spans(pushed.service, end)
    assert sorted(count[0].exemplars, key=lambda e: e.ts_ms) == [
        Exemplar(s.trace_id.lstrip("0"), 5.0, s.start_ns // 1_000_000) for s in spans
    ]
    tokens = pushed.query(
        "sum_over_time(span.gen_ai.usage.total_tokens) by (span.gen_ai.request.model)"
    )
    by_model = await pushed.client.range(tokens, end - 60, end, 60)
    assert {dict(s.labels)["span.gen_ai.request.model"]: list(s.samples) for s in by_model} == {
        "m-a": [(end * 1000, 350.0)],
        "m-b": [(end * 1000, 700.0)],
    }


async def test_a_bad_query_surfaces_tempo_s_400_verbatim(pushed: Pushed) -> None:
    query = f'{{ resource.service.name = "{pushed.service}" | rate()'
    col = query.index("|") + 1
    expected = f"parse error at line 1, col {col}: syntax error: unexpected |"
    with pytest.raises(TempoError) as on_range:
        await pushed.client.range(query, pushed.window_end - 60, pushed.window_end, 60)
    assert on_range.value.status == 400
    assert expected in str(on_range.value)
    with pytest.raises(TempoError) as on_instant:
        await pushed.client.instant(query, pushed.window_end - 60, pushed.window_end)
    assert on_instant.value.status == 400
    assert f"compiling query: {expected}" in str(on_instant.value)
