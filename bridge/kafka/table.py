"""A key/value table whose truth is a compacted Kafka topic and whose lookups go to SQLite on disk.

The bridge's internal state (cursors, fingerprints, command outcomes) lives in compacted topics so it
survives the loss of any machine, and is written in the same Kafka transaction as the records it
describes. Lookups cannot go to Kafka, and holding every key in RAM would make memory grow with the
number of tracked resources, so a local SQLite file caches the topic.

Two writers feed the cache: the process's own commits (applied after the transaction committed, with
the offsets from the delivery reports) and catch-up reads of the topic (what other processes, or this
one before a crash, committed). They may run at the same time, so every write is applied *monotonically*:
the cache keeps each key's (partition, offset) and a write only replaces a value with a higher offset.
A catch-up that reads an older value after this process committed a newer one never moves the key back,
and a tombstone keeps its offset (a row whose value is NULL) so an older value read later cannot bring a
deleted key back.

Catching up reads `read_committed` up to a *snapshot* of the high watermarks, not merely to an end of
partition: the last stable offset stays behind an open transaction of another process, so reaching the
snapshot means every transaction open when it was taken has committed or aborted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from bridge.kafka.errors import KafkaGlueError, translate

log = logging.getLogger(__name__)

Write = tuple[bytes, bytes | None]  # a staged write: (key, value); a None value deletes the key
Applied = tuple[bytes, bytes | None, int, int]  # a committed write: (key, value, partition, offset)

SCHEMA = 2  # part of the file name: a cache of an older layout is rebuilt from the topic, not migrated


class CatchUpTimeoutError(KafkaGlueError):
    """The topic could not be read up to the snapshot in time."""


class CompactedTable:
    def __init__(self, kafka_config: Mapping[str, Any], topic: str, db_path: Path) -> None:
        self.topic = topic
        self._kafka_config = dict(kafka_config)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used from the loop, the committer and the reader
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB, part INTEGER NOT NULL, "
            "off INTEGER NOT NULL) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS position (topic TEXT, partition INTEGER, next_offset INTEGER, "
            "PRIMARY KEY (topic, partition))"
        )

    # -- reads -------------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist, in one query per 500 keys (a page of resources at a time)."""
        wanted = list(keys)
        found: dict[bytes, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, value FROM kv WHERE key IN ({marks}) AND value IS NOT NULL",  # noqa: S608
                    chunk,
                ).fetchall()
            for key, value in rows:
                found[bytes(key)] = bytes(value)
        return found

    def scan_prefix(self, prefix: bytes, chunk: int = 1000) -> Iterator[tuple[bytes, bytes]]:
        """Keys starting with `prefix`, in key order, read from disk a chunk at a time."""
        after: bytes | None = None
        while True:
            rows = self._range(prefix, after, chunk, "key, value")
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < chunk:
                return
            after = bytes(rows[-1][0])

    def keys_after(self, prefix: bytes, after: bytes | None, limit: int) -> list[bytes]:
        """Up to `limit` keys starting with `prefix` and greater than `after`, in key order (one query;
        callers page through a large table without holding a read cursor open across writes)."""
        return [bytes(row[0]) for row in self._range(prefix, after, limit, "key")]

    def _range(self, prefix: bytes, after: bytes | None, limit: int, columns: str) -> list[Any]:
        upper = prefix + b"\xff" * 8
        low = prefix if after is None else after
        op = ">=" if after is None else ">"
        with self._lock:
            return self._db.execute(
                f"SELECT {columns} FROM kv WHERE key {op} ? AND key < ? AND value IS NOT NULL "  # noqa: S608
                "ORDER BY key LIMIT ?",
                (low, upper, limit),
            ).fetchall()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM kv WHERE value IS NOT NULL").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------------
    def apply(self, writes: Iterable[Applied]) -> None:
        """Record writes that are committed in the topic, each at its (partition, offset)."""
        self._write(list(writes), {})

    def forget(self, keys: Iterable[bytes]) -> None:
        """Drop values from this cache only (the topic's retention drops them from Kafka): each key keeps
        its offset, so reading the same record again later does not bring it back."""
        rows = [(key,) for key in keys]
        if rows:
            with self._lock:
                self._db.executemany("UPDATE kv SET value = NULL WHERE key = ?", rows)

    def positions(self) -> dict[int, int]:
        """The next offset to read, per partition, as far as the cache has read the topic."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM position WHERE topic = ?", (self.topic,)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def _write(self, writes: list[Applied], next_offsets: Mapping[int, int]) -> None:
        if not writes and not next_offsets:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                if writes:
                    # Only a higher offset replaces a value (a key stays in its partition while the
                    # partition count stays; after a change of count offsets cannot be compared).
                    self._db.executemany(
                        "INSERT INTO kv (key, value, part, off) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO "
                        "UPDATE SET value = excluded.value, part = excluded.part, off = excluded.off "
                        "WHERE excluded.part != kv.part OR excluded.off > kv.off",
                        writes,
                    )
                if next_offsets:
                    self._db.executemany(
                        "INSERT INTO position (topic, partition, next_offset) VALUES (?, ?, ?) "
                        "ON CONFLICT(topic, partition) DO UPDATE SET next_offset = "
                        "max(next_offset, excluded.next_offset)",
                        [(self.topic, p, o) for p, o in next_offsets.items()],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- catching up with the topic ----------------------------------------------------------------
    def catch_up(self, timeout_s: float = 120.0) -> int:
        """Read what the topic holds beyond the cached position, up to a snapshot of its end. Returns
        the records read (with a throw-away consumer; long-lived processes share a TableReader)."""
        reader = TableReader(self._kafka_config, [self])
        try:
            return reader.catch_up(timeout_s)
        finally:
            reader.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TableReader:
    """One consumer that brings a set of tables up to date with their topics, on demand.

    Blocking; the caller runs it on a thread of its own. Between catch-ups its partitions are paused, so
    it fetches nothing while idle.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        tables: Sequence[CompactedTable],
        *,
        admin: AdminClient | None = None,
        batch: int = 5000,
    ):
        self._tables = {t.topic: t for t in tables}
        self._batch = batch
        # The snapshot needs the true high watermarks: a read_committed consumer's own watermark query
        # answers the last stable offset, which stays *before* the open transactions it must wait for.
        self._admin = admin if admin is not None else AdminClient(dict(kafka_config))
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": f"table-{uuid.uuid4().hex}",  # assign() only; nothing is ever committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": 16384,
            }
        )
        self._assigned: set[tuple[str, int]] = set()

    def catch_up(self, timeout_s: float = 120.0) -> int:
        """Read every table's topic up to a high-watermark snapshot taken now. Returns records read."""
        deadline = time.monotonic() + timeout_s
        try:
            targets = self._snapshot(timeout_s)
            pending = {tp: high for tp, high in targets.items() if self._position(tp) < high}
            self._resume(pending)
            try:
                return self._read(pending, deadline)
            finally:
                self._pause()
        except KafkaException as exc:
            raise translate(exc, "reading the internal topics") from exc

    def _snapshot(self, timeout_s: float) -> dict[tuple[str, int], int]:
        wanted: dict[TopicPartition, OffsetSpec] = {}
        for topic in self._tables:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise KafkaGlueError(f"cannot read {topic}: {metadata.error if metadata else 'missing'}")
            for partition in metadata.partitions:
                wanted[TopicPartition(topic, partition)] = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self._admin.list_offsets(
            wanted, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=timeout_s
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def _position(self, tp: tuple[str, int]) -> int:
        return self._tables[tp[0]].positions().get(tp[1], 0)

    def _resume(self, pending: Mapping[tuple[str, int], int]) -> None:
        new = [tp for tp in pending if tp not in self._assigned]
        if new:
            positions = {t: table.positions() for t, table in self._tables.items()}
            self._consumer.incremental_assign(
                [TopicPartition(t, p, positions[t].get(p, OFFSET_BEGINNING)) for t, p in new]
            )
            self._assigned.update(new)
        old = [TopicPartition(t, p) for t, p in pending if (t, p) not in new]
        if old:
            self._consumer.resume(old)

    def _pause(self) -> None:
        if self._assigned:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])

    def _read(self, pending: dict[tuple[str, int], int], deadline: float) -> int:
        total = 0
        while pending:
            if time.monotonic() > deadline:
                raise CatchUpTimeoutError(f"not read up to the snapshot in time: {sorted(pending)}")
            # consume() waits for a full batch or the timeout, so keep the timeout short.
            messages = self._consumer.consume(self._batch, timeout=0.1)
            writes: dict[str, list[Applied]] = {}
            reached: dict[str, dict[int, int]] = {}
            for msg in messages:
                topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaGlueError(f"reading {topic}: {error}")
                    next_offset = offset  # the end of what read_committed may read now
                else:
                    key = msg.key()
                    if key is not None:  # keyless records have no place in a table
                        writes.setdefault(topic, []).append((key, msg.value(), partition, offset))
                    next_offset = offset + 1
                marks = reached.setdefault(topic, {})
                marks[partition] = max(marks.get(partition, 0), next_offset)
            for topic in reached.keys() | writes.keys():
                self._tables[topic]._write(writes.get(topic, []), reached.get(topic, {}))
                total += len(writes.get(topic, []))
            for topic, marks in reached.items():
                for partition, next_offset in marks.items():
                    if next_offset >= pending.get((topic, partition), next_offset + 1):
                        del pending[(topic, partition)]
        return total

    def close(self) -> None:
        self._consumer.close()
