"""Tempo client: instant and range TraceQL metrics queries, parsed exactly as Tempo answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bridge import __version__
from bridge.errors import TempoError

INSTANT_PATH = "/api/metrics/query"
RANGE_PATH = "/api/metrics/query_range"
_MAX_BODY_IN_ERROR = 1024


@dataclass(frozen=True)
class InstantSeries:
    """One series of an instant answer; labels keyed as Tempo sends them (``"nil"`` kept)."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
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
            headers={"User-Agent": f"tempo-bridge/{__version__}", **(headers or {})},
            timeout=timeout,
            transport=transport,
        )

    async def instant(
        self, query: str, start: int, end: int, *, tenant: str | None = None
    ) -> list[InstantSeries]:
        """Evaluate ``query`` over spans starting in ``(start, end]`` (unix seconds)."""
        body = await self._get(
            INSTANT_PATH, {"q": query, "start": str(start), "end": str(end)}, tenant
        )
        return [
            InstantSeries(_labels(s, query), _number(s.get("value", 0), query))
            for s in _series(body, query)
        ]

    async def range(
        self, query: str, start: int, end: int, step: int, *, tenant: str | None = None
    ) -> list[RangeSeries]:
        """Evaluate ``query`` in buckets ``(t-step, t]`` for aligned ``t`` in ``[start, end]``.

        Tempo also returns the bucket stamped at or before ``start``; callers drop it.
        """
        params = {"q": query, "start": str(start), "end": str(end), "step": f"{step}s"}
        body = await self._get(RANGE_PATH, params, tenant)
        result = []
        for s in _series(body, query):
            raw_samples = s.get("samples", [])
            if not isinstance(raw_samples, list):
                raise _malformed(query, "samples is not a list")
            samples = []
            for raw in raw_samples:
                if not isinstance(raw, dict) or "timestampMs" not in raw:
                    raise _malformed(query, "a sample has no timestampMs")
                ts = _int(raw["timestampMs"], query)
                samples.append((ts, _number(raw.get("value", 0), query)))
            result.append(RangeSeries(_labels(s, query), samples))
        return result

    async def get_json(self, path: str) -> Any:
        """GET a Tempo status endpoint (``/api/status/buildinfo``) and decode its JSON."""
        response = await self._request(path, {}, None, "GET " + path)
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
        self, path: str, params: Mapping[str, str], tenant: str | None, what: str
    ) -> httpx.Response:
        headers = {}
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

    async def _get(self, path: str, params: Mapping[str, str], tenant: str | None) -> Any:
        query = params["q"]
        response = await self._request(path, params, tenant, f"query {query!r}")
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise _malformed(query, f"body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise _malformed(query, "body is not a JSON object")
        status = body.get("status")
        if status == "PARTIAL":
            message = body.get("message", "")
            raise TempoError("partial", f"query {query!r}: Tempo answered PARTIAL: {message}")
        if status not in (None, "COMPLETE"):
            raise _malformed(query, f"unknown status {status!r}")
        return body


def _series(body: Mapping[str, Any], query: str) -> list[Mapping[str, Any]]:
    series = body.get("series", [])
    if not isinstance(series, list) or not all(isinstance(s, dict) for s in series):
        raise _malformed(query, "series is not a list of objects")
    return series


def _labels(series: Mapping[str, Any], query: str) -> dict[str, str]:
    raw = series.get("labels", [])
    if not isinstance(raw, list):
        raise _malformed(query, "labels is not a list")
    labels = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise _malformed(query, "a label has no key")
        labels[item["key"]] = _label_value(item.get("value"), query)
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
        return str(int(v))
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
