"""State: one SQLite database with checkpoints, counter totals, live gauge series and the outbox.

Every evaluation commits in one transaction (:meth:`State.commit_evaluation`), so a crash
leaves either the whole evaluation or none of it. The outbox holds samples until the
receiver accepts them; the sender reads it in insertion order.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bridge.errors import StateError
from bridge.series import Labels, Sample

SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    rule_id     TEXT PRIMARY KEY,
    group_name  TEXT NOT NULL,
    record      TEXT NOT NULL,
    expr        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    checkpoint  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_id   INTEGER PRIMARY KEY,
    labels      TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS totals (
    rule_id     TEXT NOT NULL,
    series_id   INTEGER NOT NULL,
    total       REAL NOT NULL,
    PRIMARY KEY (rule_id, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_gauges (
    rule_id     TEXT NOT NULL,
    series_id   INTEGER NOT NULL,
    PRIMARY KEY (rule_id, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS window_values (
    rule_id     TEXT NOT NULL,
    window_end  INTEGER NOT NULL,
    series_id   INTEGER NOT NULL,
    value       REAL NOT NULL,
    PRIMARY KEY (rule_id, window_end, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settle (
    rule_id     TEXT NOT NULL,
    age         INTEGER NOT NULL,
    checkpoint  INTEGER NOT NULL,
    PRIMARY KEY (rule_id, age)
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


@dataclass(frozen=True)
class RuleState:
    """What the state knows of one rule."""

    checkpoint: int
    totals: dict[Labels, float]
    live_gauges: set[Labels]
    settled: dict[int, int]
    """Per settle age (seconds): the end of the last window read again at that age."""


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
        """Open (or create) the database at ``path``.

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
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if self._lock is not None:
                self._lock.close()
            raise StateError(f"cannot open the state database {path}: {exc}") from exc
        self._pending: list[Labels] = []  # series given an id in the open transaction
        self._next_id: int | None = None  # the next new series' id in the open transaction
        self._series_ids: dict[Labels, int] = {}
        self._labels_by_id: dict[int, Labels] = {}
        for series_id, text in self._db.execute("SELECT series_id, labels FROM series"):
            labels = _decode_labels(text)
            self._series_ids[labels] = series_id
            self._labels_by_id[series_id] = labels

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # rules -----------------------------------------------------------------

    def rule_state(self, rule_id: str) -> RuleState | None:
        """Checkpoint, totals and live gauges of a rule, or None if it has never run."""
        row = self._db.execute(
            "SELECT checkpoint FROM rules WHERE rule_id = ?", (rule_id,)
        ).fetchone()
        if row is None:
            return None
        totals = {
            self._labels_by_id[sid]: total
            for sid, total in self._db.execute(
                "SELECT series_id, total FROM totals WHERE rule_id = ?", (rule_id,)
            )
        }
        live = {
            self._labels_by_id[sid]
            for (sid,) in self._db.execute(
                "SELECT series_id FROM live_gauges WHERE rule_id = ?", (rule_id,)
            )
        }
        settled = {
            int(age): int(checkpoint)
            for age, checkpoint in self._db.execute(
                "SELECT age, checkpoint FROM settle WHERE rule_id = ?", (rule_id,)
            )
        }
        return RuleState(int(row[0]), totals, live, settled)

    def window_values(self, rule_id: str, after: int, upto: int) -> dict[int, dict[Labels, float]]:
        """Values recorded for the windows ending in ``(after, upto]``, kept for settling."""
        result: dict[int, dict[Labels, float]] = {}
        for end, sid, value in self._db.execute(
            "SELECT window_end, series_id, value FROM window_values"
            " WHERE rule_id = ? AND window_end > ? AND window_end <= ?",
            (rule_id, after, upto),
        ):
            result.setdefault(int(end), {})[self._labels_by_id[sid]] = value
        return result

    def commit_evaluation(
        self,
        *,
        rule_id: str,
        group: str,
        record: str,
        expr: str,
        kind: str,
        checkpoint: int,
        totals: Mapping[Labels, float] | None = None,
        live_gauges: Iterable[Labels] | None = None,
        samples: Sequence[Sample] = (),
        window_values: Mapping[int, Mapping[Labels, float]] | None = None,
        settled: Mapping[int, int] | None = None,
    ) -> None:
        """Store one evaluation atomically: checkpoint, totals or live set, its samples,
        the window values kept for settling and the settle checkpoints.

        Window values of windows that every settle age has passed are deleted.
        """
        db = self._db
        with self._transaction(f"store the evaluation of {record}"):
            db.execute(
                "INSERT INTO rules (rule_id, group_name, record, expr, kind, checkpoint)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id)"
                " DO UPDATE SET checkpoint = excluded.checkpoint",
                (rule_id, group, record, expr, kind, checkpoint),
            )
            if totals is not None:
                db.executemany(
                    "INSERT INTO totals (rule_id, series_id, total) VALUES (?, ?, ?)"
                    " ON CONFLICT (rule_id, series_id) DO UPDATE SET total = excluded.total",
                    [(rule_id, self._series_id(k), v) for k, v in totals.items()],
                )
            if live_gauges is not None:
                db.execute("DELETE FROM live_gauges WHERE rule_id = ?", (rule_id,))
                db.executemany(
                    "INSERT INTO live_gauges (rule_id, series_id) VALUES (?, ?)",
                    [(rule_id, self._series_id(k)) for k in live_gauges],
                )
            if window_values:
                db.executemany(
                    "INSERT INTO window_values (rule_id, window_end, series_id, value)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (rule_id, window_end, series_id)"
                    " DO UPDATE SET value = excluded.value",
                    [
                        (rule_id, end, self._series_id(k), v)
                        for end, values in window_values.items()
                        for k, v in values.items()
                    ],
                )
            if settled:
                db.executemany(
                    "INSERT INTO settle (rule_id, age, checkpoint) VALUES (?, ?, ?)"
                    " ON CONFLICT (rule_id, age) DO UPDATE SET checkpoint = excluded.checkpoint",
                    [(rule_id, age, c) for age, c in settled.items()],
                )
                db.execute(
                    "DELETE FROM window_values WHERE rule_id = ? AND window_end <= ?",
                    (rule_id, min(settled.values())),
                )
            db.executemany(
                "INSERT INTO outbox (series_id, ts_ms, value, nan_bits) VALUES (?, ?, ?, ?)",
                [(self._series_id(k), ts, *_encode_value(v)) for k, ts, v in samples],
            )

    def forget_rule(self, rule_id: str) -> None:
        """Drop a rule's checkpoint, totals and live set (its rule was removed or changed)."""
        with self._transaction(f"forget rule {rule_id}"):
            for table in ("rules", "totals", "live_gauges", "window_values", "settle"):
                self._db.execute(f"DELETE FROM {table} WHERE rule_id = ?", (rule_id,))

    def known_rules(self) -> list[tuple[str, str, str, str]]:
        """``(rule_id, group, record, kind)`` of every rule in the state."""
        return [
            (str(a), str(b), str(c), str(d))
            for a, b, c, d in self._db.execute(
                "SELECT rule_id, group_name, record, kind FROM rules"
            )
        ]

    # outbox ----------------------------------------------------------------

    def outbox_head(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` queued samples, in insertion order."""
        return [
            OutboxRow(i, sid, self._labels_by_id[sid], ts, v if bits is None else _nan(bits))
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

    def _series_id(self, labels: Labels) -> int:
        """The id of a series; a new one is given the next id, and is stored with the
        others of the transaction when it commits (one statement for them all)."""
        series_id = self._series_ids.get(labels)
        if series_id is None:
            if self._next_id is None:
                row = self._db.execute("SELECT coalesce(max(series_id), 0) + 1 FROM series")
                self._next_id = int(row.fetchone()[0])
            series_id, self._next_id = self._next_id, self._next_id + 1
            self._series_ids[labels] = series_id
            self._labels_by_id[series_id] = labels
            self._pending.append(labels)
        return series_id

    def _store_new_series(self) -> None:
        # in the order of the labels index: inserting at random places is 3 times slower
        ids = self._series_ids
        rows = sorted((_encode_labels(labels), ids[labels]) for labels in self._pending)
        self._db.executemany("INSERT INTO series (labels, series_id) VALUES (?, ?)", rows)

    def _forget_uncommitted_series(self) -> None:
        for labels in self._pending:
            series_id = self._series_ids.pop(labels, None)
            if series_id is not None:
                self._labels_by_id.pop(series_id, None)
        self._pending.clear()
        self._next_id = None

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction; any failure rolls it back and raises StateError."""
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
            self._forget_uncommitted_series()
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"cannot {what}: {exc}") from exc
            raise
        self._pending.clear()
        self._next_id = None  # looked up again in the next transaction, under its lock


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


_quote = json.encoder.encode_basestring  # a str as JSONEncoder(ensure_ascii=False) writes it


def _encode_labels(labels: Labels) -> str:
    """``json.dumps(labels, separators=(",", ":"), ensure_ascii=False)``, 3 times faster."""
    return "[" + ",".join([f"[{_quote(k)},{_quote(v)}]" for k, v in labels]) + "]"


def _decode_labels(text: str) -> Labels:
    return tuple((str(k), str(v)) for k, v in json.loads(text))
