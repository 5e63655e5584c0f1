"""Reader of the ``.http`` captures of a real Tempo's traffic (``tests/fixtures/tempo-api``).

A capture file looks like this (``>`` lines are request headers, ``<`` lines
response headers; the body follows the blank line after the response headers
and the capture tool appended one newline to it)::

    GET http://127.0.0.1:3200/api/metrics/query?q=...&start=...&end=...
    # decoded q: { resource.service.name = "openrouter" } | count_over_time()
    > Accept: application/protobuf
    # requested at unix_ns=1795770767476270947  latency_ms=5.7
    # note: free text

    HTTP 200
    < Content-Type: application/json
    < Content-Length: 642

    {"series":[...]}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tempo-api"
"""The recordings kept in the repository (see its README.md)."""

_REQUESTED_AT = re.compile(r"requested at unix_ns=(\d+)(?:\s+latency_ms=([\d.]+))?")


class CaptureFormatError(ValueError):
    """A capture file does not follow the expected layout."""


@dataclass(frozen=True)
class Capture:
    """One request to a real Tempo and the response it gave."""

    name: str
    method: str
    url: str
    path: str
    params: dict[str, str]
    request_headers: dict[str, str]
    requested_at_ns: int
    status: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float | None = None
    note: str | None = None
    comments: tuple[str, ...] = field(default=())

    @property
    def requested_at(self) -> float:
        """The wall time of the request, unix seconds (what a clock of the double returns)."""
        return self.requested_at_ns / 1e9

    @property
    def content_type(self) -> str:
        """The response's Content-Type header, or an empty string."""
        return self.header("Content-Type") or ""

    def header(self, name: str) -> str | None:
        """A response header, looked up case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def json(self) -> Any:
        """The response body decoded as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The response body as text."""
        return self.body.decode()


def load_capture(path: Path) -> Capture:
    """Parse one ``.http`` capture file."""
    raw = path.read_bytes()
    request_part, sep, response_part = raw.partition(b"\n\n")
    if not sep:
        raise CaptureFormatError(f"{path}: no blank line after the request")
    request_lines = request_part.decode().split("\n")
    method, _, url = request_lines[0].partition(" ")
    if not url:
        raise CaptureFormatError(f"{path}: first line is not 'METHOD URL'")
    request_headers: dict[str, str] = {}
    comments: list[str] = []
    requested_at_ns: int | None = None
    latency_ms: float | None = None
    note: str | None = None
    for line in request_lines[1:]:
        if line.startswith("> "):
            key, _, value = line[2:].partition(":")
            request_headers[key.strip()] = value.strip()
        elif line.startswith("#"):
            comment = line[1:].strip()
            comments.append(comment)
            if match := _REQUESTED_AT.search(comment):
                requested_at_ns = int(match.group(1))
                latency_ms = float(match.group(2)) if match.group(2) else None
            elif comment.startswith("note:"):
                note = comment.removeprefix("note:").strip()
    if requested_at_ns is None:
        raise CaptureFormatError(f"{path}: no 'requested at unix_ns=' comment")

    head, sep, body = response_part.partition(b"\n\n")
    if not sep:
        raise CaptureFormatError(f"{path}: no blank line after the response headers")
    head_lines = head.decode().split("\n")
    status_match = re.fullmatch(r"HTTP (\d{3})", head_lines[0].strip())
    if not status_match:
        raise CaptureFormatError(f"{path}: no 'HTTP <status>' line")
    headers: dict[str, str] = {}
    for line in head_lines[1:]:
        if line.startswith("< "):
            key, _, value = line[2:].partition(":")
            headers[key.strip()] = value.strip()
    body = body.removesuffix(b"\n")  # the capture tool's newline, not Tempo's
    length = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
    if length is not None and int(length) != len(body):
        raise CaptureFormatError(f"{path}: body has {len(body)} bytes, Content-Length {length}")

    parts = urlsplit(url)
    return Capture(
        name=path.stem,
        method=method,
        url=url,
        path=parts.path,
        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        request_headers=request_headers,
        requested_at_ns=requested_at_ns,
        status=int(status_match.group(1)),
        headers=headers,
        body=body,
        latency_ms=latency_ms,
        note=note,
        comments=tuple(comments),
    )


def load_captures(directory: Path) -> list[Capture]:
    """Every ``*.http`` capture in a directory, in file-name order."""
    return [load_capture(p) for p in sorted(directory.glob("*.http"))]


def find_tempo_api() -> Path:
    """The recordings of a real Tempo: ``tests/fixtures/tempo-api`` in the repository, or
    ``$TEMPO_API_DIR`` to hold the double to a fresh recording of the same layout. A
    directory without ``captures/`` fails the run rather than skipping the tests."""
    override = os.environ.get("TEMPO_API_DIR")
    directory = Path(override) if override else FIXTURES
    if not (directory / "captures").is_dir():
        source = "TEMPO_API_DIR" if override else "the repository's fixtures"
        raise RuntimeError(f"Tempo captures not found: {directory / 'captures'} ({source}) "
                           "is not a directory")
    return directory
