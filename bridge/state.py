"""State: one SQLite database with each rule's checkpoint, totals, kept window values and
live series, and the outbox of remote-write requests not yet accepted by the receiver.

An evaluation's :class:`bridge.evaluation.Update`, with the requests that carry its
samples, is committed in one transaction (:meth:`State.commit`), so a crash leaves either
the whole evaluation or none of it. Each write is one row where it can be: a rule's
totals are one row, a kept window is one row, an outbox request is one row holding the
encoded request as it is posted.

A rule is known by its identity (:class:`RuleKey`: group, record, expression, kind). Label
sets, Tempo's and Prometheus', are stored once each in ``series`` and referred to by id.
What each rule holds is kept in memory after its first load, the state being its only
writer. The timestamp of the last sample queued for each series is kept in memory too
(:attr:`State.last_ts`), so that evaluations never write a sample a receiver would refuse
as out of order; after a restart it is known again from each rule's live series (written
at its checkpoint) and ended ones (stale-marked at or after it).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import struct
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Concatenate, NamedTuple, ParamSpec, TypeVar

import msgspec

from bridge.errors import StateError
from bridge.evaluation import Stored, Update
from bridge.remote_write import Batch
from bridge.series import Labels, Sample, TempoKey
from bridge.totals import Total, Totals
from bridge.windows import Window

VERSION = 2
"""``PRAGMA user_version`` of the current schema; 0 is tempo-bridge 0.1's."""

# Statements are run one by one, split at semicolons: no comment may hold one.
SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    rule_id     TEXT PRIMARY KEY,   -- RuleKey.rule_id
    group_name  TEXT NOT NULL,
    record      TEXT NOT NULL,
    expr        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    checkpoint  INTEGER NOT NULL,   -- end of the last window recorded
    interval    INTEGER,            -- the group's interval at the last commit
    tenant      TEXT,               -- the tenant of the last commit
    removed_at  REAL,               -- when the rule left the rule files (NULL while loaded)
    live        BLOB,               -- ids (int64) of the Prometheus series written at the
                                    -- checkpoint
    ended       BLOB                -- ids (int64), then timestamps (int64, ms) of those
                                    -- stale-marked at or after it
);
CREATE TABLE IF NOT EXISTS series (
    series_id   INTEGER PRIMARY KEY,
    labels      TEXT NOT NULL       -- a label set, Tempo's or Prometheus' (each once: the
                                    -- bridge keeps them all in memory, by label set)
);
CREATE TABLE IF NOT EXISTS totals (
    rule_id     TEXT PRIMARY KEY,
    ids         BLOB NOT NULL,      -- Tempo series ids (int64)
    vals        BLOB NOT NULL,      -- their totals (float64)
    grown       BLOB NOT NULL       -- when each last grew (int64, unix seconds)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    rule_id     TEXT NOT NULL,
    window_end  INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    vals        BLOB NOT NULL,      -- Tempo series ids (int64) then their values (float64)
    PRIMARY KEY (rule_id, window_end)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settle (
    rule_id     TEXT NOT NULL,
    age         INTEGER NOT NULL,
    checkpoint  INTEGER NOT NULL,
    PRIMARY KEY (rule_id, age)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS legacy (
    rule_id     TEXT NOT NULL,
    series_id   INTEGER NOT NULL,   -- a Prometheus series of tempo-bridge 0.1
    total       REAL NOT NULL,
    PRIMARY KEY (rule_id, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    body        BLOB NOT NULL,      -- a remote-write request as it is posted
    samples     INTEGER NOT NULL,
    min_ts      INTEGER NOT NULL,
    max_ts      INTEGER NOT NULL
);
"""

_RULE_TABLES = ("rules", "totals", "windows", "settle", "legacy")


class RuleKey(NamedTuple):
    """A rule's identity: changing any part of it makes a new rule with new totals."""

    group: str
    record: str
    expr: str
    kind: str

    @property
    def rule_id(self) -> str:
        return _rule_id(self.group, self.record, self.expr, self.kind)


def _rule_id(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KnownRule:
    """A rule the state holds, loaded or not."""

    key: RuleKey
    checkpoint: int
    interval: int | None
    tenant: str | None
    removed_at: float | None
    live: int
    """Prometheus series written at its checkpoint."""


Encoder = Callable[[Sequence[Sample]], list[Batch]]
"""Turns samples into remote-write requests (external labels, request size)."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _one_at_a_time(
    method: Callable[Concatenate[State, _P], _T],
) -> Callable[Concatenate[State, _P], _T]:
    """A method of :class:`State` that no other thread runs a method of meanwhile."""

    @functools.wraps(method)
    def locked(self: State, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._mutex:
            return method(self, *args, **kwargs)

    return locked


class State:
    """The bridge's SQLite state (WAL mode), opened once per process.

    Its methods may be called from any thread, one at a time: the daemon makes its calls
    on a worker thread of their own (bridge.worker), and a call made meanwhile from
    another thread waits for the one under way (a commit of the first evaluation of
    1,000,000 series takes about 12 s) rather than joining its transaction.
    """

    def __init__(self, path: Path, *, exclusive: bool = False, read_only: bool = False) -> None:
        """Open (or create, or upgrade) the database at ``path``.

        ``exclusive``: hold a lock on ``path.lock`` while open, so that a second bridge
        given the same state cannot evaluate the same windows again (double counting);
        opening fails with a StateError naming the process that holds it.

        ``read_only``: read a database that no bridge has open (see :func:`holder`) and
        that has the current schema, writing nothing, not even SQLite's own files.
        """
        self.path = path
        self._mutex = threading.RLock()
        self._lock: IO[str] | None = None
        db: sqlite3.Connection | None = None
        try:
            if read_only:
                self._db = db = _read_only(path)
                if (version := _version(db)) != VERSION:
                    raise sqlite3.DatabaseError(f"its schema version is {version}, not {VERSION}")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if exclusive:
                    self._lock = _lock(path.with_name(path.name + ".lock"))
                self._db = db = sqlite3.connect(path, isolation_level=None,
                                                check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                _migrate(db)
            with _damaged(path, "its series and rules"):
                self._read()
        except (OSError, sqlite3.Error, StateError) as exc:
            if db is not None:
                db.close()
            if self._lock is not None:
                self._lock.close()
            if isinstance(exc, StateError):
                raise
            raise StateError(f"cannot open the state database {path}: {exc}") from exc

    def _read(self) -> None:
        db = self._db
        self._pending: list[Labels] = []  # label sets given an id in the open transaction
        self._next_id: int | None = None  # the next new id in the open transaction
        self._ids: dict[Labels, int] = {}
        self._labels: dict[int, Labels] = {}
        decode = _LabelDecoder()
        series_id = None
        try:
            for series_id, text in db.execute("SELECT series_id, labels FROM series"):
                labels = decode(text)
                self._ids[labels] = series_id
                self._labels[series_id] = labels
        except (ValueError, TypeError) as exc:  # named by _damaged, with what it read
            raise ValueError(f"the label set of series id {series_id} is not one ({exc})"
                             ) from exc
        self._cache: dict[str, Stored] = {}
        self._outbox_samples = int(
            db.execute("SELECT coalesce(sum(samples), 0) FROM outbox").fetchone()[0]
        )
        # what the open transaction changed in memory, to undo if it rolls back
        # queued by the open transaction: noted in last_ts and the outbox count once committed
        self._queued: list[tuple[Sequence[Sample], int]] = []
        self._undo_cache: dict[str, Stored | None] = {}
        self._id_arrays: dict[tuple[str, str], tuple[list[Labels], array[int]]] = {}
        """The ids of the last totals and kept values written per rule (see _ids_of)."""
        self.last_ts: dict[Labels, int] = {}
        """The timestamp (ms) of the last sample queued for each series, by any rule."""
        last = self.last_ts
        for checkpoint, live, ended in db.execute("SELECT checkpoint, live, ended FROM rules"):
            for sid in _ids(live):
                labels = self._labels[sid]
                last[labels] = max(last.get(labels, -1), checkpoint * 1000)
            for sid, ts in _ended(ended):
                labels = self._labels[sid]
                last[labels] = max(last.get(labels, -1), ts)

    @_one_at_a_time
    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # rules -----------------------------------------------------------------

    @_one_at_a_time
    def load(self, key: RuleKey) -> Stored | None:
        """What the state holds of a rule, or None if it has never run."""
        rule_id = key.rule_id
        cached = self._cache.get(rule_id)
        if cached is not None:
            return cached
        db = self._db
        row = db.execute(
            "SELECT checkpoint, live, ended FROM rules WHERE rule_id = ?", (rule_id,)
        ).fetchone()
        if row is None:
            return None
        labels = self._labels
        totals = Totals()
        blobs = db.execute(
            "SELECT ids, vals, grown FROM totals WHERE rule_id = ?", (rule_id,)
        ).fetchone()
        rule = f"the rule {key.group}/{key.record}"
        if blobs is not None:
            with _damaged(self.path, f"{rule}'s totals"):
                totals = Totals.from_arrays(map(labels.__getitem__, array("q", blobs[0])),
                                            array("d", blobs[1]), array("q", blobs[2]))
        live = frozenset(labels[sid] for sid in _ids(row[1]))  # each id found by _read
        ended = {labels[sid]: ts for sid, ts in _ended(row[2])}
        settled = dict(
            db.execute("SELECT age, checkpoint FROM settle WHERE rule_id = ?", (rule_id,))
        )
        recorded = tuple(
            Window(start, end) for start, end in db.execute(
                "SELECT window_start, window_end FROM windows WHERE rule_id = ?"
                " ORDER BY window_end", (rule_id,),
            )
        )
        with _damaged(self.path, f"{rule}'s totals from tempo-bridge 0.1"):
            legacy = {
                labels[sid]: total for sid, total in db.execute(
                    "SELECT series_id, total FROM legacy WHERE rule_id = ?", (rule_id,)
                )
            }
        stored = Stored(int(row[0]), totals, live, settled, recorded, legacy, ended)
        self._cache[rule_id] = stored
        return stored

    @_one_at_a_time
    def kept_values(
        self, key: RuleKey, windows: Iterable[Window]
    ) -> dict[Window, dict[TempoKey, float]]:
        """The values kept for settling of ``windows`` (those the state has)."""
        wanted = {w.end: w for w in windows}
        if not wanted:
            return {}
        result: dict[Window, dict[TempoKey, float]] = {}
        labels = self._labels
        for end, blob in self._db.execute(
            "SELECT window_end, vals FROM windows WHERE rule_id = ? AND window_end BETWEEN ? AND ?",
            (key.rule_id, min(wanted), max(wanted)),
        ):
            window = wanted.get(end)
            if window is not None:
                with _damaged(self.path, f"the rule {key.group}/{key.record}'s values kept"
                                         f" of the window ending at {end}"):
                    ids, values = _decode_values(blob)
                    result[window] = {labels[i]: v for i, v in zip(ids, values, strict=True)}
        return result

    @_one_at_a_time
    def commit(
        self, key: RuleKey, update: Update, batches: Sequence[Batch] = (), *,
        after: Stored | None = None, interval: int | None = None, tenant: str | None = None,
    ) -> list[int]:
        """Store one evaluation atomically, with the requests that carry its samples; the
        requests' outbox ids, in order. ``after`` is the rule's state with ``update``
        applied, when the caller has it already."""
        rule_id = key.rule_id
        db = self._db
        if after is None:
            before = self.load(key)
            after = (before or Stored(update.checkpoint)).apply(update)
        with self._transaction(f"store the evaluation of {key.record}"):
            self._undo_cache.setdefault(rule_id, self._cache.get(rule_id))
            db.execute(
                "INSERT INTO rules (rule_id, group_name, record, expr, kind, checkpoint,"
                " interval, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id) DO"
                " UPDATE SET checkpoint = excluded.checkpoint, removed_at = NULL,"
                " interval = coalesce(excluded.interval, interval),"
                " tenant = coalesce(excluded.tenant, tenant)",
                (rule_id, *key, update.checkpoint, interval, tenant),
            )
            if update.totals or update.dropped:
                self._store_totals(rule_id, after.totals)
            if update.adopted:
                db.executemany(
                    "DELETE FROM legacy WHERE rule_id = ? AND series_id = ?",
                    [(rule_id, self._ids[k]) for k in update.adopted if k in self._ids],
                )
            self._store_live(rule_id, update.live)
            self._store_ended(rule_id, update.ended)
            self._store_settled(rule_id, update.settle_checkpoints)
            for w, values in update.kept_values.items():  # one blob at a time
                db.execute(
                    "INSERT OR REPLACE INTO windows (rule_id, window_end, window_start, vals)"
                    " VALUES (?, ?, ?, ?)",
                    (rule_id, w.end, w.start, self._encode_values(rule_id, values)),
                )
            db.execute(
                "DELETE FROM windows WHERE rule_id = ? AND window_end <= ?",
                (rule_id, update.prune_upto),
            )
            ids = self._queue(update.samples, batches)
            self._cache[rule_id] = after
        return ids

    @_one_at_a_time
    def mark_removed(
        self, key: RuleKey, at: float, update: Update | None = None,
        batches: Sequence[Batch] = (),
    ) -> list[int]:
        """A rule left the rule files at ``at`` (unix time): commit its last update (the
        stale markers of its series) and start its retention."""
        rule_id = key.rule_id
        with self._transaction(f"retire {key.record}"):
            self._undo_cache.setdefault(rule_id, self._cache.get(rule_id))
            self._db.execute(
                "UPDATE rules SET removed_at = ? WHERE rule_id = ? AND removed_at IS NULL",
                (at, rule_id),
            )
            ids: list[int] = []
            if update is not None:
                self._store_live(rule_id, update.live)
                self._store_ended(rule_id, update.ended)
                ids = self._queue(update.samples, batches)
            self._cache.pop(rule_id, None)
        return ids

    @_one_at_a_time
    def known_rules(self) -> list[KnownRule]:
        """Every rule the state holds."""
        return [
            KnownRule(RuleKey(g, r, e, k), int(c), i, t, removed, int(live))
            for g, r, e, k, c, i, t, removed, live in self._db.execute(
                "SELECT group_name, record, expr, kind, checkpoint, interval, tenant,"
                " removed_at, coalesce(length(live), 0) / 8"
                " FROM rules ORDER BY group_name, record, kind, expr"
            )
        ]

    @_one_at_a_time
    def last_checkpoint(self, group: str, record: str) -> int | None:
        """The latest checkpoint of any rule, loaded or removed, that recorded ``record`` in
        ``group``: where a rule that replaces it (a new expression or kind) begins."""
        row = self._db.execute(
            "SELECT max(checkpoint) FROM rules WHERE group_name = ? AND record = ?",
            (group, record),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    @_one_at_a_time
    def forget(self, key: RuleKey) -> None:
        """Drop everything the state holds of a rule."""
        with self._transaction(f"forget {key.record}"):
            self._forget(key.rule_id)

    @_one_at_a_time
    def forget_removed(self, before: float) -> list[RuleKey]:
        """Drop the rules removed before ``before`` (unix time); return them."""
        gone = [
            RuleKey(g, r, e, k) for g, r, e, k in self._db.execute(
                "SELECT group_name, record, expr, kind FROM rules"
                " WHERE removed_at IS NOT NULL AND removed_at < ?", (before,),
            )
        ]
        if gone:
            with self._transaction("forget removed rules"):
                for key in gone:
                    self._forget(key.rule_id)
        return gone

    @_one_at_a_time
    def collect_garbage(self) -> int:
        """Forget every label set nothing refers to any more; how many were dropped."""
        db = self._db
        with self._transaction("collect unused series"):
            used: set[int] = {sid for (sid,) in db.execute("SELECT series_id FROM legacy")}
            for live, ended in db.execute("SELECT live, ended FROM rules"):
                used.update(_ids(live))
                used.update(sid for sid, _ in _ended(ended))
            for (blob,) in db.execute("SELECT ids FROM totals"):
                used.update(array("q", blob))
            for (blob,) in db.execute("SELECT vals FROM windows"):
                used.update(_decode_values(blob)[0])
            unused = [sid for sid in self._labels if sid not in used]
            db.executemany("DELETE FROM series WHERE series_id = ?", [(s,) for s in unused])
        if unused:
            self._id_arrays.clear()
        for sid in unused:
            labels = self._labels.pop(sid)
            self._ids.pop(labels, None)
            self.last_ts.pop(labels, None)
        return len(unused)

    @_one_at_a_time
    def size(self) -> dict[str, int]:
        """Rows per table, for tests and benchmarks."""
        return {
            table: int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in (*_RULE_TABLES, "series", "outbox")
        }

    # outbox ----------------------------------------------------------------

    @_one_at_a_time
    def outbox(self, after: int = 0, limit: int = 64) -> list[tuple[int, Batch]]:
        """Up to ``limit`` queued requests with ids above ``after``, oldest first."""
        return [
            (i, Batch(bytes(body), samples, low, high))
            for i, body, samples, low, high in self._db.execute(
                "SELECT id, body, samples, min_ts, max_ts FROM outbox WHERE id > ?"
                " ORDER BY id LIMIT ?", (after, limit),
            )
        ]

    @_one_at_a_time
    def next_outbox_id(self, after: int) -> int | None:
        """The id of the oldest queued request after ``after``, if any."""
        row = self._db.execute("SELECT min(id) FROM outbox WHERE id > ?", (after,)).fetchone()
        return None if row[0] is None else int(row[0])

    @_one_at_a_time
    def outbox_samples(self) -> int:
        """Samples in the queued requests."""
        return self._outbox_samples

    @_one_at_a_time
    def outbox_oldest_ts_ms(self) -> int | None:
        row = self._db.execute("SELECT min(min_ts) FROM outbox").fetchone()
        return None if row[0] is None else int(row[0])

    @_one_at_a_time
    def remove_from_outbox(self, ids: Iterable[int]) -> None:
        """Remove requests that were delivered (or whose samples were dropped)."""
        ids = sorted(set(ids))
        if not ids:
            return
        with self._transaction("update the outbox"):
            removed = sum(
                int(self._db.execute(
                    "SELECT coalesce(sum(samples), 0) FROM outbox WHERE id BETWEEN ? AND ?", run
                ).fetchone()[0])
                for run in _runs(ids)
            )
            self._db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", _runs(ids))
        self._outbox_samples -= removed

    @_one_at_a_time
    def convert_legacy_outbox(self, encode: Encoder) -> int:
        """tempo-bridge 0.1 queued one row per sample, without external labels: encode the
        samples it left as requests (``encode`` adds the external labels); how many."""
        db = self._db
        table = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'outbox_v0'"
        ).fetchone()
        if table is None:
            return 0
        samples: list[Sample] = [
            (self._labels[sid], ts, value if bits is None else _nan(bits))
            for sid, ts, value, bits in db.execute(
                "SELECT series_id, ts_ms, value, nan_bits FROM outbox_v0 ORDER BY id"
            )
        ]
        batches = encode(samples) if samples else []
        with self._transaction("convert the outbox of tempo-bridge 0.1"):
            self._insert(batches)
            db.execute("DROP TABLE outbox_v0")
        self._outbox_samples += sum(b.samples for b in batches)
        return len(samples)

    # internals ---------------------------------------------------------------

    def _forget(self, rule_id: str) -> None:
        for table in _RULE_TABLES:
            self._db.execute(f"DELETE FROM {table} WHERE rule_id = ?", (rule_id,))
        self._undo_cache.setdefault(rule_id, self._cache.pop(rule_id, None))
        for slot in [slot for slot in self._id_arrays if slot[0] == rule_id]:
            del self._id_arrays[slot]

    def _store_totals(self, rule_id: str, totals: Mapping[TempoKey, Total]) -> None:
        """The rule's totals, as one row."""
        totals = Totals.of(totals)  # a dict of them (backfill, tests) made Totals
        ids = self._ids_of((rule_id, "totals"), totals)
        # the arrays bound as they are (SQLite reads their buffers)
        self._db.execute(
            "INSERT OR REPLACE INTO totals (rule_id, ids, vals, grown) VALUES (?, ?, ?, ?)",
            (rule_id, ids, totals.value, totals.last_grown),
        )

    def _store_live(self, rule_id: str, live: frozenset[Labels]) -> None:
        """Replace the rule's live set (one row, written when it changed)."""
        cached = self._cache.get(rule_id)
        if cached is not None and cached.live == live:
            return
        ids = array("q", map(self._id, live))
        self._db.execute("UPDATE rules SET live = ? WHERE rule_id = ?", (ids, rule_id))

    def _store_ended(self, rule_id: str, ended: Mapping[Labels, int]) -> None:
        cached = self._cache.get(rule_id)
        if cached is not None and dict(cached.ended) == dict(ended):
            return
        blob = array("q", map(self._id, ended)) + array("q", ended.values())
        self._db.execute("UPDATE rules SET ended = ? WHERE rule_id = ?", (blob, rule_id))

    def _store_settled(self, rule_id: str, settled: Mapping[int, int]) -> None:
        self._db.execute(
            f"DELETE FROM settle WHERE rule_id = ? AND age NOT IN ({','.join('?' * len(settled))})",
            (rule_id, *settled),
        )
        self._db.executemany(
            "INSERT INTO settle (rule_id, age, checkpoint) VALUES (?, ?, ?)"
            " ON CONFLICT (rule_id, age) DO UPDATE SET checkpoint = excluded.checkpoint",
            [(rule_id, age, c) for age, c in settled.items()],
        )

    def _queue(self, samples: Sequence[Sample], batches: Sequence[Batch]) -> list[int]:
        """Queue the requests that carry ``samples``; each series' last timestamp is noted
        once the transaction commits."""
        ids = self._insert(batches)
        self._queued.append((samples, sum(b.samples for b in batches)))
        return ids

    def _note_queued(self) -> None:
        """Note the last timestamp of each series queued by the committed transaction."""
        last = self.last_ts
        before = last.get
        for samples, count in self._queued:
            self._outbox_samples += count
            for labels, ts, _value in samples:
                newest = before(labels)
                if newest is None or ts > newest:
                    last[labels] = ts

    def _insert(self, batches: Sequence[Batch]) -> list[int]:
        ids = []
        for batch in batches:
            cursor = self._db.execute(
                "INSERT INTO outbox (body, samples, min_ts, max_ts) VALUES (?, ?, ?, ?)",
                (batch.body, batch.samples, batch.min_ts, batch.max_ts),
            )
            ids.append(int(cursor.lastrowid or 0))
        return ids

    def _encode_values(self, rule_id: str, values: Mapping[TempoKey, float]) -> bytearray:
        """The ids and then the values of a kept window, as one blob made in place (the
        two arrays and their concatenation would be three copies of it)."""
        ids = self._ids_of((rule_id, "values"), values)
        blob = bytearray(16 * len(ids))
        view = memoryview(blob)
        view[:8 * len(ids)].cast("q")[:] = ids
        view[8 * len(ids):].cast("d")[:] = array("d", values.values())
        view.release()
        return blob

    def _ids_of(self, slot: tuple[str, str], keys: Iterable[Labels]) -> array[int]:
        """The ids (int64) of ``keys``, in order. The last ones asked for in each ``slot``
        are remembered: a steady evaluation writes the same series in the same order
        again, and comparing the keys costs far less than looking up their ids. A label
        set's id changes only when it is forgotten (a rolled back transaction, garbage
        collection), and then every remembered id is."""
        listed = list(keys)
        remembered = self._id_arrays.get(slot)
        if remembered is not None and remembered[0] == listed:
            return remembered[1]
        ids = array("q", map(self._id, listed))
        self._id_arrays[slot] = (listed, ids)
        return ids

    def canonical(self, labels: Labels) -> Labels:
        """The state's own label set equal to ``labels``, else ``labels`` itself.

        A restarted daemon holds every label set the state read back, and its first
        evaluation makes each of them again, from Tempo's answer and by the label mapper:
        equal tuples, two objects (145 MB at 1,000,000 series). The client's keys and the
        mappers take the state's through this. It only reads two dictionaries, so it may be
        called from any thread while a commit changes them: a label set missed meanwhile
        is kept as it is, which is equal anyway.
        """
        series_id = self._ids.get(labels)
        if series_id is None:
            return labels
        return self._labels.get(series_id, labels)

    def _id(self, labels: Labels) -> int:
        """The id of a label set; a new one is given the next id, and is stored with the
        others of the transaction when it commits (one statement for them all)."""
        series_id = self._ids.get(labels)
        if series_id is None:
            if self._next_id is None:
                row = self._db.execute("SELECT coalesce(max(series_id), 0) + 1 FROM series")
                self._next_id = int(row.fetchone()[0])
            series_id, self._next_id = self._next_id, self._next_id + 1
            self._ids[labels] = series_id
            self._labels[series_id] = labels
            self._pending.append(labels)
        return series_id

    def _store_new_series(self) -> None:
        # in the order of their ids, so each row is appended to the table; each text is
        # made as it is inserted (a million of them at once would be the biggest thing
        # in memory)
        ids = self._ids
        self._db.executemany(
            "INSERT INTO series (labels, series_id) VALUES (?, ?)",
            ((_encode_labels(labels), ids[labels]) for labels in self._pending),
        )

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction; any failure rolls it back and raises StateError.

        What the transaction changed in memory (new label sets, the rules it holds) is
        undone with it; what it queued (each series' last timestamp, the outbox's count of
        samples) is noted only once it has committed.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"cannot {what}: {exc}") from exc
        try:
            yield
            if self._pending:
                self._store_new_series()
            self._db.execute("COMMIT")
            self._note_queued()
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._undo()
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"cannot {what}: {exc}") from exc
            raise
        finally:
            self._pending.clear()
            self._next_id = None  # looked up again in the next transaction, under its lock
            self._queued.clear()
            self._undo_cache.clear()

    def _undo(self) -> None:
        self._id_arrays.clear()
        for labels in self._pending:
            series_id = self._ids.pop(labels, None)
            if series_id is not None:
                self._labels.pop(series_id, None)
        for rule_id, stored in self._undo_cache.items():
            if stored is None:
                self._cache.pop(rule_id, None)
            else:
                self._cache[rule_id] = stored


# -- schema versions ----------------------------------------------------------------------


def schema_version(path: Path) -> int:
    """The schema version of the database at ``path`` (no bridge having it open), read
    without writing anything."""
    try:
        db = _read_only(path)
        try:
            return _version(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the state database {path}: {exc}") from exc


def holder(path: Path) -> int | None:
    """The pid of the tempo-bridge that has the state at ``path`` open (``exclusive``), or
    None. Read from the kernel's table of file locks, so that asking takes no lock that a
    bridge starting at that moment would find taken; None where that table cannot be
    read (not Linux)."""
    lock = path.with_name(path.name + ".lock")
    try:
        held = lock.stat()
        table = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return None
    where = f"{os.major(held.st_dev):02x}:{os.minor(held.st_dev):02x}:{held.st_ino}"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2147192 0 EOF" (a waiter's has "->" after 1:)
        fields = line.split()
        if fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"] and fields[5:6] == [where]:
            return int(fields[4])
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` as it is on disk and writes nothing (``immutable``:
    no lock, no -shm or -wal file made): only for a database no bridge has open."""
    if not path.is_file():
        raise sqlite3.OperationalError("not a file" if path.exists() else "no such file")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                           isolation_level=None, check_same_thread=False)


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring a tempo-bridge 0.1 state (version 0) up to date."""
    version = _version(db)
    if version == VERSION:
        return
    if version > VERSION:
        raise sqlite3.DatabaseError(
            f"its schema version {version} is newer than this tempo-bridge's ({VERSION})"
        )
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.execute("BEGIN IMMEDIATE")
    try:
        if "rules" in tables:
            _from_version_0(db)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _from_version_0(db: sqlite3.Connection) -> None:
    """tempo-bridge 0.1 kept totals per Prometheus series and no kind in the identity.

    Its counter totals become legacy totals that the Tempo series mapping to them take
    over; its series all count as live (they were written at the checkpoint). Kept window
    values were per Prometheus series and cannot be compared with Tempo's: they are
    dropped, and every settle age starts at the checkpoint. Its outbox, a row per sample,
    waits in ``outbox_v0`` for :meth:`State.convert_legacy_outbox`.
    """
    old = db.execute("SELECT rule_id, group_name, record, expr, kind FROM rules").fetchall()
    db.execute("ALTER TABLE rules ADD COLUMN interval INTEGER")
    db.execute("ALTER TABLE rules ADD COLUMN tenant TEXT")
    db.execute("ALTER TABLE rules ADD COLUMN removed_at REAL")
    db.execute("ALTER TABLE rules ADD COLUMN live BLOB")
    db.execute("ALTER TABLE rules ADD COLUMN ended BLOB")
    db.execute(
        "CREATE TABLE legacy (rule_id TEXT NOT NULL, series_id INTEGER NOT NULL,"
        " total REAL NOT NULL, PRIMARY KEY (rule_id, series_id)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO legacy SELECT rule_id, series_id, total FROM totals")
    live: dict[str, set[int]] = {}
    for rule_id, sid in db.execute(
        "SELECT rule_id, series_id FROM totals UNION SELECT rule_id, series_id FROM live_gauges"
    ):
        live.setdefault(rule_id, set()).add(sid)
    for rule_id, ids in live.items():
        db.execute("UPDATE rules SET live = ? WHERE rule_id = ?",
                   (array("q", sorted(ids)).tobytes(), rule_id))
    for table in ("totals", "live_gauges", "window_values", "sent"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute("ALTER TABLE outbox RENAME TO outbox_v0")
    db.execute(
        "UPDATE settle SET checkpoint ="
        " (SELECT checkpoint FROM rules WHERE rules.rule_id = settle.rule_id)"
    )
    for rule_id, group, record, expr, kind in old:
        new_id = _rule_id(group, record, expr, kind)
        for table in ("rules", "legacy", "settle"):
            db.execute(f"UPDATE {table} SET rule_id = ? WHERE rule_id = ?", (new_id, rule_id))


# -- encodings ------------------------------------------------------------------------------


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of consecutive integers in ``ids`` (sorted, unique)."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


_BITS = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


def _lock(path: Path) -> IO[str]:
    """Take the exclusive lock of the state (released when the file is closed or the
    process dies); the file records the holder's pid for the error message."""
    handle = open(path, "a+")  # noqa: SIM115 (held open for as long as the state is)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateError(
            f"the state database {path.with_suffix('')} is in use by another tempo-bridge "
            f"(pid {holder}); two bridges on one state would count windows twice"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _nan(bits: int) -> float:
    value: float = _DOUBLE.unpack(_BITS.pack(bits))[0]
    return value


@contextmanager
def _damaged(path: Path, where: str) -> Iterator[None]:
    """Turn what a damaged database makes the reading code raise (an id that names no
    label set, arrays of the wrong length, a label set that is not one) into a StateError
    naming the database and what was being read."""
    try:
        yield
    except KeyError as exc:
        raise StateError(f"the state database {path} is damaged: {where} name the series"
                         f" id {exc.args[0]}, which it does not hold") from exc
    except (ValueError, TypeError) as exc:
        raise StateError(f"the state database {path} is damaged: {where}: {exc}") from exc


def _ids(blob: bytes | None) -> array[int]:
    """The series ids of a rule's live set."""
    return array("q", blob or b"")


def _ended(blob: bytes | None) -> Iterator[tuple[int, int]]:
    """``(series id, timestamp ms)`` of a rule's ended series."""
    if not blob:
        return iter(())
    half = len(blob) // 2
    return zip(array("q", blob[:half]), array("q", blob[half:]), strict=True)


def _decode_values(blob: bytes) -> tuple[array[int], array[float]]:
    """Tempo series ids and values of one kept window (see ``State._encode_values``)."""
    half = len(blob) // 2
    return array("q", blob[:half]), array("d", blob[half:])


_quote = json.encoder.encode_basestring  # a str as JSONEncoder(ensure_ascii=False) writes it
_encode_json = msgspec.json.Encoder().encode


def _encode_labels(labels: Labels) -> str:
    """A label set as compact JSON text, non-ASCII as it is (what ``json.loads`` reads back).

    msgspec writes it 3 to 4 times faster than Python code; a lone surrogate, which UTF-8
    cannot hold but a label value decoded from JSON may, is written as ``json`` escapes it.
    """
    try:
        return _encode_json(labels).decode()
    except UnicodeEncodeError:
        return "[" + ",".join([f"[{_quote(k)},{_quote(v)}]" for k, v in labels]) + "]"


class _LabelDecoder:
    """Label sets read back from their text (see :func:`_encode_labels`), each (name,
    value) pair made once and shared by every label set that has it.

    The state holds every label set it has stored, and a model's or a provider's label is
    in thousands of them: read back unshared, 2,000,000 label sets held 2 GB.
    """

    _TEXT = msgspec.json.Decoder(list[tuple[str, str]])

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def __call__(self, text: str) -> Labels:
        try:
            pairs = self._TEXT.decode(text)
        except (msgspec.DecodeError, UnicodeEncodeError):  # a lone surrogate: msgspec refuses it
            pairs = [(str(k), str(v)) for k, v in json.loads(text)]
        share = self._pairs.setdefault
        return tuple([share(pair, pair) for pair in pairs])


