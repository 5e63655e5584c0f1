"""A Tempo 3.0.3 test double: TraceQL metrics over in-memory spans, answered like the real HTTP API.

The double evaluates a subset of TraceQL metrics (`{ filter } | fn(args) by (...) | topk(n)`)
over the spans it was given and answers `GET /api/metrics/query` and
`GET /api/metrics/query_range` with the status codes, error bodies and JSON shapes of a real
Tempo 3.0.3. Every rule below was checked against captured traffic (`tempo-api/captures`,
replayed by `tests/test_tempo_double.py`); what the captures do not show is listed at the end.

Request handling, as Tempo does it:

* Parameters `q` (or `query`, which wins), `start`, `end` (unix seconds when 10 digits or fewer,
  else unix nanoseconds; a decimal is seconds; else RFC 3339), `since` (Prometheus duration,
  `1d` allowed; used when `start` is absent), `step` (seconds or Go duration, `1d` refused;
  default `DefaultQueryRangeStep`: range/240 rounded down to 5 s, at least 1 s).
* Range: `end < start` and `(end - start) / step > 10000` are refused first; then the query is
  parsed; then the range is aligned (start down to a step, end up to a step, start moved one
  more step back: the extra leading bucket), end is clamped to `now - query_end_cutoff` and
  aligned down, and only then is `end - start > max_duration` refused. So the extra bucket
  counts against the 24 h limit, and an end in the future does not.
* Instant: spans whose start is in `(start, min(end, now - cutoff)]`; `end - start` as
  requested must not exceed `max_duration`; `rate()` divides by `end - start` as requested.
* Range buckets are `(t - step, t]` stamped `t`.

Range answers carry exemplars as Tempo 3.0.3 picks them (``_ExemplarPicker``): one per trace,
stamped with the span's start in ms, labelled ``trace:id`` (hex, leading zeros dropped) and
the attributes the query read, valued with the aggregated attribute (0 when it is not a
number) or, for counts and rates, the sample of their bucket; at most ``exemplars``
(0 or more than ``max_exemplars``, 100 by default, means ``max_exemplars``) and two per
``1/(exemplars/2)`` of the range; instant answers and ``with(exemplars=false)`` have none.
Which traces get them follows Tempo's jobs (recent and backend split at
``query_backend_after``, traces in trace-ID order, block by block: spans given in one
``add_spans`` call form one block), and is exact on the captures where Tempo's block layout
does not matter (``tests/test_tempo_double.py``).

Every HTTP answer has a ``Date`` header from the double's clock. ``max_duration`` takes a
per-tenant override (``max_duration_overrides``), ``max_intervals`` can be changed or
turned off (0).

Answer shapes: a series whose values are all NaN (sum/avg/min/max with no numeric value) is
dropped, NaN samples are dropped, a value of 0 has no `value` key. `count_over_time()` and
`rate()` without `by()` always give one `__name__` series (zeros when nothing matched). An
instant answer without series has no `series` key; a range answer has `"series": []`.
`by()` labels drop nil values; when all are nil the first label is the string "nil".

Faults for reliability tests are queued with `inject()`: a canned `Response`, `Hang(seconds)`
(answer late, so a client timeout fires) or `CloseConnection()` (drop the connection without
an answer); each request takes the next one. The aiohttp server (`start()`) and
`transport()`, an in-process httpx transport, act them all out; the synchronous `handle()`
returns an injected `Response` and raises `InjectedFaultError` for the other two.

Not captured, so taken from Tempo's source or chosen: the wording of bad `start`/`end`/`since`
errors, instant `end <= start`, more than 5 `by()` fields; token names in syntax errors other
than punctuation, `IDENTIFIER` and `$end`, and the column of `$end` in a non-empty query;
anchored regexes, `&&` and `||` of equal precedence (Tempo's grammar); `401 no org id` with
`require_tenant`. Outside the subset, answers are a 400 saying "tempo double does not
support ...": other scopes and intrinsics, arithmetic, structural operators, `select`,
`compare`; `with(...)` hints other than `exemplars=true|false` are accepted and ignored.
Exemplars of queries cut at `maxSeries` (Tempo stops reading early), the wording of a bad
`exemplars` parameter, and a quantile's exemplars going all to its first quantile (capture
18; later Tempo versions split them by value) are taken from the captures or chosen.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeAlias

import httpx
from aiohttp import web

AttrValue: TypeAlias = str | int | float | bool

NANOS_PER_SECOND = 1_000_000_000
DEFAULT_SINCE_NS = 3600 * NANOS_PER_SECOND
MAX_INTERVALS = 10_000
TEMPO_VERSION = "3.0.3"

DEFAULT_MAX_EXEMPLARS = 100  # query_frontend.metrics.max_exemplars
MAX_EXEMPLARS = 100  # traceql's maxExemplars: no bucket set holds more
MAX_EXEMPLARS_PER_BUCKET = 2  # traceql's maxExemplarsPerBucket
DEFAULT_QUERY_BACKEND_AFTER = 900.0  # query_frontend.metrics.query_backend_after, seconds
TIME_OVERLAP_CUTOFF = 0.2  # querier.metrics.time_overlap_cutoff
BACKEND_EXEMPLAR_OVERHEAD = 1.2  # the sharder's 20% more exemplars per backend block
_TRACE_ID = re.compile(r"[0-9a-f]{32}")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
UNSUPPORTED = "tempo double does not support "


# --------------------------------------------------------------------------------------
# Spans, responses, faults
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One span as Tempo stores it, reduced to what TraceQL metrics look at.

    ``attributes`` are span-scoped (``gen_ai.request.model``, no ``span.`` prefix),
    ``resource`` resource-scoped (``service.name``). Integers and floats are distinct
    types, as in OTLP: ``sum_over_time`` adds both, ``histogram_over_time`` buckets ints only.
    """

    start_ns: int
    name: str = "LLM Generation"
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    resource: Mapping[str, AttrValue] = field(default_factory=dict)
    duration_ns: int = NANOS_PER_SECOND
    status: Literal["unset", "ok", "error"] = "unset"
    kind: Literal["unspecified", "internal", "server", "client", "producer", "consumer"] = (
        "unspecified"
    )
    trace_id: str = ""
    """32 hex digits; spans of one trace share it. Empty: derived from the span's content
    (start, name, attributes), so that identical spans share a trace."""

    def __post_init__(self) -> None:
        if not self.trace_id:
            identity = repr(
                (self.start_ns, self.name, sorted(self.attributes.items(), key=repr),
                 sorted(self.resource.items(), key=repr), self.duration_ns)
            )
            object.__setattr__(self, "trace_id", hashlib.sha1(identity.encode()).hexdigest()[:32])
        elif not _TRACE_ID.fullmatch(self.trace_id):
            raise ValueError(f"trace_id {self.trace_id!r} is not 32 lowercase hex digits")


def spans_from_truth(
    path: Path, *, extra_attributes: Mapping[str, Mapping[str, AttrValue]] | None = None
) -> list[Span]:
    """Read the spans of a ``truth*.json`` file (the ground truth of the captures).

    ``truth.json`` entries carry the OpenRouter broadcast fields (model, tokens, costs as
    decimal strings, ...); an absent ``api_key_name`` means the attribute was not sent.
    ``truth-edge.json`` entries carry only a name and a start: their name is also their
    ``edge.case`` attribute, and the attributes the file does not record (the captures'
    index documents them) come from ``extra_attributes``, keyed by span name.
    """
    data = json.loads(path.read_text())
    resource: dict[str, AttrValue] = {"service.name": data["service"]}
    extra = extra_attributes or {}
    spans = []
    for entry in data["spans"]:
        if "model" in entry:
            attributes = _broadcast_attributes(entry)
            name = "LLM Generation"
            duration_ns = entry["end_ns"] - entry["start_ns"]
        else:
            name = entry["name"]
            attributes = {"edge.case": name}
            duration_ns = (
                entry.get("end_ns", entry["start_ns"] + NANOS_PER_SECOND) - entry["start_ns"]
            )
        attributes.update(extra.get(name, {}))
        spans.append(
            Span(
                start_ns=entry["start_ns"],
                name=name,
                attributes=attributes,
                resource=dict(resource),
                duration_ns=duration_ns,
                trace_id=entry.get("trace_id", ""),
            )
        )
    return spans


def _broadcast_attributes(entry: Mapping[str, Any]) -> dict[str, AttrValue]:
    attributes: dict[str, AttrValue] = {
        "gen_ai.request.model": entry["model"],
        "gen_ai.provider.name": entry["provider"],
        "trace.metadata.openrouter.provider_slug": entry["provider_slug"],
        "gen_ai.usage.input_tokens": int(entry["input_tokens"]),
        "gen_ai.usage.output_tokens": int(entry["output_tokens"]),
        "gen_ai.usage.total_tokens": int(entry["total_tokens"]),
        "gen_ai.usage.input_cost": float(entry["input_cost"]),
        "gen_ai.usage.output_cost": float(entry["output_cost"]),
        "gen_ai.usage.total_cost": float(entry["total_cost"]),
    }
    if entry.get("api_key_name") is not None:
        attributes["trace.metadata.openrouter.api_key_name"] = entry["api_key_name"]
    return attributes


@dataclass(frozen=True)
class Response:
    """An HTTP answer of the double."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def text(cls, status: int, message: str) -> Response:
        """A plain-text answer, as Tempo gives for every error."""
        return cls(status, TEXT, message.encode())

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Response:
        """A JSON answer (floats and int64 strings formatted like Tempo's Go encoder)."""
        return cls(status, JSON, _go_json(payload).encode())


@dataclass(frozen=True)
class RecordedRequest:
    """A request the double received."""

    path: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    at: float

    def header(self, name: str) -> str | None:
        """A request header, looked up case-insensitively."""
        return _header(self.headers, name)


@dataclass(frozen=True)
class Hang:
    """Fault: wait ``seconds`` before answering normally (a client timeout fires first)."""

    seconds: float


@dataclass(frozen=True)
class CloseConnection:
    """Fault: close the connection without sending any response."""


Fault: TypeAlias = Response | Hang | CloseConnection


class InjectedFaultError(Exception):
    """``handle()`` met a queued Hang or CloseConnection, which only a transport can act out."""

    def __init__(self, fault: Hang | CloseConnection) -> None:
        self.fault = fault
        super().__init__(f"injected fault {fault!r}: use transport() or start() to act it out")


# --------------------------------------------------------------------------------------
# Go-compatible time and duration handling
# --------------------------------------------------------------------------------------

_GO_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND,
}
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_PROM_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
_PROM_UNITS_NS = [
    365 * 86400 * NANOS_PER_SECOND,
    7 * 86400 * NANOS_PER_SECOND,
    86400 * NANOS_PER_SECOND,
    3600 * NANOS_PER_SECOND,
    60 * NANOS_PER_SECOND,
    NANOS_PER_SECOND,
    1_000_000,
]
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})"
)


def parse_go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` (``1h30m``, ``1.5s``, ``300ms``), in ns; None if invalid."""
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0
    if not body:
        return None
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _GO_DURATION.match(body, pos)
        if not match or match.group(1) in ("", "."):
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * int(total)


def parse_prom_duration(text: str) -> int | None:
    """Prometheus' ``model.ParseDuration`` (``1d``, ``23h58m``, ``1w``), in ns; None if invalid."""
    if text == "0":
        return 0
    match = _PROM_DURATION.fullmatch(text)
    if not text or not match:
        return None
    return sum(int(g) * unit for g, unit in zip(match.groups(), _PROM_UNITS_NS, strict=True) if g)


def go_duration_string(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``8.64s``, ``24h0m0s``, ``1m0s``, ``500ms``, ``0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < NANOS_PER_SECOND:
        for scale, unit in ((1, "ns"), (1_000, "µs"), (1_000_000, "ms")):
            if u < scale * 1000:
                return sign + _fraction(u, scale) + unit
    seconds = u // NANOS_PER_SECOND
    fraction = _fraction(u, NANOS_PER_SECOND)[len(str(seconds)) :]  # ".64" or ""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}{fraction}s"
    if minutes:
        return f"{sign}{minutes}m{secs}{fraction}s"
    return f"{sign}{secs}{fraction}s"


def _fraction(value: int, scale: int) -> str:
    whole, frac = divmod(value, scale)
    if not frac:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def parse_timestamp(text: str) -> int:
    """A Tempo ``start``/``end`` value in unix ns; raises ValueError with Go's wording."""
    if "." in text:
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            whole = math.floor(seconds)
            millis = round((seconds - whole) * 1000)
            return whole * NANOS_PER_SECOND + millis * 1_000_000
    if re.fullmatch(r"[+-]?\d+", text):
        value = int(text)
        return value * NANOS_PER_SECOND if len(text) <= 10 else value
    match = _RFC3339.fullmatch(text)
    if not match:
        raise ValueError(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac = (match.group(7) or "").ljust(9, "0")
    zone = match.group(8)
    offset = (
        timedelta(0)
        if zone in ("Z", "z")
        else timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * (1 if zone[0] == "+" else -1)
    )
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    return int(moment.timestamp()) * NANOS_PER_SECOND + int(frac)


def default_step_ns(start_ns: int, end_ns: int) -> int:
    """Tempo's ``DefaultQueryRangeStep``: about 240 points, rounded down to 5 s, at least 1 s."""
    baseline = (end_ns - start_ns) // 240
    step = baseline // (5 * NANOS_PER_SECOND) * (5 * NANOS_PER_SECOND)
    if step < 5 * NANOS_PER_SECOND:
        step = baseline // NANOS_PER_SECOND * NANOS_PER_SECOND
    return max(step, NANOS_PER_SECOND)


# --------------------------------------------------------------------------------------
# TraceQL subset: tokens
# --------------------------------------------------------------------------------------


class TraceQLError(Exception):
    """A query Tempo would refuse; ``str()`` is Tempo's message."""


class TraceQLSyntaxError(TraceQLError):
    """Tempo's ``parse error at line L, col C: syntax error: unexpected X``."""

    def __init__(self, token: _Token | None, unexpected: str) -> None:
        where = f"at line {token.line}, col {token.col}" if token else ""
        super().__init__(f"parse error {where}: syntax error: unexpected {unexpected}")


class NotAMetricsQueryError(TraceQLError):
    """A valid TraceQL search query handed to a metrics endpoint."""

    def __init__(self) -> None:
        super().__init__("not a metrics query")


class UnsupportedQueryError(TraceQLError):
    """Valid (or maybe valid) TraceQL the double does not implement: said plainly, never faked."""

    def __init__(self, what: str) -> None:
        super().__init__(UNSUPPORTED + what)


@dataclass(frozen=True)
class _Token:
    kind: str  # punctuation itself, or IDENT STRING INT FLOAT DURATION ATTR EOF
    text: str
    line: int
    col: int
    value: Any = None

    def display(self) -> str:
        """The token as goyacc names it in 'unexpected X'."""
        if self.kind == "IDENT":
            return self.text.upper().replace(":", "_") if self.text in _KEYWORDS else "IDENTIFIER"
        if self.kind == "ATTR":
            return {"span": "SPAN_DOT", "resource": "RESOURCE_DOT"}.get(self.value[0], "DOT")
        return {
            "STRING": "STRING",
            "INT": "INTEGER",
            "FLOAT": "FLOAT",
            "DURATION": "DURATION",
            "EOF": "$end",
        }.get(self.kind, self.kind)


_METRICS_FUNCTIONS = {
    "rate": 0,
    "count_over_time": 0,
    "sum_over_time": 1,
    "avg_over_time": 1,
    "min_over_time": 1,
    "max_over_time": 1,
    "histogram_over_time": 1,
    "quantile_over_time": 1,
}
_SECOND_STAGE = {"topk", "bottomk"}
_INTRINSICS = {
    "name": "name",
    "duration": "duration",
    "status": "status",
    "kind": "kind",
    "span:name": "name",
    "span:duration": "duration",
    "span:status": "status",
    "span:kind": "kind",
}
_STATUS_LITERALS = {"ok", "error", "unset"}
_KIND_LITERALS = {"unspecified", "internal", "server", "client", "producer", "consumer"}
_UNSUPPORTED_STAGES = {"select", "coalesce", "by", "count", "avg", "min", "max", "sum", "compare"}
_UNSUPPORTED_INTRINSICS = {
    "parent", "childCount", "rootName", "rootServiceName", "traceDuration", "nestedSetLeft",
    "trace:duration", "trace:rootName", "trace:rootService", "trace:id", "span:id",
    "span:parentID", "event:name", "link:traceID", "instrumentation:name",
}  # fmt: skip
_KEYWORDS = (
    set(_METRICS_FUNCTIONS) | _SECOND_STAGE | set(_INTRINSICS) | _STATUS_LITERALS
    | _KIND_LITERALS | _UNSUPPORTED_STAGES | _UNSUPPORTED_INTRINSICS
    | {"with", "nil", "true", "false"}
)  # fmt: skip
_PUNCTUATION = [
    "&&", "||", "!=", "!~", "=~", "<=", ">=", ">>", "<<", "&>", "{", "}", "(", ")", "|", "=",
    "<", ">", "!", ",", "~", "+", "-", "*", "/", "%", "^",
]  # fmt: skip
_ATTRIBUTE_END = set(" \t\r\n{}()=~!<>&|^,")
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DURATION_LITERAL = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z_][A-Za-z0-9_]*)?")


def tokenize(query: str) -> list[_Token]:
    """Split a query into tokens carrying their 1-based line and column."""
    tokens: list[_Token] = []
    pos, line, line_start = 0, 1, 0
    while True:
        while pos < len(query) and query[pos] in " \t\r\n":
            if query[pos] == "\n":
                line, line_start = line + 1, pos + 1
            pos += 1
        col = pos - line_start + 1
        if pos >= len(query):
            tokens.append(_Token("EOF", "", line, col))
            return tokens
        token, pos = _next_token(query, pos, line, col)
        tokens.append(token)


def _next_token(query: str, pos: int, line: int, col: int) -> tuple[_Token, int]:
    char = query[pos]
    if char in '"`':
        end = pos + 1
        chars: list[str] = []
        while end < len(query) and query[end] != char:
            if char == '"' and query[end] == "\\" and end + 1 < len(query):
                end += 1
                chars.append({"n": "\n", "t": "\t"}.get(query[end], query[end]))
            else:
                chars.append(query[end])
            end += 1
        if end >= len(query):
            raise TraceQLSyntaxError(_Token("EOF", "", line, col), "$end")
        return _Token("STRING", query[pos : end + 1], line, col, "".join(chars)), end + 1
    if duration := _DURATION_LITERAL.match(query, pos):
        ns = parse_go_duration(duration.group())
        return _Token("DURATION", duration.group(), line, col, ns), duration.end()
    if (number := _NUMBER.match(query, pos)) and (char.isdigit() or query[pos + 1 :][:1].isdigit()):
        text = number.group()
        is_float = any(c in text for c in ".eE")
        kind, value = ("FLOAT", float(text)) if is_float else ("INT", int(text))
        return _Token(kind, text, line, col, value), number.end()
    if char == ".":
        name, end = _attribute_name(query, pos + 1)
        return _Token("ATTR", query[pos:end], line, col, ("", name)), end
    if ident := _IDENT.match(query, pos):
        word = ident.group()
        if word in ("span", "resource") and query[ident.end() : ident.end() + 1] == ".":
            name, end = _attribute_name(query, ident.end() + 1)
            return _Token("ATTR", query[pos:end], line, col, (word, name)), end
        if (
            word in ("event", "link", "instrumentation", "parent", "trace")
            and query[ident.end() : ident.end() + 1] == "."
        ):
            raise UnsupportedQueryError(f"the {word}. attribute scope")
        return _Token("IDENT", word, line, col), ident.end()
    for punct in _PUNCTUATION:
        if query.startswith(punct, pos):
            return _Token(punct, punct, line, col), pos + len(punct)
    return _Token(char, char, line, col), pos + 1


def _attribute_name(query: str, pos: int) -> tuple[str, int]:
    if query[pos : pos + 1] == '"':
        end = query.find('"', pos + 1)
        if end < 0:
            raise UnsupportedQueryError("an unterminated quoted attribute name")
        return query[pos + 1 : end], end + 1
    end = pos
    while end < len(query) and query[end] not in _ATTRIBUTE_END:
        end += 1
    return query[pos:end], end


# --------------------------------------------------------------------------------------
# TraceQL subset: syntax tree and parser
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """An attribute (``span.x``, ``resource.x``, unscoped ``.x``) or an intrinsic (``name``)."""

    text: str  # as Tempo names the label: span.gen_ai.request.model, .service.name, name
    scope: Literal["span", "resource", "", "intrinsic"]
    name: str

    def lookup(self, span: Span) -> Any:
        """The span's value for this field; None when the span has none (TraceQL nil)."""
        if self.scope == "intrinsic":
            return _intrinsic(span, self.name)
        if self.scope == "span":
            return span.attributes.get(self.name)
        if self.scope == "resource":
            return span.resource.get(self.name)
        value = span.attributes.get(self.name)
        return value if value is not None else span.resource.get(self.name)


@dataclass(frozen=True)
class _Duration:
    ns: int


@dataclass(frozen=True)
class _Enum:
    kind: Literal["status", "kind"]
    value: str


_NIL = object()


def _intrinsic(span: Span, name: str) -> Any:
    if name == "name":
        return span.name
    if name == "duration":
        return _Duration(span.duration_ns)
    if name == "status":
        return _Enum("status", span.status)
    return _Enum("kind", span.kind)


@dataclass(frozen=True)
class Comparison:
    """``lhs op rhs`` between fields and literals."""

    op: str
    lhs: Field | Any
    rhs: Field | Any


@dataclass(frozen=True)
class Logical:
    """``lhs && rhs`` or ``lhs || rhs`` (same precedence, left to right, as in Tempo's grammar)."""

    op: Literal["&&", "||"]
    lhs: Condition
    rhs: Condition


@dataclass(frozen=True)
class Not:
    """``!cond``."""

    operand: Condition


@dataclass(frozen=True)
class Constant:
    """``true``/``false``, and the empty filter ``{ }``."""

    value: bool


Condition: TypeAlias = Comparison | Logical | Not | Constant


@dataclass(frozen=True)
class MetricsQuery:
    """A parsed ``{ filter } | function(args) by (fields) | topk(n)``."""

    conditions: tuple[Condition, ...]  # one per spanset filter, all must hold
    function: str
    argument: Field | None = None
    quantiles: tuple[float, ...] = ()
    by: tuple[Field, ...] = ()
    second_stage: tuple[str, int] | None = None
    exemplars: bool = True  # with(exemplars=false) turns them off

    def matches(self, span: Span) -> bool:
        """Does the span pass every spanset filter?"""
        return all(_holds(c, span) for c in self.conditions)


class _Parser:
    """Recursive descent over the token list; errors name the token where goyacc would."""

    def __init__(self, query: str) -> None:
        self.tokens = tokenize(query)
        self.pos = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def fail(self) -> TraceQLSyntaxError:
        token = self.current
        at_start_of_empty = token.kind == "EOF" and len(self.tokens) == 1
        return TraceQLSyntaxError(None if at_start_of_empty else token, token.display())

    def expect(self, kind: str) -> _Token:
        if self.current.kind != kind:
            raise self.fail()
        return self.advance()

    def is_word(self, *words: str) -> bool:
        return self.current.kind == "IDENT" and self.current.text in words

    # query := filter ('|' filter)* '|' metrics [ '|' topk(n) ] [ with(...) ]
    def parse(self) -> MetricsQuery:
        conditions = [self.spanset_filter()]
        metrics: MetricsQuery | None = None
        while self.current.kind == "|":
            self.advance()
            if metrics is None and self.current.kind == "{":
                conditions.append(self.spanset_filter())
            elif metrics is None and self.is_word(*_METRICS_FUNCTIONS):
                metrics = self.metrics_function(tuple(conditions))
            elif (
                metrics is not None
                and metrics.second_stage is None
                and self.is_word(*_SECOND_STAGE)
            ):
                metrics = self.second_stage(metrics)
            elif self.is_word(*_UNSUPPORTED_STAGES):
                raise UnsupportedQueryError(f"the pipeline stage '{self.current.text}'")
            else:
                raise self.fail()
        if metrics is not None and self.is_word("with"):
            hints = self.hints()
            exemplars = hints.pop("exemplars", True)
            if not isinstance(exemplars, bool):
                raise UnsupportedQueryError("with(exemplars=...) other than true or false")
            metrics = replace(metrics, exemplars=exemplars)  # other hints: nothing to model
        if self.current.kind != "EOF":
            raise self.fail()
        if metrics is None:
            raise NotAMetricsQueryError()
        return metrics

    def spanset_filter(self) -> Condition:
        self.expect("{")
        if self.current.kind == "}":
            self.advance()
            return Constant(True)
        condition = self.condition()
        self.expect("}")
        return condition

    def condition(self) -> Condition:
        node = self.unary()
        while self.current.kind in ("&&", "||"):
            op: Literal["&&", "||"] = "&&" if self.advance().kind == "&&" else "||"
            node = Logical(op, node, self.unary())
        return node

    def unary(self) -> Condition:
        if self.current.kind == "!":
            self.advance()
            return Not(self.unary())
        if self.current.kind == "(":
            self.advance()
            inner = self.condition()
            self.expect(")")
            return inner
        lhs = self.operand()
        if self.current.kind in ("=", "!=", "<", "<=", ">", ">=", "=~", "!~"):
            op = self.advance().kind
            return Comparison(op, lhs, self.operand())
        if isinstance(lhs, bool):
            return Constant(lhs)
        if self.current.kind in ("+", "-", "*", "/", "%", "^"):
            raise UnsupportedQueryError("arithmetic in filters")
        raise UnsupportedQueryError("a field used alone as a condition")

    def operand(self) -> Any:
        token = self.current
        if token.kind == "ATTR":
            self.advance()
            scope, name = token.value
            return Field(token.text, scope, name)
        if token.kind in ("STRING", "INT", "FLOAT"):
            self.advance()
            return token.value
        if token.kind == "DURATION":
            self.advance()
            return _Duration(token.value)
        if token.kind == "-" and self.tokens[self.pos + 1].kind in ("INT", "FLOAT", "DURATION"):
            self.advance()
            value = self.operand()
            return _Duration(-value.ns) if isinstance(value, _Duration) else -value
        if token.kind == "IDENT":
            word = token.text
            if word in _INTRINSICS:
                self.advance()
                return Field(word, "intrinsic", _INTRINSICS[word])
            if word in ("true", "false"):
                self.advance()
                return word == "true"
            if word == "nil":
                self.advance()
                return _NIL
            if word in _STATUS_LITERALS:
                self.advance()
                return _Enum("status", word)
            if word in _KIND_LITERALS:
                self.advance()
                return _Enum("kind", word)
            if word in _UNSUPPORTED_INTRINSICS:
                raise UnsupportedQueryError(f"the intrinsic '{word}'")
        raise self.fail()

    def field(self) -> Field:
        token = self.current
        is_field = token.kind == "ATTR" or (token.kind == "IDENT" and token.text in _INTRINSICS)
        if token.kind == "IDENT" and token.text in _UNSUPPORTED_INTRINSICS:
            raise UnsupportedQueryError(f"the intrinsic '{token.text}'")
        if not is_field:
            raise self.fail()
        value = self.operand()
        assert isinstance(value, Field)
        return value

    def metrics_function(self, conditions: tuple[Condition, ...]) -> MetricsQuery:
        function = self.advance().text
        self.expect("(")
        argument: Field | None = None
        quantiles: list[float] = []
        if _METRICS_FUNCTIONS[function]:
            argument = self.field()
            while function == "quantile_over_time" and self.current.kind == ",":
                self.advance()
                quantiles.append(float(self.expect_number()))
        self.expect(")")
        by: list[Field] = []
        if self.is_word("by"):
            self.advance()
            self.expect("(")
            by.append(self.field())
            while self.current.kind == ",":
                self.advance()
                by.append(self.field())
            self.expect(")")
        if len(by) + (function in ("histogram_over_time", "quantile_over_time")) > 5:
            raise TraceQLError("too many group by attributes")  # maxGroupBys, not captured
        if any(f.scope == "intrinsic" and f.name != "name" for f in by):
            raise UnsupportedQueryError("by() on intrinsics other than name")
        return MetricsQuery(conditions, function, argument, tuple(quantiles), tuple(by))

    def expect_number(self) -> float:
        if self.current.kind not in ("INT", "FLOAT"):
            raise self.fail()
        return float(self.advance().value)

    def second_stage(self, metrics: MetricsQuery) -> MetricsQuery:
        function = self.advance().text
        self.expect("(")
        limit = self.expect("INT").value
        self.expect(")")
        return replace(metrics, second_stage=(function, limit))

    def hints(self) -> dict[str, Any]:
        """``with(name=value, ...)``: the hints by name."""
        self.advance()
        self.expect("(")
        hints = {}
        while True:
            name = self.expect("IDENT").text
            self.expect("=")
            hints[name] = self.operand()
            if self.current.kind != ",":
                break
            self.advance()
        self.expect(")")
        return hints


def parse_metrics_query(query: str) -> MetricsQuery:
    """Parse a TraceQL metrics query; raises a TraceQLError subclass with Tempo's message."""
    return _Parser(query).parse()


def _holds(condition: Condition, span: Span) -> bool:
    if isinstance(condition, Constant):
        return condition.value
    if isinstance(condition, Not):
        return not _holds(condition.operand, span)
    if isinstance(condition, Logical):
        if condition.op == "&&":
            return _holds(condition.lhs, span) and _holds(condition.rhs, span)
        return _holds(condition.lhs, span) or _holds(condition.rhs, span)
    lhs = condition.lhs.lookup(span) if isinstance(condition.lhs, Field) else condition.lhs
    rhs = condition.rhs.lookup(span) if isinstance(condition.rhs, Field) else condition.rhs
    return _compare(condition.op, lhs, rhs)


def _compare(op: str, lhs: Any, rhs: Any) -> bool:
    """TraceQL comparison: nil only equals nil, mismatched types never match."""
    if lhs is _NIL or rhs is _NIL:
        present = rhs if lhs is _NIL else lhs
        if op == "=":
            return present is None or present is _NIL
        if op == "!=":
            return present is not None and present is not _NIL
        return False
    if lhs is None or rhs is None:
        return False
    if op in ("=~", "!~"):
        if not (isinstance(lhs, str) and isinstance(rhs, str)):
            return False
        return (re.fullmatch(rhs, lhs) is not None) == (op == "=~")
    if _is_number(lhs) and _is_number(rhs):
        pass
    elif isinstance(lhs, _Duration) and isinstance(rhs, _Duration):
        lhs, rhs = lhs.ns, rhs.ns
    elif type(lhs) is not type(rhs) or (not isinstance(lhs, str) and op not in ("=", "!=")):
        return False  # mismatched types; bools and enums only compare for equality
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: bool(a == b),
        "!=": lambda a, b: bool(a != b),
        "<": lambda a, b: bool(a < b),
        "<=": lambda a, b: bool(a <= b),
        ">": lambda a, b: bool(a > b),
        ">=": lambda a, b: bool(a >= b),
    }
    return comparisons[op](lhs, rhs)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The time slots of an evaluation: range buckets (t-step, t], or one instant window."""

    start_ns: int  # exclusive
    end_ns: int  # inclusive
    step_ns: int
    instant: bool

    @property
    def size(self) -> int:
        if self.instant:
            return 1
        return max(0, (self.end_ns - self.start_ns) // self.step_ns)

    def index(self, ts_ns: int) -> int | None:
        if not self.start_ns < ts_ns <= self.end_ns:
            return None
        return 0 if self.instant else (ts_ns - self.start_ns - 1) // self.step_ns

    def timestamp_ms(self, index: int) -> int:
        return (self.start_ns + (index + 1) * self.step_ns) // 1_000_000


Labels: TypeAlias = tuple[tuple[str, Any], ...]


@dataclass
class _Series:
    labels: Labels
    values: list[float]


def evaluate(
    query: MetricsQuery, spans: Iterable[Span], grid: _Grid, rate_seconds: float
) -> tuple[list[_Series], int]:
    """Run a metrics query over spans; returns the series and the number of matched spans."""
    histogram = query.function in ("histogram_over_time", "quantile_over_time")
    cells: dict[tuple[Any, ...], list[list[Span]]] = {}
    matched = 0
    for span in spans:
        index = grid.index(span.start_ns)
        if index is None or not query.matches(span):
            continue
        matched += 1
        key = tuple(f.lookup(span) for f in query.by)
        if histogram:
            bucket = _log2_bucket(query.argument, span)
            if bucket is None:
                continue
            key += (bucket,)
        slots = cells.get(key)
        if slots is None:  # not setdefault: its default would be built for every span
            slots = cells[key] = [[] for _ in range(grid.size)]
        slots[index].append(span)

    if not query.by and not histogram:
        # Tempo's ungrouped aggregator exists before any span is seen.
        slots = cells.get((), [[] for _ in range(grid.size)])
        series = [_Series((("__name__", query.function),), _reduce(query, slots, rate_seconds))]
    else:
        series = [
            _Series(_labels_for(query, key, histogram), _reduce(query, slots, rate_seconds))
            for key, slots in cells.items()
        ]
    if query.function == "quantile_over_time":
        series = _quantiles(series, query.quantiles, grid.size)
    if query.second_stage:
        series = _top_or_bottom(series, *query.second_stage)
    return series, matched


def _reduce(query: MetricsQuery, slots: list[list[Span]], rate_seconds: float) -> list[float]:
    function = query.function
    if function in ("count_over_time", "histogram_over_time", "quantile_over_time"):
        return [float(len(slot)) for slot in slots]
    if function == "rate":
        return [len(slot) / rate_seconds for slot in slots]
    assert query.argument is not None
    values = []
    for slot in slots:
        numbers = [n for n in (_numeric(query.argument, s) for s in slot) if n is not None]
        if not numbers:
            values.append(math.nan)
        elif function == "sum_over_time":
            values.append(math.fsum(numbers) if len(numbers) > 1 else numbers[0])
        elif function == "avg_over_time":
            values.append(math.fsum(numbers) / len(numbers))
        elif function == "min_over_time":
            values.append(min(numbers))
        else:
            values.append(max(numbers))
    return values


def _numeric(argument: Field, span: Span) -> float | None:
    """Tempo's FloatizeAttribute: ints and floats count, strings, bools and nil do not."""
    value = argument.lookup(span)
    if isinstance(value, _Duration):
        return value.ns / NANOS_PER_SECOND
    return float(value) if _is_number(value) else None


def _log2_bucket(argument: Field | None, span: Span) -> float | None:
    """Tempo's histogram bucket: the next power of two of an int (durations in seconds)."""
    value = argument.lookup(span) if argument else None
    if isinstance(value, _Duration):
        return None if value.ns < 2 else float(1 << (value.ns - 1).bit_length()) / NANOS_PER_SECOND
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
        return float(1 << (value - 1).bit_length())
    return None  # floats are not bucketed by Tempo either


def _labels_for(query: MetricsQuery, key: tuple[Any, ...], histogram: bool) -> Labels:
    """Tempo's labelsFor: nil values are dropped; all nil gives the first label as "nil"."""
    labels: list[tuple[str, Any]] = [
        (f.text, value) for f, value in zip(query.by, key, strict=False) if value is not None
    ]
    if histogram:
        labels.append(("__bucket", key[-1]))
    if not labels:
        labels.append((query.by[0].text, None))
    return tuple(labels)


def _series_labels(query: MetricsQuery, key: tuple[Any, ...], histogram: bool) -> Labels:
    """The labels of a series by its key: ``__name__`` for an ungrouped one."""
    if not query.by and not histogram:
        return (("__name__", query.function),)
    return _labels_for(query, key, histogram)


def _quantiles(series: list[_Series], quantiles: Sequence[float], size: int) -> list[_Series]:
    groups: dict[Labels, list[_Series]] = {}
    for s in series:
        rest = tuple(label for label in s.labels if label[0] != "__bucket")
        groups.setdefault(rest, []).append(s)
    result = []
    for labels, members in groups.items():
        for q in quantiles:
            values = []
            for i in range(size):
                buckets = sorted((dict(m.labels)["__bucket"], m.values[i]) for m in members)
                values.append(_log2_quantile(q, buckets))
            result.append(_Series((*labels, ("p", q)), values))
    return result


def _log2_quantile(p: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Tempo's Log2Quantile: exponential interpolation inside power-of-two buckets."""
    total_count = int(sum(count for _, count in buckets))
    if math.isnan(p) or not 0 <= p <= 1 or not buckets or total_count == 0:
        return 0.0
    max_samples = max(1, math.ceil(p * total_count))
    total = 0
    index = 0
    for index, (bucket_max, count) in enumerate(buckets):  # noqa: B007
        if total + count > max_samples:
            break
        total += int(count)
        if total == max_samples:
            return bucket_max
    interpolation = (max_samples - total) / buckets[index][1]
    max_v = math.log2(buckets[index][0])
    min_v = math.log2(buckets[index - 1][0]) if index > 0 else max_v - 1
    return float(2 ** (min_v + (max_v - min_v) * interpolation))


def _top_or_bottom(series: list[_Series], function: str, limit: int) -> list[_Series]:
    """Tempo's topk/bottomk: at each timestamp keep the k largest (smallest) values."""
    size = max((len(s.values) for s in series), default=0)
    kept: dict[int, _Series] = {}
    for i in range(size):
        candidates = [(s.values[i], n) for n, s in enumerate(series) if not math.isnan(s.values[i])]
        candidates.sort(
            key=lambda c: (-c[0] if function == "topk" else c[0], _label_sort_key(series[c[1]]))
        )
        for _, n in candidates[:limit]:
            target = kept.setdefault(n, _Series(series[n].labels, [math.nan] * size))
            target.values[i] = series[n].values[i]
    return list(kept.values())


def _label_sort_key(series: _Series) -> tuple[tuple[str, str], ...]:
    return tuple((key, "" if value is None else repr(value)) for key, value in series.labels)


# --------------------------------------------------------------------------------------
# Exemplars (range queries only)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Trace:
    """The spans of one trace in one block, by start time."""

    trace_id: str
    spans: tuple[Span, ...]
    start_ns: int  # the first span's start
    end_ns: int  # the last span's end


class _Block:
    """Spans added together, stored like one Tempo block: traces sorted by trace ID, a time
    range in whole seconds (``meta.json``'s ``startTime`` and ``endTime``)."""

    def __init__(self, spans: Sequence[Span]) -> None:
        groups: dict[str, list[Span]] = {}
        for span in spans:
            groups.setdefault(span.trace_id, []).append(span)
        self.traces = [
            _Trace(
                trace_id,
                tuple(sorted(members, key=lambda s: s.start_ns)),
                min(s.start_ns for s in members),
                max(s.start_ns + s.duration_ns for s in members),
            )
            for trace_id, members in sorted(groups.items())
        ]
        self.start_ns = min(t.start_ns for t in self.traces)
        self.start_ns -= self.start_ns % NANOS_PER_SECOND
        self.end_ns = max(t.end_ns for t in self.traces)
        self.end_ns -= self.end_ns % NANOS_PER_SECOND
        self._by_start = sorted(self.traces, key=lambda t: t.start_ns)
        self._starts = [t.start_ns for t in self._by_start]
        self._longest = max(t.end_ns - t.start_ns for t in self.traces)

    def traces_overlapping(self, start_ns: int, end_ns: int) -> list[_Trace]:
        """The traces whose time range meets ``[start, end]``, by trace ID (the fetch
        layer's trace-level time filter)."""
        low = bisect.bisect_left(self._starts, start_ns - self._longest)
        high = bisect.bisect_right(self._starts, end_ns)
        found = [t for t in self._by_start[low:high] if t.end_ns >= start_ns]
        return sorted(found, key=lambda t: t.trace_id)


@dataclass(frozen=True)
class _Exemplar:
    """An exemplar on its way through the pipeline; ``value`` NaN until attached."""

    labels: tuple[tuple[str, Any], ...]
    value: float
    ts_ms: int


class _BucketSet:
    """traceql's limitedBucketSet: ``exemplars // 2`` equal slices of ``[start, end]``
    (milliseconds), at most two exemplars in each and ``exemplars`` in all."""

    def __init__(self, exemplars: int, start_ns: int, end_ns: int, step_ns: int) -> None:
        if exemplars > MAX_EXEMPLARS or exemplars <= 0:
            exemplars = MAX_EXEMPLARS
        self.size = max(exemplars // MAX_EXEMPLARS_PER_BUCKET, 1)
        self.max_total = exemplars
        self.start = _align_start(start_ns, end_ns, step_ns) // 1_000_000
        self.end = _align_end(self.start * 1_000_000, end_ns, step_ns) // 1_000_000
        self.width = max((self.end - self.start) // self.size, 1)
        self.counts = [0] * self.size
        self.total = 0

    def full(self) -> bool:
        return self.total >= self.max_total

    def add(self, ts_ms: int) -> bool:
        """Take an exemplar at ``ts_ms`` if there is room for it."""
        if self.full() or not self.start <= ts_ms <= self.end:
            return False
        i = min((ts_ms - self.start) // self.width, self.size - 1)
        if self.counts[i] >= MAX_EXEMPLARS_PER_BUCKET:
            return False
        self.counts[i] += 1
        self.total += 1
        return True


def _align_start(start_ns: int, end_ns: int, step_ns: int) -> int:
    """traceql's alignStart: down to a step, except for an instant range (one step)."""
    if end_ns - start_ns == step_ns:
        return start_ns
    return start_ns - start_ns % step_ns


def _align_end(start_ns: int, end_ns: int, step_ns: int) -> int:
    """traceql's alignEnd: up to a step, except for an instant range (one step)."""
    if end_ns - start_ns == step_ns or end_ns % step_ns == 0:
        return end_ns
    return end_ns + step_ns - end_ns % step_ns


def _exemplars_cutoff(start_ns: int, end_ns: int, limit: int, cutoff_ns: int) -> tuple[int, int]:
    """The sharder's exemplarsCutoff: (backend, recent) shares of ``limit``, in proportion
    to the query's time before and after ``cutoff`` (now - query_backend_after)."""
    after_start, after_end = max(start_ns, cutoff_ns), max(end_ns, cutoff_ns)
    if after_start >= after_end:
        return limit, 0
    if after_end - after_start >= end_ns - start_ns:
        return 0, limit
    share = math.ceil(limit * (after_end - after_start) / (end_ns - start_ns))
    if limit <= share:
        return 0, limit
    return limit - share, share


def _exemplars_for_block(block: _Block, exemplars: int, total_ns: int) -> int:
    """The sharder's exemplarsForBlock: a block's share of the backend exemplars, plus 20%."""
    if exemplars == 0 or total_ns <= 0:
        return 0
    share = (block.end_ns - block.start_ns) / total_ns * exemplars * BACKEND_EXEMPLAR_OVERHEAD
    return max(math.ceil(share), 1)


def _trim_to_block(start_ns: int, end_ns: int, step_ns: int, block: _Block) -> tuple[int, int, int]:
    """traceql.TrimToBlockOverlap: the part of the request a block's job reads."""
    was_instant = end_ns - start_ns == step_ns
    block_start = block.start_ns - 1
    block_end = block.end_ns + NANOS_PER_SECOND
    block_start = _align_start(block_start, block_end, step_ns)
    block_end = _align_end(block_start, block_end, step_ns)
    start_ns = max(start_ns, block_start)
    end_ns = min(end_ns, block_end)
    if was_instant:
        step_ns = end_ns - start_ns
    return start_ns, end_ns, step_ns


def _overlap(start_ns: int, end_ns: int, block: _Block) -> float:
    """timeRangeOverlap: the share of the block's time range the request covers."""
    low, high = max(start_ns, block.start_ns), min(end_ns, block.end_ns)
    if high <= low or block.end_ns == block.start_ns:
        return 0.0 if block.end_ns != block.start_ns else 1.0
    return (high - low) / (block.end_ns - block.start_ns)


class _ExemplarPicker:
    """Tempo 3.0.3's exemplar selection for one range query, step by step.

    The query-frontend splits the query at ``now - query_backend_after``: the recent part goes
    to the live store (one job over all its blocks), the older part to the backend (one job per
    block), and the ``limit`` exemplars are shared between the two parts in proportion to their
    time (each backend block gets its share of the older part's, plus 20%). A job walks the
    traces of its blocks in trace-ID order; each trace with a span matching the filter takes
    one of the job's exemplar slots, whether or not a span of it starts in the job's range (a
    block that the job's range covers by less than 20% is first narrowed to the traces that
    overlap it), and gives one exemplar: one of its matching spans in range, at random. A
    series keeps at most two exemplars per 1/50 of the job's range; an exemplar whose bucket
    has no value (a sum of no numbers) is dropped. The frontend then keeps, over all series,
    at most two per ``1/(limit/2)`` of the query's range and ``limit`` in all, jobs in order
    (recent first), series in label order.
    """

    def __init__(
        self, query: MetricsQuery, blocks: Sequence[_Block], grid: _Grid, seed: int
    ) -> None:
        self.query = query
        self.blocks = blocks
        self.grid = grid
        self.seed = seed
        self.histogram = query.function in ("histogram_over_time", "quantile_over_time")
        self.fields = _exemplar_fields(query)

    def pick(self, limit: int, cutoff_ns: int) -> list[tuple[tuple[Any, ...], _Exemplar]]:
        """The exemplars the frontend keeps, with the series key (by() values, bucket) of each."""
        grid = self.grid
        start, end, step = grid.start_ns, grid.end_ns, grid.step_ns
        backend, recent = _exemplars_cutoff(start, end, limit, cutoff_ns)
        answers: list[dict[tuple[Any, ...], list[_Exemplar]]] = []
        if cutoff_ns < end:
            answers.append(self._job(self.blocks, max(start, cutoff_ns), end, step, recent))
        backend_end = min(end, cutoff_ns)
        if start < backend_end:
            blocks = [b for b in self.blocks if b.start_ns <= backend_end and b.end_ns >= start]
            total = sum(b.end_ns - b.start_ns for b in blocks)
            for block in blocks:
                job_start, job_end, job_step = _trim_to_block(start, backend_end, step, block)
                if job_start < job_end and job_step > 0:
                    cap = _exemplars_for_block(block, backend, total)
                    answers.append(self._job([block], job_start, job_end, job_step, cap))
        return self._combine(answers, limit)

    def _job(
        self, blocks: Sequence[_Block], start: int, end: int, step: int, cap: int
    ) -> dict[tuple[Any, ...], list[_Exemplar]]:
        """One querier job: its series' exemplars, in the order they were observed."""
        kept: dict[tuple[Any, ...], list[_Exemplar]] = {}
        if cap <= 0:
            return kept
        buckets: dict[tuple[Any, ...], _BucketSet] = {}
        seen: set[str] = set()
        for block in blocks:
            overlap = _overlap(start, end, block)
            if overlap == 0:
                continue
            traces = (
                block.traces_overlapping(start, end) if overlap < TIME_OVERLAP_CUTOFF
                else block.traces
            )
            for trace in traces:
                matching = [s for s in trace.spans if self.query.matches(s)]
                if not matching or trace.trace_id in seen:
                    continue
                if len(seen) >= cap:
                    return kept
                seen.add(trace.trace_id)
                valid = [s for s in matching if start < s.start_ns <= end]
                if not valid:
                    continue
                rng = random.Random(f"{self.seed}/{trace.trace_id}/{start}")
                span = valid[rng.randrange(len(valid))]
                key = self._series_key(span)
                if key is None:
                    continue
                ts_ms = span.start_ns // 1_000_000
                bucket_set = buckets.get(key)
                if bucket_set is None:
                    bucket_set = buckets[key] = _BucketSet(MAX_EXEMPLARS, start, end, step)
                if not bucket_set.add(ts_ms) or self._bucket_is_nan(key, ts_ms, start, end, step):
                    continue
                kept.setdefault(key, []).append(
                    _Exemplar(self._labels(span), self._value(span), ts_ms)
                )
        return kept

    def _combine(
        self, answers: Sequence[Mapping[tuple[Any, ...], list[_Exemplar]]], limit: int
    ) -> list[tuple[tuple[Any, ...], _Exemplar]]:
        """The frontend's combiner: one bucket set for the query (per series for quantiles)."""
        grid = self.grid
        shared_limit = MAX_EXEMPLARS if self.query.function == "avg_over_time" else limit
        shared = _BucketSet(shared_limit, grid.start_ns, grid.end_ns, grid.step_ns)
        per_series: dict[tuple[Any, ...], _BucketSet] = {}
        kept = []
        for answer in answers:
            for key in sorted(answer, key=self._series_order):
                bucket_set = shared
                if self.query.function == "quantile_over_time":
                    bucket_set = per_series.setdefault(
                        key[:-1], _BucketSet(limit, grid.start_ns, grid.end_ns, grid.step_ns)
                    )
                for exemplar in answer[key]:
                    if bucket_set.full():
                        break
                    if bucket_set.add(exemplar.ts_ms):
                        kept.append((key, exemplar))
        return kept

    def _series_order(self, key: tuple[Any, ...]) -> tuple[tuple[str, str], ...]:
        return _label_sort_key(_Series(_series_labels(self.query, key, self.histogram), []))

    def _series_key(self, span: Span) -> tuple[Any, ...] | None:
        key = tuple(f.lookup(span) for f in self.query.by)
        if self.histogram:
            bucket = _log2_bucket(self.query.argument, span)
            if bucket is None:
                return None
            key += (bucket,)
        return key

    def _labels(self, span: Span) -> tuple[tuple[str, Any], ...]:
        """``trace:id`` (hex, leading zeros dropped) and the attributes the query read."""
        labels: list[tuple[str, Any]] = [("trace:id", span.trace_id.lstrip("0"))]
        for name, field_ in self.fields:
            value = field_.lookup(span)
            if value is not None:
                labels.append((name, value))
        return tuple(labels)

    def _value(self, span: Span) -> float:
        """The aggregated attribute (0 when it is not a number); NaN for counts, attached at
        the end from the series' sample."""
        if self.query.argument is None or self.query.function == "histogram_over_time":
            return math.nan
        number = _numeric(self.query.argument, span)
        return 0.0 if number is None else number

    def _bucket_is_nan(
        self, key: tuple[Any, ...], ts_ms: int, start: int, end: int, step: int
    ) -> bool:
        """Whether the job's series has no value in the exemplar's bucket (ToProto drops it)."""
        aligned = _align_start(start, end, step)
        ts_ns = ts_ms * 1_000_000
        if ts_ns <= aligned or ts_ns > _align_end(aligned, end, step):
            return True
        if self.query.function not in ("sum_over_time", "avg_over_time", "min_over_time",
                                       "max_over_time"):
            return False
        index = (ts_ns - aligned - 1) // step
        low = max(start, aligned + index * step)
        high = min(end, aligned + (index + 1) * step)
        assert self.query.argument is not None
        for block in self.blocks:
            for trace in block.traces_overlapping(low, high):
                for span in trace.spans:
                    if (low < span.start_ns <= high and self.query.matches(span)
                            and self._series_key(span) == key
                            and _numeric(self.query.argument, span) is not None):
                        return False
        return True


def _exemplar_fields(query: MetricsQuery) -> list[tuple[str, Field]]:
    """The attributes a query reads (filters, by(), argument), named as exemplar labels."""
    found: list[Field] = []

    def walk(node: Any) -> None:
        if isinstance(node, Field):
            found.append(node)
        elif isinstance(node, Comparison | Logical):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, Not):
            walk(node.operand)

    for condition in query.conditions:
        walk(condition)
    found += query.by
    if query.argument is not None:
        found.append(query.argument)
    named: dict[str, Field] = {}
    for f in found:
        named.setdefault(f.name if f.scope == "intrinsic" else f.text, f)
    return list(named.items())


def _exemplar_label_value(value: Any) -> dict[str, Any]:
    if isinstance(value, _Duration):
        return {"stringValue": go_duration_string(value.ns)}
    return _any_value(value)


# --------------------------------------------------------------------------------------
# JSON rendering, Tempo style
# --------------------------------------------------------------------------------------


def _any_value(value: Any) -> dict[str, Any]:
    """An OTLP AnyValue in protobuf JSON: int64 as a string, nil as the string "nil"."""
    if value is None:
        return {"stringValue": "nil"}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, _Enum):
        return {"stringValue": value.value}
    return {"stringValue": str(value)}


def _render_labels(labels: Labels) -> list[dict[str, Any]]:
    return [{"key": key, "value": _any_value(value)} for key, value in labels]


def _render_exemplar(exemplar: _Exemplar) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "labels": [
            {"key": key, "value": _exemplar_label_value(value)} for key, value in exemplar.labels
        ]
    }
    if math.isnan(exemplar.value):
        entry["value"] = "NaN"  # protobuf JSON's NaN: a value never attached to a sample
    else:
        _with_value(entry, exemplar.value)
    entry["timestampMs"] = str(exemplar.ts_ms)
    return entry


def _with_value(entry: dict[str, Any], value: float) -> dict[str, Any]:
    if value != 0:  # proto3 JSON omits zero values
        entry["value"] = value
    return entry


def _go_float(value: float) -> str:
    """A float as Go's encoding/json writes it (1024, 0.0000622, 1e-7, 1e+21)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(text), "f")
    exp = int(exponent)
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp)}"


def _go_json(payload: Any) -> str:
    if isinstance(payload, dict):
        items = (f"{json.dumps(k)}:{_go_json(v)}" for k, v in payload.items())
        return "{" + ",".join(items) + "}"
    if isinstance(payload, list | tuple):
        return "[" + ",".join(_go_json(v) for v in payload) + "]"
    if isinstance(payload, float):
        return _go_float(payload)
    return json.dumps(payload, ensure_ascii=False)


# --------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


class _BadRequestError(Exception):
    """A request Tempo answers with 400 and this message."""


class TempoDouble:
    """An in-memory Tempo answering TraceQL metrics queries over HTTP like Tempo 3.0.3.

    ``clock`` gives the double's wall time (unix seconds): the 30 s ``query_end_cutoff``,
    ``since=``, the split of range queries at ``query_backend_after`` and the ``Date`` header
    of every HTTP answer are relative to it. ``require_tenant`` makes it multi-tenant: requests
    without ``X-Scope-OrgID`` get 401 ``no org id``, another tenant sees no spans.
    ``max_duration_overrides`` are per-tenant ``max_metrics_duration`` overrides (tenant as in
    ``X-Scope-OrgID``, ``single-tenant`` without it; 0 means "use ``max_duration``").
    ``max_intervals`` is ``query_frontend.metrics.max_intervals`` (0: no limit),
    ``max_exemplars`` ``query_frontend.metrics.max_exemplars``; ``exemplar_seed`` seeds the
    random pick of a trace's exemplar span.
    """

    def __init__(
        self,
        spans: Iterable[Span] = (),
        *,
        clock: Callable[[], float] = time.time,
        query_end_cutoff: float = 30.0,
        max_duration: float = 86400.0,
        max_duration_overrides: Mapping[str, float] | None = None,
        max_intervals: int = MAX_INTERVALS,
        max_exemplars: int = DEFAULT_MAX_EXEMPLARS,
        query_backend_after: float = DEFAULT_QUERY_BACKEND_AFTER,
        require_tenant: str | None = None,
        exemplar_seed: int = 0,
    ) -> None:
        self._spans: list[Span] = []
        self._blocks: list[_Block] = []
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self._stopped = False
        self.clock = clock
        self.query_end_cutoff_ns = round(query_end_cutoff * NANOS_PER_SECOND)
        self.max_duration_ns = round(max_duration * NANOS_PER_SECOND)
        self.max_duration_overrides_ns = {
            tenant: round(seconds * NANOS_PER_SECOND)
            for tenant, seconds in (max_duration_overrides or {}).items()
        }
        self.max_intervals = max_intervals
        self.max_exemplars = max_exemplars
        self.query_backend_after_ns = round(query_backend_after * NANOS_PER_SECOND)
        self.exemplar_seed = exemplar_seed
        self.require_tenant = require_tenant
        self.requests: list[RecordedRequest] = []
        self.add_spans(spans)

    # -- data and faults -------------------------------------------------------------

    def add_spans(self, spans: Iterable[Span]) -> None:
        """Make spans queryable (subject to the end cutoff, like freshly ingested ones).

        The spans of one call form one block, as a push that Tempo flushes together: the
        exemplars of range queries are picked block by block, traces in trace-ID order.
        """
        new = list(spans)
        if not new:
            return
        block = _Block(new)
        with self._lock:
            self._spans.extend(new)
            self._spans.sort(key=lambda s: s.start_ns)
            self._blocks.append(block)

    @property
    def spans(self) -> list[Span]:
        """A snapshot of the stored spans, by start time."""
        with self._lock:
            return list(self._spans)

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each of the next requests gets one, in order, instead of an answer."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """Faults queued and not yet served."""
        with self._lock:
            return len(self._faults)

    # -- request handling ------------------------------------------------------------

    def handle(
        self, path: str, params: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> Response:
        """Answer one request synchronously.

        A queued ``Response`` fault is returned instead of the answer; a queued ``Hang`` or
        ``CloseConnection`` raises ``InjectedFaultError`` (``transport()`` and the HTTP server
        act those out).
        """
        headers = dict(headers or {})
        self._record(path, params, headers)
        fault = self._next_fault()
        if isinstance(fault, Response):
            return fault
        if fault is not None:
            raise InjectedFaultError(fault)
        return self._answer(path, params, headers)

    async def serve(
        self, path: str, params: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> Response:
        """Answer one request as the HTTP server does, acting out the next queued fault.

        ``Hang`` waits (until ``stop()`` at the latest) and then answers normally;
        ``CloseConnection`` raises ``InjectedFaultError`` for the transport to drop the line.
        """
        headers = dict(headers or {})
        self._record(path, params, headers)
        fault = self._next_fault()
        if isinstance(fault, Response):
            return fault
        if isinstance(fault, CloseConnection):
            raise InjectedFaultError(fault)
        if isinstance(fault, Hang):
            deadline = time.monotonic() + fault.seconds
            # A plain flag, not an asyncio.Event: one double may serve several event loops.
            while not self._stopped and (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(min(left, 0.02))
        return self._answer(path, params, headers)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, path: str, params: Mapping[str, str], headers: Mapping[str, str]) -> None:
        request = RecordedRequest(path, dict(params), dict(headers), self.clock())
        with self._lock:
            self.requests.append(request)

    def _answer(self, path: str, params: Mapping[str, str], headers: Mapping[str, str]) -> Response:
        routes: dict[str, Callable[[Mapping[str, str], Mapping[str, str]], Response]] = {
            "/api/metrics/query": self._instant,
            "/api/metrics/query_range": self._range,
            "/api/status/buildinfo": lambda _p, _h: Response.json(
                {"version": TEMPO_VERSION, "revision": "tempo-double", "branch": "double"}
            ),
            "/status/config": lambda _p, _h: Response(200, TEXT, self._config_yaml().encode()),
            "/ready": lambda _p, _h: Response.text(200, "ready"),
            "/api/echo": lambda _p, _h: Response.text(200, "echo"),
        }
        route = routes.get(path)
        if route is None:
            return Response.text(404, "404 page not found\n")
        needs_tenant = path.startswith("/api/metrics/") and self.require_tenant is not None
        if needs_tenant and not _header(headers, "X-Scope-OrgID"):
            return Response.text(401, "no org id\n")
        try:
            return route(params, headers)
        except _BadRequestError as error:
            return Response.text(400, str(error))

    def _visible_spans(self, headers: Mapping[str, str]) -> list[Span]:
        if not self._sees_spans(headers):
            return []
        return self.spans

    def _visible_blocks(self, headers: Mapping[str, str]) -> list[_Block]:
        if not self._sees_spans(headers):
            return []
        with self._lock:
            return list(self._blocks)

    def _sees_spans(self, headers: Mapping[str, str]) -> bool:
        tenant = _header(headers, "X-Scope-OrgID")
        return self.require_tenant is None or tenant == self.require_tenant

    def date_header(self) -> str:
        """The ``Date`` header of an answer given now, by the double's clock (RFC 7231)."""
        return email.utils.formatdate(self.clock(), usegmt=True)

    def _now_ns(self) -> int:
        return round(self.clock() * NANOS_PER_SECOND)

    def _bounds(self, params: Mapping[str, str], now_ns: int) -> tuple[int, int]:
        """Tempo's determineBounds: end defaults to now, start to min(end, now) - since."""
        since_ns = DEFAULT_SINCE_NS
        if since := params.get("since"):
            parsed = parse_prom_duration(since)
            if parsed is None:
                raise _rpc_error(
                    f"could not parse 'since' parameter: not a valid duration string: \"{since}\""
                )
            since_ns = parsed
        try:
            end_ns = parse_timestamp(params["end"]) if params.get("end") else now_ns
        except ValueError as error:
            raise _rpc_error(f"could not parse 'end' parameter: {error}") from None
        try:
            start_ns = (
                parse_timestamp(params["start"])
                if params.get("start")
                else min(end_ns, now_ns) - since_ns
            )
        except ValueError as error:
            raise _rpc_error(f"could not parse 'start' parameter: {error}") from None
        return start_ns, end_ns

    @staticmethod
    def _query_text(params: Mapping[str, str]) -> str:
        return params["query"] if "query" in params else params.get("q", "")

    def _range(self, params: Mapping[str, str], headers: Mapping[str, str]) -> Response:
        now_ns = self._now_ns()
        start_ns, end_ns = self._bounds(params, now_ns)
        if step_text := params.get("step"):
            step_ns = _parse_step(step_text)
        else:
            step_ns = default_step_ns(start_ns, end_ns)
        if start_ns > end_ns:
            raise _BadRequestError("end must be greater than start")
        limit = self.max_intervals
        if limit and (step_ns <= 0 or (end_ns - start_ns) // step_ns > limit):
            raise _BadRequestError(
                f"step of {go_duration_string(step_ns)} is too small, minimum step for given "
                f"range is {go_duration_string((end_ns - start_ns) // limit)}"
            )
        if step_ns <= 0:  # not captured: Tempo's sharder refuses it when max_intervals is 0
            raise _BadRequestError("step must be greater than 0")
        exemplars = self._exemplars_param(params)
        query = self._parse(params, prefix="")

        # traceql.AlignRequest: start down, end up, then one extra bucket before start
        aligned_start = start_ns - start_ns % step_ns
        aligned_end = end_ns if end_ns % step_ns == 0 else end_ns + step_ns - end_ns % step_ns
        if aligned_start > step_ns:
            aligned_start -= step_ns
        # query_end_cutoff: clamp end, realigned to the left
        max_end = now_ns - self.query_end_cutoff_ns
        if max_end < aligned_end:
            aligned_end = max_end - max_end % step_ns
        self._check_max_duration(aligned_end - aligned_start, headers)

        grid = _Grid(aligned_start, aligned_end, step_ns, instant=False)
        series, matched = evaluate(
            query, self._visible_spans(headers), grid, step_ns / NANOS_PER_SECOND
        )
        picked = self._pick_exemplars(query, grid, series, exemplars, now_ns, headers)
        rendered = []
        for s in sorted(series, key=_label_sort_key):
            entry: dict[str, Any] = {
                "labels": _render_labels(s.labels),
                "samples": [
                    _with_value({"timestampMs": str(grid.timestamp_ms(i))}, v)
                    for i, v in enumerate(s.values)
                    if not math.isnan(v)
                ],
            }
            if picked.get(s.labels):
                entry["exemplars"] = [_render_exemplar(e) for e in picked[s.labels]]
            rendered.append(entry)
        rendered = [s for s in rendered if s["samples"]]
        body: dict[str, Any] = {"series": rendered, "metrics": _metrics(matched)}
        max_series = int(params.get("maxSeries") or 0)
        if 0 < max_series < len(rendered):
            body["series"] = rendered[:max_series]
            body["status"] = "PARTIAL"
            body["message"] = (
                f"Response exceeds maximum series limit of {max_series}, a partial response "
                "is returned. Warning: the accuracy of each individual value is not guaranteed."
            )
        return Response.json(body)

    def _pick_exemplars(
        self, query: MetricsQuery, grid: _Grid, series: Sequence[_Series], limit: int,
        now_ns: int, headers: Mapping[str, str],
    ) -> dict[Labels, list[_Exemplar]]:
        """The exemplars of a range answer, by series labels, each series' by time."""
        blocks = self._visible_blocks(headers)
        if not query.exemplars or limit <= 0 or not blocks:
            return {}
        picker = _ExemplarPicker(query, blocks, grid, self.exemplar_seed)
        picked = picker.pick(limit, now_ns - self.query_backend_after_ns)
        by_labels: dict[Labels, list[_Exemplar]] = {}
        if query.function == "quantile_over_time":
            # Tempo 3.0.3 gives all of them to the first quantile's series (capture 18);
            # later versions split them by value
            for key, exemplar in picked:
                base = tuple(x for x in _series_labels(query, key, True) if x[0] != "__bucket")
                by_labels.setdefault((*base, ("p", query.quantiles[0])), []).append(exemplar)
        else:
            values = {s.labels: s.values for s in series}
            histogram = query.function == "histogram_over_time"
            for key, exemplar in picked:
                labels = _series_labels(query, key, histogram)
                if math.isnan(exemplar.value):  # attachExemplars: the sample of its interval
                    index = grid.index(exemplar.ts_ms * 1_000_000)
                    own = values.get(labels)
                    if own is not None and index is not None and not math.isnan(own[index]):
                        exemplar = replace(exemplar, value=own[index])
                by_labels.setdefault(labels, []).append(exemplar)
        for exemplars in by_labels.values():
            exemplars.sort(key=lambda e: e.ts_ms)
        return by_labels

    def _instant(self, params: Mapping[str, str], headers: Mapping[str, str]) -> Response:
        now_ns = self._now_ns()
        start_ns, end_ns = self._bounds(params, now_ns)
        if start_ns >= end_ns:  # not captured: Tempo's CompileMetricsQueryRange wording
            raise _BadRequestError("end must be greater than start")
        query = self._parse(params, prefix="compiling query: ")
        self._check_max_duration(end_ns - start_ns, headers)
        window_end = min(end_ns, now_ns - self.query_end_cutoff_ns)
        grid = _Grid(start_ns, window_end, end_ns - start_ns, instant=True)
        series, matched = evaluate(
            query, self._visible_spans(headers), grid, (end_ns - start_ns) / NANOS_PER_SECOND
        )
        rendered = [
            _with_value({"labels": _render_labels(s.labels)}, s.values[0])
            for s in sorted(series, key=_label_sort_key)
            if not math.isnan(s.values[0])
        ]
        body: dict[str, Any] = {"series": rendered} if rendered else {}
        body["metrics"] = _metrics(matched)
        return Response.json(body)

    def _parse(self, params: Mapping[str, str], *, prefix: str) -> MetricsQuery:
        try:
            return parse_metrics_query(self._query_text(params))
        except TraceQLSyntaxError as error:
            raise _BadRequestError(prefix + str(error)) from None
        except TraceQLError as error:
            raise _BadRequestError(str(error)) from None

    def _check_max_duration(self, range_ns: int, headers: Mapping[str, str]) -> None:
        """Tempo's max duration: the tenant's ``max_metrics_duration`` override when it is set
        (not 0), else ``query_frontend.metrics.max_duration``; 0 means no limit."""
        tenant = _header(headers, "X-Scope-OrgID") or "single-tenant"
        limit = self.max_duration_overrides_ns.get(tenant) or self.max_duration_ns
        if limit and range_ns > limit:
            raise _BadRequestError(
                "metrics query time range exceeds the maximum allowed duration of "
                + go_duration_string(limit)
            )

    def _exemplars_param(self, params: Mapping[str, str]) -> int:
        """The ``exemplars`` parameter: 0 or more than ``max_exemplars`` means
        ``max_exemplars``."""
        text = params.get("exemplars") or "0"
        if not text.isdigit():  # not captured
            raise _BadRequestError(UNSUPPORTED + f"exemplars={text!r}: not an unsigned integer")
        wanted = int(text)
        return self.max_exemplars if wanted == 0 or wanted > self.max_exemplars else wanted

    def _config_yaml(self) -> str:
        """The part of ``/status/config`` the double models, in Tempo's layout."""
        return (
            "query_frontend:\n"
            "    metrics:\n"
            f"        max_duration: {go_duration_string(self.max_duration_ns)}\n"
            f"        max_intervals: {self.max_intervals}\n"
            f"        max_exemplars: {self.max_exemplars}\n"
            f"        query_backend_after: {go_duration_string(self.query_backend_after_ns)}\n"
            f"    query_end_cutoff: {go_duration_string(self.query_end_cutoff_ns)}\n"
        )

    # -- transports ------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process httpx transport to the double, faults included (no socket)."""
        return _DoubleTransport(self)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve over HTTP with aiohttp; returns the base URL (``http://127.0.0.1:PORT``)."""
        if self._runner is not None:
            raise RuntimeError("the Tempo double is already started")
        self._stopped = False
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._on_http_request)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        return f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop the HTTP server; hanging requests end at once."""
        self._stopped = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_http_request(self, request: web.Request) -> web.StreamResponse:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            params.setdefault(key, value)  # Go's Form.Get: the first value
        try:
            answer = await self.serve(request.path, params, dict(request.headers))
        except InjectedFaultError:  # CloseConnection
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from None
        return web.Response(
            status=answer.status, body=answer.body,
            headers={"Content-Type": answer.content_type, "Date": self.date_header()},
        )


def _parse_step(text: str) -> int:
    """Tempo's step: seconds as a number, or a Go duration (``1d`` is refused)."""
    try:
        seconds = float(text)
    except ValueError:
        parsed = parse_go_duration(text)
        if parsed is None:
            raise _rpc_error(f'cannot parse "{text}" to a valid duration') from None
        return parsed
    if not math.isfinite(seconds):
        raise _rpc_error(f'cannot parse "{text}" to a valid duration')
    return int(seconds * NANOS_PER_SECOND)


def _rpc_error(message: str) -> _BadRequestError:
    """Errors of Tempo's parameter parsing travel as httpgrpc errors, prefix included."""
    return _BadRequestError(f"rpc error: code = Code(400) desc = {message}")


def _metrics(matched: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {"completedJobs": 1, "totalJobs": 1}
    if matched:
        metrics["inspectedSpans"] = str(matched)
    return metrics


class _DoubleTransport(httpx.AsyncBaseTransport):
    """httpx transport calling the double directly; honours the client's read timeout."""

    def __init__(self, double: TempoDouble) -> None:
        self._double = double

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        params: dict[str, str] = {}
        for key, value in request.url.params.multi_items():
            params.setdefault(key, value)
        timeout = request.extensions.get("timeout", {}).get("read")
        call = self._double.serve(request.url.path, params, dict(request.headers))
        try:
            answer = await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise httpx.ReadTimeout(
                "timed out waiting for the Tempo double", request=request
            ) from None
        except InjectedFaultError:  # CloseConnection
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        return httpx.Response(
            answer.status,
            headers={"Content-Type": answer.content_type, "Date": self._double.date_header()},
            content=answer.body,
            request=request,
        )
