"""Tests of remote-write encoding, the one-attempt client, the retry policy, and real Prometheus."""

from __future__ import annotations

import asyncio
import email.utils
import importlib.abc
import math
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cramjam
import httpx
import pytest
import respx
import time_machine

import bridge
from bridge.errors import ReceiverError
from bridge.prompb import remote_pb2
from bridge.remote_write import (
    RemoteWriteClient,
    Series,
    add_external_labels,
    decode_write_request,
    encode_batches,
    encode_write_request,
    retrying,
    serialize_write_request,
)
from bridge.series import STALE_NAN, Exemplar, Labels, Sample, is_stale_nan
from tests.support.prometheus import PrometheusError, PrometheusServer, start_prometheus
from tests.support.servers import receiving

URL = "http://receiver.test/api/v1/write"


def bits(value: float) -> int:
    result: int = struct.unpack("<Q", struct.pack("<d", value))[0]
    return result


def protobuf_reference(series: list[Series]) -> bytes:
    """The same request serialized by the generated code."""
    request = remote_pb2.WriteRequest()
    for item in series:
        labels, samples = item[0], item[1]
        ts = request.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for timestamp, sample_value in samples:
            ts.samples.add(timestamp=timestamp, value=sample_value)
        for exemplar in item[2] if len(item) > 2 else ():
            added = ts.exemplars.add(value=exemplar.value, timestamp=exemplar.ts_ms)
            added.labels.add(name="traceID", value=exemplar.trace_id)
    return request.SerializeToString()


# Edge cases of the wire format: default (omitted) fields, negative and large
# varints, multi-byte lengths, non-ASCII values, special floats.
EDGE_SERIES: list[Series] = [
    ((("__name__", "cost_usd_total"), ("model", "openai/gpt-4o"), ("provider", "OpenAI")),
     [(1_795_768_680_000, 0.125), (1_795_768_740_000, 0.5)]),
    ((("__name__", "zero"),), [(0, 0.0), (1, -0.0), (2, 0.0)]),
    ((("__name__", "one_zero"),), [(5, 0.0)]),
    ((("__name__", "at_epoch"),), [(0, 1.0)]),
    ((("__name__", "before_1970"),), [(-1, 1.0), (0, 2.0)]),
    ((("__name__", "specials"),), [(1, math.inf), (2, -math.inf), (3, 5e-324), (4, 1e308)]),
    ((("__name__", "unicode"), ("team", "équipe ☃ 東京")), [(10, 42.0)]),
    ((("__name__", "long"), ("value", "x" * 200)), [(10, 1.0)]),
    ((("__name__", "huge"), ("value", "y" * 20_000)), [(10, 1.0)]),
    ((("__name__", "many"),), [(t, float(t)) for t in range(1, 3000)]),
    ((("__name__", "no_samples"),), []),
    ((("__name__", "with_exemplars"),), [(60_000, 3.5)],
     [Exemplar("4bf92f3577b34da6a3ce929d0e0e4736", 2.5, 59_000), Exemplar("1", 0.0, 0),
      Exemplar("abc", -1.0, -5)]),
]


# --- encoding -----------------------------------------------------------------------


def test_round_trip() -> None:
    assert decode_write_request(encode_write_request(EDGE_SERIES)) == [
        (item[0], list(item[1]), list(item[2]) if len(item) > 2 else [])
        for item in EDGE_SERIES
    ]


def test_same_bytes_as_generated_protobuf() -> None:
    assert serialize_write_request(EDGE_SERIES) == protobuf_reference(EDGE_SERIES)
    for one in EDGE_SERIES:
        assert serialize_write_request([one]) == protobuf_reference([one])


def test_negative_zero_keeps_its_sign() -> None:
    body = encode_write_request([((("__name__", "z"),), [(1, -0.0)])])
    [(_, samples, _)] = decode_write_request(body)
    assert math.copysign(1.0, samples[0][1]) == -1.0


def test_batches_hold_at_most_max_samples_in_order_with_their_exemplars() -> None:
    a, b, c = ((("__name__", "x"), ("model", m)) for m in "abc")
    samples: list[Sample] = [
        (a, 60_000, 0.0), (a, 120_000, 1.0), (b, 120_000, 2.0), (c, 60_000, 0.0),
        (c, 120_000, 3.0), (a, 180_000, 4.0), (b, 180_000, 5.0), (c, 180_000, 6.0),
    ]
    trace = Exemplar("f00d", 1.0, 119_000)
    batches = encode_batches(samples, {(c, 120_000): [trace]}, {"zone": "eu"}, max_samples=3)
    decoded = [decode_write_request(batch.body) for batch in batches]
    eu = ("zone", "eu")
    assert decoded == [
        [((*a, eu), [(60_000, 0.0), (120_000, 1.0), (180_000, 4.0)], [])],
        [((*b, eu), [(120_000, 2.0), (180_000, 5.0)], [])],
        [((*c, eu), [(60_000, 0.0), (120_000, 3.0), (180_000, 6.0)], [trace])],
    ]
    assert [(x.samples, x.min_ts, x.max_ts) for x in batches] == [
        (3, 60_000, 180_000), (2, 120_000, 180_000), (3, 60_000, 180_000)
    ]
    # a series with more samples than a request holds goes in consecutive requests
    long = [(a, t, float(t)) for t in range(1, 8)]
    parts = [decode_write_request(x.body)[0][1] for x in encode_batches(long, {}, {}, 3)]
    assert parts == [[(1, 1.0), (2, 2.0), (3, 3.0)], [(4, 4.0), (5, 5.0), (6, 6.0)],
                     [(7, 7.0)]]
    assert encode_batches([], {}, {}, 10) == []


def test_one_sample_per_series_is_encoded_as_the_generated_code_encodes_it() -> None:
    # the steady state's path: every series once, written straight into the request
    values = [0.0, -0.0, 1.5, math.inf, -math.inf, STALE_NAN, 5e-324, 1e308]
    stamps = [0, -1, 1, 60_000, 1_795_768_680_000, 1_795_768_680_000, 1 << 40, 60_000]
    series: list[Labels] = [
        (("__name__", "x"), ("n", str(i)), ("team", "équipe ☃" * (i % 3 * 40 + 1)))
        for i in range(len(values) * 3)
    ]
    samples: list[Sample] = [(labels, stamps[i % 8], values[i % 8])
                             for i, labels in enumerate(series)]
    picked = [Exemplar("b", 9.0, 110_000), Exemplar("l", 5.0, 30_000), Exemplar("z", 0.0, 0)]
    exemplars = {(series[2], stamps[2]): picked, (series[13], stamps[5]): picked[:1]}
    eu = ("zone", "eu")
    for max_samples in (1, 5, 100):
        batches = encode_batches(samples, exemplars, {"zone": "eu"}, max_samples)
        expected: list[Series] = [
            ((*labels, eu), [(ts, value)],
             sorted(exemplars.get((labels, ts), []), key=lambda e: e.ts_ms))
            for labels, ts, value in samples
        ]
        chunks = [expected[i:i + max_samples] for i in range(0, len(expected), max_samples)]
        assert [bytes(cramjam.snappy.decompress_raw(b.body)) for b in batches] == [
            protobuf_reference(chunk) for chunk in chunks
        ]
        assert [(b.samples, b.min_ts, b.max_ts, b.independent) for b in batches] == [
            (len(chunk), min(s[1][0][0] for s in chunk), max(s[1][0][0] for s in chunk), True)
            for chunk in chunks
        ]


def test_a_series_exemplars_go_in_time_order() -> None:
    # picked largest first, and a late span's exemplar (found by a settle pass) written
    # with the next window end: Prometheus keeps only those newer than its newest one
    a: Labels = (("__name__", "x"),)
    big, small, late = (Exemplar("b", 9.0, 110_000), Exemplar("s", 1.0, 115_000),
                        Exemplar("l", 5.0, 30_000))
    newer = Exemplar("n", 2.0, 170_000)
    samples: list[Sample] = [(a, 120_000, 1.0), (a, 180_000, 2.0)]
    exemplars = {(a, 120_000): [big, late, small], (a, 180_000): [newer]}
    [batch] = encode_batches(samples, exemplars, {}, max_samples=10)
    [(_, _, found)] = decode_write_request(batch.body)
    assert found == [late, big, small, newer]


def test_empty_request() -> None:
    assert decode_write_request(encode_write_request([])) == []


def test_body_is_snappy_block_format_not_framed() -> None:
    series: list[Series] = [((("__name__", "m"), ("job", "j" * 100)), [(1000, 1.0)])] * 50
    body = encode_write_request(series)
    raw = serialize_write_request(series)
    assert bytes(cramjam.snappy.decompress_raw(body)) == raw
    assert len(body) < len(raw)  # compressed, not stored
    assert not body.startswith(b"\xff\x06\x00\x00sNaPpY")  # framed stream identifier
    with pytest.raises(cramjam.DecompressionError):
        cramjam.snappy.decompress(body)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ((("b", "1"), ("a", "1")), "not sorted"),
        ((("__name__", "m"), ("a", "1"), ("a", "2")), "not sorted"),  # duplicate name
        ((("a", "1"), ("a", "1")), "not sorted"),
        ((("", "1"), ("a", "1")), "not sorted"),  # empty name
        ((("__name__", "m"), ("a", "")), "empty value"),
        # Byte order, not case-insensitive order: "Z" (0x5a) < "_" (0x5f) < "a" (0x61).
        ((("_", "1"), ("Z", "1")), "not sorted"),
        ((("a", "1"), ("_", "1")), "not sorted"),
    ],
)
def test_rejects_invalid_labels(labels: Labels, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_write_request([(labels, [(1, 1.0)])])


def test_accepts_labels_in_byte_order() -> None:
    labels: Labels = (("Z", "1"), ("_", "1"), ("__name__", "m"), ("a", "1"))
    assert decode_write_request(encode_write_request([(labels, [(1, 1.0)])]))[0][0] == labels


@pytest.mark.parametrize(
    "samples",
    [[(2, 1.0), (1, 1.0)], [(1, 1.0), (1, 2.0)], [(1, 1.0), (3, 1.0), (2, 1.0)]],
)
def test_rejects_samples_out_of_time_order(samples: list[tuple[int, float]]) -> None:
    with pytest.raises(ValueError, match="time order"):
        encode_write_request([((("__name__", "m"),), samples)])


@pytest.mark.parametrize("timestamp", [1 << 63, -(1 << 63) - 1])
def test_rejects_timestamps_outside_int64(timestamp: int) -> None:
    with pytest.raises(ValueError, match="int64"):
        encode_write_request([((("__name__", "m"),), [(timestamp, 1.0)])])


def test_stale_nan_bits() -> None:
    assert bits(STALE_NAN) == 0x7FF0000000000002
    assert math.isnan(STALE_NAN)
    assert is_stale_nan(STALE_NAN)
    for other in (math.nan, float("nan"), -math.nan, 0.0, 1.0, math.inf):
        assert not is_stale_nan(other)
    assert not is_stale_nan(struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0])


def test_stale_nan_survives_encoding() -> None:
    series: list[Series] = [
        ((("__name__", "g"),), [(1000, 1.0), (2000, STALE_NAN), (3000, math.nan)]),
    ]
    raw = serialize_write_request(series)
    assert b"\x09" + struct.pack("<Q", 0x7FF0000000000002) in raw
    [(_, samples, _)] = decode_write_request(encode_write_request(series))
    assert [bits(v) for _, v in samples] == [bits(1.0), 0x7FF0000000000002, bits(math.nan)]
    assert [is_stale_nan(v) for _, v in samples] == [False, True, False]


def test_add_external_labels() -> None:
    labels: Labels = (("__name__", "m"), ("env", "dev"), ("model", "x"))
    external = {"env": "prod", "cluster": "eu-1", "zone": "b", "empty": "", "A": "1"}
    assert add_external_labels(labels, external) == (
        ("A", "1"), ("__name__", "m"), ("cluster", "eu-1"), ("env", "dev"), ("model", "x"),
        ("zone", "b"),
    )
    assert add_external_labels(labels, {}) is labels
    assert add_external_labels(labels, {"env": "prod"}) is labels


# --- the client: one attempt -----------------------------------------------------------


async def send(respx_mock: respx.MockRouter,
               response: httpx.Response | Exception) -> ReceiverError | None:
    """Send one body to a mocked receiver; the error raised, or None."""
    respx_mock.post(URL).mock(side_effect=[response])
    async with RemoteWriteClient(URL) as client:
        try:
            await client.send(b"body")
        except ReceiverError as exc:
            return exc
    return None


class _ImportsSeen(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        self.names.append(fullname)


async def test_a_request_searches_for_no_module() -> None:
    # httpcore imports sniffio for each lock it makes: when it is not installed, every
    # request searches sys.path for it again (a dependency for that reason alone)
    seen = _ImportsSeen()
    async with receiving() as receiver:
        client = RemoteWriteClient(receiver.url)
        await client.send(b"warm-up")
        sys.meta_path.insert(0, seen)
        try:
            for _ in range(3):
                await client.send(b"body")
        finally:
            sys.meta_path.remove(seen)
            await client.aclose()
    assert len(receiver.requests) == 4
    assert seen.names == []


async def test_headers_and_body(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(204))
    body = encode_write_request([((("__name__", "m"),), [(1, 1.0)])])
    async with RemoteWriteClient(URL, headers={"X-Scope-OrgID": "tenant-1"}) as client:
        await client.send(body)
    request = route.calls.last.request
    assert request.content == body
    assert request.headers["Content-Encoding"] == "snappy"
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert request.headers["User-Agent"] == f"tempo-bridge/{bridge.__version__}"
    assert request.headers["X-Scope-OrgID"] == "tenant-1"


async def test_custom_user_agent(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200))
    async with RemoteWriteClient(URL, user_agent="custom/1") as client:
        await client.send(b"x")
    assert route.calls.last.request.headers["User-Agent"] == "custom/1"


@pytest.mark.parametrize("header", ["Content-Type", "content-encoding", "User-Agent",
                                    "X-Prometheus-Remote-Write-Version"])
def test_protocol_headers_cannot_be_overridden(header: str) -> None:
    with pytest.raises(ValueError, match="set by tempo-bridge"):
        RemoteWriteClient(URL, headers={header: "x"})


@pytest.mark.parametrize("status", [200, 204])
async def test_2xx_is_success(respx_mock: respx.MockRouter, status: int) -> None:
    assert await send(respx_mock, httpx.Response(status)) is None


@pytest.mark.parametrize(
    ("response", "reason", "retry_after"),
    [
        (httpx.Response(500, text="internal"), "http_500", None),
        (httpx.Response(503), "http_503", None),
        (httpx.Response(503, headers={"Retry-After": "7"}), "http_503", 7.0),
        (httpx.Response(429, headers={"Retry-After": "2"}), "http_429", 2.0),
        (httpx.Response(429, headers={"Retry-After": "0"}), "http_429", 0.0),
        (httpx.Response(429, headers={"Retry-After": "soon"}), "http_429", None),
        (httpx.Response(429), "http_429", None),
    ],
)
async def test_retryable_statuses(respx_mock: respx.MockRouter, response: httpx.Response,
                                  reason: str, retry_after: float | None) -> None:
    error = await send(respx_mock, response)
    assert error is not None
    assert (error.reason, error.status, error.retryable, error.retry_after) == (
        reason, response.status_code, True, retry_after)


@pytest.mark.parametrize(("offset", "expected"), [(30, 30.0), (-30, 0.0)])
async def test_retry_after_http_date(respx_mock: respx.MockRouter, offset: int,
                                     expected: float) -> None:
    now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    date = email.utils.format_datetime(now + timedelta(seconds=offset), usegmt=True)
    with time_machine.travel(now, tick=False):
        error = await send(respx_mock, httpx.Response(429, headers={"Retry-After": date}))
    assert error is not None
    assert (error.reason, error.retryable, error.retry_after) == ("http_429", True, expected)


async def test_400_is_final_with_body_verbatim(respx_mock: respx.MockRouter) -> None:
    body = 'label name "__name__" is not unique: invalid sample\n'
    error = await send(respx_mock, httpx.Response(400, text=body))
    assert error is not None
    assert (error.reason, error.status, error.retryable, error.retry_after) == (
        "http_400", 400, False, None)
    assert str(error) == f"POST {URL}: HTTP 400: {body.rstrip()}"


@pytest.mark.parametrize("status", [401, 404, 413, 415])
async def test_other_4xx_are_final(respx_mock: respx.MockRouter, status: int) -> None:
    error = await send(respx_mock, httpx.Response(status, headers={"Retry-After": "3"}))
    assert error is not None
    assert (error.reason, error.retryable, error.retry_after) == (f"http_{status}", False, None)


async def test_long_body_truncated_at_1_kib(respx_mock: respx.MockRouter) -> None:
    error = await send(respx_mock, httpx.Response(400, text="a" * 1024 + "b" * 5000))
    assert str(error) == f"POST {URL}: HTTP 400: {'a' * 1024} ... (truncated)"


async def test_error_body_read_only_up_to_the_limit(respx_mock: respx.MockRouter) -> None:
    chunks_read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        for _ in range(10_000):  # 5 MB, read lazily
            chunks_read += 1
            yield b"x" * 512

    error = await send(respx_mock, httpx.Response(400, content=endless()))
    assert str(error) == f"POST {URL}: HTTP 400: {'x' * 1024} ... (truncated)"
    assert chunks_read <= 4


@pytest.mark.parametrize(
    ("exception", "reason"),
    [
        (httpx.ConnectError("connection refused"), "network"),
        (httpx.RemoteProtocolError("server disconnected"), "network"),
        (httpx.ReadError("connection reset"), "network"),
        (httpx.ConnectTimeout("connect timeout"), "timeout"),
        (httpx.ReadTimeout("read timeout"), "timeout"),
    ],
)
async def test_network_errors_are_retryable(respx_mock: respx.MockRouter,
                                            exception: Exception, reason: str) -> None:
    error = await send(respx_mock, exception)
    assert error is not None
    assert (error.reason, error.status, error.retryable) == (reason, None, True)
    assert isinstance(error.__cause__, httpx.TransportError)


async def test_timeout_against_a_silent_server() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, RemoteWriteClient(f"http://127.0.0.1:{port}/api/v1/write",
                                         timeout=0.2) as client:
        with pytest.raises(ReceiverError) as caught:
            await client.send(b"x")
    assert (caught.value.reason, caught.value.retryable) == ("timeout", True)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1/write"
        async with RemoteWriteClient(url) as client:
            with pytest.raises(ReceiverError) as caught:
                await client.send(b"x")
    assert (caught.value.reason, caught.value.retryable) == ("network", True)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("response", [httpx.Response(400, text="bad"),
                                      httpx.Response(503, text="down"),
                                      httpx.ConnectError("refused")])
async def test_secrets_stay_out_of_messages(respx_mock: respx.MockRouter,
                                            response: httpx.Response | Exception) -> None:
    url = "http://writer:pa55word@receiver.test/api/v1/write"
    respx_mock.post(URL).mock(side_effect=[response])
    async with RemoteWriteClient(url, headers={"Authorization": "Bearer t0ken"}) as client:
        with pytest.raises(ReceiverError) as caught:
            await client.send(b"x")
    message = str(caught.value)
    assert "receiver.test/api/v1/write" in message
    assert "pa55word" not in message
    assert "t0ken" not in message


# --- the retry policy -----------------------------------------------------------------


class FakeSleep:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Flaky:
    """Raises the given errors one per call, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "sent"


def retryable(retry_after: float | None = None) -> ReceiverError:
    return ReceiverError("http_503", "down", status=503, retryable=True, retry_after=retry_after)


async def test_backoff_doubles_from_30ms_to_5s_and_never_stops() -> None:
    sleep = FakeSleep()
    flaky = Flaky(*[retryable() for _ in range(40)])
    assert await retrying(jitter=0, sleep=sleep)(flaky) == "sent"
    assert flaky.calls == 41
    doubling = [0.03 * 2**n for n in range(8)]  # 0.03 ... 3.84
    assert sleep.waits == pytest.approx(doubling + [5.0] * 32)


async def test_jitter_only_shortens_waits() -> None:
    sleep = FakeSleep()
    await retrying(sleep=sleep)(Flaky(*[retryable() for _ in range(200)]))
    expected = [min(5.0, 0.03 * 2**n) for n in range(200)]
    assert all(0.8 * e <= w <= e for w, e in zip(sleep.waits, expected, strict=True))
    assert len({round(w, 9) for w in sleep.waits[20:]}) > 100  # spread, even at the cap


async def test_jitter_uses_rng() -> None:
    sleep = FakeSleep()
    await retrying(sleep=sleep, jitter=0.5, rng=lambda: 0.5)(Flaky(retryable(), retryable()))
    assert sleep.waits == pytest.approx([0.0225, 0.045])


async def test_retry_after_honoured_when_longer() -> None:
    sleep = FakeSleep()
    flaky = Flaky(retryable(retry_after=2.0), retryable(retry_after=0.001), retryable(),
                  retryable(retry_after=60.0))
    await retrying(jitter=0, sleep=sleep)(flaky)
    assert sleep.waits == pytest.approx([2.0, 0.06, 0.12, 60.0])


@pytest.mark.parametrize(
    "error",
    [ReceiverError("http_400", "out of order sample", status=400, retryable=False),
     RuntimeError("bug")],
)
async def test_final_errors_are_not_retried(error: BaseException) -> None:
    sleep = FakeSleep()
    flaky = Flaky(error)
    with pytest.raises(type(error)) as caught:
        await retrying(sleep=sleep)(flaky)
    assert caught.value is error
    assert (flaky.calls, sleep.waits) == (1, [])


async def test_before_sleep_sees_each_retry() -> None:
    seen: list[tuple[str, float]] = []
    flaky = Flaky(retryable(), ReceiverError("timeout", "t", retryable=True),
                  retryable(retry_after=3.0))
    await retrying(jitter=0, sleep=FakeSleep(),
                   before_sleep=lambda reason, wait: seen.append((reason, wait)))(flaky)
    assert [reason for reason, _ in seen] == ["http_503", "timeout", "http_503"]
    assert [wait for _, wait in seen] == pytest.approx([0.03, 0.06, 3.0])


async def test_client_with_policy(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(side_effect=[
        httpx.Response(503), httpx.ConnectError("refused"),
        httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(204),
    ])
    sleep = FakeSleep()
    async with RemoteWriteClient(URL) as client:
        async for attempt in retrying(jitter=0, sleep=sleep):
            with attempt:
                await client.send(b"body")
    assert route.call_count == 4
    assert sleep.waits == pytest.approx([0.03, 0.06, 1.0])


# --- a real Prometheus ------------------------------------------------------------------


def test_missing_prometheus_binary_fails_loudly(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_BIN", str(tmp_path / "no-prometheus"))
    with pytest.raises(PrometheusError, match="not found"), start_prometheus(tmp_path):
        pass


def test_prometheus_dying_at_start_shows_its_output(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\necho 'error loading config: bad things' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PROMETHEUS_BIN", str(fake))
    with pytest.raises(PrometheusError, match=r"(?s)status 1.*bad things"), \
            start_prometheus(tmp_path):
        pass


def now_ms() -> int:
    return int(time.time()) * 1000


async def write(prometheus: PrometheusServer, series: list[Series]) -> None:
    async with RemoteWriteClient(prometheus.write_url) as client:
        await client.send(encode_write_request(series))


async def rejection(prometheus: PrometheusServer, series: list[Series]) -> ReceiverError:
    with pytest.raises(ReceiverError) as caught:
        await write(prometheus, series)
    return caught.value


def value_at(prometheus: PrometheusServer, promql: str, t_ms: int) -> dict[str, object]:
    """``{label-set: value}`` of an instant query, values as Prometheus prints them."""
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): r["value"][1]
        for r in prometheus.query(promql, t_ms / 1000)
    }


@pytest.mark.prometheus
async def test_prometheus_stores_counter_and_gauge_exactly(prom: PrometheusServer) -> None:
    t = now_ms()
    counter = (("__name__", "rw_cost_usd_total"), ("model", "openai/gpt-4o"))
    gauge = (("__name__", "rw_queue_depth"),)
    external = {"cluster": "ci"}
    await write(prom, [
        (add_external_labels(counter, external), [(t - 60_000, 0.1), (t, 0.30000000000000004)]),
        (add_external_labels(gauge, external), [(t, 17.0)]),
    ])
    assert value_at(prom, "rw_cost_usd_total", t - 60_000) == {
        "__name__=rw_cost_usd_total,cluster=ci,model=openai/gpt-4o": "0.1"}
    assert value_at(prom, "rw_cost_usd_total", t) == {
        "__name__=rw_cost_usd_total,cluster=ci,model=openai/gpt-4o": "0.30000000000000004"}
    assert value_at(prom, "rw_queue_depth", t) == {"__name__=rw_queue_depth,cluster=ci": "17"}
    [matrix] = prom.query_range("rw_cost_usd_total", (t - 60_000) / 1000, t / 1000, 60)
    assert matrix["values"] == [[(t - 60_000) / 1000, "0.1"], [t / 1000, "0.30000000000000004"]]
    assert prom.series('{__name__=~"rw_(cost_usd_total|queue_depth)"}') == [
        {"__name__": "rw_cost_usd_total", "cluster": "ci", "model": "openai/gpt-4o"},
        {"__name__": "rw_queue_depth", "cluster": "ci"},
    ]


@pytest.mark.prometheus
async def test_prometheus_stale_marker_ends_a_series(prom: PrometheusServer) -> None:
    t = now_ms()
    ended = (("__name__", "rw_gauge"), ("model", "ended"))
    kept = (("__name__", "rw_gauge"), ("model", "kept"))
    await write(prom, [(ended, [(t - 30_000, 1.0)]), (kept, [(t - 30_000, 2.0)])])
    await write(prom, [(ended, [(t - 15_000, STALE_NAN)])])
    assert value_at(prom, "rw_gauge", t - 20_000) == {
        "__name__=rw_gauge,model=ended": "1", "__name__=rw_gauge,model=kept": "2"}
    # Without the marker, a series stays visible for the 5 min lookback.
    assert value_at(prom, "rw_gauge", t) == {"__name__=rw_gauge,model=kept": "2"}


@pytest.mark.prometheus
async def test_prometheus_rejections(prom: PrometheusServer) -> None:
    t = now_ms()
    labels = (("__name__", "rw_rejections"),)
    await write(prom, [(labels, [(t, 5.0)])])

    out_of_order = await rejection(prom, [(labels, [(t - 1000, 4.0)])])
    duplicate = await rejection(prom, [(labels, [(t, 6.0)])])
    too_old = await rejection(prom, [((("__name__", "rw_old"),), [(t - 65 * 60_000, 1.0)])])
    where = f"POST {prom.write_url}: HTTP 400: "
    assert [str(e) for e in (out_of_order, duplicate, too_old)] == [
        where + "out of order sample",
        where + "duplicate sample for timestamp",
        where + "out of bounds",
    ]
    assert all((e.reason, e.status, e.retryable) == ("http_400", 400, False)
               for e in (out_of_order, duplicate, too_old))

    # One bad sample fails the whole request: the good series in it is not stored.
    mixed = await rejection(prom, [
        ((("__name__", "rw_innocent"),), [(t, 1.0)]), (labels, [(t - 1000, 4.0)])])
    assert mixed.reason == "http_400"
    assert prom.query("rw_innocent", t / 1000) == []

    # Resending the latest sample unchanged is accepted; 55 min behind is still in bounds.
    await write(prom, [(labels, [(t, 5.0)])])
    await write(prom, [((("__name__", "rw_late"),), [(t - 55 * 60_000, 3.0)])])
    assert value_at(prom, "rw_rejections", t) == {"__name__=rw_rejections": "5"}
    assert value_at(prom, "rw_late", t - 55 * 60_000) == {"__name__=rw_late": "3"}
    assert value_at(prom, "rw_old", t) == {}


@pytest.mark.prometheus
async def test_prometheus_keeps_exemplars_only_in_time_order(tmp_path: Path) -> None:
    """Prometheus with exemplar storage stores a series' exemplars only while each is newer
    than the last one it holds (an older one is dropped and the request still succeeds):
    encode_batches puts them in time order, so every one of a sample's exemplars is kept."""
    t = now_ms()
    labels = (("__name__", "rw_exemplars_total"),)
    picked = [Exemplar("b1", 9.0, t - 50_000), Exemplar("a1", 3.0, t - 55_000),
              Exemplar("c1", 1.0, t - 52_000)]
    with start_prometheus(tmp_path, exemplar_storage=True) as prometheus:
        # as picked (largest first): the older ones after the largest are dropped
        await write(prometheus, [(labels, [(t - 60_000 + 1, 1.0)], picked)])
        [batch] = encode_batches([((("__name__", "rw_sorted_total"),), t - 60_000 + 1, 1.0)],
                                 {((("__name__", "rw_sorted_total"),), t - 60_000 + 1): picked},
                                 {}, max_samples=10)
        async with RemoteWriteClient(prometheus.write_url) as client:
            await client.send(batch.body)
        # a late span's exemplar, older than the newest stored one, is dropped
        await write(prometheus, [(labels, [(t, 2.0)], [Exemplar("late", 4.0, t - 58_000)])])
        stored = {
            item["seriesLabels"]["__name__"]: [e["labels"]["traceID"] for e in item["exemplars"]]
            for item in prometheus.query_exemplars(
                '{__name__=~"rw_(exemplars|sorted)_total"}', (t - 120_000) / 1000, t / 1000)
        }
    assert stored == {"rw_exemplars_total": ["b1"], "rw_sorted_total": ["a1", "c1", "b1"]}
