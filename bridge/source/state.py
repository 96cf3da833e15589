"""What the bridge has seen, per connection and resource: id → fingerprint, in the `_state` topic.

Writes are records of the same transaction as the events they explain, and reach the local cache only
after that transaction committed (see bridge.kafka.txn and bridge.kafka.table).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Record


@dataclass(frozen=True)
class Seen:
    fingerprint: str
    patient_id: str | None
    changes: int = 0  # how often its fingerprint changed since first sight (names its next change)


def state_key(connection: str, resource_type: str, resource_id: str) -> bytes:
    # Kafka Connect style JSON array keys: readable with any tool, and prefix-scannable.
    return json.dumps([connection, resource_type, resource_id], separators=(",", ":")).encode()


def _prefix(connection: str, resource_type: str) -> bytes:
    return state_key(connection, resource_type, "")[: -len(b'""]')]


class SeenStore:
    def __init__(self, table: CompactedTable) -> None:
        self._table = table

    @property
    def topic(self) -> str:
        return self._table.topic

    def lookup(self, connection: str, resource_type: str, ids: Iterable[str]) -> dict[str, Seen]:
        keys = {state_key(connection, resource_type, i): i for i in ids}
        found = self._table.get_many(keys)
        result: dict[str, Seen] = {}
        for key, raw in found.items():
            value = json.loads(raw)
            result[keys[key]] = Seen(value["fp"], value.get("patient"), int(value.get("n", 0)))
        return result

    def record(self, connection: str, resource_type: str, resource_id: str, seen: Seen) -> Record:
        """The write of a new fingerprint, for the transaction that publishes the change."""
        key = state_key(connection, resource_type, resource_id)
        value = json.dumps(
            {"fp": seen.fingerprint, "patient": seen.patient_id, "n": seen.changes}, separators=(",", ":")
        ).encode()
        return Record(self._table.topic, key, value, table=self._table)

    def ids(self, connection: str, resource_type: str) -> Iterator[str]:
        """Every id seen for one resource type (e.g. the Patient roster of "patients already seen")."""
        for key, _ in self._table.scan_prefix(_prefix(connection, resource_type)):
            yield json.loads(key)[2]

    def ids_after(self, connection: str, resource_type: str, after: str | None, limit: int) -> list[str]:
        """Up to `limit` ids seen for one resource type, ascending, greater than `after`."""
        start = None if after is None else state_key(connection, resource_type, after)
        keys = self._table.keys_after(_prefix(connection, resource_type), start, limit)
        return [json.loads(key)[2] for key in keys]

    def count(self) -> int:
        return len(self._table)
