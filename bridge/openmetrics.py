"""OpenMetrics text of rule samples, as ``promtool tsdb create-blocks-from openmetrics`` reads it.

Used by ``tempo-bridge eval --format openmetrics`` and ``tempo-bridge backfill``. The text
follows the OpenMetrics 1.0 exposition format: one ``# TYPE`` line per family, the
family's samples right after it (families never interleave), sample timestamps in
seconds, label values escaped, and a final ``# EOF``.

Exemplars: OpenMetrics 1.0 allows them on a counter's ``_total`` samples (and on
histogram buckets, which rules do not write), one per sample, written after it as
``# {traceID="..."} value timestamp``. So a counter sample carries the first of its
exemplars (the largest contribution, as the evaluation picks them), and the samples of
gauges and of ``unknown`` families (counters not named ``x_total``) carry none: Prometheus'
parser, promtool's included, refuses the whole file at an exemplar on them ("metric name
... does not support exemplars"). TSDB blocks hold no exemplars, so ``promtool`` reads
them and leaves them out of the blocks it makes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.errors import BridgeError
from bridge.series import EXEMPLAR_LABEL, Exemplar, Labels, Sample, is_stale_nan

Exemplars = Mapping[tuple[Labels, int], Sequence[Exemplar]]
"""Exemplars of samples, keyed by the sample's series and timestamp (ms)."""


@dataclass(frozen=True)
class Family:
    """What one rule wrote: its record, its kind (``counter`` or ``gauge``), its samples and
    their exemplars."""

    record: str
    kind: str
    samples: Sequence[Sample]
    exemplars: Exemplars = field(default_factory=dict)


class OpenMetricsError(BridgeError):
    """Rule samples that cannot be written as valid OpenMetrics (conflicting families)."""


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``stale`` for a stale marker)."""
    if is_stale_nan(value):
        return "stale"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def family_of(record: str, kind: str) -> tuple[str, str]:
    """The OpenMetrics family name and type of a rule's series.

    A counter named ``x_total`` is family ``x`` of type ``counter``, as OpenMetrics
    requires; a counter without the suffix cannot be an OpenMetrics counter and is
    declared ``unknown``; a gauge is a ``gauge`` family of its own name.
    """
    if kind == "counter":
        if record.endswith("_total"):
            return record[: -len("_total")], "counter"
        return record, "unknown"
    return record, "gauge"


def format_openmetrics(families: Sequence[Family]) -> str:
    """OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    Samples are merged per family (rules of several groups may share a record name),
    each family is written once, its series one after the other and each series' samples
    in time order: promtool silently drops a sample older than the previous one of its
    series. Stale markers have no text form and are left out. A counter's sample carries
    its first exemplar (see the module's docstring). Two rules whose series would share a
    family with different types raise :class:`OpenMetricsError`.
    """
    merged: dict[str, tuple[str, str, list[Sample], dict[tuple[Labels, int], Exemplar]]] = {}
    for one in families:
        family, kind_text = family_of(one.record, one.kind)
        known = merged.setdefault(family, (kind_text, one.record, [], {}))
        if known[0] != kind_text:
            raise OpenMetricsError(
                f"rules {known[1]} ({known[0]}) and {one.record} ({kind_text}) would both "
                f"write the OpenMetrics family {family}; rename one of them"
            )
        known[2].extend(one.samples)
        if kind_text == "counter":
            known[3].update((key, found[0]) for key, found in one.exemplars.items() if found)
    lines = []
    for family, (kind_text, _record, samples, exemplars) in merged.items():
        lines.append(f"# TYPE {family} {kind_text}")
        for labels, ts_ms, value in sorted(samples, key=lambda s: (s[0], s[1])):
            if is_stale_nan(value):
                continue
            line = f"{series_name(labels)} {format_value(value)} {_seconds(ts_ms)}"
            exemplar = exemplars.get((labels, ts_ms))
            lines.append(line if exemplar is None else f"{line} {format_exemplar(exemplar)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def format_exemplar(exemplar: Exemplar) -> str:
    """``# {traceID="..."} value timestamp``: an exemplar as OpenMetrics writes it after
    its sample, its timestamp (the span's start) in seconds."""
    trace = escape_label_value(exemplar.trace_id)
    return (f'# {{{EXEMPLAR_LABEL}="{trace}"}} {format_value(exemplar.value)} '
            f"{_seconds(exemplar.ts_ms)}")


def series_name(labels: Sequence[tuple[str, str]]) -> str:
    """``name{label="value",...}`` with OpenMetrics escaping (``\\``, ``"``, newline)."""
    name = dict(labels).get("__name__", "")
    rest = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels if k != "__name__")
    return f"{name}{{{rest}}}" if rest else name


def escape_label_value(value: str) -> str:
    """A label value escaped for the OpenMetrics text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _seconds(ts_ms: int) -> str:
    """A millisecond timestamp as OpenMetrics seconds, exact to the millisecond."""
    seconds, millis = divmod(ts_ms, 1000)
    return f"{seconds}.{millis:03d}" if millis else str(seconds)
