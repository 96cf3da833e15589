"""The schedule's store: a compacted topic, its SQLite cache, and a due-time index in the same file.

The truth is the compacted ``<prefix>._schedule`` topic (see ``codec``), written in the same Kafka
transaction as the events, fingerprints and cursors of the scans it describes, so the schedule moves
with its connection when another process takes the connection over. Lookups go to the SQLite cache
of ``bridge.kafka.table.CompactedTable``; the priority queue is a query on a secondary table,
``schedule_index`` (one row per unit: due time, last scan, cost, load), kept in step with the cache's
key/value rows by SQLite triggers. Whatever writes the cache (the writer applying its own writes
after a commit, or ``catch_up()`` reading the topic) therefore updates the index in the same SQLite
transaction, and the index can never disagree with the cache.

Nothing here holds the units in memory: the queue is ``ORDER BY due LIMIT n`` on an index, totals are
SQL aggregates read once and then kept up to date by the caller, listings are paged, and SQLite's page
cache is bounded, so memory does not grow with the roster.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.kafka.table import CompactedTable, Write
from bridge.kafka.txn import Record
from bridge.source.schedule.codec import MEMBER, UnitKind, connection_prefix, member_key, prefix

_PAGE_CACHE_KIB = 8 * 1024

# One row per unit record of the cache (member records are not indexed). The JSON paths are the
# codec's field names.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_index (
    key BLOB PRIMARY KEY,
    conn TEXT NOT NULL,
    kind TEXT NOT NULL,
    due REAL NOT NULL,
    scanned REAL,
    stale REAL NOT NULL,
    cost REAL NOT NULL,
    load REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedule_by_due ON schedule_index (conn, due);
CREATE INDEX IF NOT EXISTS schedule_by_stale ON schedule_index (conn, stale);
"""
# Delete, then insert: a trigger's own conflict clause gives way to that of the statement firing it (the
# cache's upsert), so "INSERT OR REPLACE" would not replace here.
_ROW = """
    DELETE FROM schedule_index WHERE key = NEW.key;
    INSERT INTO schedule_index (key, conn, kind, due, scanned, stale, cost, load)
    SELECT NEW.key, json_extract(k, '$[0]'), json_extract(k, '$[1]') || '/' || json_extract(k, '$[2]'),
           json_extract(v, '$.d'), json_extract(v, '$.s'),
           coalesce(json_extract(v, '$.s'), json_extract(v, '$.a')),
           json_extract(v, '$.k'), json_extract(v, '$.k') * json_extract(v, '$.w')
    FROM (SELECT CAST(NEW.key AS TEXT) AS k, CAST(NEW.value AS TEXT) AS v);
"""
# A deleted key stays in the cache as a row without a value (a tombstone keeps its offset): not indexed.
_IS_UNIT = "json_extract(CAST(NEW.key AS TEXT), '$[1]') != '' AND NEW.value IS NOT NULL"
_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS schedule_index_insert AFTER INSERT ON kv WHEN {_IS_UNIT} BEGIN {_ROW} END;
CREATE TRIGGER IF NOT EXISTS schedule_index_update AFTER UPDATE ON kv WHEN {_IS_UNIT} BEGIN {_ROW} END;
CREATE TRIGGER IF NOT EXISTS schedule_index_tombstone AFTER UPDATE ON kv WHEN NEW.value IS NULL BEGIN
    DELETE FROM schedule_index WHERE key = OLD.key;
END;
CREATE TRIGGER IF NOT EXISTS schedule_index_delete AFTER DELETE ON kv BEGIN
    DELETE FROM schedule_index WHERE key = OLD.key;
END;
"""  # noqa: S608 (constant SQL, nothing from input)


@dataclass(frozen=True)
class Totals:
    """Over all units of a connection: how many, Σ cost (requests of one scan of each), Σ cost x weight."""

    units: int
    cost: float
    load: float


@dataclass(frozen=True)
class QueueStats:
    units: int
    overdue: int  # due before now
    most_overdue_s: float  # now minus the earliest due time (0 when nothing is due)
    stalest_s: float  # now minus the oldest last scan (or join, for units never scanned)


class ScheduleStore:
    def __init__(self, table: CompactedTable, db_path: Path) -> None:
        """`table` caches the schedule topic in `db_path` (the same file: the index lives beside it)."""
        self._table = table
        self._local = 0  # positions of writes applied without Kafka (see apply)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
        self._db.execute("PRAGMA busy_timeout=30000")
        fresh = (
            self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schedule_index'").fetchone() is None
        )
        self._db.executescript(_SCHEMA + _TRIGGERS)
        if fresh:
            self._rebuild()

    @classmethod
    def open(cls, kafka_config: Mapping[str, Any], topic: str, db_path: Path) -> ScheduleStore:
        return cls(CompactedTable(kafka_config, topic, db_path), db_path)

    @property
    def topic(self) -> str:
        return self._table.topic

    def _rebuild(self) -> None:
        """Index a cache that has rows from before the index existed (re-inserting fires the trigger)."""
        self._db.execute("BEGIN")
        self._db.execute("UPDATE kv SET value = value WHERE value IS NOT NULL")
        self._db.execute("COMMIT")

    # -- reads -----------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        return self._table.get_many(keys)

    def next_keys(self, connection: str, limit: int, *, scanned_before: float) -> list[bytes]:
        """Up to `limit` unit keys, earliest due first, among units not scanned since `scanned_before`
        (the minimum interval). Work-conserving: units due later come after the due ones."""
        rows = self._db.execute(
            "SELECT key FROM schedule_index INDEXED BY schedule_by_due WHERE conn = ? "
            "AND (scanned IS NULL OR scanned <= ?) ORDER BY due LIMIT ?",
            (connection, scanned_before, limit),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def totals(self, connection: str) -> Totals:
        units, cost, load = self._db.execute(
            "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(load), 0) "
            "FROM schedule_index WHERE conn = ?",
            (connection,),
        ).fetchone()
        return Totals(int(units), float(cost), float(load))

    def stats(self, connection: str, now: float) -> QueueStats:
        units, overdue = self._db.execute(
            "SELECT (SELECT count(*) FROM schedule_index WHERE conn = ?), "
            "(SELECT count(*) FROM schedule_index WHERE conn = ? AND due < ?)",
            (connection, connection, now),
        ).fetchone()
        earliest = self._db.execute(
            "SELECT min(due) FROM schedule_index WHERE conn = ?", (connection,)
        ).fetchone()[0]
        oldest = self._db.execute(
            "SELECT min(stale) FROM schedule_index WHERE conn = ?", (connection,)
        ).fetchone()[0]
        return QueueStats(
            int(units),
            int(overdue),
            max(0.0, now - earliest) if earliest is not None else 0.0,
            max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    def members_after(self, connection: str, after: str | None, limit: int) -> list[str]:
        """Patient ids in the schedule, ascending, greater than `after` (one query per page)."""
        start = prefix(connection, *MEMBER)
        low = None if after is None else member_key(connection, after)
        keys = self._table.keys_after(start, low, limit)
        return [key[len(start) + 1 : -2].decode() for key in keys]

    def keys_of_other_kinds(self, connection: str, kinds: Sequence[UnitKind], limit: int) -> list[bytes]:
        """Up to `limit` unit keys of kinds not in `kinds` (a resource or category no longer scanned)."""
        labels = [f"{k.resource}/{k.variant}" for k in kinds]
        marks = ",".join("?" * len(labels))
        rows = self._db.execute(
            f"SELECT key FROM schedule_index WHERE conn = ? AND kind NOT IN ({marks}) LIMIT ?",  # noqa: S608
            (connection, *labels, limit),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def units_of(self, connection: str) -> Iterator[tuple[bytes, bytes]]:
        """Every unit record of a connection, in key order, streamed from disk (for tests and tools)."""
        members = prefix(connection, *MEMBER)
        for key, value in self._table.scan_prefix(connection_prefix(connection)):
            if not key.startswith(members):
                yield key, value

    # -- writes ----------------------------------------------------------------------------------
    def records(self, writes: Iterable[Write]) -> list[Record]:
        """Schedule writes as records of the transaction that carries the scans (bridge.kafka.txn); the
        transaction helper applies them to the cache once it committed (the index follows by trigger)."""
        return [Record(self._table.topic, key, value, table=self._table) for key, value in writes]

    def apply(self, writes: Iterable[Write]) -> None:
        """Record writes as if committed, without Kafka (models and tools): at local positions, which a
        write read from the topic later always replaces."""
        start = self._local
        self._local += 1_000_000
        self._table.apply((key, value, -1, start + n) for n, (key, value) in enumerate(writes))

    def catch_up(self, timeout_s: float = 120.0) -> int:
        return self._table.catch_up(timeout_s)

    def close(self) -> None:
        self._db.close()
        self._table.close()
