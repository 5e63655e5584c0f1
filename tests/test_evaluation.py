"""Evaluation, a pure function: Tempo's answer and the stored state in, one update out."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bridge.evaluation import (
    Context,
    EvaluationError,
    Stored,
    Update,
    WindowRead,
    bucket_stamps,
    evaluate,
    match_settle_ages,
    reads_from_buckets,
    retire,
)
from bridge.rulefmt import load_rule_files
from bridge.rules import Group
from bridge.series import Exemplar, Labels, Sample, TempoKey, is_stale_nan
from bridge.tempo import InstantSeries, RangeSeries, buckets_of
from bridge.totals import Total
from bridge.windows import Query, Window

KA: TempoKey = (("span.model", "a"),)
KB: TempoKey = (("span.model", "b"),)
A: Labels = (("__name__", "x"), ("model", "a"))
B: Labels = (("__name__", "x"), ("model", "b"))


def load_group(tmp_path: Path, rule: str = "", group: str = "", kind: str = "counter") -> Group:
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            groups:
              - name: g
                interval: 60s
                query_offset: 60s
                {group}
                rules:
                  - record: x
                    expr: '{{ }} | sum_over_time(span.cost) by (span.model)'
                    kind: {kind}
                    rename: {{model: model}}
                    {rule}
            """
        )
    )
    (loaded,) = load_rule_files([str(path)], min_query_offset=0)
    return loaded


@pytest.fixture
def counter(tmp_path: Path) -> Group:
    return load_group(tmp_path)


def w(end: int, values: Mapping[TempoKey, float] | None = None, length: int = 60) -> WindowRead:
    return WindowRead(Window(end - length, end), dict(values or {}))


def run(
    group: Group, stored: Stored, reads: Sequence[WindowRead], *,
    kept: Mapping[Window, Mapping[TempoKey, float]] | None = None,
    now: float = 10**6, since_ms: int = 0, last_ts: Mapping[Labels, int] | None = None,
    retention: int = 0,
) -> Update:
    context = Context(now, since_ms, last_ts or {}, retention)
    return evaluate(group, group.rules[0], stored, reads, kept or {}, context)


def reads_from_answer(
    query: Query, answer: Sequence[InstantSeries] | Sequence[RangeSeries]
) -> list[WindowRead]:
    """Parsed series split into windows, as the engine splits an answer read into buckets."""
    return reads_from_buckets(query, buckets_of(answer, bucket_stamps(query)))


def samples(update: Update) -> list[tuple[Labels, int, float | str]]:
    """Samples with timestamps in seconds and stale markers as "stale"."""
    return [(labels, ts // 1000, "stale" if is_stale_nan(v) else v)
            for labels, ts, v in update.samples]


# -- reading answers ---------------------------------------------------------------------


def test_range_answer_drops_the_extra_bucket_and_zero_buckets() -> None:
    windows = (Window(600, 660), Window(660, 720))
    query = Query("range", 600, 720, 60, windows)
    answer = [
        RangeSeries(KA, [(600_000, 9.0), (660_000, 1.5), (720_000, 0.0)]),
        RangeSeries(KB, [(660_000, 0.0), (720_000, 2.0), (780_000, 5.0)]),
    ]
    assert reads_from_answer(query, answer) == [
        WindowRead(windows[0], {KA: 1.5}),
        WindowRead(windows[1], {KB: 2.0}),
    ]


def test_the_series_of_a_query_without_by_is_always_present() -> None:
    windows = (Window(600, 660), Window(660, 720))
    name = (("__name__", "count_over_time"),)
    reads = reads_from_answer(
        Query("range", 600, 720, 60, windows),
        [RangeSeries(name, [(600_000, 0.0), (660_000, 0.0), (720_000, 3.0)])],
    )
    key = (("__name__", "count_over_time"),)
    assert [r.values for r in reads] == [{key: 0.0}, {key: 3.0}]
    instant = reads_from_answer(Query("instant", 600, 660, 60, windows[:1]),
                                [InstantSeries(name, 0.0)])
    assert instant == [WindowRead(windows[0], {key: 0.0})]


def test_series_with_the_same_labels_are_summed() -> None:
    # the int 3 and the string "3" come back as two series with the same text
    query = Query("instant", 600, 660, 60, (Window(600, 660),))
    answer = [InstantSeries((("span.n", "3"),), 1.0), InstantSeries((("span.n", "3"),), 2.5)]
    assert reads_from_answer(query, answer)[0].values == {(("span.n", "3"),): 3.5}


def test_range_series_with_the_same_labels_or_a_repeated_bucket_are_summed() -> None:
    windows = (Window(600, 660), Window(660, 720))
    query = Query("range", 600, 720, 60, windows)
    answer = [
        RangeSeries(KA, [(660_000, 1.0), (720_000, 2.0)]),
        RangeSeries(KB, [(660_000, 1.0), (660_000, 0.5), (720_000, 4.0)]),  # 660 twice
        RangeSeries(KA, [(720_000, 8.0), (660_000, 16.0)]),  # same labels, out of order
    ]
    assert reads_from_answer(query, answer) == [
        WindowRead(windows[0], {KA: 17.0, KB: 1.5}, merged=2),
        WindowRead(windows[1], {KA: 10.0, KB: 4.0}, merged=1),
    ]


# -- counters ------------------------------------------------------------------------------


def test_counter_writes_every_series_and_a_zero_before_a_new_one(counter: Group) -> None:
    stored = Stored(120, {KA: Total(1.0, 120)}, frozenset({A}))
    update = run(counter, stored, [w(180, {KB: 2.0}), w(240, {KA: 0.5})])
    assert update.checkpoint == 240
    assert update.totals == {KB: Total(2.0, 180), KA: Total(1.5, 240)}
    assert samples(update) == [
        (B, 120, 0.0),
        (A, 180, 1.0), (B, 180, 2.0),
        (A, 240, 1.5), (B, 240, 2.0),
    ]
    assert update.live == {A, B}
    assert update.stats.recorded == 2


def test_an_evaluation_leaves_the_stored_totals_as_they_were(counter: Group) -> None:
    # the totals are arrays changed in place in the evaluation's own copy: a rule
    # evaluated again from the same state (its commit failed) gets the same update
    kc: TempoKey = (("span.model", "c"),)
    stored = Stored(60).apply(run(counter, Stored(60), [w(120, {KA: 1.0, KB: 2.0})]))
    reads = [w(180, {KA: 0.5, kc: 1.0})]  # A grows, C is new, B is idle
    first, again = run(counter, stored, reads), run(counter, stored, reads)
    assert stored.totals == {KA: Total(1.0, 120), KB: Total(2.0, 120)}
    assert first.totals == again.totals == {KA: Total(1.5, 180), kc: Total(1.0, 180)}
    assert samples(first) == samples(again)
    assert stored.apply(again).totals == {
        KA: Total(1.5, 180), KB: Total(2.0, 120), kc: Total(1.0, 180),
    }


def test_counter_ignores_negative_and_non_finite_values(counter: Group) -> None:
    stored = Stored(120, {KA: Total(1.0, 120)}, frozenset({A}))
    update = run(counter, stored, [w(180, {KA: -5.0}), w(240, {KA: math.nan})])
    assert update.totals == {}
    assert samples(update) == [(A, 180, 1.0), (A, 240, 1.0)]


def test_windows_too_old_for_the_receiver_count_but_write_nothing(counter: Group) -> None:
    stored = Stored(0)
    reads = [w(60, {KA: 1.0}), w(120, {KA: 2.0, KB: 1.0}), w(180, {})]
    update = run(counter, stored, reads, since_ms=120_000)
    assert update.totals == {KA: Total(3.0, 120), KB: Total(1.0, 120)}
    # B's zero at 60 would be too old: A and B start at their totals
    assert samples(update) == [(A, 120, 3.0), (B, 120, 1.0), (A, 180, 3.0), (B, 180, 1.0)]


def test_windows_too_old_for_the_receiver_still_take_over_and_merge(tmp_path: Path) -> None:
    # Windows counted but not written take over legacy totals and sum collisions alike;
    # from the first window written on, every series is written with its whole value.
    group = load_group(tmp_path, rule="missing_value: a")
    nil: TempoKey = (("span.model", "nil"),)
    stored = Stored(120, live=frozenset({A}), legacy={A: 10.0, B: 4.0})
    reads = [w(180, {KA: 1.0, nil: 2.0}), w(240, {KB: 1.0}), w(300, {KB: 2.0, nil: 1.0})]
    update = run(group, stored, reads, since_ms=240_000)
    assert update.totals == {KA: Total(11.0, 180), nil: Total(2.0 + 1.0, 300),
                             KB: Total(4.0 + 3.0, 300)}
    assert update.stats.merged == 1
    assert samples(update) == [(A, 240, 13.0), (B, 240, 5.0), (A, 300, 14.0), (B, 300, 7.0)]


def test_no_sample_is_written_at_or_before_the_last_one_of_its_series(counter: Group) -> None:
    # B had a stale marker at 120 (by this rule or another): no zero there, then 180
    update = run(counter, Stored(120), [w(180, {KB: 2.0})], last_ts={B: 120_000})
    assert samples(update) == [(B, 180, 2.0)]
    update = run(counter, Stored(120), [w(180, {KB: 2.0})], last_ts={B: 180_000})
    assert samples(update) == []


def test_a_series_held_back_by_a_newer_sample_is_written_once_past_it(
    counter: Group,
) -> None:
    # B has a sample at 240 (by another rule): skipped at 120 (its zero), 180 and 240,
    # written at 300 with its whole total; its exemplars only with a sample written
    trace = Exemplar("b0", 1.0, 230_000), Exemplar("b1", 1.0, 290_000)
    reads = [w(180, {KA: 1.0, KB: 2.0}), w(240, {KA: 1.0, KB: 1.0}),
             w(300, {KA: 1.0, KB: 1.0})]
    reads[1] = WindowRead(reads[1].window, reads[1].values, exemplars={KB: [trace[0]]})
    reads[2] = WindowRead(reads[2].window, reads[2].values, exemplars={KB: [trace[1]]})
    update = run(counter, Stored(120), reads, last_ts={B: 240_000})
    assert [s for s in samples(update) if s[0] == B] == [(B, 300, 4.0)]
    assert [s for s in samples(update) if s[0] == A] == [
        (A, 120, 0.0), (A, 180, 1.0), (A, 240, 2.0), (A, 300, 3.0)]
    assert update.exemplars == {(B, 300_000): [trace[1]]}


def test_collisions_are_summed_and_counted(tmp_path: Path) -> None:
    group = load_group(tmp_path, rule="missing_value: a")
    nil: TempoKey = (("span.model", "nil"),)
    # "nil" becomes missing_value "a": the same Prometheus series as a real "a"
    update = run(group, Stored(120), [w(180, {KA: 1.0, nil: 2.0}), w(240, {KA: 0.5})])
    assert update.totals == {KA: Total(1.5, 240), nil: Total(2.0, 180)}
    assert samples(update) == [(A, 120, 0.0), (A, 180, 3.0), (A, 240, 3.5)]
    assert update.stats.merged == 1


def test_an_empty_value_and_a_missing_attribute_are_one_series(counter: Group) -> None:
    empty: TempoKey = (("span.model", ""),)
    update = run(counter, Stored(120), [w(180, {(): 1.0, empty: 2.0})])
    assert samples(update) == [((("__name__", "x"),), 120, 0.0), ((("__name__", "x"),), 180, 3.0)]
    assert update.stats.merged == 1


def test_a_label_edit_relabels_the_same_totals(tmp_path: Path, counter: Group) -> None:
    stored = Stored(120, {KA: Total(5.0, 120)}, frozenset({A}))
    edited = load_group(tmp_path, group="labels: {team: llm}")
    a_team = (("__name__", "x"), ("model", "a"), ("team", "llm"))
    update = run(edited, stored, [w(180, {KA: 1.0}), w(240, {})])
    # the old series ends at the next window end; the new one continues from the total,
    # with its previous value at the window's start so that increase() counts the window
    assert samples(update) == [
        (a_team, 120, 5.0), (A, 180, "stale"), (a_team, 180, 6.0), (a_team, 240, 6.0),
    ]
    assert update.totals == {KA: Total(6.0, 180)}
    assert update.live == {a_team}


def test_an_idle_series_stops_and_resumes_from_its_total(tmp_path: Path) -> None:
    group = dataclasses.replace(load_group(tmp_path), idle_after=180)
    stored = Stored(120, {KA: Total(5.0, 120), KB: Total(1.0, 60)}, frozenset({A, B}))
    update = run(group, stored, [w(180, {KA: 1.0}), w(240), w(300), w(360)])
    # B last grew at 60: idle from 240; A last grew at 180: idle from 360
    assert samples(update) == [
        (A, 180, 6.0), (B, 180, 1.0),
        (B, 240, "stale"), (A, 240, 6.0),
        (A, 300, 6.0),
        (A, 360, "stale"),
    ]
    assert update.live == frozenset()
    stored = stored.apply(update)
    # B grows again: its previous total at the window's start, then the new one
    update = run(group, stored, [w(420, {KB: 2.0}), w(480, {KA: 1.0})])
    assert samples(update) == [
        (B, 360, 1.0), (B, 420, 3.0),
        (A, 420, 6.0), (A, 480, 7.0), (B, 480, 3.0),
    ]


def test_a_series_that_grows_right_after_its_stale_marker_gets_no_extra_sample(
    tmp_path: Path,
) -> None:
    group = dataclasses.replace(load_group(tmp_path), idle_after=120)
    stored = Stored(180, {KA: Total(5.0, 60)}, frozenset({A}))
    update = run(group, stored, [w(240), w(300, {KA: 1.0})])
    # stale at 240; growing in (240, 300]: its last value (at 180) is recent enough
    assert samples(update) == [(A, 240, "stale"), (A, 300, 6.0)]


def test_series_idle_beyond_the_retention_are_dropped_whole(tmp_path: Path) -> None:
    group = dataclasses.replace(load_group(tmp_path, rule="missing_value: a"), idle_after=60)
    nil: TempoKey = (("span.model", "nil"),)
    stored = Stored(1000, {KA: Total(1.0, 100), nil: Total(2.0, 900), KB: Total(3.0, 100)})
    update = run(group, stored, [w(1060)], retention=500)
    # A's two Tempo series go together (one grew recently): only B is dropped
    assert update.dropped == {KB}
    assert stored.apply(update).totals.keys() == {KA, nil}


def test_legacy_totals_are_taken_over_by_the_first_tempo_series(counter: Group) -> None:
    stored = Stored(120, live=frozenset({A}), legacy={A: 10.0, B: 4.0})
    update = run(counter, stored, [w(180, {KA: 1.0})], last_ts={A: 120_000})
    assert update.totals == {KA: Total(11.0, 180)}
    assert update.adopted == {A}
    assert samples(update) == [(A, 180, 11.0)]
    assert stored.apply(update).legacy == {B: 4.0}


# -- settling --------------------------------------------------------------------------------


def test_settle_adds_only_growth_and_never_counts_it_twice(tmp_path: Path) -> None:
    group = load_group(tmp_path, group="settle: [10m, 1h]")
    window = Window(60, 120)
    stored = Stored(300, {KA: Total(10.0, 120), KB: Total(5.0, 120)}, frozenset({A, B}),
                    {600: 60, 3600: 60}, (window, Window(120, 180)))
    kept = {window: {KA: 2.0, KB: 1.0}}
    update = run(group, stored, [WindowRead(window, {KA: 3.5, KB: 0.5})], kept=kept, now=800)
    assert update.totals == {KA: Total(11.5, 300)}  # B shrank: a counter never goes down
    assert update.kept_values == {window: {KA: 3.5, KB: 1.0}}  # what the totals hold, not less
    assert update.stats.grown == 1
    assert update.samples == []  # written at the next window end
    assert update.settle_checkpoints == {600: 120, 3600: 60}
    # B comes back to 1.0: nothing new
    again = run(group, stored.apply(update), [WindowRead(window, {KA: 3.5, KB: 1.0})],
                kept=update.kept_values, now=800)
    assert again.totals == {}


def test_growth_below_float_rounding_is_not_growth(tmp_path: Path) -> None:
    group = load_group(tmp_path, group="settle: [10m]")
    window = Window(60, 120)
    stored = Stored(300, {KA: Total(0.3, 120)}, frozenset({A}), {600: 60}, (window,))
    rounded = 0.1 + 0.2  # 0.30000000000000004
    update = run(group, stored, [WindowRead(window, {KA: rounded})],
                 kept={window: {KA: 0.3}}, now=800)
    assert update.totals == {}
    assert update.stats.grown == 0


def test_a_series_first_seen_late_starts_at_zero_at_the_checkpoint(tmp_path: Path) -> None:
    group = load_group(tmp_path, group="settle: [10m]")
    window = Window(60, 120)
    stored = Stored(300, {KA: Total(1.0, 120)}, frozenset({A}), {600: 60}, (window,))
    update = run(group, stored, [WindowRead(window, {KB: 4.0})], now=800)
    assert update.totals == {KB: Total(4.0, 300)}
    assert samples(update) == [(B, 300, 0.0)]
    assert update.live == {A, B}


def test_settle_checkpoints_advance_over_windows_read_old_enough(tmp_path: Path) -> None:
    group = load_group(tmp_path, group="settle: [2m, 10m]")
    stored = Stored(60, settle_checkpoints={120: 60, 600: 60})
    reads = [w(end) for end in range(120, 781, 60)]
    update = run(group, stored, reads, now=900)
    # read at 900: windows ending by 780 are 2 minutes old, by 300 ten minutes old
    assert update.settle_checkpoints == {120: 780, 600: 300}
    assert update.prune_upto == 300
    assert sorted(window.end for window in update.kept_values) == list(range(360, 781, 60))


def test_settle_ages_added_start_at_the_checkpoint_and_removed_ones_go(tmp_path: Path) -> None:
    stored = Stored(900, settle_checkpoints={600: 300, 3600: 60})
    group = load_group(tmp_path, group="settle: [10m, 2h]")
    update = match_settle_ages(group, group.rules[0], stored)
    assert update is not None
    assert update.settle_checkpoints == {600: 300, 7200: 900}
    assert update.prune_upto == 300  # the values kept only for the 1 h age go
    assert match_settle_ages(group, group.rules[0], stored.apply(update)) is None
    no_settle = load_group(tmp_path, group="settle: []")
    update = match_settle_ages(no_settle, no_settle.rules[0], stored)
    assert update is not None
    assert (update.settle_checkpoints, update.prune_upto) == ({}, 900)


# -- gauges, limits, retiring -----------------------------------------------------------


def test_gauge_writes_values_sums_collisions_and_marks_vanished_series_stale(
    tmp_path: Path,
) -> None:
    gauge = load_group(tmp_path, kind="gauge", rule="missing_value: b")
    nil: TempoKey = (("span.model", "nil"),)
    stored = Stored(120, live=frozenset({A}))
    update = run(gauge, stored, [w(180, {KB: 2.0, nil: 0.5}), w(240, {})])
    assert samples(update) == [(A, 180, "stale"), (B, 180, 2.5), (B, 240, "stale")]
    assert update.live == frozenset()
    assert update.checkpoint == 240
    assert update.stats.merged == 1


def test_limit_fails_the_evaluation(tmp_path: Path) -> None:
    group = load_group(tmp_path, rule="limit: 1")
    with pytest.raises(EvaluationError, match=r"2 series in the window ending 180 exceed "
                                              r"the limit of 1") as exc:
        run(group, Stored(120), [w(180, {KA: 1.0, KB: 1.0})])
    assert exc.value.reason == "limit"


def test_a_retired_rule_ends_its_series_at_its_next_window_end() -> None:
    stored = Stored(150, live=frozenset({A, B}))  # off the 60 s grid after an edit
    update = retire(stored, 60, {B: 180_000})
    got: Sequence[Sample] = update.samples
    assert [(labels, ts) for labels, ts, _ in got] == [(A, 180_000)]  # B already has 180
    assert all(is_stale_nan(v) for _, _, v in got)
    assert update.live == frozenset()
    assert update.checkpoint == 150
