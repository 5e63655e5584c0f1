"""Tempo client: parses exactly what a real Tempo 3.0.3 sent (the captures), fails cleanly."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx

from bridge.errors import TempoError
from bridge.series import Exemplar
from bridge.tempo import ClockSkew, InstantSeries, TempoClient, _Parse, parse_answer, parse_buckets
from bridge.worker import Worker
from tests.doubles.captures import Capture, find_tempo_api, load_capture
from tests.doubles.tempo import Response, TempoDouble

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
    by_model = {dict(s.labels)["span.gen_ai.request.model"]: s.value for s in series}
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
    assert series[0].labels == (("__name__", "count_over_time"),)
    samples = series[0].samples
    assert samples[0] == (1795768320000, 0.0)  # no "value" key: 0
    assert all(isinstance(ts, int) for ts, _ in samples)
    assert {v for _, v in samples} == {0.0}
    assert respx.calls.last.request.url.params["step"] == "60s"


@respx.mock
async def test_range_answer_extra_leading_bucket_is_returned_as_is() -> None:
    capture = replay("72_range_aligned_5min_window_count.http")
    (series,) = await TempoClient(BASE).range(query_of(capture), 1795769400, 1795769700, 60)
    assert series.labels == (("__name__", "count_over_time"),)
    assert series.samples == [
        (1795769400000, 3.0), (1795769460000, 4.0), (1795769520000, 5.0),
        (1795769580000, 3.0), (1795769640000, 5.0), (1795769700000, 3.0),
    ]
    assert len(series.exemplars) == 23  # one per span: capture 72's exemplars


@respx.mock
async def test_range_exemplars_as_tempo_gives_them() -> None:
    capture = replay("40_range_exemplars_5.http")
    (series,) = await TempoClient(BASE).range(
        query_of(capture), 1795768367, 1795770767, 300, exemplars=5
    )
    assert series.exemplars == (
        # trace IDs as Tempo writes them: hex, leading zero dropped (31 digits)
        Exemplar("19f372b412d8cf94dc38a186a8df073", 0.00075856, 1795769963955),
        Exemplar("29e018a7c11f06ab89442a9a4b95f47", 0.0004984, 1795770367790),
    )
    assert respx.calls.last.request.url.params["exemplars"] == "5"


@respx.mock
async def test_count_exemplars_have_their_bucket_s_value_and_no_parameter_by_default() -> None:
    capture = replay("12_range_count_by_key_step60s.http")
    series = await TempoClient(BASE).range(query_of(capture), 1795768367, 1795770767, 60)
    by_key = {dict(s.labels)["span.trace.metadata.openrouter.api_key_name"]: s for s in series}
    ci = by_key["ci-evals"]
    assert ci.exemplars[0] == Exemplar("996a627e8c21ecef593676d45d5358ad", 2.0, 1795768793129)
    assert dict(ci.samples)[1795768800000] == 2.0  # the bucket the exemplar is in
    assert "exemplars" not in respx.calls.last.request.url.params


@respx.mock
async def test_nil_label_value_is_kept() -> None:
    capture = replay("13_instant_count_by_key.http")
    series = await TempoClient(BASE).instant(query_of(capture), 1795768367, 1795770767)
    keys = {dict(s.labels)["span.trace.metadata.openrouter.api_key_name"] for s in series}
    assert "nil" in keys


@respx.mock
async def test_no_match_instant_answer_without_series_key() -> None:
    capture = replay("76_instant_no_match_sum_by.http")
    assert await TempoClient(BASE).instant(query_of(capture), 1795768516, 1795770916) == []


@respx.mock
async def test_instant_zero_value_has_no_value_key() -> None:
    capture = replay("21_instant_no_match.http")
    series = await TempoClient(BASE).instant(query_of(capture), 1795768367, 1795770767)
    assert series == [InstantSeries((("__name__", "count_over_time"),), 0.0)]


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
        (b'{"series": [{"exemplars": [{"timestampMs": "1", "labels": []}]}], "metrics": {}}',
         "an exemplar has no trace:id"),
        (b'{"series": [{"exemplars": [{"timestampMs": "1", "labels": [{"key": "trace:id", '
         b'"value": {"stringValue": "not-hex"}}]}]}], "metrics": {}}', "is not a hex trace ID"),
        (b'{"series": [{"exemplars": [{"labels": []}]}], "metrics": {}}', "no timestampMs"),
        # JSON may escape half a surrogate pair; no receiver can store it (Tempo never
        # writes one: Go writes invalid UTF-8 as U+FFFD)
        (b'{"series": [{"labels": [{"key": "k", "value": {"stringValue": "a\\ud800"}}], '
         b'"samples": []}], "metrics": {}}', r"label 'k': 'a\\ud800' is not valid Unicode"),
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


class _Chunks(httpx.AsyncByteStream):
    """A body that arrives in pieces, and breaks off after them when told to."""

    def __init__(self, pieces: list[bytes], broken: bool = False) -> None:
        self.pieces, self.broken = pieces, broken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.broken:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_a_body_in_pieces_is_read_whole_and_one_cut_short_is_a_network_error() -> None:
    body = load_capture(CAPTURES / "08_instant_sum_cost_by_model.http").body
    pieces = [body[i:i + 100] for i in range(0, len(body), 100)]

    def answer(broken: bool) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(lambda request: httpx.Response(
            200, stream=_Chunks(pieces, broken), headers={"Transfer-Encoding": "chunked"}))

    whole = TempoClient(BASE, transport=answer(broken=False))
    series = await whole.instant("{ } | sum_over_time(span.cost) by (span.model)", 1, 2)
    assert len(series) == 4
    cut = TempoClient(BASE, transport=answer(broken=True))
    with pytest.raises(TempoError, match=r"cannot reach Tempo.*complete body") as error:
        await cut.instant("{ } | sum_over_time(span.cost) by (span.model)", 1, 2)
    assert error.value.reason == "network"


def _big_range_answer(series: int, *, status: str | None = None, odd: bool = False) -> bytes:
    """A range answer of Tempo's shape: every series with samples, some with several
    exemplars (so that ``},{"labels":`` also comes between exemplars), and ``status``;
    ``odd``: the label value of the series half way has two kinds, an error."""
    items = []
    for i in range(series):
        value: dict[str, object] = {"stringValue": f"model-{i}"}
        if odd and i == series // 2:
            value["intValue"] = "7"
        item: dict[str, object] = {
            "labels": [{"key": "span.model", "value": value}],
            "samples": [{"timestampMs": "60000"}, {"timestampMs": "120000", "value": i + 0.5}],
        }
        if i % 3 == 0:
            item["exemplars"] = [
                {"labels": [{"key": "trace:id", "value": {"stringValue": f"{i + j:032x}"}}],
                 "value": i + 0.5, "timestampMs": "119000"} for j in (1, 2)]
        items.append(item)
    answer: dict[str, object] = {"series": items, "metrics": {"completedJobs": 1}}
    if status is not None:
        answer |= {"status": status, "message": "Response exceeds maximum series limit"}
    return json.dumps(answer, separators=(",", ":")).encode()


class _Served:
    """Tempo answering ``body`` in pieces of 50 bytes; the requests it was asked."""

    def __init__(self, body: bytes) -> None:
        self.body, self.requests = body, 0

    def transport(self) -> httpx.AsyncBaseTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            pieces = [self.body[i:i + 50] for i in range(0, len(self.body), 50)]
            return httpx.Response(200, stream=_Chunks(pieces))
        return httpx.MockTransport(answer)


async def _outcome(parse: Awaitable[Any] | Callable[[], Any]) -> tuple[str, Any]:
    """What a parse gives: its result's repr (NaN compares equal), or its error."""
    try:
        return "ok", repr(await parse if inspect.isawaitable(parse) else parse())
    except TempoError as exc:
        return "error", (exc.reason, str(exc))


QUERY = "{ } | sum_over_time(span.cost) by (span.model)"


@pytest.mark.parametrize("with_worker", [False, True])
async def test_a_big_answer_is_parsed_as_it_arrives_never_whole(
    monkeypatch: pytest.MonkeyPatch, with_worker: bool, worker: Worker,
) -> None:
    """Runs of whole series are cut from the body as it comes and decoded (on the
    worker while the next arrives): at no time is the body held whole, and the buckets
    and series are those of the whole answer parsed at once, asked once."""
    body = _big_range_answer(300)
    stamps = [120_000]
    want_buckets = repr(parse_buckets(body, QUERY, "range", stamps))
    want_series = repr(parse_answer(body, QUERY, "range"))
    monkeypatch.setattr("bridge.tempo.RUN_BYTES", 1000)
    held: list[int] = []
    feed = _Parse.feed

    def noted(parse: _Parse[Any], chunk: bytes) -> bytes | None:
        run = feed(parse, chunk)
        held.append(len(parse.body) + len(run or b""))
        return run

    monkeypatch.setattr("bridge.tempo._Parse.feed", noted)
    tempo = _Served(body)
    client = TempoClient(BASE, transport=tempo.transport(), worker=worker if with_worker else None)
    assert repr(await client.range_buckets(QUERY, 60, 120, 60, stamps)) == want_buckets
    assert repr(await client.range(QUERY, 60, 120, 60)) == want_series
    assert tempo.requests == 2
    assert len(body) > 50_000
    assert max(held) < 3000  # a run and a piece, not the 50 kB body


@pytest.mark.parametrize(("status", "odd"), [("PARTIAL", False), (None, True)])
async def test_an_answer_the_structs_refuse_after_runs_were_taken_is_asked_again_whole(
    monkeypatch: pytest.MonkeyPatch, status: str | None, odd: bool,
) -> None:
    """A PARTIAL status, found at the end, or a label value the structs do not take, half
    way: the plain parser words the error from the whole answer, so Tempo is asked for it
    again (the reading stops at the refused run). The error is the plain parser's."""
    body = _big_range_answer(300, status=status, odd=odd)
    want = await _outcome(lambda: parse_answer(body, QUERY, "range"))
    assert want[0] == "error"
    monkeypatch.setattr("bridge.tempo.RUN_BYTES", 1000)
    tempo = _Served(body)
    client = TempoClient(BASE, transport=tempo.transport())
    assert await _outcome(client.range(QUERY, 60, 120, 60)) == want
    assert tempo.requests == 2
    tempo.requests = 0
    monkeypatch.setattr("bridge.tempo.RUN_BYTES", len(body) * 2)  # nothing taken early
    assert await _outcome(client.range(QUERY, 60, 120, 60)) == want
    assert tempo.requests == 1  # the body, held whole, parsed again without asking


async def test_clock_skew_bounds_from_the_date_header() -> None:
    # Tempo's clock at 1000.4 s (the Date header says 1000), the host's 10 s behind it
    double = TempoDouble(clock=lambda: 1000.4, query_end_cutoff=0)
    moments = iter([990.0, 990.3])  # sent, received
    seen: list[ClockSkew] = []
    client = TempoClient(BASE, transport=double.transport(), clock=lambda: next(moments),
                         on_clock_skew=seen.append)
    assert client.clock_skew is None
    await client.instant("{ } | count_over_time()", 900, 960)
    skew = client.clock_skew
    assert skew is not None
    assert skew == ClockSkew(low=1000 - 990.3, high=1001 - 990.0, at=990.3)
    assert seen == [skew]
    assert skew.certain == pytest.approx(9.7)
    assert skew.estimate == pytest.approx(10.35)


async def test_clock_skew_is_measured_on_error_answers_and_ignores_a_bad_date() -> None:
    double = TempoDouble(clock=lambda: time.time() - 3600)  # an hour behind
    double.inject(Response.text(503, "busy"))
    client = TempoClient(BASE, transport=double.transport())
    with pytest.raises(TempoError):
        await client.instant("{ } | count_over_time()", 1, 2)
    assert client.clock_skew is not None
    assert client.clock_skew.high < 0  # behind
    assert 3599 < client.clock_skew.certain <= 3600.5
    # an answer without a usable Date header leaves the last measure alone
    respx_client = TempoClient(BASE, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"metrics": {}}, headers={"Date": "soon"})
    ))
    await respx_client.instant("{ } | count_over_time()", 1, 2)
    assert respx_client.clock_skew is None
    same = ClockSkew(low=-0.3, high=0.8, at=0.0)
    assert same.certain == 0.0
