"""OpenMetrics text of rule samples, as ``promtool tsdb create-blocks-from openmetrics`` reads it.

Used by ``tempo-bridge eval --format openmetrics`` and ``tempo-bridge backfill``. The text
follows the OpenMetrics 1.0 exposition format: one ``# TYPE`` line per family, the
family's samples right after it (families never interleave), sample timestamps in
seconds, label values escaped, and a final ``# EOF``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bridge.errors import BridgeError
from bridge.series import Sample, is_stale_nan

Family = tuple[str, str, Sequence[Sample]]
"""``(record, kind, samples)``: what one rule wrote; ``kind`` is ``counter`` or ``gauge``."""


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
    series. Stale markers have no text form and are left out. Two rules whose series
    would share a family with different types raise :class:`OpenMetricsError`.
    """
    merged: dict[str, tuple[str, str, list[Sample]]] = {}
    for record, kind, samples in families:
        family, kind_text = family_of(record, kind)
        known = merged.setdefault(family, (kind_text, record, []))
        if known[0] != kind_text:
            raise OpenMetricsError(
                f"rules {known[1]} ({known[0]}) and {record} ({kind_text}) would both write "
                f"the OpenMetrics family {family}; rename one of them"
            )
        known[2].extend(samples)
    lines = []
    for family, (kind_text, _record, samples) in merged.items():
        lines.append(f"# TYPE {family} {kind_text}")
        for labels, ts_ms, value in sorted(samples, key=lambda s: (s[0], s[1])):
            if is_stale_nan(value):
                continue
            lines.append(f"{series_name(labels)} {format_value(value)} {_seconds(ts_ms)}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


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
