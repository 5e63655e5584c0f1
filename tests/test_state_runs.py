"""State removes outbox rows by runs of consecutive ids: every given id, and no other."""

from __future__ import annotations

from pathlib import Path

from bridge.state import State, _runs


def test_runs_of_consecutive_ids() -> None:
    assert _runs([]) == []
    assert _runs([7]) == [(7, 7)]
    assert _runs([1, 2, 3, 5, 6, 9]) == [(1, 3), (5, 6), (9, 9)]


def test_remove_from_outbox_keeps_the_rows_between_runs(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    labels = (("__name__", "x"),)
    state.commit_evaluation(rule_id="r", group="g", record="x", expr="e", kind="counter",
                            checkpoint=60, samples=[(labels, t, 1.0) for t in range(10)])
    rows = state.outbox_head(10)
    state.remove_from_outbox(delivered=rows[:3] + rows[5:7], dropped=rows[9:])
    assert [r.ts_ms for r in state.outbox_head(10)] == [3, 4, 7, 8]
    assert state.last_sent([rows[0].series_id]) == {rows[0].series_id: 6}
    state.close()
