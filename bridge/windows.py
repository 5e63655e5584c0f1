"""Window planning: which epoch-aligned windows are due, and the Tempo queries that read them.

Pure functions of their inputs and a clock value; all times are unix seconds.
A window is ``(end - interval, end]`` and is named by its ``end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Query:
    """One Tempo request that reads the windows ``window_ends`` (ascending, contiguous).

    ``instant``: ``start``/``end`` bound exactly one window. ``range``: buckets stamped
    ``window_ends``; Tempo also returns the bucket stamped ``start``, which is not ours.
    """

    kind: Literal["instant", "range"]
    start: int
    end: int
    step: int
    window_ends: tuple[int, ...]


def align_down(t: float, interval: int) -> int:
    """The largest multiple of ``interval`` that is ``<= t``."""
    return int(t // interval) * interval


def initial_checkpoint(now: float, interval: int, query_offset: int, start: int) -> int:
    """Checkpoint of a rule that has no state yet.

    Its first window is the latest one due at ``now - start``: with ``start = 0`` the
    most recent due window is evaluated at once, with ``start = 24h`` a day is caught up.
    """
    return align_down(now - query_offset - start, interval) - interval


def due_windows(checkpoint: int, now: float, interval: int, query_offset: int) -> list[int]:
    """Ends of all windows after ``checkpoint`` whose end is ``<= now - query_offset``."""
    last = align_down(now - query_offset, interval)
    return list(range(checkpoint + interval, last + 1, interval))


def windows_per_range_query(interval: int, max_duration: int) -> int:
    """How many windows one range query can read under Tempo's ``max_duration``.

    Tempo counts the extra leading bucket it returns into the duration it checks,
    so a query over ``n`` windows spans ``(n + 1) * interval``.
    """
    return max(max_duration // interval - 1, 0)


def plan_queries(window_ends: Sequence[int], interval: int, max_duration: int) -> list[Query]:
    """Queries that read ``window_ends`` (ascending, contiguous), in order, each window once.

    One window is an instant query; several are range queries with ``step = interval``,
    chunked so that none exceeds ``max_duration``. Where a range query could hold at most
    one window (an interval of 12 h or more under 24 h), every window is an instant query.
    """
    if not window_ends:
        return []
    per_query = windows_per_range_query(interval, max_duration)
    if len(window_ends) == 1 or per_query < 2:
        return [Query("instant", end - interval, end, interval, (end,)) for end in window_ends]
    queries = []
    for i in range(0, len(window_ends), per_query):
        chunk = tuple(window_ends[i : i + per_query])
        if len(chunk) == 1:
            queries.append(Query("instant", chunk[0] - interval, chunk[0], interval, chunk))
        else:
            queries.append(Query("range", chunk[0] - interval, chunk[-1], interval, chunk))
    return queries
