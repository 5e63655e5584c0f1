"""Evaluation: label mapping, counters, gauges and settling as pure functions."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from bridge.evaluation import (
    EvaluationError,
    Window,
    accumulate,
    gauge_samples,
    settle,
    window_values,
    windows_from_answer,
)
from bridge.rulefmt import load_rule_files
from bridge.rules import Group
from bridge.series import Labels, is_stale_nan
from bridge.tempo import InstantSeries, RangeSeries
from bridge.windows import Query

A: Labels = (("__name__", "x"), ("model", "a"))
B: Labels = (("__name__", "x"), ("model", "b"))


@pytest.fixture
def group(tmp_path: Path) -> Group:
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            groups:
              - name: g
                interval: 60s
                query_offset: 60s
                labels: {team: llm}
                rules:
                  - record: x
                    expr: '{ } | sum_over_time(span.cost) by (span.model, span.key)'
                    kind: counter
                    rename: {key: api_key}
                    labels: {unit: usd}
                    limit: 2
            """
        )
    )
    (loaded,) = load_rule_files([str(path)], min_query_offset=0)
    return loaded


def test_range_answer_drops_the_extra_bucket_and_maps_labels(group: Group) -> None:
    rule = group.rules[0]
    query = Query("range", 600, 720, 60, (660, 720))
    answer = [
        RangeSeries(
            {"span.model": "m", "span.key": "nil"},
            [(600_000, 9.0), (660_000, 1.5), (720_000, 0.0)],
        ),
        RangeSeries({"span.model": "m", "span.key": "k"}, [(720_000, 2.0)]),
    ]
    windows = windows_from_answer(rule, group, query, answer)
    no_key = (("__name__", "x"), ("model", "m"), ("team", "llm"), ("unit", "usd"))
    keyed = (("__name__", "x"), ("api_key", "k"), ("model", "m"), ("team", "llm"),
             ("unit", "usd"))
    assert windows == [
        Window(660, {no_key: 1.5}),
        Window(720, {no_key: 0.0, keyed: 2.0}),
    ]


def test_instant_answer_is_the_query_window(group: Group) -> None:
    query = Query("instant", 600, 660, 60, (660,))
    windows = windows_from_answer(
        group.rules[0], group, query, [InstantSeries({"span.model": "m"}, 3.0)]
    )
    assert [w.end for w in windows] == [660]
    assert list(windows[0].values.values()) == [3.0]


def test_limit_and_duplicates_fail(group: Group) -> None:
    query = Query("instant", 600, 660, 60, (660,))
    three = [InstantSeries({"span.model": m}, 1.0) for m in "abc"]
    with pytest.raises(EvaluationError, match=r"3 series .* exceed the limit of 2") as exc:
        windows_from_answer(group.rules[0], group, query, three)
    assert exc.value.reason == "limit"
    # "nil" and an absent attribute both mean "no label": the same series twice
    twins = [InstantSeries({"span.model": "nil"}, 1.0), InstantSeries({}, 2.0)]
    with pytest.raises(EvaluationError, match="same labels") as exc:
        windows_from_answer(group.rules[0], group, query, twins)
    assert exc.value.reason == "duplicate_series"


def test_counter_writes_every_known_series_and_a_zero_before_a_new_one() -> None:
    update = accumulate({A: 1.0}, [Window(120, {B: 2.0}), Window(180, {A: 0.5})], 60)
    assert update.totals == {A: 1.5, B: 2.0}
    assert update.samples == [
        (B, 60_000, 0.0),
        (A, 120_000, 1.0), (B, 120_000, 2.0),
        (A, 180_000, 1.5), (B, 180_000, 2.0),
    ]


def test_counter_ignores_negative_and_non_finite_values() -> None:
    update = accumulate({A: 1.0}, [Window(120, {A: -5.0}), Window(180, {A: math.nan})], 60)
    assert update.totals == {A: 1.0}


def test_gauge_marks_vanished_series_stale() -> None:
    update = gauge_samples({A}, [Window(120, {B: 2.0}), Window(180, {})])
    values = [(labels, ts, v) for labels, ts, v in update.samples]
    assert values[0][:2] == (A, 120_000)
    assert is_stale_nan(values[0][2])
    assert values[1] == (B, 120_000, 2.0)
    assert values[2][:2] == (B, 180_000)
    assert is_stale_nan(values[2][2])
    assert update.live == set()


def test_settle_adds_only_growth() -> None:
    recorded = {120: {A: 2.0, B: 1.0}}
    update = settle({A: 10.0, B: 5.0}, recorded, [Window(120, {A: 3.5, B: 0.5})], 300)
    assert update.totals == {A: 11.5, B: 5.0}  # B shrank: a counter never goes down
    assert update.values == {120: {A: 3.5}}
    assert update.grown == 1
    assert update.samples == []


def test_settle_starts_a_series_first_seen_late_at_zero() -> None:
    update = settle({A: 1.0}, {}, [Window(120, {B: 4.0})], 300)
    assert update.totals == {A: 1.0, B: 4.0}
    assert update.samples == [(B, 300_000, 0.0)]


def test_window_values_keep_positive_finite_values() -> None:
    kept = window_values([Window(60, {A: 0.0, B: 2.0}), Window(120, {A: math.inf})])
    assert kept == {60: {B: 2.0}, 120: {}}


def test_windows_too_old_for_the_receiver_count_but_write_nothing() -> None:
    windows = [Window(60, {A: 1.0}), Window(120, {A: 2.0, B: 1.0}), Window(180, {})]
    update = accumulate({}, windows, 60, since_ms=120_000)
    assert update.totals == {A: 3.0, B: 1.0}
    assert update.samples == [
        (B, 60_000, 0.0),  # the zero before a new series in a written window stays
        (A, 120_000, 3.0), (B, 120_000, 1.0),
        (A, 180_000, 3.0), (B, 180_000, 1.0),
    ]
    gauge = gauge_samples({B}, windows, since_ms=180_000)
    assert [(k, ts) for k, ts, _ in gauge.samples] == [(A, 180_000), (B, 180_000)]
    assert all(is_stale_nan(v) for _, _, v in gauge.samples)
