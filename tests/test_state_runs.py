"""State's bulk paths: outbox rows removed by runs of ids, new series stored in one statement."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import cast

import pytest

from bridge.errors import StateError
from bridge.evaluation import Total, Update
from bridge.series import Labels, Sample
from bridge.state import RuleKey, State, _decode_labels, _encode_labels, _runs

RULE = RuleKey("g", "x", "e", "counter")


def test_runs_of_consecutive_ids() -> None:
    assert _runs([]) == []
    assert _runs([7]) == [(7, 7)]
    assert _runs([1, 2, 3, 5, 6, 9]) == [(1, 3), (5, 6), (9, 9)]


def test_remove_from_outbox_keeps_the_rows_between_runs(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    labels = (("__name__", "x"),)
    state.commit(RULE, Update(60, frozenset(), {}, samples=[(labels, t, 1.0) for t in range(10)]))
    rows = state.outbox_head(10)
    state.remove_from_outbox(delivered=rows[:3] + rows[5:7], dropped=rows[9:])
    assert [r.ts_ms for r in state.outbox_head(10)] == [3, 4, 7, 8]
    assert state.last_sent([rows[0].series_id]) == {rows[0].series_id: 6}
    state.close()


def test_new_series_get_the_ids_sqlite_would_give_and_survive_a_failed_commit(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.sqlite")
    a, b, c, d = ((("__name__", n),) for n in "abcd")

    def commit(*labels: Labels, samples: list[Sample] | None = None) -> None:
        totals = {k: Total(1.0, 60) for k in labels}
        state.commit(RULE, Update(60, frozenset(), {}, totals=totals, samples=samples or []))

    commit(a, b)
    with pytest.raises(StateError):  # a sample SQLite cannot store: nothing is kept
        commit(d, samples=[(d, cast(int, object()), 1.0)])
    commit(c, b)
    state.close()
    reopened = State(tmp_path / "state.sqlite")
    stored = reopened.load(RULE)
    assert stored is not None
    assert stored.totals == {k: Total(1.0, 60) for k in (a, b, c)}
    assert [reopened._ids[k] for k in (a, b, c)] == [1, 2, 3]
    assert d not in reopened._ids
    reopened.close()


def test_labels_are_stored_as_json_dumps_writes_them() -> None:
    rng = random.Random(3)
    alphabet = 'ab "\\/\n\t\x00\x1f\x7fé€😀\u2028\ud800'
    for n in range(300):
        labels = tuple((f"n{i}", "".join(rng.choices(alphabet, k=rng.randrange(8))))
                       for i in range(n % 6))
        expected = json.dumps(labels, separators=(",", ":"), ensure_ascii=False)
        assert _encode_labels(labels) == expected
        assert _decode_labels(expected) == labels
