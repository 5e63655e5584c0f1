"""State: one SQLite database with each rule's checkpoint, totals, kept window values and
live series, and the outbox of samples not yet accepted by the receiver.

An evaluation's :class:`bridge.evaluation.Update` is committed in one transaction
(:meth:`State.commit`), so a crash leaves either the whole evaluation or none of it.
The outbox is read by the sender in insertion order.

A rule is known by its identity (:class:`RuleKey`: group, record, expression, kind).
Label sets, Tempo's and Prometheus', are stored once each in ``series`` and referred to by
id. The timestamp of the last sample queued for each series is kept in memory
(:attr:`State.last_ts`), so that evaluations never write a sample a receiver would
refuse as out of order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sqlite3
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from bridge.errors import StateError
from bridge.evaluation import Stored, TempoKey, Total, Update
from bridge.series import Labels, Sample
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
    removed_at  REAL                -- when the rule left the rule files (NULL while loaded)
);
CREATE TABLE IF NOT EXISTS series (
    series_id   INTEGER PRIMARY KEY,
    labels      TEXT NOT NULL UNIQUE -- a label set, Tempo's or Prometheus'
);
CREATE TABLE IF NOT EXISTS totals (
    rule_id     TEXT NOT NULL,
    series_id   INTEGER NOT NULL,   -- the Tempo series
    total       REAL NOT NULL,
    last_grown  INTEGER NOT NULL,
    PRIMARY KEY (rule_id, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live (
    rule_id     TEXT NOT NULL,
    series_id   INTEGER NOT NULL,   -- a Prometheus series written at the checkpoint
    PRIMARY KEY (rule_id, series_id)
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
    series_id   INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    value       REAL,               -- NULL for a NaN (SQLite cannot hold one) ...
    nan_bits    INTEGER             -- ... whose exact bits are kept here (stale markers)
);
CREATE TABLE IF NOT EXISTS sent (
    series_id   INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL
);
"""


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


@dataclass(frozen=True)
class OutboxRow:
    id: int
    series_id: int
    labels: Labels
    ts_ms: int
    value: float


class State:
    """The bridge's SQLite state (WAL mode), opened once per process."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        """Open (or create, or upgrade) the database at ``path``.

        ``exclusive``: hold a lock on ``path.lock`` while open, so that a second bridge
        given the same state cannot evaluate the same windows again (double counting);
        opening fails with a StateError naming the process that holds it.
        """
        self.path = path
        self._lock: IO[str] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._lock = _lock(path.with_name(path.name + ".lock"))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            _migrate(self._db)
        except (OSError, sqlite3.Error) as exc:
            if self._lock is not None:
                self._lock.close()
            raise StateError(f"cannot open the state database {path}: {exc}") from exc
        self._pending: list[Labels] = []  # label sets given an id in the open transaction
        self._next_id: int | None = None  # the next new id in the open transaction
        self._ids: dict[Labels, int] = {}
        self._labels: dict[int, Labels] = {}
        for series_id, text in self._db.execute("SELECT series_id, labels FROM series"):
            labels = _decode_labels(text)
            self._ids[labels] = series_id
            self._labels[series_id] = labels
        self._live: dict[str, frozenset[Labels]] = {}
        # what the open transaction changed in memory, to undo if it rolls back
        self._undo_last: dict[int, int | None] = {}
        self._undo_live: dict[str, frozenset[Labels] | None] = {}
        self._last: dict[int, int] = dict(
            self._db.execute(
                "SELECT series_id, max(ts_ms) FROM"
                " (SELECT series_id, ts_ms FROM sent UNION ALL SELECT series_id, ts_ms FROM outbox)"
                " GROUP BY series_id"
            ).fetchall()
        )
        self.last_ts: Mapping[Labels, int] = _LastQueued(self._ids, self._last)
        """The timestamp (ms) of the last sample queued for each series, sent or not."""

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # rules -----------------------------------------------------------------

    def load(self, key: RuleKey) -> Stored | None:
        """What the state holds of a rule, or None if it has never run."""
        rule_id = key.rule_id
        db = self._db
        row = db.execute("SELECT checkpoint FROM rules WHERE rule_id = ?", (rule_id,)).fetchone()
        if row is None:
            return None
        labels = self._labels
        totals = {
            labels[sid]: Total(total, last_grown)
            for sid, total, last_grown in db.execute(
                "SELECT series_id, total, last_grown FROM totals WHERE rule_id = ?", (rule_id,)
            )
        }
        live = frozenset(
            labels[sid] for (sid,) in db.execute(
                "SELECT series_id FROM live WHERE rule_id = ?", (rule_id,)
            )
        )
        self._live[rule_id] = live
        settled = dict(
            db.execute("SELECT age, checkpoint FROM settle WHERE rule_id = ?", (rule_id,))
        )
        recorded = tuple(
            Window(start, end) for start, end in db.execute(
                "SELECT window_start, window_end FROM windows WHERE rule_id = ?"
                " ORDER BY window_end", (rule_id,),
            )
        )
        legacy = {
            labels[sid]: total for sid, total in db.execute(
                "SELECT series_id, total FROM legacy WHERE rule_id = ?", (rule_id,)
            )
        }
        return Stored(int(row[0]), totals, live, settled, recorded, legacy)

    def kept(self, key: RuleKey, windows: Iterable[Window]) -> dict[Window, dict[TempoKey, float]]:
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
                ids, values = _decode_values(blob)
                result[window] = {labels[i]: v for i, v in zip(ids, values, strict=True)}
        return result

    def commit(
        self, key: RuleKey, update: Update, *, interval: int | None = None,
        tenant: str | None = None,
    ) -> None:
        """Store one evaluation's update atomically (and the rule itself, if new)."""
        rule_id = key.rule_id
        db = self._db
        with self._transaction(f"store the evaluation of {key.record}"):
            db.execute(
                "INSERT INTO rules (rule_id, group_name, record, expr, kind, checkpoint,"
                " interval, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id) DO"
                " UPDATE SET checkpoint = excluded.checkpoint, removed_at = NULL,"
                " interval = coalesce(excluded.interval, interval),"
                " tenant = coalesce(excluded.tenant, tenant)",
                (rule_id, *key, update.checkpoint, interval, tenant),
            )
            if update.totals:
                db.executemany(
                    "INSERT INTO totals (rule_id, series_id, total, last_grown) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (rule_id, series_id) DO UPDATE SET total = excluded.total,"
                    " last_grown = excluded.last_grown",
                    [(rule_id, self._id(k), t.value, t.last_grown)
                     for k, t in update.totals.items()],
                )
            if update.dropped:
                db.executemany(
                    "DELETE FROM totals WHERE rule_id = ? AND series_id = ?",
                    [(rule_id, self._ids[k]) for k in update.dropped if k in self._ids],
                )
            if update.adopted:
                db.executemany(
                    "DELETE FROM legacy WHERE rule_id = ? AND series_id = ?",
                    [(rule_id, self._ids[k]) for k in update.adopted if k in self._ids],
                )
            self._store_live(rule_id, update.live)
            self._store_settled(rule_id, update.settled)
            if update.keep:
                db.executemany(
                    "INSERT OR REPLACE INTO windows (rule_id, window_end, window_start, vals)"
                    " VALUES (?, ?, ?, ?)",
                    [(rule_id, w.end, w.start, self._encode_values(values))
                     for w, values in update.keep.items()],
                )
            db.execute(
                "DELETE FROM windows WHERE rule_id = ? AND window_end <= ?",
                (rule_id, update.prune_upto),
            )
            self._queue(update.samples)

    def mark_removed(self, key: RuleKey, at: float, update: Update | None = None) -> None:
        """A rule left the rule files at ``at`` (unix time): commit its last update (the
        stale markers of its series) and start its retention."""
        with self._transaction(f"retire {key.record}"):
            rule_id = key.rule_id
            self._db.execute(
                "UPDATE rules SET removed_at = ? WHERE rule_id = ? AND removed_at IS NULL",
                (at, rule_id),
            )
            if update is not None:
                self._store_live(rule_id, update.live)
                self._queue(update.samples)

    def known_rules(self) -> list[KnownRule]:
        """Every rule the state holds."""
        return [
            KnownRule(RuleKey(g, r, e, k), int(c), i, t, removed, int(live))
            for g, r, e, k, c, i, t, removed, live in self._db.execute(
                "SELECT group_name, record, expr, kind, checkpoint, interval, tenant,"
                " removed_at, (SELECT count(*) FROM live WHERE live.rule_id = rules.rule_id)"
                " FROM rules ORDER BY group_name, record, kind, expr"
            )
        ]

    def last_checkpoint(self, group: str, record: str) -> int | None:
        """The latest checkpoint of any rule, loaded or removed, that recorded ``record`` in
        ``group``: where a rule that replaces it (a new expression or kind) begins."""
        row = self._db.execute(
            "SELECT max(checkpoint) FROM rules WHERE group_name = ? AND record = ?",
            (group, record),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def forget(self, key: RuleKey) -> None:
        """Drop everything the state holds of a rule."""
        with self._transaction(f"forget {key.record}"):
            self._forget(key.rule_id)

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

    def collect_garbage(self, sent_before_ms: int) -> int:
        """Forget the ``sent`` marks older than ``sent_before_ms`` and every label set
        nothing refers to any more; returns how many label sets were dropped."""
        db = self._db
        with self._transaction("collect unused series"):
            db.execute("DELETE FROM sent WHERE ts_ms < ?", (sent_before_ms,))
            used: set[int] = set()
            for query in (
                "SELECT series_id FROM totals", "SELECT series_id FROM live",
                "SELECT series_id FROM legacy", "SELECT series_id FROM outbox",
                "SELECT series_id FROM sent",
            ):
                used.update(sid for (sid,) in db.execute(query))
            for (blob,) in db.execute("SELECT vals FROM windows"):
                used.update(_decode_values(blob)[0])
            unused = [sid for sid in self._labels if sid not in used]
            db.executemany("DELETE FROM series WHERE series_id = ?", [(s,) for s in unused])
        for sid in unused:
            self._ids.pop(self._labels.pop(sid), None)
            self._last.pop(sid, None)
        return len(unused)

    def size(self) -> dict[str, int]:
        """Rows per table, for tests and benchmarks."""
        return {
            table: int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("rules", "series", "totals", "live", "windows", "settle", "legacy",
                          "outbox", "sent")
        }

    # outbox ----------------------------------------------------------------

    def outbox_head(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` queued samples, in insertion order."""
        return [
            OutboxRow(i, sid, self._labels[sid], ts, v if bits is None else _nan(bits))
            for i, sid, ts, v, bits in self._db.execute(
                "SELECT id, series_id, ts_ms, value, nan_bits FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            )
        ]

    def outbox_depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def outbox_oldest_ts_ms(self) -> int | None:
        row = self._db.execute("SELECT min(ts_ms) FROM outbox").fetchone()
        return None if row[0] is None else int(row[0])

    def last_sent(self, series_ids: Iterable[int]) -> dict[int, int]:
        """Timestamp of the newest sample accepted by the receiver, per series."""
        ids = list(set(series_ids))
        result: dict[int, int] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            result.update(
                self._db.execute(
                    f"SELECT series_id, ts_ms FROM sent WHERE series_id IN ({marks})", chunk
                ).fetchall()
            )
        return result

    def remove_from_outbox(
        self, *, delivered: Sequence[OutboxRow] = (), dropped: Sequence[OutboxRow] = ()
    ) -> None:
        """Remove sent rows, advancing each delivered series' last sent timestamp."""
        with self._transaction("update the outbox"):
            # The rows of a batch have consecutive ids: delete runs of ids, not each id.
            self._db.executemany(
                "DELETE FROM outbox WHERE id BETWEEN ? AND ?",
                _runs(sorted({r.id for r in (*delivered, *dropped)})),
            )
            newest: dict[int, int] = {}
            for r in delivered:
                newest[r.series_id] = max(newest.get(r.series_id, r.ts_ms), r.ts_ms)
            self._db.executemany(
                "INSERT INTO sent (series_id, ts_ms) VALUES (?, ?) ON CONFLICT (series_id)"
                " DO UPDATE SET ts_ms = max(ts_ms, excluded.ts_ms)",
                list(newest.items()),
            )

    # internals ---------------------------------------------------------------

    def _forget(self, rule_id: str) -> None:
        for table in ("rules", "totals", "live", "windows", "settle", "legacy"):
            self._db.execute(f"DELETE FROM {table} WHERE rule_id = ?", (rule_id,))
        self._undo_live.setdefault(rule_id, self._live.pop(rule_id, None))

    def _store_live(self, rule_id: str, live: frozenset[Labels]) -> None:
        """Replace the rule's live set, writing only what changed."""
        before = self._live.get(rule_id)
        if before is None:
            before = frozenset(
                self._labels[sid] for (sid,) in self._db.execute(
                    "SELECT series_id FROM live WHERE rule_id = ?", (rule_id,)
                )
            )
        if live == before:
            return
        self._undo_live.setdefault(rule_id, self._live.get(rule_id))
        self._db.executemany(
            "DELETE FROM live WHERE rule_id = ? AND series_id = ?",
            [(rule_id, self._ids[labels]) for labels in before - live],
        )
        self._db.executemany(
            "INSERT INTO live (rule_id, series_id) VALUES (?, ?)",
            [(rule_id, self._id(labels)) for labels in live - before],
        )
        self._live[rule_id] = live

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

    def _queue(self, samples: Sequence[Sample]) -> None:
        rows = [(self._id(k), ts, *_encode_value(v)) for k, ts, v in samples]
        self._db.executemany(
            "INSERT INTO outbox (series_id, ts_ms, value, nan_bits) VALUES (?, ?, ?, ?)", rows
        )
        last, undo = self._last, self._undo_last
        for sid, ts, _value, _bits in rows:
            before = last.get(sid)
            if before is None or ts > before:
                if sid not in undo:
                    undo[sid] = before
                last[sid] = ts

    def _encode_values(self, values: Mapping[TempoKey, float]) -> bytes:
        ids = array("q", [self._id(k) for k in values])
        return ids.tobytes() + array("d", values.values()).tobytes()

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
        # in the order of the labels index: inserting at random places is 3 times slower
        ids = self._ids
        rows = sorted((_encode_labels(labels), ids[labels]) for labels in self._pending)
        self._db.executemany("INSERT INTO series (labels, series_id) VALUES (?, ?)", rows)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction; any failure rolls it back and raises StateError.

        What the transaction changed in memory (new label sets, queued timestamps, live
        sets) is undone with it.
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
            self._undo_last.clear()
            self._undo_live.clear()

    def _undo(self) -> None:
        for labels in self._pending:
            series_id = self._ids.pop(labels, None)
            if series_id is not None:
                self._labels.pop(series_id, None)
        for sid, ts in self._undo_last.items():
            if ts is None:
                self._last.pop(sid, None)
            else:
                self._last[sid] = ts
        for rule_id, live in self._undo_live.items():
            if live is None:
                self._live.pop(rule_id, None)
            else:
                self._live[rule_id] = live


class _LastQueued(Mapping[Labels, int]):
    """``State.last_ts``: label set -> timestamp of its last queued sample."""

    def __init__(self, ids: Mapping[Labels, int], last: Mapping[int, int]) -> None:
        self._ids, self._last = ids, last

    def __getitem__(self, labels: Labels) -> int:
        return self._last[self._ids[labels]]

    def __iter__(self) -> Iterator[Labels]:
        labels_of = {i: labels for labels, i in self._ids.items()}
        return (labels_of[i] for i in self._last)

    def __len__(self) -> int:
        return len(self._last)


# -- schema versions ----------------------------------------------------------------------


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring a tempo-bridge 0.1 state (version 0) up to date."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
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
    dropped, and every settle age starts at the checkpoint.
    """
    old = db.execute("SELECT rule_id, group_name, record, expr, kind FROM rules").fetchall()
    db.execute("ALTER TABLE rules ADD COLUMN interval INTEGER")
    db.execute("ALTER TABLE rules ADD COLUMN tenant TEXT")
    db.execute("ALTER TABLE rules ADD COLUMN removed_at REAL")
    db.execute("ALTER TABLE totals RENAME TO legacy_v0")
    db.execute(
        "CREATE TABLE legacy (rule_id TEXT NOT NULL, series_id INTEGER NOT NULL,"
        " total REAL NOT NULL, PRIMARY KEY (rule_id, series_id)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO legacy SELECT rule_id, series_id, total FROM legacy_v0")
    db.execute(
        "CREATE TABLE live (rule_id TEXT NOT NULL, series_id INTEGER NOT NULL,"
        " PRIMARY KEY (rule_id, series_id)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO live SELECT rule_id, series_id FROM legacy_v0")
    db.execute("INSERT OR IGNORE INTO live SELECT rule_id, series_id FROM live_gauges")
    db.execute("DROP TABLE legacy_v0")
    db.execute("DROP TABLE live_gauges")
    db.execute("DROP TABLE window_values")
    db.execute(
        "UPDATE settle SET checkpoint ="
        " (SELECT checkpoint FROM rules WHERE rules.rule_id = settle.rule_id)"
    )
    for rule_id, group, record, expr, kind in old:
        new_id = _rule_id(group, record, expr, kind)
        for table in ("rules", "legacy", "live", "settle"):
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


def _encode_value(value: float) -> tuple[float | None, int | None]:
    """SQLite turns NaN into NULL: keep a NaN's exact bits (a stale marker's) instead."""
    if math.isnan(value):
        return None, _BITS.unpack(_DOUBLE.pack(value))[0]
    return value, None


def _nan(bits: int) -> float:
    value: float = _DOUBLE.unpack(_BITS.pack(bits))[0]
    return value


def _decode_values(blob: bytes) -> tuple[array[int], array[float]]:
    """Tempo series ids and values of one kept window (see ``State._encode_values``)."""
    half = len(blob) // 2
    return array("q", blob[:half]), array("d", blob[half:])


_quote = json.encoder.encode_basestring  # a str as JSONEncoder(ensure_ascii=False) writes it


def _encode_labels(labels: Labels) -> str:
    """``json.dumps(labels, separators=(",", ":"), ensure_ascii=False)``, 3 times faster."""
    return "[" + ",".join([f"[{_quote(k)},{_quote(v)}]" for k, v in labels]) + "]"


def _decode_labels(text: str) -> Labels:
    return tuple((str(k), str(v)) for k, v in json.loads(text))
