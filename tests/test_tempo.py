"""Tempo client: parses exactly what a real Tempo 3.0.3 sent (the captures), fails cleanly."""

from __future__ import annotations

import httpx
import pytest
import respx

from bridge.errors import TempoError
from bridge.tempo import InstantSeries, RangeSeries, TempoClient
from tests.doubles.captures import Capture, find_tempo_api, load_capture

CAPTURES = find_tempo_api() / "captures"
BASE = "http://127.0.0.1:3200"


def replay(name: str) -> Capture:
    """Answer the client's next request with a captured response, byte for byte."""
    capture = load_capture(CAPTURES / name)
    respx.get(url__startswith=BASE + capture.path).mock(
        return_value=httpx.Response(
            capture.status, content=capture.body,
            headers={"Content-Type": capture.headers.get("Content-Type", "")},
        )
    )
    return capture


def query_of(capture: Capture) -> str:
    return capture.params.get("q") or capture.params["query"]


@respx.mock
async def test_instant_answer_with_labels_and_float_values() -> None:
    capture = replay("08_instant_sum_cost_by_model.http")
    client = TempoClient(BASE)
    series = await client.instant(query_of(capture), 1795768367, 1795770767)
    by_model = {s.labels["span.gen_ai.request.model"]: s.value for s in series}
    assert by_model == {
        "anthropic/claude-3.5-sonnet": 0.656163,
        "google/gemini-2.0-flash-001": 0.015073000000000005,
        "meta-llama/llama-3.1-70b-instruct": 0.06737896,
        "openai/gpt-4o": 0.38917499999999994,
    }
    request = respx.calls.last.request
    assert request.url.params["start"] == "1795768367"
    assert request.url.params["end"] == "1795770767"
    assert "X-Scope-OrgID" not in request.headers


@respx.mock
async def test_range_answer_int64_strings_and_missing_values() -> None:
    capture = replay("20_range_no_match.http")
    series = await TempoClient(BASE).range(query_of(capture), 1795768367, 1795770767, 60)
    assert len(series) == 1
    assert series[0].labels == {"__name__": "count_over_time"}
    samples = series[0].samples
    assert samples[0] == (1795768320000, 0.0)  # no "value" key: 0
    assert all(isinstance(ts, int) for ts, _ in samples)
    assert {v for _, v in samples} == {0.0}
    assert respx.calls.last.request.url.params["step"] == "60s"


@respx.mock
async def test_range_answer_extra_leading_bucket_is_returned_as_is() -> None:
    capture = replay("72_range_aligned_5min_window_count.http")
    (series,) = await TempoClient(BASE).range(query_of(capture), 1795769400, 1795769700, 60)
    assert series == RangeSeries(
        {"__name__": "count_over_time"},
        [(1795769400000, 3.0), (1795769460000, 4.0), (1795769520000, 5.0),
         (1795769580000, 3.0), (1795769640000, 5.0), (1795769700000, 3.0)],
    )


@respx.mock
async def test_nil_label_value_is_kept() -> None:
    capture = replay("13_instant_count_by_key.http")
    series = await TempoClient(BASE).instant(query_of(capture), 1795768367, 1795770767)
    keys = {s.labels["span.trace.metadata.openrouter.api_key_name"] for s in series}
    assert "nil" in keys


@respx.mock
async def test_no_match_instant_answer_without_series_key() -> None:
    capture = replay("76_instant_no_match_sum_by.http")
    assert await TempoClient(BASE).instant(query_of(capture), 1795768516, 1795770916) == []


@respx.mock
async def test_instant_zero_value_has_no_value_key() -> None:
    capture = replay("21_instant_no_match.http")
    series = await TempoClient(BASE).instant(query_of(capture), 1795768367, 1795770767)
    assert series == [InstantSeries({"__name__": "count_over_time"}, 0.0)]


@pytest.mark.parametrize(
    "name",
    ["22_range_invalid_syntax.http", "24_range_not_a_metrics_query.http",
     "28_range_30d_step1h.http", "33_range_end_before_start.http"],
)
@respx.mock
async def test_400_body_is_surfaced_verbatim(name: str) -> None:
    capture = replay(name)
    with pytest.raises(TempoError) as error:
        await TempoClient(BASE).range(query_of(capture), 1, 2, 60)
    assert error.value.status == 400
    assert error.value.reason == "http_400"
    assert capture.body.decode().strip() in str(error.value)


@respx.mock
async def test_partial_answer_is_an_error() -> None:
    capture = replay("59_range_maxSeries2.http")
    assert b'"PARTIAL"' in capture.body
    with pytest.raises(TempoError, match="PARTIAL") as error:
        await TempoClient(BASE).range(query_of(capture), 1, 2, 300)
    assert error.value.reason == "partial"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"series": {"a": 1}}', "series is not a list"),
        (b'{"series": [{"labels": [{"value": {"stringValue": "x"}}]}]}', "no key"),
        (b'{"series": [{"labels": [], "samples": [{"value": 1}]}]}', "no timestampMs"),
        (b'{"series": [{"labels": [], "samples": [{"timestampMs": "x1"}]}]}', "not an integer"),
        (b'{"series": [{"labels": [], "samples": [{"timestampMs": "1", "value": "a"}]}]}',
         "not a number"),
        (b'{"status": "WEIRD"}', "unknown status"),
    ],
)
@respx.mock
async def test_malformed_answers_are_errors(body: bytes, what: str) -> None:
    respx.get(url__startswith=BASE).mock(return_value=httpx.Response(200, content=body))
    with pytest.raises(TempoError, match=what) as error:
        await TempoClient(BASE).range("{ } | rate()", 1, 2, 60)
    assert error.value.reason == "malformed"


@respx.mock
async def test_network_errors_timeouts_and_5xx() -> None:
    route = respx.get(url__startswith=BASE)
    client = TempoClient(BASE, tenant="team-a")
    route.mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TempoError) as error:
        await client.instant("{ } | rate()", 1, 2)
    assert error.value.reason == "network"
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TempoError) as error:
        await client.instant("{ } | rate()", 1, 2)
    assert error.value.reason == "timeout"
    route.mock(return_value=httpx.Response(503, text="unavailable"))
    with pytest.raises(TempoError, match="503: unavailable") as error:
        await client.instant("{ } | rate()", 1, 2, tenant="team-b")
    assert error.value.reason == "http_503"
    assert respx.calls.last.request.headers["X-Scope-OrgID"] == "team-b"
