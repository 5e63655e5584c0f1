"""Prometheus-style durations ("90s", "1h30m", "2d", "500ms"): parse to seconds and format back."""

from __future__ import annotations

import re
from typing import Literal

# Largest unit first; a duration names each unit at most once, in this order (as Prometheus).
UNITS: tuple[tuple[str, int], ...] = (
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
)
_UNIT_MS = dict(UNITS)
DAY = 24 * 3600
"""Seconds in a day."""
_PART = re.compile(r"([0-9]+)([a-zA-Z]+)")
_MAX_MS = 2**63 - 1  # Prometheus keeps durations as int64 milliseconds

_EXAMPLE = "write a whole number and a unit (ms, s, m, h, d, w, y), such as 90s or 1h30m"


class DurationError(ValueError):
    """A string is not a valid duration; the message says why and what to write instead."""


def parse_duration(text: str) -> float:
    """Seconds in ``text`` ("1h30m" -> 5400.0, "500ms" -> 0.5, "0" -> 0.0); raises DurationError."""
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f"an empty string is not a duration; {_EXAMPLE}")
    if text.strip() != text:
        raise DurationError(f"{text!r} has spaces around it; {_EXAMPLE}")
    if text.startswith("-"):
        raise DurationError(f"{text!r} is negative; durations cannot be")
    if re.fullmatch(r"[0-9]+", text):
        raise DurationError(f"{text!r} has no unit; write {text}s for seconds")
    if re.fullmatch(r"[0-9]*\.[0-9]+[a-zA-Z]*", text):
        raise DurationError(
            f"{text!r} has a fraction; combine whole units instead, such as 1h30m or 1s500ms"
        )
    parts = _PART.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise DurationError(f"{text!r} is not a duration; {_EXAMPLE}")
    total_ms = 0
    last = -1
    order = [u for u, _ in UNITS]
    for number, unit in parts:
        if unit not in _UNIT_MS:
            raise DurationError(f"{text!r} has an unknown unit {unit!r}; use ms, s, m, h, d, w, y")
        index = order.index(unit)
        if index <= last:
            raise DurationError(
                f"{text!r} is not a duration: units go from largest to smallest, "
                "each at most once, such as 1h30m"
            )
        last = index
        total_ms += int(number) * _UNIT_MS[unit]
    if total_ms > _MAX_MS:
        raise DurationError(f"{text!r} is too long a duration")
    return total_ms / 1000


Unit = Literal["y", "w", "d", "h", "m", "s", "ms"]


def format_duration(seconds: float, *, largest: Unit = "y") -> str:
    """Prometheus notation of ``seconds``, to the millisecond (5400 -> "1h30m", 0 -> "0s").

    ``largest`` is the largest unit to use: ``"h"`` gives what Go's ``time.ParseDuration``
    reads too (Tempo's settings: "48h", not "2d").
    """
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    out = []
    for unit, size in UNITS[[u for u, _ in UNITS].index(largest):]:
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return sign + "".join(out)
