"""State: atomic evaluations, restart, outbox order and the last-sent marks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from bridge.errors import StateError
from bridge.state import State

A = (("__name__", "x_total"), ("model", "a"))
B = (("__name__", "x_total"), ("model", "b"))


def commit(state: State, checkpoint: int, **kwargs: object) -> None:
    state.commit_evaluation(
        rule_id="r1", group="g", record="x_total", expr="{} | count_over_time()",
        kind="counter", checkpoint=checkpoint, **kwargs,  # type: ignore[arg-type]
    )


def test_evaluation_survives_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    assert state.rule_state("r1") is None
    commit(state, 120, totals={A: 1.5, B: 2.0}, samples=[(A, 60_000, 0.0), (A, 120_000, 1.5)])
    state.close()

    state = State(tmp_path / "s.sqlite")
    stored = state.rule_state("r1")
    assert stored is not None
    assert stored.checkpoint == 120
    assert stored.totals == {A: 1.5, B: 2.0}
    rows = state.outbox_head(10)
    assert [(r.labels, r.ts_ms, r.value) for r in rows] == [(A, 60_000, 0.0), (A, 120_000, 1.5)]
    assert state.known_rules() == [("r1", "g", "x_total", "counter")]


def test_a_failed_commit_leaves_nothing(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    commit(state, 60, totals={A: 1.0})

    class BoomError(Exception):
        pass

    def exploding_samples() -> object:
        yield (B, 120_000, 1.0)
        raise BoomError

    with pytest.raises(BoomError):
        commit(state, 120, totals={A: 2.0, B: 1.0}, samples=exploding_samples())
    stored = state.rule_state("r1")
    assert stored is not None
    assert (stored.checkpoint, stored.totals) == (60, {A: 1.0})
    assert state.outbox_depth() == 0
    # the series B was rolled back with the transaction and can be created again
    commit(state, 120, totals={A: 2.0, B: 1.0}, samples=[(B, 120_000, 1.0)])
    assert [r.labels for r in state.outbox_head(10)] == [B]
    state.close()
    assert State(tmp_path / "s.sqlite").outbox_head(10)[0].labels == B


def test_outbox_is_read_in_order_and_last_sent_only_grows(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    commit(state, 60, samples=[(A, 60_000, 1.0), (B, 60_000, 2.0)])
    commit(state, 120, samples=[(A, 120_000, 3.0)])
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


def test_gauge_live_set_is_replaced(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    commit(state, 60, live_gauges={A, B})
    commit(state, 120, live_gauges={B})
    stored = state.rule_state("r1")
    assert stored is not None
    assert stored.live_gauges == {B}


def test_forget_rule(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    commit(state, 60, totals={A: 1.0})
    state.forget_rule("r1")
    assert state.rule_state("r1") is None


def test_unopenable_state_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StateError, match="cannot open the state database"):
        State(tmp_path / "file" / "s.sqlite")


def test_stale_markers_keep_their_bits(tmp_path: Path) -> None:
    from bridge.series import STALE_NAN, is_stale_nan

    state = State(tmp_path / "s.sqlite")
    commit(state, 60, samples=[(A, 60_000, STALE_NAN), (B, 60_000, float("nan"))])
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
