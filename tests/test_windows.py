"""Window planning: due windows, the first checkpoint and query chunking."""

from __future__ import annotations

import pytest

from bridge.windows import (
    Query,
    align_down,
    due_windows,
    initial_checkpoint,
    plan_queries,
    windows_per_range_query,
)

DAY = 86400


def test_align_down_is_epoch_aligned() -> None:
    assert align_down(1795769459.9, 60) == 1795769400
    assert align_down(1795769400, 60) == 1795769400
    assert align_down(1795769400, 300) == 1795769400
    assert align_down(1795769399, 300) == 1795769100


def test_due_windows_respect_the_offset() -> None:
    # now = 12:03:30 with a 2 m offset: windows ending at 12:00 and 12:01 are due,
    # the one ending at 12:02 is not (it ended only 90 s ago).
    t12 = 1795780800  # an exact multiple of 3600
    assert due_windows(t12 - 120, t12 + 210, 60, 120) == [t12 - 60, t12, t12 + 60]
    assert due_windows(t12 + 60, t12 + 210, 60, 120) == []
    # A window becomes due exactly when its end is now - offset.
    assert due_windows(t12 - 60, t12 + 120, 60, 120) == [t12]
    assert due_windows(t12 - 60, t12 + 119.999, 60, 120) == []


def test_initial_checkpoint_starts_now_or_in_the_past() -> None:
    now = 1795780800 + 210  # 12:03:30, offset 2 m: latest due window ends 12:01
    assert due_windows(initial_checkpoint(now, 60, 120, 0), now, 60, 120) == [1795780860]
    first = due_windows(initial_checkpoint(now, 60, 120, 3600), now, 60, 120)
    assert len(first) == 61
    assert first[-1] == 1795780860
    assert first[0] == 1795780860 - 3600


def test_windows_per_range_query_counts_the_extra_bucket() -> None:
    assert windows_per_range_query(60, DAY) == 1439
    assert windows_per_range_query(3600, DAY) == 23
    assert windows_per_range_query(DAY, DAY) == 0


def test_one_window_is_an_instant_query() -> None:
    assert plan_queries([1795780860], 60, DAY) == [
        Query("instant", 1795780800, 1795780860, 60, (1795780860,))
    ]


def test_many_windows_are_range_queries_under_max_duration() -> None:
    ends = [1795780800 + 60 * i for i in range(1, 1441)]  # 24 h of 1 m windows
    queries = plan_queries(ends, 60, DAY)
    assert [q.kind for q in queries] == ["range", "instant"]
    first = queries[0]
    assert first.start == ends[0] - 60
    assert first.end == ends[1438]
    assert first.step == 60
    # including the extra leading bucket, the query covers exactly max_duration
    assert first.end - (first.start - first.step) == DAY
    assert [w for q in queries for w in q.window_ends] == ends


def test_daily_windows_are_read_one_instant_query_each() -> None:
    ends = [DAY * 20000 + DAY * i for i in range(1, 4)]
    queries = plan_queries(ends, DAY, DAY)
    assert [q.kind for q in queries] == ["instant"] * 3
    assert [(q.start, q.end) for q in queries] == [(e - DAY, e) for e in ends]


@pytest.mark.parametrize("count", [2, 3, 1439, 1440, 2878, 2879, 5000])
def test_chunks_cover_every_window_once_in_order(count: int) -> None:
    ends = [1795780800 + 60 * i for i in range(1, count + 1)]
    queries = plan_queries(ends, 60, DAY)
    assert [w for q in queries for w in q.window_ends] == ends
    for q in queries:
        assert q.end - q.start + q.step <= DAY
        assert q.end == q.window_ends[-1]
        assert q.start == q.window_ends[0] - 60
