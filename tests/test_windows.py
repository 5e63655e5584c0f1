"""Window planning: due windows, transition windows, the first checkpoint and query chunking."""

from __future__ import annotations

import pytest

from bridge.windows import (
    Limits,
    Query,
    Window,
    align_down,
    due_windows,
    initial_checkpoint,
    plan_queries,
)

DAY = 86400
T12 = 1795780800  # an exact multiple of 3600
LIMITS = Limits(max_duration=DAY, max_intervals=10_000)


def grid(start: int, count: int, step: int) -> list[Window]:
    return [Window(start + i * step, start + (i + 1) * step) for i in range(count)]


def test_align_down_is_epoch_aligned() -> None:
    assert align_down(1795769459.9, 60) == 1795769400
    assert align_down(1795769400, 60) == 1795769400
    assert align_down(1795769400, 300) == 1795769400
    assert align_down(1795769399, 300) == 1795769100


def test_due_windows_respect_the_offset() -> None:
    # now = 12:03:30 with a 2 m offset: windows ending at 12:00 and 12:01 are due,
    # the one ending at 12:02 is not (it ended only 90 s ago).
    assert due_windows(T12 - 120, T12 + 210, 60, 120) == grid(T12 - 120, 3, 60)
    assert due_windows(T12 + 60, T12 + 210, 60, 120) == []
    # A window becomes due exactly when its end is now - offset.
    assert due_windows(T12 - 60, T12 + 120, 60, 120) == [Window(T12 - 60, T12)]
    assert due_windows(T12 - 60, T12 + 119.999, 60, 120) == []


def test_a_checkpoint_off_the_grid_gets_a_transition_window() -> None:
    # recorded up to 12:01 on a 1 m grid, now on a 5 m grid: (12:01, 12:05] first
    assert due_windows(T12 + 60, T12 + 900, 300, 0) == [
        Window(T12 + 60, T12 + 300), Window(T12 + 300, T12 + 600), Window(T12 + 600, T12 + 900)
    ]
    # 45 m -> 2 m: 12:45 is no multiple of 2 m; the transition window is 1 minute
    assert due_windows(T12 + 2700, T12 + 2880, 120, 0) == [
        Window(T12 + 2700, T12 + 2760), Window(T12 + 2760, T12 + 2880)
    ]
    # the transition window is only due once its end is
    assert due_windows(T12 + 60, T12 + 299, 300, 0) == []


def test_initial_checkpoint_starts_now_or_in_the_past() -> None:
    now = T12 + 210  # 12:03:30, offset 2 m: latest due window ends 12:01
    assert due_windows(initial_checkpoint(now, 60, 120, 0), now, 60, 120) == [
        Window(T12, T12 + 60)
    ]
    first = due_windows(initial_checkpoint(now, 60, 120, 3600), now, 60, 120)
    assert len(first) == 61
    assert first[-1].end == T12 + 60
    assert first[0].end == T12 + 60 - 3600


def test_windows_per_query_counts_the_extra_bucket_and_the_step_limit() -> None:
    assert LIMITS.windows_per_query(60) == 1439
    assert LIMITS.windows_per_query(3600) == 23
    assert LIMITS.windows_per_query(DAY) == 0
    # 1 s windows: 86,400 in a day, but Tempo takes 10,000 steps at most (capture 31:
    # "step of 1s is too small, minimum step for given range is 8.64s")
    assert LIMITS.windows_per_query(1) == 9999
    assert LIMITS.windows_per_query(8) == 9999
    assert LIMITS.windows_per_query(9) == 9599
    assert Limits(max_duration=DAY, max_intervals=100).windows_per_query(60) == 99


def test_one_window_is_an_instant_query() -> None:
    window = Window(T12, T12 + 60)
    assert plan_queries([window], LIMITS) == [Query("instant", T12, T12 + 60, 60, (window,))]
    # unless a range answer is wanted (it carries exemplars)
    assert plan_queries([window], LIMITS, single_range=True) == [
        Query("range", T12, T12 + 60, 60, (window,))
    ]


def test_many_windows_are_range_queries_under_max_duration() -> None:
    windows = grid(T12, 1440, 60)  # 24 h of 1 m windows
    queries = plan_queries(windows, LIMITS)
    assert [q.kind for q in queries] == ["range", "instant"]
    first = queries[0]
    assert (first.start, first.end, first.step) == (T12, windows[1438].end, 60)
    # including the extra leading bucket, the query covers exactly max_duration
    assert first.end - (first.start - first.step) == DAY
    assert [w for q in queries for w in q.windows] == windows


def test_short_windows_respect_the_step_limit() -> None:
    windows = grid(T12, 3 * 3600, 1)  # 3 h of 1 s windows: 10,800 windows
    queries = plan_queries(windows, LIMITS)
    assert [len(q.windows) for q in queries] == [9999, 801]
    for query in queries:
        assert (query.end - query.start) // query.step + 1 <= 10_000


def test_daily_windows_are_read_one_instant_query_each() -> None:
    windows = grid(DAY * 20000, 3, DAY)
    queries = plan_queries(windows, LIMITS)
    assert [q.kind for q in queries] == ["instant"] * 3
    assert [(q.start, q.end) for q in queries] == [(w.start, w.end) for w in windows]


def test_windows_of_several_lengths_are_read_in_order_each_once() -> None:
    # 1 m windows, a 3 m transition window, then 5 m windows (an interval change)
    windows = [*grid(T12, 3, 60), Window(T12 + 180, T12 + 300), *grid(T12 + 300, 4, 300)]
    queries = plan_queries(windows, LIMITS)
    assert [(q.kind, q.step, len(q.windows)) for q in queries] == [
        ("range", 60, 3), ("instant", 120, 1), ("range", 300, 4)
    ]
    assert [w for q in queries for w in q.windows] == windows
    # a transition window that is not aligned to its own length is never a range bucket
    odd = [Window(T12 + 60, T12 + 300)]  # 4 minutes ending at 12:05: 12:05 % 4 m != 0
    assert plan_queries(odd, LIMITS, single_range=True)[0].kind == "instant"


@pytest.mark.parametrize("count", [2, 3, 1439, 1440, 2878, 2879, 5000])
def test_chunks_cover_every_window_once_in_order(count: int) -> None:
    windows = grid(T12, count, 60)
    queries = plan_queries(windows, LIMITS)
    assert [w for q in queries for w in q.windows] == windows
    for q in queries:
        assert q.end - q.start + q.step <= DAY
        assert q.end == q.windows[-1].end
        assert q.start == q.windows[0].start


def test_range_queries_are_sized_by_points_too() -> None:
    # a day of one-minute windows: one query for 1,000 series, 72 for 100,000
    windows = grid(T12, 1440, 60)
    assert len(plan_queries(windows, LIMITS, series=1_000)) == 2  # max_duration first
    big = plan_queries(windows, LIMITS, series=100_000)
    assert {len(q.windows) for q in big} == {20}
    assert len(big) == 72
    assert [w for q in big for w in q.windows] == windows
    # a rule with more series than points in a query still reads a window at a time
    assert {len(q.windows) for q in plan_queries(windows[:5], LIMITS, series=10**7)} == {1}
