"""State: atomic commits, restart, the outbox, the last queued timestamps, retention and
the upgrade from tempo-bridge 0.1's schema."""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import threading
from pathlib import Path

import pytest

from bridge.errors import StateError
from bridge.evaluation import Stored, Update
from bridge.remote_write import Batch, encode_batches
from bridge.series import STALE_NAN, Labels, Sample, TempoKey, is_stale_nan
from bridge.state import RuleKey, State, _LabelDecoder, holder
from bridge.totals import Total, Totals
from bridge.windows import Window
from tests.support.outbox import queued

A: Labels = (("__name__", "x_total"), ("model", "a"))
B: Labels = (("__name__", "x_total"), ("model", "b"))
KA: TempoKey = (("span.model", "a"),)
KB: TempoKey = (("span.model", "b"),)
RULE = RuleKey("g", "x_total", "{} | count_over_time() by (span.model)", "counter")


def requests(samples: list[Sample], per_request: int = 2000) -> list[Batch]:
    return encode_batches(samples, {}, {}, per_request)


def update(checkpoint: int, **kwargs: object) -> Update:
    fields: dict[str, object] = {"live": frozenset(), "settle_checkpoints": {}, **kwargs}
    return Update(checkpoint, **fields)  # type: ignore[arg-type]


def test_a_commit_survives_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    assert state.load(RULE) is None
    window = Window(60, 120)
    samples: list[Sample] = [(A, 60_000, 0.0), (A, 120_000, 1.5)]
    ids = state.commit(RULE, update(
        120, totals={KA: Total(1.5, 120), KB: Total(2.0, 60)}, live=frozenset({A}),
        settle_checkpoints={600: 60}, kept_values={window: {KA: 1.5}}, prune_upto=60,
        samples=samples,
    ), encode_batches(samples, {}, {}, 2000), interval=60, tenant="t1")
    assert len(ids) == 1
    state.close()

    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored == Stored(
        120, {KA: Total(1.5, 120), KB: Total(2.0, 60)}, frozenset({A}), {600: 60}, (window,)
    )
    assert state.kept_values(RULE, [window, Window(120, 180)]) == {window: {KA: 1.5}}
    assert queued(state) == samples
    assert state.outbox_samples() == 2
    (known,) = state.known_rules()
    assert (known.key, known.checkpoint, known.interval, known.tenant) == (RULE, 120, 60, "t1")
    assert state.last_ts[A] == 120_000  # A is live: written at the checkpoint


def test_label_sets_read_back_share_their_pairs(tmp_path: Path) -> None:
    """The state holds every label set it stored: read back at start-up, the pairs that
    many of them have (a model's, a provider's) are one object each, as they were when
    the label mapper made them."""
    state = State(tmp_path / "s.sqlite")
    sets = [(("__name__", "x_total"), ("key", f"k{i}"), ("model", "m")) for i in range(3)]
    samples: list[Sample] = [(labels, 60_000, 1.0) for labels in sets]
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset(sets),
                              samples=samples), requests(samples))
    state.close()

    state = State(tmp_path / "s.sqlite")
    read = sorted(state.last_ts)
    assert read == sets
    for i in (0, 2):  # the first and the last pair of each are shared; the key's is its own
        assert len({id(labels[i]) for labels in read}) == 1
    assert len({id(labels[1]) for labels in read}) == 3
    state.close()


def test_canonical_gives_the_label_set_the_state_holds(tmp_path: Path) -> None:
    """Read back at start-up, a label set is the state's own object: an equal one made
    later is given that object instead; one the state does not hold is given back."""
    state = State(tmp_path / "s.sqlite")
    samples: list[Sample] = [(A, 60_000, 1.0)]
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=samples), requests(samples))
    state.close()
    state = State(tmp_path / "s.sqlite")
    (held,) = state.last_ts
    stored = state.load(RULE)
    assert stored is not None
    for labels, own in ((A, held), (KA, next(iter(stored.totals)))):
        made = tuple((name, value) for name, value in labels)  # equal, another object
        assert made is not own
        assert state.canonical(made) is own
    unknown = (("__name__", "y_total"),)
    assert state.canonical(unknown) is unknown
    state.close()


def test_identity_is_group_record_expr_and_kind() -> None:
    assert len(RULE.rule_id) == 16
    assert int(RULE.rule_id, 16) >= 0
    for part in ("group", "record", "expr", "kind"):
        assert RULE._replace(**{part: "other"}).rule_id != RULE.rule_id


def test_a_failed_commit_leaves_nothing_on_disk_or_in_memory(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=[(A, 60_000, 1.0)]), requests([(A, 60_000, 1.0)]))

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
    assert state.outbox_samples() == 1
    assert B not in state.last_ts
    # the label sets KB and B were rolled back with the transaction and can be made again
    state.commit(RULE, update(120, totals={KB: Total(1.0, 120)}, live=frozenset({B}),
                              samples=[(B, 120_000, 1.0)]), requests([(B, 120_000, 1.0)]))
    state.close()
    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored is not None
    assert stored.live == {B}
    assert stored.totals == {KA: Total(1.0, 60), KB: Total(1.0, 120)}
    assert queued(state)[-1][0] == B


def test_a_commit_failing_at_its_end_queues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the requests were queued when storing the new label sets failed (a full disk)
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=[(A, 60_000, 1.0)]), requests([(A, 60_000, 1.0)]))

    def full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(state, "_store_new_series", full)
    samples: list[Sample] = [(A, 120_000, 2.0), (B, 120_000, 1.0)]
    with pytest.raises(StateError, match="disk is full"):
        state.commit(RULE, update(120, totals={KA: Total(2.0, 120), KB: Total(1.0, 120)},
                                  live=frozenset({A, B}), samples=samples), requests(samples))
    assert state.outbox_samples() == 1
    assert state.last_ts == {A: 60_000}
    assert [labels for labels, *_ in queued(state)] == [A]
    monkeypatch.undo()
    state.commit(RULE, update(120, totals={KA: Total(2.0, 120), KB: Total(1.0, 120)},
                              live=frozenset({A, B}), samples=samples), requests(samples))
    assert state.outbox_samples() == 3
    assert state.last_ts == {A: 120_000, B: 120_000}
    state.close()


def test_the_live_set_is_replaced(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, live=frozenset({A, B})))
    state.commit(RULE, update(120, live=frozenset({B})))
    stored = state.load(RULE)
    assert stored is not None
    assert stored.live == {B}
    state.close()
    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored is not None
    assert stored.live == {B}
    (known,) = state.known_rules()
    assert known.live == 1


def test_settle_ages_and_kept_windows_are_replaced_and_pruned(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    windows = [Window(0, 60), Window(60, 120), Window(120, 180)]
    state.commit(RULE, update(180, settle_checkpoints={600: 0, 3600: 0},
                              kept_values={x: {KA: float(x.end)} for x in windows}))
    state.commit(RULE, update(180, settle_checkpoints={600: 120}, prune_upto=120))
    stored = state.load(RULE)
    assert stored is not None
    assert stored.settle_checkpoints == {600: 120}
    assert stored.kept_windows == (Window(120, 180),)
    assert state.kept_values(RULE, windows) == {Window(120, 180): {KA: 180.0}}


def test_totals_are_read_back_as_arrays_and_stored_from_them(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60), KB: Total(2.0, 60)}))
    state.close()

    state = State(tmp_path / "s.sqlite")
    stored = state.load(RULE)
    assert stored is not None
    assert isinstance(stored.totals, Totals)
    grown = stored.totals.copy()  # as an evaluation changes them
    grown.grow(grown.at[KB], 2.5, 120)
    kc: TempoKey = (("span.model", "c"),)
    grown.add(kc, 1.0, 120)
    step = update(120, totals=grown.changed(), all_totals=grown)
    state.commit(RULE, step, after=stored.apply(step))
    state.close()

    state = State(tmp_path / "s.sqlite")
    again = state.load(RULE)
    assert again is not None
    assert again.totals == {KA: Total(1.0, 60), KB: Total(2.5, 120), kc: Total(1.0, 120)}
    assert stored.totals == {KA: Total(1.0, 60), KB: Total(2.0, 60)}


def test_kept_values_are_stored_as_ids_then_values(tmp_path: Path) -> None:
    # the layout states already on disk have: int64 ids, then float64 values, in order
    # (the machine's byte order)
    state = State(tmp_path / "s.sqlite")
    keys = [(("span.model", f"m{i}"),) for i in range(5)]
    first, second = Window(0, 60), Window(60, 120)
    state.commit(RULE, update(60, kept_values={first: {k: i + 0.5 for i, k in enumerate(keys)}}))
    # the same series in the same order again: their ids as remembered, new values
    again = {k: -float(i) for i, k in enumerate(keys)}
    state.commit(RULE, update(120, kept_values={second: again}))
    state.close()

    db = sqlite3.connect(tmp_path / "s.sqlite")
    ids = [sid for (sid,) in db.execute("SELECT series_id FROM series ORDER BY series_id")]
    (blob,) = db.execute("SELECT vals FROM windows WHERE window_end = 120").fetchone()
    db.close()
    assert blob == struct.pack("=5q5d", *ids, *(-float(i) for i in range(5)))

    state = State(tmp_path / "s.sqlite")
    assert state.kept_values(RULE, [first, second]) == {
        first: {k: i + 0.5 for i, k in enumerate(keys)},
        second: again,
    }


def test_the_outbox_holds_requests_in_order_until_they_are_removed(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    first = state.commit(RULE, update(60), requests([(A, 60_000, 1.0), (B, 60_000, 2.0)], 1))
    second = state.commit(RULE, update(120), requests([(A, 120_000, 3.0)]))
    assert len(first) == 2
    assert [i for i, _ in state.outbox()] == [*first, *second]
    assert state.next_outbox_id(after=0) == first[0]
    assert state.next_outbox_id(after=first[1]) == second[0]
    assert (state.outbox_samples(), state.outbox_oldest_ts_ms()) == (3, 60_000)
    state.remove_from_outbox(first)
    assert (state.outbox_samples(), state.outbox_oldest_ts_ms()) == (1, 120_000)
    assert [i for i, _ in state.outbox(after=0)] == second
    state.close()
    state = State(tmp_path / "s.sqlite")
    assert state.outbox_samples() == 1
    state.remove_from_outbox(second)
    assert state.outbox_oldest_ts_ms() is None
    assert state.next_outbox_id(after=0) is None


def test_a_call_from_another_thread_waits_for_the_commit_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon commits on a thread of its own while the sender works the outbox: a
    call made meanwhile waits for the commit to end instead of joining its transaction
    (where a removal would be undone by the commit's rollback, or see half a commit)."""
    state = State(tmp_path / "s.sqlite")
    first = state.commit(RULE, update(60), requests([(A, 60_000, 1.0)]))
    in_commit, release = threading.Event(), threading.Event()
    store_new_series = State._store_new_series

    def held(self: State) -> None:
        in_commit.set()
        assert release.wait(10.0)
        store_new_series(self)

    monkeypatch.setattr(State, "_store_new_series", held)
    committing = threading.Thread(target=state.commit, args=(RULE, update(
        120, totals={KB: Total(2.0, 120)}, samples=[(B, 120_000, 2.0)],
    ), requests([(B, 120_000, 2.0)])))
    committing.start()
    assert in_commit.wait(10.0)
    seen: list[list[int]] = []

    def remove_then_look() -> None:
        state.remove_from_outbox(first)
        seen.append([i for i, _ in state.outbox()])

    removing = threading.Thread(target=remove_then_look)
    removing.start()
    removing.join(0.2)
    assert removing.is_alive()  # waiting for the commit
    release.set()
    committing.join(10.0)
    removing.join(10.0)
    (second,) = seen[0]
    assert second > first[0]  # the whole commit, then the removal
    assert queued(state) == [(B, 120_000, 2.0)]
    assert state.outbox_samples() == 1


def test_series_ended_at_the_checkpoint_are_remembered(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    state.commit(RULE, update(120, live=frozenset({A}), ended={B: 120_000},
                              samples=[(A, 120_000, 1.0), (B, 120_000, STALE_NAN)]))
    state.close()
    state = State(tmp_path / "s.sqlite")
    # after a restart: no sample of A or B at or before 120 s
    assert (state.last_ts[A], state.last_ts[B]) == (120_000, 120_000)
    stored = state.load(RULE)
    assert stored is not None
    assert stored.ended == {B: 120_000}


def test_removed_rules_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    other = RULE._replace(record="y_total")
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              samples=[(A, 60_000, 1.0)]), requests([(A, 60_000, 1.0)]))
    state.commit(other, update(60, totals={KB: Total(1.0, 60)}))
    stale = update(60, samples=[(A, 120_000, STALE_NAN)], ended={A: 120_000})
    state.mark_removed(RULE, 1000.0, stale, requests([(A, 120_000, STALE_NAN)]))
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
    # the queued requests carry their own labels: A and KA can go at once
    assert state.collect_garbage() == 2
    assert state.size()["series"] == 1  # KB
    assert A not in state.last_ts
    assert state.outbox_samples() == 2


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


def damage(path: Path, statement: str, *args: object) -> None:
    """Commit one window of a rule to a new state at ``path``, then damage it by
    ``statement`` (a restored table, a hand edit)."""
    state = State(path)
    samples: list[Sample] = [(A, 60_000, 1.0)]
    state.commit(RULE, update(60, totals={KA: Total(1.0, 60)}, live=frozenset({A}),
                              kept_values={Window(0, 60): {KA: 1.0}}, samples=samples),
                 requests(samples))
    state.close()
    db = sqlite3.connect(path)
    with db:
        db.execute(statement, args)
    db.close()


def test_a_damaged_state_says_what_it_cannot_read_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    damage(path, "UPDATE rules SET live = ?", struct.pack("=q", 999))
    message = (f"the state database {path} is damaged: its series and rules name the"
               " series id 999, which it does not hold")
    with pytest.raises(StateError) as raised:
        State(path, exclusive=True)
    assert str(raised.value) == message
    # nothing held open: the same error again, not "in use by another tempo-bridge"
    with pytest.raises(StateError) as raised:
        State(path, exclusive=True)
    assert str(raised.value) == message


@pytest.mark.parametrize("text", ['["model"]', "5"])
def test_a_label_set_that_is_not_one_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.sqlite"
    damage(path, "UPDATE series SET labels = ? WHERE series_id = 1", text)
    with pytest.raises(StateError, match=rf"^the state database {path} is damaged: its series"
                                         r" and rules: .*") as raised:
        State(path)
    assert "the label set of series id 1 is not one (" in str(raised.value)


@pytest.mark.parametrize(("statement", "args", "where", "reason"), [
    ("UPDATE totals SET vals = ?", (b"",), "the rule g/x_total's totals",
     ": 1 series, 0 values and 1 times"),
    ("UPDATE totals SET ids = ?", (struct.pack("=q", 999),), "the rule g/x_total's totals",
     " name the series id 999, which it does not hold"),
    ("UPDATE totals SET grown = ?", (b"\x01\x02\x03",), "the rule g/x_total's totals",
     ": bytes length not a multiple of item size"),
    (f"INSERT INTO legacy VALUES ('{RULE.rule_id}', 999, 1.5)", (),
     "the rule g/x_total's totals from tempo-bridge 0.1",
     " name the series id 999, which it does not hold"),
])
def test_a_damaged_rule_says_what_it_cannot_read_when_loaded(
    tmp_path: Path, statement: str, args: tuple[object, ...], where: str, reason: str,
) -> None:
    path = tmp_path / "s.sqlite"
    damage(path, statement, *args)
    state = State(path)
    with pytest.raises(StateError) as raised:
        state.load(RULE)
    assert str(raised.value) == f"the state database {path} is damaged: {where}{reason}"


def test_damaged_kept_values_say_which_window(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    damage(path, "UPDATE windows SET vals = ?", b"\x00" * 12)
    state = State(path)
    with pytest.raises(StateError) as raised:
        state.kept_values(RULE, [Window(0, 60)])
    assert str(raised.value) == (
        f"the state database {path} is damaged: the rule g/x_total's values kept of the"
        " window ending at 60: bytes length not a multiple of item size")


def test_a_read_only_state_reads_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with pytest.raises(StateError, match=f"cannot open the state database {path}: no such file"):
        State(path, read_only=True)
    (tmp_path / "dir").mkdir()
    with pytest.raises(StateError, match=r"cannot open the state database .*/dir: not a file"):
        State(tmp_path / "dir", read_only=True)
    (tmp_path / "dir").rmdir()
    damage(path, "SELECT 1")  # a rule's window committed, then closed
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    state = State(path, read_only=True)
    stored = state.load(RULE)
    assert stored is not None
    assert dict(stored.totals) == {KA: Total(1.0, 60)}
    assert state.outbox_samples() == 1
    with pytest.raises(StateError, match="readonly database"):
        state.commit(RULE, update(120))
    state.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_holder_of_a_state_is_found_without_taking_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    assert holder(path) is None  # no lock file
    state = State(path, exclusive=True)
    assert holder(path) == os.getpid()
    state.close()
    assert (tmp_path / "s.sqlite.lock").exists()
    assert holder(path) is None  # the file stays, nobody holds it


def test_stale_markers_keep_their_bits(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    samples: list[Sample] = [(A, 60_000, STALE_NAN), (B, 60_000, float("nan"))]
    state.commit(RULE, update(60, samples=samples), requests(samples))
    state.close()
    (_, _, stale), (_, _, nan) = queued(State(tmp_path / "s.sqlite"))
    assert is_stale_nan(stale)
    assert math.isnan(nan)
    assert not is_stale_nan(nan)


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
INSERT INTO outbox (series_id, ts_ms, value, nan_bits) VALUES (2, 660000, NULL,
    9218868437227405314);
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
    assert counter.settle_checkpoints == {600: 600}
    assert counter.kept_windows == ()
    top = (("__name__", "top"),)
    gauge = state.load(RuleKey("g", "top", "{} | max_over_time(span.cost)", "gauge"))
    assert gauge is not None
    assert gauge.live == {top}
    assert (state.last_ts[A], state.last_ts[top]) == (600_000, 600_000)
    # its outbox, a row per sample, becomes requests with the external labels
    assert state.outbox_samples() == 0
    assert state.convert_legacy_outbox(lambda s: encode_batches(s, {}, {"z": "1"}, 10)) == 2
    rows = queued(state)
    assert [(labels, ts) for labels, ts, _ in rows] == [((*A, ("z", "1")), 600_000),
                                                       ((*top, ("z", "1")), 660_000)]
    assert is_stale_nan(rows[1][2])
    assert state.outbox_samples() == 2
    assert state.convert_legacy_outbox(lambda s: encode_batches(s, {}, {}, 10)) == 0
    state.close()
    State(path).close()  # opened again: nothing to upgrade
    assert _LabelDecoder()('[["a","b"]]') == (("a", "b"),)
