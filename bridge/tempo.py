"""Tempo client: instant and range TraceQL metrics queries, parsed exactly as Tempo answers.

An answer can hold 100,000 series and tens of megabytes of JSON. It is parsed one series
at a time (``_stream_answer``): each series becomes an :class:`InstantSeries` or
:class:`RangeSeries` as soon as it is read, so the whole JSON tree is never in memory at
once, and the cyclic garbage collector is paused meanwhile (the parse allocates millions of
objects, none of them in a cycle). Any answer that is not a well-formed JSON object is
parsed again as a whole, so that errors read exactly as ``json.loads`` words them.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from bridge import USER_AGENT
from bridge.errors import TempoError

INSTANT_PATH = "/api/metrics/query"
RANGE_PATH = "/api/metrics/query_range"
_MAX_BODY_IN_ERROR = 1024


@dataclass(frozen=True, slots=True)
class InstantSeries:
    """One series of an instant answer; labels keyed as Tempo sends them (``"nil"`` kept)."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range answer: ``(timestamp ms, value)`` samples, a missing value is 0."""

    labels: Mapping[str, str]
    samples: Sequence[tuple[int, float]]


class TempoClient:
    """Async client for Tempo's TraceQL metrics API.

    Every failure (network, HTTP status, ``PARTIAL`` answer, malformed body) raises
    :class:`TempoError` with a reason token and a message naming the query.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tenant: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._tenant = tenant
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            timeout=timeout,
            transport=transport,
        )

    async def instant(
        self, query: str, start: int, end: int, *, tenant: str | None = None
    ) -> list[InstantSeries]:
        """Evaluate ``query`` over spans starting in ``(start, end]`` (unix seconds)."""
        params = {"q": query, "start": str(start), "end": str(end)}
        return await self._get(INSTANT_PATH, params, tenant, _instant_series)

    async def range(
        self, query: str, start: int, end: int, step: int, *, tenant: str | None = None
    ) -> list[RangeSeries]:
        """Evaluate ``query`` in buckets ``(t-step, t]`` for aligned ``t`` in ``[start, end]``.

        Tempo also returns the bucket stamped at or before ``start``; callers drop it.
        """
        params = {"q": query, "start": str(start), "end": str(end), "step": f"{step}s"}
        return await self._get(RANGE_PATH, params, tenant, _range_series)

    async def get_json(self, path: str) -> Any:
        """GET a Tempo status endpoint (``/api/status/buildinfo``) and decode its JSON.

        Sends ``Accept: application/json``: status pages such as ``/status/overrides/{tenant}``
        answer HTML without it.
        """
        response = await self._request(path, {}, None, "GET " + path, accept="application/json")
        try:
            return response.json()
        except ValueError as exc:
            raise _malformed("GET " + path, f"body is not JSON ({exc})") from exc

    async def get_text(self, path: str) -> str:
        """GET a Tempo status endpoint that answers text (``/status/config``)."""
        return (await self._request(path, {}, None, "GET " + path)).text

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(
        self, path: str, params: Mapping[str, str], tenant: str | None, what: str,
        *, accept: str | None = None,
    ) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        org = tenant or self._tenant
        if org:
            headers["X-Scope-OrgID"] = org
        try:
            response = await self._client.get(path, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise TempoError("timeout", f"{what}: Tempo did not answer in time ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise TempoError("network", f"{what}: cannot reach Tempo ({exc!r})") from exc
        if response.status_code != 200:
            text = response.text.strip()[:_MAX_BODY_IN_ERROR]
            raise TempoError(
                f"http_{response.status_code}",
                f"{what}: Tempo answered {response.status_code}: {text}",
                status=response.status_code,
            )
        return response

    async def _get(
        self, path: str, params: Mapping[str, str], tenant: str | None,
        convert: _Convert[_S],
    ) -> list[_S]:
        """GET a metrics query and turn each series of the answer into ``convert``'s type."""
        query = params["q"]
        response = await self._request(path, params, tenant, f"query {query!r}")
        content = response.content
        del response  # the text below is all that is needed: let the bytes go
        try:
            # what json.loads does with bytes
            text = content.decode(json.detect_encoding(content), "surrogatepass")
        except ValueError as exc:
            raise _malformed(query, f"body is not JSON ({exc})") from exc
        del content
        with _gc_paused():
            return _parse_answer(text, query, convert)


_S = TypeVar("_S", InstantSeries, RangeSeries)
_Convert = Callable[[Mapping[str, Any], str, dict[str, str]], _S]
"""Turns one series object of an answer into an InstantSeries or RangeSeries; raises
TempoError. The dict interns label names and values: the same strings recur in every series."""

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"  # JSON's whitespace


class _NotStreamableError(Exception):
    """An answer the streaming parser leaves to the whole-body parser (and its messages)."""


def _parse_answer(text: str, query: str, convert: _Convert[_S]) -> list[_S]:
    """The series of an answer, or the TempoError that ``json.loads`` and the checks below
    would give: status first, then the shape of ``series``, then the first bad series, then
    a missing ``metrics`` object."""
    try:
        streamed = _stream_answer(text, query, convert)
    except (ValueError, _NotStreamableError):  # json.JSONDecodeError is a ValueError
        streamed = None
    if streamed is None:
        return _parse_whole(text, query, convert)
    body, series, problem = streamed
    _check_status(body, query)
    if problem is not None:
        raise problem
    _check_metrics(body, query)
    return series


def _parse_whole(text: str, query: str, convert: _Convert[_S]) -> list[_S]:
    """:func:`_parse_answer` the simple way: the whole JSON tree first."""
    try:
        body = _DECODER.decode(text)
    except ValueError as exc:
        raise _malformed(query, f"body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise _malformed(query, "body is not a JSON object")
    _check_status(body, query)
    strings: dict[str, str] = {}
    series = [convert(s, query, strings) for s in _series(body, query)]
    _check_metrics(body, query)
    return series


def _stream_answer(
    text: str, query: str, convert: _Convert[_S]
) -> tuple[dict[str, Any], list[_S], TempoError | None]:
    """Parse a JSON object whose ``series`` member is a list of objects, converting each
    series as it is read: the other members, the series, and the first conversion error.

    Raises ValueError or _NotStreamableError for anything else (not JSON, not an object,
    ``series`` not a list of objects or given twice).
    """
    body: dict[str, Any] = {}
    series: list[_S] = []
    problem: TempoError | None = None
    i = _expect(text, _skip(text, 0), "{")
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise _NotStreamableError
            key, i = _DECODER.raw_decode(text, i)
            i = _expect(text, i, ":")
            if key != "series":
                body[key], i = _DECODER.raw_decode(text, i)
            elif "series" in body:
                raise _NotStreamableError
            else:
                body["series"] = None  # seen: a second one is not streamable
                i, problem = _stream_series(text, i, query, convert, series)
            i = _skip(text, i)
            if text[i:i + 1] == "}":
                i += 1
                break
            i = _expect(text, i, ",")
    if _skip(text, i) != len(text):
        raise _NotStreamableError
    body.pop("series", None)
    return body, series, problem


def _stream_series(
    text: str, i: int, query: str, convert: _Convert[_S], series: list[_S]
) -> tuple[int, TempoError | None]:
    """Read the list of series objects at ``text[i]``, appending each converted one to
    ``series`` until one fails: where the list ends, and that first conversion error."""
    problem = None
    strings: dict[str, str] = {}
    i = _expect(text, i, "[")
    if text[i:i + 1] == "]":
        return i + 1, None
    while True:
        item, i = _DECODER.raw_decode(text, i)
        if not isinstance(item, dict):
            raise _NotStreamableError
        if problem is None:
            try:
                series.append(convert(item, query, strings))
            except TempoError as exc:
                problem = exc
        i = _skip(text, i)
        if text[i:i + 1] == "]":
            return i + 1, problem
        i = _expect(text, i, ",")


def _skip(text: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is not whitespace."""
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _expect(text: str, i: int, char: str) -> int:
    """After ``char`` at ``text[i]`` (whitespace before it skipped) and whitespace."""
    i = _skip(text, i)
    if text[i:i + 1] != char:
        raise _NotStreamableError
    return _skip(text, i + 1)


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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing a big answer allocates millions of
    containers, none in a cycle, and each collection would walk them all again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    return RangeSeries(_labels(s, query, strings), samples)


def _labels(series: Mapping[str, Any], query: str, strings: dict[str, str]) -> dict[str, str]:
    raw = series.get("labels", [])
    if not isinstance(raw, list):
        raise _malformed(query, "labels is not a list")
    labels = {}
    intern = strings.setdefault
    for item in raw:
        if not isinstance(item, dict) or not isinstance(key := item.get("key"), str):
            raise _malformed(query, "a label has no key")
        value = item.get("value")
        if (isinstance(value, dict) and len(value) == 1
                and isinstance(text := value.get("stringValue"), str)):
            pass  # the common case, as _label_value has it
        else:
            text = _label_value(value, query)
        labels[intern(key, key)] = intern(text, text)
    return labels


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
