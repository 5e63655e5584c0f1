"""Window planning: which windows are due, and the Tempo queries that read them.

Pure functions of their inputs and a clock value; all times are unix seconds.

A window is ``(start, end]``. A group's windows are ``(k*interval, (k+1)*interval]``,
aligned to the epoch, so an instant query over a window and a range query bucket with
``step = interval`` read the same spans. The checkpoint (the end of the last window
recorded) is a time, not a window number: after an interval change it may lie off the
new grid, and the first window after it is the shorter *transition window*
``(checkpoint, next multiple of the interval]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """The spans whose start time is in ``(start, end]``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Query:
    """One Tempo request that reads ``windows`` (ascending, contiguous, each once).

    ``instant``: ``start``/``end`` bound exactly one window. ``range``: buckets of
    ``step`` stamped with the windows' ends; Tempo also returns the bucket stamped
    ``start``, which is not one of ours.
    """

    kind: Literal["instant", "range"]
    start: int
    end: int
    step: int
    windows: tuple[Window, ...]

    @property
    def window_ends(self) -> tuple[int, ...]:
        return tuple(w.end for w in self.windows)


@dataclass(frozen=True)
class Limits:
    """What Tempo accepts in one range query.

    ``max_duration``: Tempo's ``query_frontend.metrics.max_duration``, which counts the
    extra leading bucket, so a query over ``n`` windows of ``step`` spans ``(n+1)*step``.
    ``max_intervals``: ``query_frontend.metrics.max_intervals``, the most steps a query
    may have (Tempo refuses "step of 1s is too small" beyond it); the extra bucket is
    counted too, to be safe.
    """

    max_duration: int = 86400
    max_intervals: int = 10_000
    max_points: int = 2_000_000
    """The most samples (series times windows) one range answer should hold: a day of
    one-minute windows of 100,000 series is 144 million, several GB of JSON."""

    def windows_per_query(self, step: int, series: int = 0) -> int:
        """How many windows of ``step`` one range query may read, for a rule that had
        ``series`` series (0: not known yet)."""
        windows = max(min(self.max_duration // step, self.max_intervals) - 1, 0)
        if series:
            windows = min(windows, max(self.max_points // series, 1))
        return windows


def align_down(t: float, interval: int) -> int:
    """The largest multiple of ``interval`` that is ``<= t``."""
    return int(t // interval) * interval


def initial_checkpoint(now: float, interval: int, query_offset: int, start: int) -> int:
    """Checkpoint of a rule that has no state yet.

    Its first window is the latest one due at ``now - start``: with ``start = 0`` the
    most recent due window is evaluated at once, with ``start = 24h`` a day is caught up.
    """
    return align_down(now - query_offset - start, interval) - interval


def due_windows(checkpoint: int, now: float, interval: int, query_offset: int) -> list[Window]:
    """Every window after ``checkpoint`` whose end is ``<= now - query_offset``, in order.

    Their ends are the multiples of ``interval`` after ``checkpoint``; the first starts at
    ``checkpoint``, so it is shorter than ``interval`` when the checkpoint is off the grid
    (a transition window after an interval change).
    """
    last = align_down(now - query_offset, interval)
    first = align_down(checkpoint, interval) + interval
    windows = []
    start = checkpoint
    for end in range(first, last + 1, interval):
        windows.append(Window(start, end))
        start = end
    return windows


def plan_queries(
    windows: Sequence[Window], limits: Limits, *, single_range: bool = False, series: int = 0,
) -> list[Query]:
    """Queries that read ``windows`` (ascending, contiguous), in order, each window once.

    A run of windows of one length ``step``, ending on multiples of it, is read by range
    queries with that step, each within ``limits`` (for a rule of ``series`` series, the
    number of points too). A window on its own (a transition
    window, or one whose length allows no range query under ``max_duration``) is an
    instant query; so is a run of one window, unless ``single_range`` asks for a
    one-window range query (its answer carries exemplars, an instant answer does not).
    """
    queries: list[Query] = []
    i = 0
    while i < len(windows):
        step = windows[i].length
        per_query = limits.windows_per_query(step, series)
        run = i + 1
        if windows[i].end % step == 0:
            while (run < len(windows) and run - i < per_query
                   and windows[run].length == step and windows[run].end % step == 0):
                run += 1
        chunk = tuple(windows[i:run])
        if len(chunk) == 1 and not (single_range and per_query >= 1 and chunk[0].end % step == 0):
            queries.append(Query("instant", chunk[0].start, chunk[0].end, step, chunk))
        else:
            queries.append(Query("range", chunk[0].start, chunk[-1].end, step, chunk))
        i = run
    return queries
