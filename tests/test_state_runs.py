"""State's bulk paths: outbox rows removed by runs of ids, new series stored in one statement."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from bridge.errors import StateError
from bridge.evaluation import Update
from bridge.remote_write import Batch, encode_batches
from bridge.series import Labels, Sample
from bridge.state import RuleKey, State, _encode_labels, _LabelDecoder, _runs
from bridge.totals import Total
from bridge.windows import Window

RULE = RuleKey("g", "x", "e", "counter")


def test_runs_of_consecutive_ids() -> None:
    assert _runs([]) == []
    assert _runs([7]) == [(7, 7)]
    assert _runs([1, 2, 3, 5, 6, 9]) == [(1, 3), (5, 6), (9, 9)]


def test_remove_from_outbox_keeps_the_rows_between_runs(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    samples: list[Sample] = [((("__name__", "x"),), t, 1.0) for t in range(10)]
    ids = state.commit(RULE, Update(60, frozenset(), {}, samples=samples),
                       encode_batches(samples, {}, {}, 1))
    state.remove_from_outbox(ids[:3] + ids[5:7] + ids[9:])
    assert [batch.min_ts for _, batch in state.outbox()] == [3, 4, 7, 8]
    assert state.outbox_samples() == 4
    state.close()


def test_new_series_get_the_ids_sqlite_would_give_and_survive_a_failed_commit(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / "state.sqlite")
    a, b, c, d = ((("__name__", n),) for n in "abcd")

    def commit(*labels: Labels, batches: Sequence[Batch] = ()) -> None:
        totals = {k: Total(1.0, 60) for k in labels}
        state.commit(RULE, Update(60, frozenset(), {}, totals=totals), batches)

    commit(a, b)
    with pytest.raises(StateError):  # a request SQLite cannot store: nothing is kept
        commit(d, batches=[Batch(cast(bytes, object()), 1, 0, 0)])
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
    decode = _LabelDecoder()
    alphabet = 'ab "\\/\n\t\x00\x1f\x7fé€😀\u2028\ud800'
    for n in range(300):
        labels = tuple((f"n{i}", "".join(rng.choices(alphabet, k=rng.randrange(8))))
                       for i in range(n % 6))
        expected = json.dumps(labels, separators=(",", ":"), ensure_ascii=False)
        assert _encode_labels(labels) == expected
        assert decode(expected) == labels


def test_remembered_ids_follow_a_failed_commit_and_garbage_collection(tmp_path: Path) -> None:
    """The ids of an unchanged list of series are remembered between commits; a label set
    that is given another id (its first one rolled back, or collected and given again)
    is never written with the old one."""
    state = State(tmp_path / "state.sqlite")
    a, b, c = ((("__name__", n),) for n in "abc")
    window = Window(0, 60)

    def commit(totals: Sequence[Labels], kept: Sequence[Labels], prune: int = 0,
               batches: Sequence[Batch] = ()) -> None:
        state.commit(RULE, Update(
            60, frozenset(), {}, totals={k: Total(1.0, 60) for k in totals},
            kept_values={window: dict.fromkeys(kept, 2.0)} if kept else {}, prune_upto=prune,
        ), batches)

    with pytest.raises(StateError):  # a and b were given ids 1 and 2, rolled back
        commit([], [a, b], batches=[Batch(cast(bytes, object()), 1, 0, 0)])
    commit([c], [a, b])  # c is 1 now, a and b 2 and 3
    assert state.kept_values(RULE, [window]) == {window: {a: 2.0, b: 2.0}}
    commit([c], [], prune=60)  # the window is gone: nothing refers to a and b
    assert state.collect_garbage() == 2
    commit([c], [a, b])  # their ids again, from the state rather than remembered
    state.close()
    reopened = State(tmp_path / "state.sqlite")
    assert reopened.kept_values(RULE, [window]) == {window: {a: 2.0, b: 2.0}}
    stored = reopened.load(RULE)
    assert stored is not None
    assert stored.totals == {c: Total(1.0, 60)}
    reopened.close()
