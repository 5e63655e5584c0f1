"""Series: the label-set and sample types every stage shares, and the stale marker.

A leaf module: it imports nothing from the bridge, so rules, evaluation, state and
remote write all point down to it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

Labels = tuple[tuple[str, str], ...]
"""A series' labels, ``__name__`` included: sorted by name (byte order), names unique,
names and values non-empty."""

Sample = tuple[Labels, int, float]
"""``(labels, timestamp ms, value)``."""

TempoKey = tuple[tuple[str, str], ...]
"""A Tempo series: its labels as Tempo returned them (``span.model``, ``"nil"`` kept),
sorted by name, values as text. Two series that differ only by a value's type (the int 3
and the string "3") share a key, and are summed, as they would share Prometheus labels."""


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A span that illustrates a sample: its trace ID as Tempo writes it (lowercase hex,
    leading zeros dropped), its value (the aggregated attribute, or for a count the
    sample of its bucket; NaN when Tempo had none), and its start, unix ms."""

    trace_id: str
    value: float
    ts_ms: int


EXEMPLAR_LABEL = "traceID"
"""The label that carries an exemplar's trace ID, as Tempo's metrics-generator names it, so
that Grafana data sources already linked to Tempo open the trace."""

_DOUBLE: Final = struct.Struct("<d")
_STALE_BYTES: Final = struct.pack("<Q", 0x7FF0000000000002)

STALE_NAN: Final[float] = _DOUBLE.unpack(_STALE_BYTES)[0]
"""Prometheus's staleness marker: a NaN with the exact bits ``0x7ff0000000000002``.

It is built from its bits and must never be produced or compared by arithmetic:
an ordinary NaN (``float("nan")``) is a sample value, not a marker.
"""


def is_stale_nan(value: float) -> bool:
    """Whether ``value`` is the staleness marker, compared bit for bit."""
    return _DOUBLE.pack(value) == _STALE_BYTES


def format_labels(labels: Labels) -> str:
    """``{name="value", ...}`` as PromQL writes a label set (values escaped)."""
    return "{" + ", ".join(f"{k}={_quote(v)}" for k, v in labels) + "}"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
