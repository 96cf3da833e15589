"""A key/value table whose truth is a compacted Kafka topic and whose lookups go to SQLite on disk.

The bridge's internal state (cursors, fingerprints, command outcomes) lives in compacted topics so it
survives the loss of any machine, and is written in the same Kafka transaction as the records it
describes. Lookups cannot go to Kafka, and holding every key in RAM would make memory grow with the
number of tracked resources, so a local SQLite file caches the topic:

* on start, `catch_up()` reads the topic (read_committed) from the offsets the cache last reached to
  the end, so only what is new since the last run is read;
* after each successful commit, the writer applies its own writes with `apply()`;
* the cache may lag the topic (a crash between commit and apply) but never lead it, and the next
  `catch_up()` closes the gap.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bridge.kafka.errors import KafkaGlueError

log = logging.getLogger(__name__)

Write = tuple[bytes, bytes | None]  # (key, value); a None value deletes the key (a tombstone)


class CatchUpTimeoutError(KafkaGlueError):
    """The topic could not be read to its end in time."""


class CompactedTable:
    def __init__(self, kafka_config: Mapping[str, Any], topic: str, db_path: Path) -> None:
        self.topic = topic
        self._kafka_config = dict(kafka_config)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS position (topic TEXT, partition INTEGER, next_offset INTEGER, "
            "PRIMARY KEY (topic, partition))"
        )

    # -- reads -------------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist, in one query per 500 keys (a page of resources at a time)."""
        wanted = list(keys)
        found: dict[bytes, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._db.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk):  # noqa: S608
                found[bytes(key)] = bytes(value)
        return found

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys starting with `prefix`, in key order, streamed from disk."""
        upper = prefix + b"\xff" * 8
        cursor = self._db.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, upper)
        )
        for key, value in cursor:
            yield bytes(key), bytes(value)

    def keys_after(self, prefix: bytes, after: bytes | None, limit: int) -> list[bytes]:
        """Up to `limit` keys starting with `prefix` and greater than `after`, in key order (one query;
        callers page through a large table without holding a read cursor open across writes)."""
        upper = prefix + b"\xff" * 8
        low = prefix if after is None else after
        op = ">=" if after is None else ">"
        rows = self._db.execute(
            f"SELECT key FROM kv WHERE key {op} ? AND key < ? ORDER BY key LIMIT ?",  # noqa: S608
            (low, upper, limit),
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM kv").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------------
    def apply(self, writes: Iterable[Write]) -> None:
        """Record writes that are committed in the topic."""
        self._db.execute("BEGIN")
        try:
            self._apply(writes)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _apply(self, writes: Iterable[Write]) -> None:
        upserts: list[tuple[bytes, bytes]] = []
        deletes: list[tuple[bytes]] = []
        for key, value in writes:
            if value is None:
                deletes.append((key,))
            else:
                upserts.append((key, value))
        if upserts:
            self._db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", upserts)
        if deletes:
            self._db.executemany("DELETE FROM kv WHERE key = ?", deletes)

    # -- catching up with the topic ----------------------------------------------------------------
    def catch_up(self, timeout_s: float = 120.0, batch: int = 5000) -> int:
        """Read what the topic holds beyond the cached position, up to its end. Returns records read.

        Run it after the writer's `init_transactions()`, which aborts a fenced predecessor's open
        transaction; otherwise the last stable offset could stay behind the end for up to the
        transaction timeout.
        """
        consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": f"table-{uuid.uuid4().hex}",  # assign() only; nothing is ever committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            metadata = consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                raise KafkaGlueError(f"cannot read {self.topic}: {metadata.error if metadata else 'missing'}")
            positions = dict(
                self._db.execute("SELECT partition, next_offset FROM position WHERE topic = ?", (self.topic,))
            )
            partitions = [
                TopicPartition(self.topic, p, positions.get(p, OFFSET_BEGINNING)) for p in metadata.partitions
            ]
            consumer.assign(partitions)
            return self._read_to_end(consumer, {p.partition for p in partitions}, timeout_s, batch)
        finally:
            consumer.close()

    def _read_to_end(self, consumer: Consumer, pending: set[int], timeout_s: float, batch: int) -> int:
        deadline = time.monotonic() + timeout_s
        total = 0
        while pending:
            if time.monotonic() > deadline:
                raise CatchUpTimeoutError(f"{self.topic}: partitions {sorted(pending)} not read to the end")
            # consume() waits for a full batch or the timeout, so keep the timeout short.
            messages = consumer.consume(batch, timeout=0.1)
            writes: list[Write] = []
            next_offsets: dict[int, int] = {}
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise KafkaGlueError(f"reading {self.topic}: {error}")
                key = msg.key()
                if key is not None:  # keyless records have no place in a table
                    writes.append((key, msg.value()))
                next_offsets[msg.partition()] = msg.offset() + 1  # type: ignore[index,operator]
            if writes or next_offsets:
                self._db.execute("BEGIN")
                self._apply(writes)
                self._db.executemany(
                    "INSERT OR REPLACE INTO position (topic, partition, next_offset) VALUES (?, ?, ?)",
                    [(self.topic, p, o) for p, o in next_offsets.items()],
                )
                self._db.execute("COMMIT")
                total += len(writes)
        log.info("table %s caught up: %d records read, %d keys", self.topic, total, len(self))
        return total

    def close(self) -> None:
        self._db.close()
