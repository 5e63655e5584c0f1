"""State: atomic commits, restart, the outbox, the last queued timestamps, retention and
the upgrade from tempo-bridge 0.1's schema."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import pytest

from bridge.errors import StateError
from bridge.evaluation import Stored, TempoKey, Total, Update
from bridge.series import STALE_NAN, Labels, is_stale_nan
from bridge.state import RuleKey, State, _decode_labels
from bridge.windows import Window

A: Labels = (("__name__", "x_total"), ("model", "a"))
B: Labels = (("__name__", "x_total"), ("model", "b"))
KA: TempoKey = (("span.model", "a"),)
KB: TempoKey = (("span.model", "b"),)
RULE = RuleKey("g", "x_total", "{} | count_over_time() by (span.model)", "counter")


def update(checkpoint: int, **kwargs: object) -> Update:
    fields: dict[str, object] = {"live": frozenset(), "settled": {}, **kwargs}
    return Update(checkpoint, **fields)  # type: ignore[arg-type]


def test_a_commit_survives_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    assert state.load(RULE) is None
    window = Window(60, 120)
    state.commit(RULE, update(
        120, totals={KA: Total(1.5, 120), KB: Total(2.0, 60)}, live=frozenset({A}),
        settled={600: 60}, keep={window: {KA: 1.5}}, prune_upto=60,
        samples=[(A, 60_000, 0.0), (A, 120_000, 1.5)],
    ), interval=60, tenant="t1")
    state.close()

    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored == Stored(
        120, {KA: Total(1.5, 120), KB: Total(2.0, 60)}, frozenset({A}), {600: 60}, (window,)
    )
    assert state.kept(RULE, [window, Window(120, 180)]) == {window: {KA: 1.5}}
    rows = state.outbox_head(10)
    assert [(r.labels, r.ts_ms, r.value) for r in rows] == [(A, 60_000, 0.0), (A, 120_000, 1.5)]
    (known,) = state.known_rules()
    assert (known.key, known.checkpoint, known.interval, known.tenant) == (RULE, 120, 60, "t1")
    assert state.last_ts[A] == 120_000  # rebuilt from the outbox


def test_identity_is_group_record_expr_and_kind() -> None:
    assert len(RULE.rule_id) == 16
    assert int(RULE.rule_id, 16) >= 0
    for part in ("group", "record", "expr", "kind"):
        assert RULE._replace(**{part: "other"}).rule_id != RULE.rule_id


def test_a_failed_commit_leaves_nothing_on_disk_or_in_memory(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=[(A, 60_000, 1.0)]))

    class BoomError(Exception):
        pass

    class Exploding(Update):
        @property
        def samples(self) -> list[tuple[Labels, int, float]]:
            raise BoomError

        @samples.setter
        def samples(self, value: object) -> None:
            pass

    bad = Exploding(120, frozenset({B}), {}, totals={KA: Total(2.0, 120), KB: Total(1.0, 120)})
    with pytest.raises(BoomError):
        state.commit(RULE, bad)
    stored = state.load(RULE)
    assert stored is not None
    assert (stored.checkpoint, stored.totals, stored.live) == (60, {KA: Total(1.0, 60)},
                                                              frozenset({A}))
    assert state.outbox_depth() == 1
    assert B not in state.last_ts
    # the label sets KB and B were rolled back with the transaction and can be made again
    state.commit(RULE, update(120, totals={KB: Total(1.0, 120)}, live=frozenset({B}),
                              samples=[(B, 120_000, 1.0)]))
    state.close()
    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored is not None
    assert stored.live == {B}
    assert state.outbox_head(10)[-1].labels == B


def test_the_live_set_is_replaced(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, live=frozenset({A, B})))
    state.commit(RULE, update(120, live=frozenset({B})))
    stored = state.load(RULE)
    assert stored is not None
    assert stored.live == {B}
    assert state.size()["live"] == 1


def test_settle_ages_and_kept_windows_are_replaced_and_pruned(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    windows = [Window(0, 60), Window(60, 120), Window(120, 180)]
    state.commit(RULE, update(180, settled={600: 0, 3600: 0},
                              keep={x: {KA: float(x.end)} for x in windows}))
    state.commit(RULE, update(180, settled={600: 120}, prune_upto=120))
    stored = state.load(RULE)
    assert stored is not None
    assert stored.settled == {600: 120}
    assert stored.recorded == (Window(120, 180),)
    assert state.kept(RULE, windows) == {Window(120, 180): {KA: 180.0}}


def test_outbox_is_read_in_order_and_last_sent_only_grows(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, samples=[(A, 60_000, 1.0), (B, 60_000, 2.0)]))
    state.commit(RULE, update(120, samples=[(A, 120_000, 3.0)]))
    rows = state.outbox_head(2)
    assert [(r.labels, r.ts_ms) for r in rows] == [(A, 60_000), (B, 60_000)]
    state.remove_from_outbox(delivered=rows)
    assert state.outbox_depth() == 1
    assert state.outbox_oldest_ts_ms() == 120_000
    last = state.outbox_head(1)
    state.remove_from_outbox(delivered=last)
    ids = {r.labels: r.series_id for r in rows}
    assert state.last_sent([ids[A], ids[B]]) == {ids[A]: 120_000, ids[B]: 60_000}
    assert state.outbox_depth() == 0
    assert state.outbox_oldest_ts_ms() is None
    state.close()
    state = State(tmp_path / "s.sqlite")
    assert (state.last_ts[A], state.last_ts[B]) == (120_000, 60_000)  # from what was sent


def test_removed_rules_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    other = RULE._replace(record="y_total")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=[(A, 60_000, 1.0)]))
    state.commit(other, update(60, totals={KB: Total(1.0, 60)}))
    stale = update(60, samples=[(A, 120_000, STALE_NAN)])
    state.mark_removed(RULE, 1000.0, stale)
    (known,) = [k for k in state.known_rules() if k.key == RULE]
    assert (known.removed_at, known.live) == (1000.0, 0)
    assert state.forget_removed(before=1000.0) == []
    # put back: a commit clears removed_at
    state.commit(RULE, update(60, live=frozenset()))
    assert state.forget_removed(before=2000.0) == []
    state.mark_removed(RULE, 1500.0)
    assert state.forget_removed(before=2000.0) == [RULE]
    assert state.load(RULE) is None
    assert state.load(other) is not None
    # the outbox still refers to A: it stays until sent, then its label set can go
    state.remove_from_outbox(delivered=state.outbox_head(10))
    assert state.collect_garbage(sent_before_ms=10**15) == 2  # KA and A
    assert state.size()["series"] == 1  # KB
    assert A not in state.last_ts


def test_unopenable_state_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StateError, match="cannot open the state database"):
        State(tmp_path / "file" / "s.sqlite")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    State(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="schema version 99 is newer"):
        State(path)


def test_stale_markers_keep_their_bits(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, samples=[(A, 60_000, STALE_NAN), (B, 60_000, float("nan"))]))
    state.close()
    stale, nan = State(tmp_path / "s.sqlite").outbox_head(10)
    assert is_stale_nan(stale.value)
    assert math.isnan(nan.value)
    assert not is_stale_nan(nan.value)


def test_an_exclusive_state_refuses_a_second_bridge(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = State(path, exclusive=True)
    with pytest.raises(StateError, match=rf"in use by another tempo-bridge \(pid {os.getpid()}\)"):
        State(path, exclusive=True)
    reader = State(path)  # tests and tools may still read it
    reader.close()
    first.close()
    State(path, exclusive=True).close()  # released on close


VERSION_0 = """
CREATE TABLE rules (rule_id TEXT PRIMARY KEY, group_name TEXT NOT NULL, record TEXT NOT NULL,
    expr TEXT NOT NULL, kind TEXT NOT NULL, checkpoint INTEGER NOT NULL);
CREATE TABLE series (series_id INTEGER PRIMARY KEY, labels TEXT NOT NULL UNIQUE);
CREATE TABLE totals (rule_id TEXT NOT NULL, series_id INTEGER NOT NULL, total REAL NOT NULL,
    PRIMARY KEY (rule_id, series_id)) WITHOUT ROWID;
CREATE TABLE live_gauges (rule_id TEXT NOT NULL, series_id INTEGER NOT NULL,
    PRIMARY KEY (rule_id, series_id)) WITHOUT ROWID;
CREATE TABLE window_values (rule_id TEXT NOT NULL, window_end INTEGER NOT NULL,
    series_id INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (rule_id, window_end, series_id)) WITHOUT ROWID;
CREATE TABLE settle (rule_id TEXT NOT NULL, age INTEGER NOT NULL, checkpoint INTEGER NOT NULL,
    PRIMARY KEY (rule_id, age)) WITHOUT ROWID;
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, series_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL, value REAL, nan_bits INTEGER);
CREATE TABLE sent (series_id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL);
INSERT INTO rules VALUES ('old-counter', 'g', 'x_total', '{} | count_over_time() by (span.model)',
    'counter', 600);
INSERT INTO rules VALUES ('old-gauge', 'g', 'top', '{} | max_over_time(span.cost)', 'gauge', 600);
INSERT INTO series VALUES (1, '[["__name__","x_total"],["model","a"]]');
INSERT INTO series VALUES (2, '[["__name__","top"]]');
INSERT INTO totals VALUES ('old-counter', 1, 42.0);
INSERT INTO live_gauges VALUES ('old-gauge', 2);
INSERT INTO window_values VALUES ('old-counter', 600, 1, 2.0);
INSERT INTO settle VALUES ('old-counter', 600, 540);
INSERT INTO outbox (series_id, ts_ms, value) VALUES (1, 600000, 42.0);
INSERT INTO sent VALUES (2, 600000);
"""


def test_a_version_0_state_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_0)
    state = State(path)
    counter = state.load(RULE)
    assert counter is not None
    # totals per Prometheus series wait for the Tempo series that map to them
    assert counter.legacy == {A: 42.0}
    assert counter.totals == {}
    assert counter.live == {A}
    # kept values per Prometheus series cannot be compared with Tempo's: settled from here
    assert counter.settled == {600: 600}
    assert counter.recorded == ()
    top = (("__name__", "top"),)
    gauge = state.load(RuleKey("g", "top", "{} | max_over_time(span.cost)", "gauge"))
    assert gauge is not None
    assert gauge.live == {top}
    assert (state.last_ts[A], state.last_ts[top]) == (600_000, 600_000)
    assert [r.labels for r in state.outbox_head(10)] == [A]
    state.close()
    State(path).close()  # opened again: nothing to upgrade
    assert _decode_labels('[["a","b"]]') == (("a", "b"),)
