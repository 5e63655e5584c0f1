"""Series: the label-set and sample types every stage shares, and the stale marker.

A leaf module: it imports nothing from the bridge, so rules, evaluation, state and
remote write all point down to it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Final, overload

Labels = tuple[tuple[str, str], ...]
"""A series' labels, ``__name__`` included: sorted by name (byte order), names unique,
names and values non-empty."""

Sample = tuple[Labels, int, float]
"""``(labels, timestamp ms, value)``."""


class Samples(Sequence[Sample]):
    """An evaluation's samples, in the order they were written: single ones, and the
    series of a window end as two columns (their labels, their values) with the one
    timestamp, 16 bytes a sample where a tuple takes 72. Iterating gives the samples as
    tuples, made as they are read (and let go when unpacked)."""

    __slots__ = ("_len", "_parts")

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        self._parts: list[list[Sample] | tuple[int, list[Labels], list[float]]] = []
        self._len = 0
        for sample in samples:
            self.append(sample)

    def append(self, sample: Sample) -> None:
        last = self._parts[-1] if self._parts else None
        if not isinstance(last, list):  # after columns, or the first: a new list
            last = []
            self._parts.append(last)
        last.append(sample)
        self._len += 1

    def add_columns(self, ts_ms: int, labels: list[Labels], values: list[float]) -> None:
        """The samples ``(labels[i], ts_ms, values[i])``, in that order; ``labels``
        distinct (a window end's series)."""
        if labels:
            self._parts.append((ts_ms, labels, values))
            self._len += len(labels)

    def __len__(self) -> int:
        return self._len

    def distinct_series(self) -> bool:
        """Whether no two samples have the same labels: known without a look when they
        are one window end's columns (a steady evaluation's), else counted."""
        if len(self._parts) == 1 and not isinstance(self._parts[0], list):
            return True
        return len({labels for labels, _, _ in self}) == self._len

    def __iter__(self) -> Iterator[Sample]:
        return chain.from_iterable(
            part if isinstance(part, list) else zip(part[1], repeat(part[0]), part[2])
            for part in self._parts)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Samples({list(self)!r})"


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
