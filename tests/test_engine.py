"""Engine: due windows read from the Tempo double, committed once each, failures kept out,
and every edit of a rule file keeping the counters exact."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.engine import UNKNOWN_SERIES_WINDOWS, Engine, dry_run, rule_key
from bridge.errors import StateError
from bridge.evaluation import Update, evaluate
from bridge.series import is_stale_nan
from bridge.state import RuleKey
from bridge.tempo import TempoClient, _Parse
from bridge.windows import Limits
from bridge.worker import Worker
from tests.doubles.tempo import Response, Span
from tests.support.engine import (
    COUNT,
    LIMITS,
    SUM,
    T0,
    Harness,
    assert_increasing,
    rule_yaml,
    rules_yaml,
    span,
    truth,
)
from tests.support.outbox import queued

# -- windows, failures, gauges ---------------------------------------------------------------


async def test_counter_accumulates_windows_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b"),
                           span(T0 + 130, "a")], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    assert await h.tick(group)
    assert h.outbox() == [
        ({"__name__": "x", "model": "a"}, T0, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 60, 2.0),  # the span at T0+60 is in (T0, T0+60]
    ]
    assert await h.tick(group, 120)  # two more windows due: one range query
    assert h.queries()[-1][0] == "query_range"
    assert h.outbox()[2:] == [
        ({"__name__": "x", "model": "b"}, T0 + 60, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 120, 2.0),
        ({"__name__": "x", "model": "b"}, T0 + 120, 1.0),
        ({"__name__": "x", "model": "a"}, T0 + 180, 3.0),
        ({"__name__": "x", "model": "b"}, T0 + 180, 1.0),
    ]


async def test_each_query_s_evaluation_is_logged_with_what_it_did_and_its_time(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a"), span(T0 + 61, "b"), span(T0 + 62, "c")],
                now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    assert await h.tick(group)
    with structlog.testing.capture_logs() as events:
        assert await h.tick(group, 120)  # two windows: one range query
    (line,) = [e for e in events if e["event"] == "evaluation"]
    assert {k: line[k] for k in ("rule", "kind", "window_start", "window_end", "windows",
                                 "recorded", "series", "samples")} == {
        "rule": "x", "kind": "range", "window_start": T0 + 60, "window_end": T0 + 180,
        "windows": 2, "recorded": 2, "series": 3, "samples": 8}
    assert isinstance(line["seconds"], float)
    assert 0 <= line["seconds"] < 60


async def test_a_failed_query_keeps_the_checkpoint_and_is_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a", 0.5)], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml(expr=SUM)]))
    h.double.inject(Response(503, "text/plain", b"busy"))
    assert not await h.tick(group)
    assert h.state.outbox_samples() == 0
    (known,) = h.state.known_rules()
    assert known.checkpoint == T0  # pinned: a later retry starts from the same window
    assert h.failures("http_503") == 1
    assert await h.tick(group, 600)  # Tempo is back ten windows later: nothing is lost
    rows = h.outbox()
    assert rows[:2] == [
        ({"__name__": "x", "model": "a"}, T0, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 60, 0.5),
    ]
    assert rows[-1] == ({"__name__": "x", "model": "a"}, T0 + 660, 0.5)
    assert len(rows) == 12


@pytest.mark.parametrize("with_worker", [False, True])
async def test_partial_answer_is_a_failure(
    tmp_path: Path, worker: Worker, with_worker: bool,
) -> None:
    # with a worker the answer is parsed there: its TempoError reaches the engine the same
    h = Harness(tmp_path, [span(T0 + 10, "a")], now=T0 + 120,
                worker=worker if with_worker else None)
    group = h.load(rules_yaml(rules=[rule_yaml(expr=SUM)]))
    h.double.inject(Response(200, "application/json", b'{"status":"PARTIAL","message":"cut"}'))
    assert not await h.tick(group)
    assert h.state.outbox_samples() == 0
    assert h.failures("partial") == 1


async def test_gauge_writes_values_and_stale_markers(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a", 2.0), span(T0 + 20, "b", 1.0),
                           span(T0 + 70, "b", 4.0)], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml(expr=SUM, kind="gauge")]))
    assert await h.tick(group)
    assert await h.tick(group, 60)
    rows = h.outbox()
    assert rows[:2] == [
        ({"__name__": "x", "model": "a"}, T0 + 60, 2.0),
        ({"__name__": "x", "model": "b"}, T0 + 60, 1.0),
    ]
    stale_labels, stale_ts, stale_value = rows[2]
    assert (stale_labels, stale_ts) == ({"__name__": "x", "model": "a"}, T0 + 120)
    assert is_stale_nan(stale_value)
    assert rows[3] == ({"__name__": "x", "model": "b"}, T0 + 120, 4.0)


async def test_limit_fails_the_whole_evaluation(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a"), span(T0 + 20, "b")], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml(extra="limit: 1")]))
    assert not await h.tick(group)
    assert h.state.outbox_samples() == 0
    assert h.failures("limit") == 1


@pytest.mark.parametrize("start", ["0s", "10m"])
async def test_new_rule_starts_at_start(tmp_path: Path, start: str) -> None:
    h = Harness(tmp_path, now=T0 + 3600 + 30)
    group = h.load(rules_yaml(start=start, rules=[rule_yaml()]))
    assert await h.tick(group)
    windows = h.metrics.registry.get_sample_value(
        "tempo_bridge_windows_evaluated_total", {"group": "g", "rule": "x"}
    )
    assert windows == (1 if start == "0s" else 11)


async def test_a_state_that_cannot_be_read_fails_the_evaluation_not_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a")], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))

    def broken(key: object) -> None:
        raise StateError("cannot read the state: database disk image is malformed")

    monkeypatch.setattr(h.state, "load", broken)
    assert not await h.tick(group)
    assert h.failures("state") == 1
    monkeypatch.undo()
    assert await h.tick(group)


async def test_a_rule_with_damaged_rows_fails_alone_and_names_the_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a"), span(T0 + 70, "a")], now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml("x"), rule_yaml("y")]))
    assert await h.tick(group)
    h.state.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    with db:  # x's totals name a series the database does not hold
        db.execute("UPDATE totals SET ids = ? WHERE rule_id = ?",
                   (struct.pack("=q", 999), rule_key(group, group.rules[0]).rule_id))
    db.close()
    h.restart()
    capsys.readouterr()
    assert not await h.tick(group, 60)
    assert h.failures("state") == 1
    windows = h.metrics.registry.get_sample_value(
        "tempo_bridge_windows_evaluated_total", {"group": "g", "rule": "y"})
    assert windows == 1  # y went on
    assert ("the rule g/x's totals name the series id 999, which it does not hold"
            in capsys.readouterr().out)


async def test_dry_run_counts_from_zero_and_holds_back_young_windows(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a"), span(T0 + 70, "a"), span(T0 + 130, "a")],
                now=T0 + 1000)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    client = TempoClient("http://tempo", transport=h.double.transport())
    (run,) = await dry_run(client, [group], T0 + 60, T0 + 180, LIMITS, now=T0 + 1000)
    assert [(ts // 1000, v) for _, ts, v in run.samples] == [
        (T0 + 60, 0.0), (T0 + 120, 1.0), (T0 + 180, 2.0)
    ]
    # at T0 + 200 the window ending T0 + 180 is younger than the 60 s query_offset
    (run,) = await dry_run(client, [group], T0 + 60, T0 + 180, LIMITS, now=T0 + 200)
    assert [ts // 1000 for _, ts, _ in run.samples] == [T0 + 60, T0 + 120]
    assert run.stored is not None
    assert run.stored.checkpoint == T0 + 120


# -- settling ----------------------------------------------------------------------------


async def test_late_spans_are_added_by_settle_passes_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a")], now=T0 + 120)
    group = h.load(rules_yaml(settle="[10m, 1h]", rules=[rule_yaml()]))
    assert await h.tick(group)  # records (T0, T0+60]: a=1
    h.double.add_spans([span(T0 + 20, "a"), span(T0 + 30, "late")])  # late arrivals
    h.clock.now = T0 + 60 + 600 + 30  # the first window is 10 minutes old
    assert await h.tick(group)
    a = (("__name__", "x"), ("model", "a"))
    late = (("__name__", "x"), ("model", "late"))
    assert h.totals(group, group.rules[0]) == {a: 2.0, late: 1.0}
    stored = h.state.load(rule_key(group, group.rules[0]))
    assert stored is not None
    assert stored.settle_checkpoints == {600: T0 + 60, 3600: T0}
    # the new series starts at 0 at the checkpoint the settle pass saw, then its total
    rows = [(ts, v) for labels, ts, v in h.outbox() if labels.get("model") == "late"]
    assert rows[0] == (T0 + 60, 0.0)
    assert rows[1:]
    assert all(v == 1.0 for _, v in rows[1:])
    assert h.metrics.registry.get_sample_value(
        "tempo_bridge_settle_growth_total", {"group": "g", "rule": "x"}
    ) == 2
    # at 1 h the window is read again: nothing new, nothing counted twice
    h.clock.now = T0 + 60 + 3600 + 30
    assert await h.tick(group)
    assert h.totals(group, group.rules[0]) == {a: 2.0, late: 1.0}
    stored = h.state.load(rule_key(group, group.rules[0]))
    assert stored is not None
    assert stored.settle_checkpoints[3600] >= T0 + 60
    # values of windows past the oldest settle age are no longer kept
    assert all(w.end > stored.settle_checkpoints[3600] for w in stored.kept_windows)


async def test_windows_caught_up_late_are_not_read_again(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a")], now=T0 + 120)
    group = h.load(rules_yaml(settle="[10m]", rules=[rule_yaml()]))
    assert await h.tick(group)
    h.double.add_spans([span(T0 + 20, "a"), span(T0 + 70, "a")])  # one late, one new
    before = len(h.queries())
    assert await h.tick(group, T0 + 3600 - h.clock.now)  # down for an hour
    # the window recorded before is settled and the missed hour read: one range query
    assert [q for q, _ in h.queries()[before:]] == ["query_range"]
    assert h.queries()[-1][1]["start"] == str(T0)
    a = (("__name__", "x"), ("model", "a"))
    assert h.totals(group, group.rules[0]) == {a: 3.0}
    stored = h.state.load(rule_key(group, group.rules[0]))
    assert stored is not None
    assert stored.settle_checkpoints[600] == T0 + 3600 - 600  # first read when older than 10 m
    assert await h.tick(group, 60)
    assert len(h.queries()) == before + 3  # one settle read, one new window
    assert h.totals(group, group.rules[0]) == {a: 3.0}


async def test_one_settle_read_serves_every_age_after_a_downtime(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10, "a")], now=T0 + 120)
    group = h.load(rules_yaml(settle="[10m, 1h]", rules=[rule_yaml()]))
    assert await h.tick(group)  # records (T0, T0+60]
    h.double.add_spans([span(T0 + 20, "a"), span(T0 + 30, "late")])
    before = len(h.queries())
    assert await h.tick(group, T0 + 3 * 3600 - h.clock.now)  # down for three hours
    # the window recorded before the downtime is re-read with the catch-up: one query
    assert [q for q, _ in h.queries()[before:]] == ["query_range"]
    stored = h.state.load(rule_key(group, group.rules[0]))
    assert stored is not None
    assert h.totals(group, group.rules[0]) == {
        (("__name__", "x"), ("model", "a")): 2.0, (("__name__", "x"), ("model", "late")): 1.0,
    }
    assert stored.settle_checkpoints == {600: T0 + 3 * 3600 - 600, 3600: T0 + 2 * 3600}
    before = len(h.queries())
    assert await h.tick(group, 60)
    assert len(h.queries()) == before + 3  # a settle read per age, one new window


# -- edits (issue: rules get edited, every edit keeps the counters exact) ----------------------


def steady_spans(start: int, end: int, step: int = 7) -> list[Span]:
    return [span(t + 0.5, "ab"[(t // step) % 2]) for t in range(start, end, step)]


@pytest.mark.parametrize(("before", "after"), [(60, 300), (300, 60), (2700, 120)])
async def test_an_interval_change_continues_the_same_counters(
    tmp_path: Path, before: int, after: int
) -> None:
    spans = steady_spans(T0 - 7200, T0 + 4 * 3600)
    h = Harness(tmp_path, spans, now=T0)
    group = h.load(rules_yaml(interval=f"{before}s", settle="[90m]", start="1h",
                              rules=[rule_yaml()]))
    assert await h.tick(group)
    assert await h.tick(group, before + 45)
    first = min(int(p["start"]) for _, p in h.queries())
    edited = h.load(rules_yaml(interval=f"{after}s", settle="[90m]", rules=[rule_yaml()]))
    assert rule_key(edited, edited.rules[0]) == rule_key(group, group.rules[0])
    for _ in range(4):
        assert await h.tick(edited, after)
    # down for two hours, then a catch-up on the new grid
    assert await h.tick(edited, 7200)
    assert await h.tick(edited, 900)
    (known,) = h.state.known_rules()
    assert known.checkpoint % after == 0
    assert h.totals(edited, edited.rules[0]) == truth(spans, edited, edited.rules[0], first,
                                                     known.checkpoint)
    assert_increasing(h.outbox())
    # every window was read on one grid or the other, the transition window once: the
    # range queries of the catch-up are on the new grid
    ranges = [p for q, p in h.queries() if q == "query_range"]
    assert all(int(p["end"]) % int(p["step"].rstrip("s")) == 0 for p in ranges)


async def test_settle_ages_removed_and_put_back_never_count_twice(tmp_path: Path) -> None:
    spans = steady_spans(T0 - 3600, T0 + 3 * 3600)
    h = Harness(tmp_path, spans, now=T0)
    with_settle = h.load(rules_yaml(settle="[10m, 30m]", start="20m", rules=[rule_yaml()]))
    assert await h.tick(with_settle)
    first = min(int(p["start"]) for _, p in h.queries())
    late: list[Span] = []
    for step in range(40):
        config = h.load(rules_yaml(settle="[]" if 10 <= step < 25 else "[10m, 30m]",
                                   rules=[rule_yaml()]))
        new = [span(h.clock.now - 300 - 11 * i, "late") for i in range(3)]
        late += new
        h.double.add_spans(new)
        assert await h.tick(config, 60)
    (known,) = h.state.known_rules()
    # late spans that arrived while settle was off, and more than 30 minutes before the
    # ages came back, were never read again: everything else exactly once
    counted = h.totals(config, config.rules[0])
    want = truth(spans, config, config.rules[0], first, known.checkpoint)
    assert {k: v for k, v in counted.items() if ("model", "late") not in k} == want
    late_counted = counted.get((("__name__", "x"), ("model", "late")), 0.0)
    assert 0 < late_counted <= len(late)
    assert_increasing(h.outbox())


async def test_series_that_map_to_one_label_set_are_summed_not_refused(tmp_path: Path) -> None:
    spans = [span(T0 + 5, ""), span(T0 + 6, None), span(T0 + 7, 3), span(T0 + 8, "3"),
             span(T0 + 9, "unknown")]
    h = Harness(tmp_path, spans, now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml(extra="missing_value: unknown")]))
    assert await h.tick(group)
    assert h.totals(group, group.rules[0]) == {
        # "" and a missing attribute both become missing_value, like the real "unknown"
        (("__name__", "x"), ("model", "unknown")): 3.0,
        (("__name__", "x"), ("model", "3")): 2.0,
    }
    assert h.metrics.registry.get_sample_value(
        "tempo_bridge_series_merged_total", {"group": "g", "rule": "x"}
    ) == 3


async def test_a_kind_change_keeps_the_counter_for_when_it_comes_back(tmp_path: Path) -> None:
    spans = [span(T0 + 60 * i + 5, "a") for i in range(10)]
    h = Harness(tmp_path, spans, now=T0 + 120)
    counter = h.load(rules_yaml(rules=[rule_yaml()]))
    assert await h.tick(counter)
    assert await h.tick(counter, 60)
    gauge = h.load(rules_yaml(rules=[rule_yaml(kind="gauge")]))
    await h.retire_absent([gauge])
    assert await h.tick(gauge, 60)
    assert await h.tick(gauge, 60)
    counter = h.load(rules_yaml(rules=[rule_yaml()]))
    await h.retire_absent([counter])
    assert await h.tick(counter, 60)
    # the counter caught up the windows read as a gauge: 5 windows, one span each
    assert h.totals(counter, counter.rules[0]) == {(("__name__", "x"), ("model", "a")): 5.0}
    assert h.totals(counter, counter.rules[0]) == truth(spans, counter, counter.rules[0],
                                                       T0, T0 + 300)
    assert_increasing(h.outbox())


async def test_an_expression_change_starts_new_totals_where_the_old_rule_ended(
    tmp_path: Path,
) -> None:
    spans = [span(T0 + 60 * i + 5, "a") for i in range(10)]
    h = Harness(tmp_path, spans, now=T0 + 120)
    old = h.load(rules_yaml(start="1m", rules=[rule_yaml()]))
    assert await h.tick(old, 60)  # (T0, T0+60], (T0+60, T0+120]
    edited = h.load(rules_yaml(start="1h", rules=[rule_yaml(expr=COUNT.replace("= ", "=~ "))]))
    await h.retire_absent([edited])
    assert await h.tick(edited, 60)
    assert await h.tick(edited, 60)
    # new totals, from where the old rule ended (not from its own start: no window twice)
    a = (("__name__", "x"), ("model", "a"))
    assert h.totals(old, old.rules[0]) == {a: 2.0}
    assert h.totals(edited, edited.rules[0]) == {a: 2.0}
    rows = h.outbox()
    assert_increasing(rows)
    # Prometheus sees 2 at T0+120, the stale marker at T0+180, then the new rule's total
    # (a counter reset, which increase() counts from zero): each window once
    assert [(ts, "stale" if is_stale_nan(v) else v) for _, ts, v in rows] == [
        (T0, 0.0), (T0 + 60, 1.0), (T0 + 120, 2.0), (T0 + 180, "stale"), (T0 + 240, 2.0)
    ]


async def test_a_label_edit_relabels_the_totals_and_ends_the_old_series(tmp_path: Path) -> None:
    spans = [span(T0 + 60 * i + 5, "a") for i in range(10)]
    h = Harness(tmp_path, spans, now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    assert await h.tick(group, 60)
    before = len(h.outbox())
    edited = h.load(rules_yaml(labels="{team: llm}", rules=[rule_yaml(extra="rename: {model: m}")]))
    assert rule_key(edited, edited.rules[0]) == rule_key(group, group.rules[0])
    assert await h.tick(edited, 60)
    new = h.outbox()[before:]
    assert new[0][:2] == ({"__name__": "x", "m": "a", "team": "llm"}, T0 + 120)  # previous
    assert new[0][2] == 1.0
    assert new[1][:2] == ({"__name__": "x", "model": "a"}, T0 + 180)
    assert is_stale_nan(new[1][2])
    assert new[2] == ({"__name__": "x", "m": "a", "team": "llm"}, T0 + 180, 2.0)


async def test_one_second_windows_catch_up_within_the_step_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 0.5 + i, "a") for i in range(0, 3 * 3600, 10)], now=T0)
    group = h.load(rules_yaml(interval="1s", start="3h", rules=[rule_yaml()]).replace(
        "query_offset: 60s", "query_offset: 1s"))
    assert await h.tick(group)
    steps = [(int(p["end"]) - int(p["start"])) for q, p in h.queries() if q == "query_range"]
    assert steps
    assert all(s <= 10_000 for s in steps)
    (known,) = h.state.known_rules()
    assert known.checkpoint == T0 - 1
    assert h.failures("http_400") is None


@pytest.mark.parametrize("with_worker", [False, True])
async def test_a_retired_rule_put_back_writes_after_its_stale_markers(
    tmp_path: Path, worker: Worker, with_worker: bool,
) -> None:
    spans = [span(T0 + 30 * i + 5, "a", 2.0) for i in range(40)]
    h = Harness(tmp_path, spans, now=T0 + 120, worker=worker if with_worker else None)
    rules = [rule_yaml(), rule_yaml("g_max", SUM, "gauge")]
    both = h.load(rules_yaml(rules=rules))
    assert await h.tick(both)
    alone = h.load(rules_yaml(rules=rules[:1]))
    await h.retire_absent([alone])
    stale = [r for r in h.outbox() if r[0]["__name__"] == "g_max" and is_stale_nan(r[2])]
    assert [ts for _, ts, _ in stale] == [T0 + 120]  # at its next window end, not now
    assert await h.tick(both, 30)  # put back at once
    assert await h.tick(both, 60)
    assert await h.tick(both, 60)
    assert_increasing(h.outbox())
    gauge = [r for r in h.outbox() if r[0]["__name__"] == "g_max"]
    # its value at T0 + 120 has no place after the stale marker there; the next one has
    assert [(ts, is_stale_nan(v)) for _, ts, v in gauge] == [
        (T0 + 60, False), (T0 + 120, True), (T0 + 180, False)
    ]
    # with a worker, the encoder runs on its thread only (its caches are not shared)
    assert all(name.startswith("tempo-bridge-worker") for name in h.encoded_on) is with_worker
    assert gauge[-1][2] == 4.0


async def test_idle_series_stop_and_the_state_stays_bounded(tmp_path: Path) -> None:
    """30 days of API keys that rotate daily: the per-window writes and the state stay
    bounded by the keys in use, not by every key there ever was."""
    day = 86400
    spans = [span(T0 + t + 1, f"key-{t // day}") for t in range(0, 30 * day, 600)]
    h = Harness(tmp_path, spans, now=T0, retention=7 * day)
    group = h.load(rules_yaml(interval="10m", rules=[rule_yaml()]).replace(
        "start: 0s", "start: 0s"), idle_after=3600)
    samples_per_day: list[int] = []
    sizes: list[dict[str, int]] = []
    for _ in range(30):
        before = h.state.outbox_samples()
        assert await h.tick(group, day)
        samples_per_day.append(h.state.outbox_samples() - before)
        h.state.remove_from_outbox(i for i, _ in h.state.outbox(limit=10**6))
        h.state.collect_garbage()
        sizes.append(h.state.size())
    # a key is written for a day and an hour, then ends: about 150 samples a day
    assert max(samples_per_day[1:]) <= 24 * 6 + 6 + 4
    totals = [s["totals"] for s in sizes]
    assert max(totals[10:]) <= 9  # the keys of the last 7 days and today's
    assert max(s["series"] for s in sizes[10:]) <= 2 * 9 + 2


async def test_catch_up_queries_are_sized_by_points(tmp_path: Path) -> None:
    # 50 series, a day to catch up, at most 2,000 points an answer: the first query, the
    # series not known yet, reads UNKNOWN_SERIES_WINDOWS (20) windows; the others 40
    # (2,000 / 50), and each answer stays within max_points.
    spans = [span(T0 + 30 + 60 * i, f"m{m}") for i in range(1440) for m in range(50)]
    limits = dataclasses.replace(LIMITS, max_points=2_000)
    h = Harness(tmp_path, spans, now=T0 + 86400 + 60, limits=limits)
    group = h.load(rules_yaml(start="24h", rules=[rule_yaml()]))
    assert await h.tick(group)
    ranges = [params for kind, params in h.queries() if kind == "query_range"]
    windows = [(int(p["end"]) - int(p["start"])) // 60 for p in ranges]
    assert windows[0] == UNKNOWN_SERIES_WINDOWS
    assert set(windows[1:-1]) == {2_000 // 50}
    # start: 24h is 24 h before the latest window: 1,441 windows
    assert sum(windows) == 1441
    assert len(ranges) == 1 + math.ceil(1421 / 40)
    assert h.totals(group, group.rules[0]) == {
        (("__name__", "x"), ("model", f"m{m}")): 1440.0 for m in range(50)}


async def test_a_catch_up_far_behind_writes_only_what_the_receiver_takes(tmp_path: Path) -> None:
    h = Harness(tmp_path, [span(T0 + 10 + 60 * i, "a") for i in range(60)], now=T0 + 3660)
    client = TempoClient("http://tempo", transport=h.double.transport())
    engine = Engine(client, h.state, h.metrics, limits=LIMITS, max_sample_age=600,
                    clock=h.clock, encode=h._encode, on_commit=h._committed)
    group = h.load(rules_yaml(start="1h", rules=[rule_yaml()]))
    assert await engine.evaluate_group(group)
    rows = h.outbox()
    assert min(ts for _, ts, _ in rows) >= h.clock.now - 600
    assert rows[-1][2] == 60.0  # the total holds every window


async def test_a_long_catch_up_skips_the_windows_that_aged_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which windows the receiver still takes is judged at each step, not when the
    evaluation began: windows that grew too old meanwhile are counted, not written."""
    h = Harness(tmp_path, [span(T0 + 10 + 60 * i, "a") for i in range(60)], now=T0 + 3660)
    client = TempoClient("http://tempo", transport=h.double.transport())
    engine = Engine(client, h.state, h.metrics, limits=Limits(max_duration=600),
                    max_sample_age=1800, clock=h.clock, encode=h._encode,
                    on_commit=h._committed)
    group = h.load(rules_yaml(start="1h", rules=[rule_yaml()]))
    elapsed = itertools.count(0, 10)  # each look at the monotonic clock, 10 s later
    started = time.monotonic()
    monkeypatch.setattr("bridge.engine.time.monotonic", lambda: started + next(elapsed))
    assert await engine.evaluate_group(group)
    rows = h.outbox()
    queries = len(h.queries())
    assert queries > 3  # several steps, each later than the one before
    # the oldest window written was young enough when its step ran, not only at the start
    assert min(ts for _, ts, _ in rows) > h.clock.now - 1800 + 60
    assert rows[-1][2] == 60.0  # the total holds every window


# -- off the event loop ----------------------------------------------------------------------


def _held(stage: Callable[..., object], loop: asyncio.AbstractEventLoop,
          seen: list[tuple[str, bool]]) -> Callable[..., object]:
    """``stage`` that first asks the event loop for a callback and waits for it (run on
    the loop itself, it would wait in vain), noting its thread and whether the loop ran."""

    def held(*args: object, **kwargs: object) -> object:
        loop_ran = threading.Event()
        loop.call_soon_threadsafe(loop_ran.set)
        seen.append((threading.current_thread().name, loop_ran.wait(10.0)))
        return stage(*args, **kwargs)

    return held


async def test_after_a_restart_an_evaluation_keeps_the_label_sets_the_state_read_back(
    tmp_path: Path,
) -> None:
    """A restarted daemon holds every label set its state read back, and its first
    evaluation makes each again, from Tempo's answer and by the label mapper: it keeps
    the state's instead, so that each is held once (145 MB at a million series)."""
    spans = [span(T0 + 10, "a"), span(T0 + 61, "b"), span(T0 + 130, "a"), span(T0 + 131, "b")]
    h = Harness(tmp_path, spans, now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    assert await h.tick(group)
    h.restart()
    before = len(h.written)
    assert await h.tick(group, 60)
    held = {id(labels) for labels in h.state._labels.values()}
    written = [labels for labels, _, _ in h.written[before:]]
    assert written
    assert all(id(labels) in held for labels in written)  # the mapper's
    found = list(h.engine._tempo._keys._keys.values())  # the client's keys of the answer
    assert found
    assert all(id(key) in held for key in found)


async def test_with_a_worker_answers_are_parsed_and_evaluated_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: Worker,
) -> None:
    """A big rule takes seconds to parse and evaluate: meanwhile the loop answers the
    watchdog, health checks and scrapes. The result is what the loop alone would give."""
    spans = [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b"), span(T0 + 130, "a")]
    alone = Harness(tmp_path / "alone", spans, now=T0 + 120)
    h = Harness(tmp_path, spans, now=T0 + 120, worker=worker)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    for harness in (alone, h):
        assert await harness.tick(group)
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr("bridge.tempo.RUN_BYTES", 0)  # a run of the answer taken as it comes
    monkeypatch.setattr("bridge.tempo._Parse.take", _held(_Parse.take, loop, seen))
    monkeypatch.setattr("bridge.tempo._Parse.finish", _held(_Parse.finish, loop, seen))
    monkeypatch.setattr("bridge.engine.evaluate", _held(evaluate, loop, seen))
    assert await h.tick(group, 120)
    assert [ok for _, ok in seen] == [True, True, True]  # the answer's run, its rest, evaluation
    assert all(name.startswith("tempo-bridge-worker") for name, _ in seen)
    monkeypatch.undo()
    assert await alone.tick(group, 120)
    assert h.outbox() == alone.outbox()
    assert h.totals(group, group.rules[0]) == alone.totals(group, group.rules[0])


async def test_with_a_state_worker_the_state_is_read_and_committed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: Worker, state_worker: Worker,
) -> None:
    """The first commit of a million series stores two million label sets (about 12 s):
    meanwhile the loop answers the watchdog and health checks. Same result as alone."""
    spans = [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b"), span(T0 + 130, "a")]
    alone = Harness(tmp_path / "alone", spans, now=T0 + 120)
    h = Harness(tmp_path, spans, now=T0 + 120, worker=worker, state_worker=state_worker)
    group = h.load(rules_yaml(settle="[10m]", rules=[rule_yaml()]))  # windows read again
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    called: list[str] = []

    def noted(name: str) -> Callable[..., object]:
        held = _held(getattr(h.state, name), loop, seen)

        def call(*args: object, **kwargs: object) -> object:
            called.append(name)
            return held(*args, **kwargs)

        return call

    for name in ("load", "kept_values", "commit"):
        monkeypatch.setattr(h.state, name, noted(name))
    for advance in (0, 660):
        assert await h.tick(group, advance)
        assert await alone.tick(group, advance)
    assert len(seen) >= 6  # each tick: the rule's state, the kept windows, the commit
    assert {"load", "kept_values", "commit"} <= set(called)
    assert all(ok and name.startswith("tempo-bridge-state") for name, ok in seen)
    monkeypatch.undo()  # the test's own reads below are made here
    assert h.outbox() == alone.outbox()
    assert h.totals(group, group.rules[0]) == alone.totals(group, group.rules[0])


async def test_an_evaluation_cancelled_during_its_commit_ends_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: Worker, state_worker: Worker,
) -> None:
    """A stop that comes while the state's worker commits: the evaluation ends once the
    commit has (the daemon closes the state after), the window is recorded once."""
    spans = [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b")]
    h = Harness(tmp_path, spans, now=T0 + 120, worker=worker, state_worker=state_worker)
    alone = Harness(tmp_path / "alone", spans, now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    loop, started, release = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
    commit = h.state.commit

    def held(key: RuleKey, update: Update, *args: Any, **kwargs: Any) -> Any:
        if update.samples:  # the evaluation's, not the new rule's first checkpoint
            loop.call_soon_threadsafe(started.set)
            assert release.wait(10.0)
        return commit(key, update, *args, **kwargs)

    monkeypatch.setattr(h.state, "commit", held)
    tick = asyncio.ensure_future(h.tick(group))
    await started.wait()
    tick.cancel()
    await asyncio.sleep(0.05)
    assert not tick.done()  # waiting for its commit
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await tick
    assert await alone.tick(group)
    key = rule_key(group, group.rules[0])
    assert h.state.load(key) == alone.state.load(key)  # the commit went through
    monkeypatch.undo()
    assert await h.tick(group)  # nothing more to record: no window is read twice
    # in the outbox, not handed to the sender in memory: it reads them back from there
    assert h.written == []
    assert queued(h.state) == queued(alone.state) != []


async def test_an_evaluation_cancelled_while_the_worker_runs_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: Worker,
) -> None:
    """A stop cancels the evaluations under way: one waiting for the worker stops before
    its commit, and the next run records the same windows, once."""
    spans = [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b")]
    h = Harness(tmp_path, spans, now=T0 + 120, worker=worker)
    alone = Harness(tmp_path / "alone", spans, now=T0 + 120)
    group = h.load(rules_yaml(rules=[rule_yaml()]))
    loop, started, release = asyncio.get_running_loop(), asyncio.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        assert release.wait(10.0)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr("bridge.engine.evaluate", held)
    tick = asyncio.ensure_future(h.tick(group))
    await started.wait()
    tick.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tick
    release.set()
    stored = h.state.load(rule_key(group, group.rules[0]))
    assert stored is not None
    assert (stored.checkpoint, stored.totals) == (T0, {})  # where it began: no window
    assert h.written == []
    monkeypatch.setattr("bridge.engine.evaluate", evaluate)
    assert await h.tick(group)
    assert await alone.tick(group)
    assert h.outbox() == alone.outbox()
