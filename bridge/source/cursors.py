"""Poll cursors per (connection, task) in the compacted `_offsets` topic, Kafka Connect style."""

from __future__ import annotations

import json
from typing import Any

from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Record

Cursor = dict[str, Any]


def cursor_key(connection: str, task: str) -> bytes:
    return json.dumps([connection, task], separators=(",", ":")).encode()


def encode_cursor(cursor: Cursor) -> bytes:
    return json.dumps(cursor, separators=(",", ":"), sort_keys=True).encode()


class CursorStore:
    def __init__(self, table: CompactedTable) -> None:
        self._table = table

    @property
    def topic(self) -> str:
        return self._table.topic

    def get(self, connection: str, task: str) -> Cursor | None:
        raw = self._table.get(cursor_key(connection, task))
        if raw is None:
            return None
        value: Cursor = json.loads(raw)
        return value

    def get_many(self, connection: str, tasks: list[str]) -> dict[str, Cursor]:
        keys = {cursor_key(connection, t): t for t in tasks}
        return {keys[k]: json.loads(v) for k, v in self._table.get_many(keys).items()}

    def record(self, connection: str, task: str, cursor: Cursor | None) -> Record:
        """The write of an advanced cursor (None resets it: a tombstone)."""
        key = cursor_key(connection, task)
        value = None if cursor is None else encode_cursor(cursor)
        return Record(self._table.topic, key, value, table=self._table)

    def all(self) -> dict[tuple[str, str], Cursor]:
        """Every cursor, for `epic-bridge status`."""
        found: dict[tuple[str, str], Cursor] = {}
        for key, value in self._table.scan_prefix(b"["):
            connection, task = json.loads(key)[:2]
            found[(connection, task)] = json.loads(value)
        return found
