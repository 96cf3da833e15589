"""The idempotency ledger: what became of every command id, in the compacted `_command-results` topic.

Two kinds of entries per command id:
* an *intent*, committed before a command that may create anything calls Epic. It records when (`at`) and
  until when (`until`) its owner may send that create: the owner checks its own clock right before each
  create request and never sends one later (see bridge.fhir.client `not_after`);
* the *result*, committed together with the result record and the consumed offsets. It records which
  record it answered (`source`: topic, partition, offset), so a record read again after a handover is
  recognised and not answered twice, while the same command id re-sent later gets its result replayed.
An intent without a result means the bridge stopped between asking Epic to create and recording what
happened: the one window no Kafka transaction can close. Whoever handles the command next is told so
(`recovering`), waits until the previous owner can no longer send the create (`until`, plus a settle time
and a clock-skew margin), and searches by the resource's identifiers before creating again.

The ledger of a prefix is one table per process (bridge.kafka.internal), shared by its connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Record


@dataclass(frozen=True)
class Entry:
    intent: bool
    result: dict[str, Any] | None  # set once the command has its result
    until_ms: int | None = None  # an intent: its owner sends no create after this (wall clock, ms)
    source: tuple[str, int, int] | None = None  # a result: the record it answered


def ledger_key(connection: str, command_id: str) -> bytes:
    return json.dumps([connection, command_id], separators=(",", ":")).encode()


class CommandLedger:
    def __init__(self, table: CompactedTable, connection: str) -> None:
        self._table = table
        self.connection = connection

    @property
    def topic(self) -> str:
        return self._table.topic

    def lookup(self, command_ids: Iterable[str]) -> dict[str, Entry]:
        keys = {ledger_key(self.connection, c): c for c in command_ids}
        found: dict[str, Entry] = {}
        for key, raw in self._table.get_many(keys).items():
            value = json.loads(raw)
            source = value.get("source")
            found[keys[key]] = Entry(
                intent=value.get("state") == "intent",
                result=value.get("result"),
                until_ms=value.get("until"),
                source=None if source is None else (str(source[0]), int(source[1]), int(source[2])),
            )
        return found

    def intent(self, command_id: str, at_ms: int, until_ms: int) -> Record:
        return self._record(command_id, {"state": "intent", "at": at_ms, "until": until_ms})

    def result(self, command_id: str, result: dict[str, Any], source: tuple[str, int, int]) -> Record:
        return self._record(command_id, {"state": "done", "result": result, "source": list(source)})

    def _record(self, command_id: str, value: dict[str, Any]) -> Record:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return Record(self._table.topic, ledger_key(self.connection, command_id), raw, table=self._table)

    def count(self) -> int:
        return len(self._table)
