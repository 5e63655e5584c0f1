"""Tempo client: instant and range TraceQL metrics queries, parsed exactly as Tempo answers.

An answer can hold 1,000,000 series and hundreds of megabytes of JSON. It is parsed as
it arrives (:class:`_Parse`): its body is cut into runs of whole series of a few
megabytes, each run decoded by msgspec into typed structs on the worker while the next
arrives, and handed to a sink that adds the values to the buckets asked for
(:func:`parse_buckets`, what the engine reads) or makes :class:`InstantSeries` or
:class:`RangeSeries` of them (:func:`parse_answer`), label names and values interned. So
only a run or two of the body is in memory at once, beside what is made of it; the cyclic
garbage collector is paused meanwhile (millions of objects are allocated, none in a
cycle). Anything the structs do not take as they are (not JSON, a wrong type, an unusual
label value, a ``PARTIAL`` status...) is parsed again whole with ``json`` and checked in
Python (:func:`_parse_whole`), which gives the answer's series or the error, worded
exactly as ``json.loads`` and the checks word it; when runs of that answer were already
taken, the client asks Tempo for it again, whole, to do so.

Every answer's ``Date`` header is compared with the host's clock around the request: the
latest :class:`ClockSkew` is :attr:`TempoClient.clock_skew`, and goes to ``on_clock_skew``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Literal, NamedTuple, TypeAlias, TypeVar, overload

import httpx
import msgspec

from bridge import USER_AGENT
from bridge.errors import TempoError
from bridge.memory import gc_paused
from bridge.series import Exemplar, TempoKey
from bridge.worker import Worker, run_on

INSTANT_PATH = "/api/metrics/query"
RANGE_PATH = "/api/metrics/query_range"
_MAX_BODY_IN_ERROR = 1024
_TRACE_ID = re.compile(r"[0-9a-fA-F]{1,32}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_blake2b = hashlib.blake2b

Kind: TypeAlias = Literal["instant", "range"]
Body: TypeAlias = bytes | bytearray
"""An answer's body: read into one buffer as it arrives (see ``TempoClient._request``)."""


class InstantSeries(NamedTuple):
    """One series of an instant answer; its labels named as Tempo sends them (``"nil"``
    kept), sorted by name."""

    labels: TempoKey
    value: float


class RangeSeries(NamedTuple):
    """One series of a range answer: ``(timestamp ms, value)`` samples, a missing value is 0,
    and the series' exemplars as Tempo gave them."""

    labels: TempoKey
    samples: Sequence[tuple[int, float]]
    exemplars: Sequence[Exemplar] = ()


@dataclass
class Buckets:
    """An answer's values in the buckets asked for, by their stamps (ms): what an
    evaluation reads of it.

    A series is present in a bucket when Tempo gives it a value there: every series of an
    instant answer (a query without ``by()`` always returns its one series, 0 when no
    span matched), and in range answers, where every series has a sample in every bucket
    and a zero one stands for no spans, the series with a value other than 0, and the
    one series of a query without ``by()`` always. Series with the same labels are
    summed (see TempoKey); the buckets not asked for (the one before the first that a
    range answer carries) are checked but not kept.
    """

    values: dict[int, dict[TempoKey, float]]
    merged: dict[int, int]
    """Per bucket: series summed into another with the same labels."""
    exemplars: list[tuple[TempoKey, Exemplar]] = field(default_factory=list)
    """Every exemplar of the answer, with the labels of its series, in the answer's order."""


def buckets_of(
    answer: Sequence[InstantSeries] | Sequence[RangeSeries], stamps: Sequence[int],
) -> Buckets:
    """The :class:`Buckets` of parsed series: the values of an instant answer are those of
    the one bucket ``stamps`` holds. What :func:`parse_buckets` gives, the plain way."""
    values: dict[int, dict[TempoKey, float]] = {stamp: {} for stamp in stamps}
    merged = dict.fromkeys(stamps, 0)
    exemplars: list[tuple[TempoKey, Exemplar]] = []
    for series in answer:
        key = series.labels
        points: Iterable[tuple[int, float]]
        if isinstance(series, InstantSeries):
            points, always = ((stamps[0], series.value),), True
        else:
            points, always = series.samples, _always_present(key)
            exemplars.extend((key, exemplar) for exemplar in series.exemplars)
        for stamp, value in points:
            if value == 0 and not always:
                continue
            bucket = values.get(stamp)
            if bucket is None:
                continue
            if key in bucket:
                merged[stamp] += 1
                bucket[key] += value
            else:
                bucket[key] = value
    return Buckets(values, merged, exemplars)


def _always_present(key: TempoKey) -> bool:
    """Whether a range series is present in every bucket: that of a query without by()."""
    return not key or (len(key) == 1 and key[0][0] == "__name__")


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """Tempo's clock minus the host's, in seconds, between ``low`` and ``high``.

    A ``Date`` header says the second Tempo answered in, ``[D, D+1)``, and the host saw the
    answer made between sending the request (``sent``) and reading its headers: so the skew
    is above ``D - received`` and below ``D + 1 - sent``.
    """

    low: float
    high: float
    at: float  # host time the answer came, unix seconds

    @property
    def estimate(self) -> float:
        """The middle of the bounds."""
        return (self.low + self.high) / 2

    @property
    def certain(self) -> float:
        """How far apart the clocks are at least (0 when the bounds allow equal clocks)."""
        if self.low <= 0 <= self.high:
            return 0.0
        return min(abs(self.low), abs(self.high))


class TempoClient:
    """Async client for Tempo's TraceQL metrics API.

    Every failure (network, HTTP status, ``PARTIAL`` answer, malformed body) raises
    :class:`TempoError` with a reason token and a message naming the query. With a
    ``worker``, answers are parsed on its thread, off the event loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tenant: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_clock_skew: Callable[[ClockSkew], None] | None = None,
        clock: Callable[[], float] = time.time,
        worker: Worker | None = None,
        canonical: Callable[[TempoKey], TempoKey] | None = None,
    ) -> None:
        self._tenant = tenant
        self._worker = worker
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            timeout=timeout,
            transport=transport,
        )
        self._on_clock_skew = on_clock_skew
        self._keys = Keys(canonical=canonical)
        self._clock = clock
        self.clock_skew: ClockSkew | None = None
        """The skew measured on the latest answer with a ``Date`` header; None before one."""

    async def instant(
        self, query: str, start: int, end: int, *, tenant: str | None = None
    ) -> list[InstantSeries]:
        """Evaluate ``query`` over spans starting in ``(start, end]`` (unix seconds)."""
        return await self._query(
            INSTANT_PATH, _instant_params(query, start, end), tenant, "instant",
            lambda: _series_reading("instant", query, self._keys))

    async def instant_buckets(
        self, query: str, start: int, end: int, *, tenant: str | None = None
    ) -> Buckets:
        """:meth:`instant`, its values as those of one bucket stamped ``end`` (ms)."""
        return await self._query(
            INSTANT_PATH, _instant_params(query, start, end), tenant, "instant",
            lambda: _buckets_reading("instant", query, (end * 1000,), self._keys))

    async def range(
        self, query: str, start: int, end: int, step: int, *, tenant: str | None = None,
        exemplars: int | None = None,
    ) -> list[RangeSeries]:
        """Evaluate ``query`` in buckets ``(t-step, t]`` for aligned ``t`` in ``[start, end]``.

        Tempo also returns the bucket stamped at or before ``start``; callers drop it.
        ``exemplars`` is Tempo's parameter (at most that many for the whole answer; None or 0
        means Tempo's ``max_exemplars``, 100 by default).
        """
        return await self._query(
            RANGE_PATH, _range_params(query, start, end, step, exemplars), tenant, "range",
            lambda: _series_reading("range", query, self._keys))

    async def range_buckets(
        self, query: str, start: int, end: int, step: int, stamps: Sequence[int], *,
        tenant: str | None = None, exemplars: int | None = None,
    ) -> Buckets:
        """:meth:`range`, its values in the buckets stamped ``stamps`` (ms) only."""
        return await self._query(
            RANGE_PATH, _range_params(query, start, end, step, exemplars), tenant, "range",
            lambda: _buckets_reading("range", query, stamps, self._keys))

    async def get_json(self, path: str) -> Any:
        """GET a Tempo status endpoint (``/api/status/buildinfo``) and decode its JSON.

        Sends ``Accept: application/json``: status pages such as ``/status/overrides/{tenant}``
        answer HTML without it.
        """
        _, body = await self._request(path, {}, None, "GET " + path, accept="application/json")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _malformed("GET " + path, f"body is not JSON ({exc})") from exc

    async def get_text(self, path: str) -> str:
        """GET a Tempo status endpoint that answers text (``/status/config``)."""
        response, body = await self._request(path, {}, None, "GET " + path)
        return _text(response, body)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(
        self, path: str, params: Mapping[str, str], tenant: str | None, what: str,
        *, accept: str | None = None, parse: _Parse[Any] | None = None,
    ) -> tuple[httpx.Response, bytearray]:
        """GET ``path``: the response and its body, read into one buffer as it arrives (a
        big answer is never in memory twice, as its chunks and then joined); or, with
        ``parse``, a 200 answer's body fed to it as it arrives (the buffer left empty)."""
        headers = {"Accept": accept} if accept else {}
        org = tenant or self._tenant
        if org:
            headers["X-Scope-OrgID"] = org
        request = self._client.build_request("GET", path, params=params, headers=headers)
        sent = self._clock()
        body = bytearray()
        try:
            response = await self._client.send(request, stream=True)
            try:
                if parse is not None and response.status_code == 200:
                    await self._stream(response.aiter_bytes(), parse)
                else:
                    async for chunk in response.aiter_bytes():
                        body += chunk
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise TempoError("timeout", f"{what}: Tempo did not answer in time ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise TempoError("network", f"{what}: cannot reach Tempo ({exc!r})") from exc
        self._measure_clock(response.headers.get("Date"), sent, self._clock())
        if response.status_code != 200:
            text = _text(response, body).strip()[:_MAX_BODY_IN_ERROR]
            raise TempoError(
                f"http_{response.status_code}",
                f"{what}: Tempo answered {response.status_code}: {text}",
                status=response.status_code,
            )
        return response, body

    def _measure_clock(self, date: str | None, sent: float, received: float) -> None:
        if not date:
            return
        try:
            moment = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return  # not an HTTP date: nothing to learn from it
        if moment.tzinfo is None:
            return
        told = moment.timestamp()
        skew = ClockSkew(low=told - received, high=told + 1 - sent, at=received)
        self.clock_skew = skew
        if self._on_clock_skew is not None:
            self._on_clock_skew(skew)

    async def _query(
        self, path: str, params: Mapping[str, str], tenant: str | None, kind: Kind,
        reading: Callable[[], _Reading[_R]],
    ) -> _R:
        """A metrics query, its answer read as it arrives into a new ``reading``; when
        the typed structs do not take it, what the plain parser makes of the whole answer
        (asked for again when some of its series were already taken)."""
        query = params["q"]
        what = f"query {query!r}"
        sink, slow = reading()
        parse = _Parse(kind, sink)
        await self._request(path, params, tenant, what, parse=parse)
        try:
            return await run_on(self._worker, parse.finish)
        except _SLOW_PATH:
            pass
        cut, content = parse.cut, parse.body
        del parse, sink  # what they took is let go before the answer is read again
        if not cut:  # the body is whole: the plain parser words what the structs refused
            return await run_on(self._worker, _parse_plainly, content, query, kind, slow)
        _, content = await self._request(path, params, tenant, what)
        sink, slow = reading()
        return await run_on(self._worker, _parse, content, query, kind, sink, slow)

    async def _stream(self, chunks: AsyncIterator[bytes], parse: _Parse[Any]) -> None:
        """Feed an answer's body to ``parse`` as it arrives, each run of it taken on the
        worker while the next arrives (one run waits at most). Stops reading once a run
        was not taken: the answer is asked for again."""
        taking: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                run = parse.feed(chunk)
                if run is None:
                    if parse.failed:
                        break
                    continue
                if taking is not None:
                    await taking
                taking = asyncio.ensure_future(run_on(self._worker, parse.take, run))
            if taking is not None:
                await taking
        finally:
            if taking is not None and not taking.done():
                taking.cancel()


def _instant_params(query: str, start: int, end: int) -> dict[str, str]:
    return {"q": query, "start": str(start), "end": str(end)}


def _range_params(
    query: str, start: int, end: int, step: int, exemplars: int | None,
) -> dict[str, str]:
    params = {"q": query, "start": str(start), "end": str(end), "step": f"{step}s"}
    if exemplars is not None:
        params["exemplars"] = str(exemplars)
    return params


def _text(response: httpx.Response, body: bytearray) -> str:
    """A body as text, as ``httpx.Response.text`` decodes it."""
    return body.decode(response.encoding or "utf-8", errors="replace")


# -- parsing ------------------------------------------------------------------------------


class _AnyValue(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    stringValue: str | msgspec.UnsetType = msgspec.UNSET  # noqa: N815 (Tempo's names)
    intValue: str | int | msgspec.UnsetType = msgspec.UNSET  # noqa: N815
    doubleValue: float | msgspec.UnsetType = msgspec.UNSET  # noqa: N815
    boolValue: bool | msgspec.UnsetType = msgspec.UNSET  # noqa: N815


class _Label(msgspec.Struct, gc=False):
    key: str
    value: _AnyValue


class _Sample(msgspec.Struct, gc=False):
    timestampMs: int | str  # noqa: N815
    value: float | str = 0.0


class _ExemplarLabel(msgspec.Struct, gc=False):
    key: str
    value: dict[str, Any]


class _ExemplarStruct(msgspec.Struct, gc=False):
    timestampMs: int | str  # noqa: N815
    labels: list[_ExemplarLabel] = []
    value: float | str = 0.0


class _InstantStruct(msgspec.Struct, gc=False):
    labels: msgspec.Raw = msgspec.Raw(b"[]")  # see Keys
    value: float | str = 0.0


class _RangeStruct(msgspec.Struct, gc=False):
    labels: msgspec.Raw = msgspec.Raw(b"[]")  # see Keys
    samples: list[_Sample] = []
    exemplars: list[_ExemplarStruct] = []


class _InstantAnswer(msgspec.Struct, gc=False):
    series: list[_InstantStruct] = []
    metrics: Any = None
    status: Any = None


class _RangeAnswer(msgspec.Struct, gc=False):
    series: list[_RangeStruct] = []
    metrics: Any = None
    status: Any = None


RUN_BYTES = 1024 * 1024
"""An answer is cut, as it arrives, into runs of whole series of about this many bytes,
each decoded at once: a big answer is never in memory whole (364 MB of JSON at 1,000,000
series), nor are a run's structs, which take several times its bytes (runs of 8 MB put
35 MB on the peak of an evaluation of 100,000 series), and a run is still big enough to
be decoded as fast as the whole (``bench.parse``)."""

_WHOLE: dict[Kind, msgspec.json.Decoder[Any]] = {
    "instant": msgspec.json.Decoder(_InstantAnswer),
    "range": msgspec.json.Decoder(_RangeAnswer),
}
_RUN: dict[Kind, msgspec.json.Decoder[Any]] = {
    "instant": msgspec.json.Decoder(list[_InstantStruct]),
    "range": msgspec.json.Decoder(list[_RangeStruct]),
}
_CHUNK = 64 * 1024
"""The least a body read whole is fed to :class:`_Parse` in at a time."""
_LABELS = msgspec.json.Decoder(list[_Label])
_PREFIX = b'{"series":['
_SEPARATOR: dict[Kind, bytes] = {"instant": b'},{"labels":', "range": b']},{"labels":'}
"""What a series' end and the next one's start look like, in Tempo's order of fields
(labels first): ``}`` after an instant series' value or labels; ``]}`` after a range
series' samples or exemplars (its exemplars also have labels, and end with a timestamp)."""


class _SlowPathError(Exception):
    """Something the typed structs do not take as they are: :func:`_parse_whole` decides."""


_SLOW_PATH = (_SlowPathError, msgspec.ValidationError, msgspec.DecodeError)

_R = TypeVar("_R")
Sink: TypeAlias = Generator[None, "list[Any] | None", _R]
"""What an answer's series go to, as typed structs, a run at a time (``send``); ``None``
sent at the end returns the result (see :func:`_instant_buckets`)."""
_Reading: TypeAlias = tuple[Sink[_R], Callable[[Any], _R]]
"""What an answer is read into: a sink, and what makes the same result of the series
the plain parser gives (:func:`_parse_whole`) when the structs do not take it."""


class _Parse(Generic[_R]):
    """One answer, parsed as it arrives: its body cut into runs of whole series
    (:meth:`feed`, on the event loop: it only finds and copies bytes), each run decoded
    and handed to the sink (:meth:`take`, on the worker), then the rest of the body, the
    last series with ``metrics`` and ``status``, decoded as a whole answer
    (:meth:`finish`).

    Tempo writes ``{"series":[{"labels":...},...],"metrics":...}``; a run ends before
    the ``,`` of a :data:`_SEPARATOR`. That text cannot be inside a JSON string (its
    quotes would be escaped), and a cut inside a series (say, between two exemplars with
    no value) leaves the run's brackets open: decoding fails, as it does for any answer
    the structs do not take, and the answer takes the slow path. A body of another shape
    is kept whole and decoded at the end.
    """

    def __init__(self, kind: Kind, sink: Sink[_R]) -> None:
        self._sink = sink
        next(sink)
        self._kind: Kind = kind
        self._separator = _SEPARATOR[kind]
        self._comma = self._separator.index(b",")
        self.size = RUN_BYTES
        self.body = bytearray()
        """The part of the body not taken yet: all of it until a run is cut."""
        self._found = -1  # where the last separator in ``body`` begins
        self._searched = 0  # how far ``body`` was searched; -1: another shape, kept whole
        self.cut = False
        """Whether runs were cut from the body: then ``body`` is not the whole answer."""
        self.failed = False
        """Whether a run was not taken: the answer takes the slow path."""

    def feed(self, chunk: Body | memoryview) -> bytes | None:
        """Add the next bytes of the body; a run of whole series for :meth:`take` once
        ``size`` bytes of them have arrived, as a JSON array."""
        body = self.body
        body += chunk
        if self._searched < 0 or self.failed:
            return None
        if not self.cut and self._searched < len(_PREFIX):
            if len(body) < len(_PREFIX):
                return None
            if not body.startswith(_PREFIX):
                self._searched = -1
                return None
        found = body.rfind(self._separator, max(self._searched - len(self._separator) + 1, 0))
        self._searched = len(body)
        if found >= 0:
            self._found = found
        if self._found < self.size:
            return None
        comma = self._found + self._comma
        with memoryview(body) as view:
            run = b"".join((view[0 if self.cut else len(_PREFIX) - 1:comma], b"]"))
        body[comma] = ord("[")  # the rest begins the next run
        del body[:comma]
        self._found, self._searched, self.cut = -1, len(body), True
        return run

    def take(self, run: bytes) -> None:
        """Decode a run and hand its series to the sink."""
        if self.failed:
            return
        try:
            with gc_paused():
                self._sink.send(_RUN[self._kind].decode(run))
        except _SLOW_PATH:
            self.failed = True

    def finish(self) -> _R:
        """The sink's result, the rest of the body decoded; _SlowPathError (or msgspec's
        errors) when the structs do not take the answer as it is."""
        if self.failed:
            raise _SlowPathError
        with gc_paused():
            rest = b"".join((b'{"series":', self.body)) if self.cut else self.body
            answer = _WHOLE[self._kind].decode(rest)
            if answer.status not in (None, "COMPLETE") or not isinstance(answer.metrics, dict):
                raise _SlowPathError  # not a complete answer: the plain checks word why
            self._sink.send(answer.series)
            try:
                self._sink.send(None)
            except StopIteration as end:
                result: _R = end.value
                return result
        raise RuntimeError("a sink takes series until it is sent None")


@overload
def parse_answer(
    content: Body, query: str, kind: Literal["instant"], keys: Keys | None = None,
) -> list[InstantSeries]: ...
@overload
def parse_answer(
    content: Body, query: str, kind: Literal["range"], keys: Keys | None = None,
) -> list[RangeSeries]: ...
def parse_answer(
    content: Body, query: str, kind: Kind, keys: Keys | None = None,
) -> list[InstantSeries] | list[RangeSeries]:
    """The series of an answer of ``query``, or the TempoError the whole-body parser gives."""
    return _parse(content, query, kind,
                  *_series_reading(kind, query, Keys() if keys is None else keys))


def parse_buckets(
    content: Body, query: str, kind: Kind, stamps: Sequence[int], keys: Keys | None = None,
) -> Buckets:
    """:func:`buckets_of` the answer's series, each added to its buckets as it is decoded
    (no series object is made); or the TempoError :func:`parse_answer` gives."""
    return _parse(content, query, kind,
                  *_buckets_reading(kind, query, stamps, Keys() if keys is None else keys))


def _series_reading(kind: Kind, query: str, keys: Keys) -> _Reading[list[Any]]:
    """Series (:func:`parse_answer`)."""
    sink = _instant_list(keys) if kind == "instant" else _range_list(keys, query)
    return sink, _as_parsed


def _buckets_reading(
    kind: Kind, query: str, stamps: Sequence[int], keys: Keys,
) -> _Reading[Buckets]:
    """Buckets (:func:`parse_buckets`)."""
    sink = (_instant_buckets(keys, stamps) if kind == "instant"
            else _range_buckets(keys, query, stamps))
    return sink, partial(buckets_of, stamps=stamps)


def _parse(
    content: Body, query: str, kind: Kind, sink: Sink[_R], slow: Callable[[Any], _R],
) -> _R:
    """The answer fed to ``sink`` a run at a time, as the client feeds it as it arrives;
    when the structs do not take it as it is, ``slow`` of the series
    :func:`_parse_whole` makes (or its TempoError)."""
    parse = _Parse(kind, sink)
    step = max(parse.size, _CHUNK)
    try:
        with memoryview(content) as view:
            for at in range(0, len(content), step):
                run = parse.feed(view[at:at + step])
                if run is not None:
                    parse.take(run)
        return parse.finish()
    except _SLOW_PATH:
        pass
    del parse
    return _parse_plainly(content, query, kind, slow)


def _parse_plainly(content: Body, query: str, kind: Kind, slow: Callable[[Any], _R]) -> _R:
    """``slow`` of the series :func:`_parse_whole` makes of a whole answer (or its
    TempoError)."""
    with gc_paused():
        return slow(_parse_slowly(content, query, kind))


def _as_parsed(series: list[Any]) -> list[Any]:
    return series


def _parse_slowly(content: Body, query: str, kind: Kind) -> Any:
    try:
        # what json.loads does with bytes
        text = content.decode(json.detect_encoding(content), "surrogatepass")
    except ValueError as exc:
        raise _malformed(query, f"body is not JSON ({exc})") from exc
    return _parse_whole(text, query, kind)


def _label_text(value: _AnyValue) -> str:
    """An AnyValue the structs took, as text; _SlowPathError unless exactly one kind is set
    and it converts as :func:`_label_value` converts it."""
    kinds = [v for v in (value.stringValue, value.intValue, value.doubleValue, value.boolValue)
             if v is not msgspec.UNSET]
    if len(kinds) != 1:
        if not kinds:
            return ""
        raise _SlowPathError
    (v,) = kinds
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if value.intValue is not msgspec.UNSET:
        try:
            return str(int(v))
        except ValueError:
            raise _SlowPathError from None
    assert isinstance(v, str)
    return v


class Keys:
    """The series keys of answers, by the text of their labels in the answer.

    A series is answered with the same labels, written the same way, at every window: the
    text found again is the key, its labels are not decoded again. A text is remembered by
    its 128-bit BLAKE2b digest, not kept: 49 bytes a series, where the text took 300 and
    more (a chance collision among a million texts is about 1e-27, and none can be made
    on purpose). A key's labels are tuples shared by every key that has them: keys are
    held for every series between evaluations, and a model's or a provider's label is in
    thousands of them. The memory is bounded: when ``size`` texts are remembered, the
    older half of them is forgotten (the texts seen since are kept). ``canonical`` gives
    an equal key already held elsewhere (the state's), to be kept instead of the one
    decoded.
    """

    def __init__(
        self, size: int = 2_000_000, canonical: Callable[[TempoKey], TempoKey] | None = None,
    ) -> None:
        self._size = size
        self._canonical = canonical
        self._keys: dict[bytes, TempoKey] = {}  # by the digest of the labels' text
        self._older: dict[bytes, TempoKey] = {}
        self._strings: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def __call__(self, raw: msgspec.Raw) -> TempoKey:
        text = _blake2b(raw, digest_size=16).digest()
        key = self._keys.get(text)
        if key is None:
            key = self._older.pop(text, None)
            if key is None:
                key = self._decode(raw)
            if len(self._keys) >= self._size // 2:
                self._older, self._keys = self._keys, {}
                self._strings, self._pairs = {}, {}
            self._keys[text] = key
        return key

    def _decode(self, raw: msgspec.Raw) -> TempoKey:
        labels = {}
        intern = self._strings.setdefault
        for label in _LABELS.decode(raw):
            value = label.value
            text = value.stringValue
            if (text is msgspec.UNSET or value.intValue is not msgspec.UNSET
                    or value.doubleValue is not msgspec.UNSET
                    or value.boolValue is not msgspec.UNSET):
                text = _label_text(value)
            key = label.key
            labels[intern(key, key)] = intern(text, text)
        share = self._pairs.setdefault
        decoded = tuple([share(pair, pair) for pair in sorted(labels.items())])
        return decoded if self._canonical is None else self._canonical(decoded)


def _float(value: float | str) -> float:
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except ValueError:
        raise _SlowPathError from None


def _instant_list(keys: Keys) -> Sink[list[InstantSeries]]:
    series: list[InstantSeries] = []
    append = series.append
    while (items := (yield)) is not None:
        for item in items:
            value = item.value
            append(_new(InstantSeries, (
                keys(item.labels), value if value.__class__ is float else _float(value),
            )))
    return series


def _range_list(keys: Keys, query: str) -> Sink[list[RangeSeries]]:
    series: list[RangeSeries] = []
    append = series.append
    try:  # Tempo writes timestamps as strings: int() them here, not one call each
        while (items := (yield)) is not None:
            for item in items:
                samples = [
                    (int(s.timestampMs), v if (v := s.value).__class__ is float else float(v))
                    for s in item.samples
                ]
                if item.exemplars:
                    append(_new(RangeSeries, (keys(item.labels), samples,
                                              _exemplars(item.exemplars, query))))
                else:
                    append(_new(RangeSeries, (keys(item.labels), samples, ())))
    except ValueError:
        raise _SlowPathError from None
    return series


def _exemplars(items: list[_ExemplarStruct], query: str) -> tuple[Exemplar, ...]:
    try:
        return tuple(_exemplar(e.labels, e.value, e.timestampMs, query) for e in items)
    except TempoError:
        raise _SlowPathError from None


def _instant_buckets(keys: Keys, stamps: Sequence[int]) -> Sink[Buckets]:
    """The sink of :func:`parse_buckets` for an instant answer (one bucket)."""
    (stamp,) = stamps
    bucket: dict[TempoKey, float] = {}
    merged = 0
    while (items := (yield)) is not None:
        for item in items:
            key = keys(item.labels)
            value = item.value
            if value.__class__ is not float:
                value = _float(value)
            size = len(bucket)
            held = bucket.setdefault(key, value)
            if len(bucket) == size:  # another series with these labels: summed
                bucket[key] = held + value
                merged += 1
    return Buckets({stamp: bucket}, {stamp: merged})


def _range_buckets(keys: Keys, query: str, stamps: Sequence[int]) -> Sink[Buckets]:
    """The sink of :func:`parse_buckets` for a range answer."""
    values: dict[int, dict[TempoKey, float]] = {stamp: {} for stamp in stamps}
    merged = dict.fromkeys(stamps, 0)
    exemplars: list[tuple[TempoKey, Exemplar]] = []
    bucket_at = values.get
    # Tempo writes timestamps as strings, and an answer has few of them (its buckets'):
    # each is int()-ed once, kept or not, and found again by its text
    stamp_of: dict[int | str, int] = {}
    try:
        while (items := (yield)) is not None:
            for item in items:
                key = keys(item.labels)
                always = not key or (len(key) == 1 and key[0][0] == "__name__")
                for sample in item.samples:
                    text = sample.timestampMs
                    stamp = stamp_of.get(text)
                    if stamp is None:
                        stamp = stamp_of[text] = int(text)
                    value = sample.value
                    if value.__class__ is not float:
                        value = float(value)
                    if value == 0 and not always:
                        continue
                    bucket = bucket_at(stamp)
                    if bucket is None:
                        continue
                    size = len(bucket)
                    held = bucket.setdefault(key, value)
                    if len(bucket) == size:  # a bucket twice, or another series: summed
                        bucket[key] = held + value
                        merged[stamp] += 1
                if item.exemplars:
                    exemplars.extend((key, e) for e in _exemplars(item.exemplars, query))
    except ValueError:
        raise _SlowPathError from None
    return Buckets(values, merged, exemplars)


_new: Any = tuple.__new__
"""``_new(RangeSeries, (labels, samples, exemplars))``: a series without the Python-level
``__new__`` of a NamedTuple, for the loops that run for every series of an answer."""


def _parse_whole(text: str, query: str, kind: Kind) -> Any:
    """:func:`parse_answer` the plain way: ``json.loads`` then the checks, in order: status,
    the shape of ``series``, the first bad series, a missing ``metrics`` object."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise _malformed(query, f"body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise _malformed(query, "body is not a JSON object")
    _check_status(body, query)
    strings: dict[str, str] = {}
    convert = _instant_series if kind == "instant" else _range_series
    series = [convert(s, query, strings) for s in _series(body, query)]
    _check_metrics(body, query)
    return series


def _check_metrics(body: Mapping[str, Any], query: str) -> None:
    """Every answer of Tempo's metrics API has a ``metrics`` object (jobs, bytes inspected),
    even one without series. A 200 body without it (``{}``) comes from something else, a
    proxy, a cache or a wrong URL: taken as "no spans", it would lose the window."""
    if not isinstance(body.get("metrics"), dict):
        raise _malformed(query, "no metrics object, so not an answer of Tempo's metrics API")


def _check_status(body: Mapping[str, Any], query: str) -> None:
    status = body.get("status")
    if status == "PARTIAL":
        message = body.get("message", "")
        raise TempoError("partial", f"query {query!r}: Tempo answered PARTIAL: {message}")
    if status not in (None, "COMPLETE"):
        raise _malformed(query, f"unknown status {status!r}")


def _series(body: Mapping[str, Any], query: str) -> list[Mapping[str, Any]]:
    series = body.get("series", [])
    if not isinstance(series, list) or not all(isinstance(s, dict) for s in series):
        raise _malformed(query, "series is not a list of objects")
    return series


def _instant_series(s: Mapping[str, Any], query: str, strings: dict[str, str]) -> InstantSeries:
    return InstantSeries(_labels(s, query, strings), _number(s.get("value", 0), query))


def _range_series(s: Mapping[str, Any], query: str, strings: dict[str, str]) -> RangeSeries:
    raw_samples = s.get("samples", [])
    if not isinstance(raw_samples, list):
        raise _malformed(query, "samples is not a list")
    samples = []
    for raw in raw_samples:
        if not isinstance(raw, dict) or "timestampMs" not in raw:
            raise _malformed(query, "a sample has no timestampMs")
        ts = _int(raw["timestampMs"], query)
        samples.append((ts, _number(raw.get("value", 0), query)))
    raw_exemplars = s.get("exemplars", [])
    if not isinstance(raw_exemplars, list):
        raise _malformed(query, "exemplars is not a list")
    exemplars = []
    for raw in raw_exemplars:
        if not isinstance(raw, dict) or "timestampMs" not in raw:
            raise _malformed(query, "an exemplar has no timestampMs")
        labels = raw.get("labels", [])
        if not isinstance(labels, list) or not all(
            isinstance(x, dict) and isinstance(x.get("key"), str)
            and isinstance(x.get("value"), dict) for x in labels
        ):
            raise _malformed(query, "an exemplar's labels are not a list of keys and values")
        exemplars.append(_exemplar(labels, raw.get("value", 0), raw["timestampMs"], query))
    return RangeSeries(_labels(s, query, strings), samples, tuple(exemplars))


def _exemplar(labels: Sequence[Any], value: Any, ts: Any, query: str) -> Exemplar:
    """An exemplar from its labels (structs or dicts with ``key`` and ``value``)."""
    trace_id = None
    for label in labels:
        key, raw = (label.key, label.value) if isinstance(label, _ExemplarLabel) else (
            label["key"], label["value"])
        if key == "trace:id":
            trace_id = raw.get("stringValue") if len(raw) == 1 else None
            if not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id):
                raise _malformed(query, f"exemplar trace:id {raw!r} is not a hex trace ID")
    if trace_id is None:
        raise _malformed(query, "an exemplar has no trace:id")
    return Exemplar(trace_id, _number(value, query), _int(ts, query))


def _labels(series: Mapping[str, Any], query: str, strings: dict[str, str]) -> TempoKey:
    raw = series.get("labels", [])
    if not isinstance(raw, list):
        raise _malformed(query, "labels is not a list")
    labels = {}
    intern = strings.setdefault
    for item in raw:
        if not isinstance(item, dict) or not isinstance(key := item.get("key"), str):
            raise _malformed(query, "a label has no key")
        text = _label_value(item.get("value"), query)
        if _LONE_SURROGATE.search(key + text):  # JSON may escape one; UTF-8 cannot hold it
            raise _malformed(query, f"label {key!r}: {text!r} is not valid Unicode (a lone "
                                    "surrogate): no receiver can store it")
        labels[intern(key, key)] = intern(text, text)
    return tuple(sorted(labels.items()))


def _label_value(value: Any, query: str) -> str:
    """Turn an OTLP ``AnyValue`` (``{"stringValue": ...}``, ``{"intValue": "3"}``...) into text."""
    if not isinstance(value, dict) or len(value) > 1:
        raise _malformed(query, f"label value {value!r} is not an OTLP AnyValue")
    if not value:
        return ""
    ((kind, v),) = value.items()
    if kind == "stringValue" and isinstance(v, str):
        return v
    if kind == "intValue" and isinstance(v, (str, int)) and not isinstance(v, bool):
        try:
            return str(int(v))
        except ValueError:
            raise _malformed(query, f"label value {value!r} is not an integer") from None
    if kind == "doubleValue" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    if kind == "boolValue" and isinstance(v, bool):
        return "true" if v else "false"
    raise _malformed(query, f"label value {value!r} has an unknown type")


def _number(value: Any, query: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _malformed(query, f"value {value!r} is not a number")
    try:
        return float(value)
    except ValueError as exc:
        raise _malformed(query, f"value {value!r} is not a number") from exc


def _int(value: Any, query: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _malformed(query, f"timestamp {value!r} is not an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise _malformed(query, f"timestamp {value!r} is not an integer") from exc


def _malformed(query: str, what: str) -> TempoError:
    return TempoError("malformed", f"query {query!r}: malformed answer from Tempo: {what}")
