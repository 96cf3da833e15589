"""The idempotency ledger: what became of every command id, in the compacted `_command-results` topic.

Two kinds of entries per command id:
* an *intent*, committed before a command that may create anything calls Epic;
* the *result*, committed together with the result record and the consumed offsets.
An intent without a result means the bridge stopped between asking Epic to create and recording what
happened: the one window no Kafka transaction can close. Whoever handles the command next is told so
(`recovering`) and searches by the resource's identifiers before creating again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from bridge.kafka.table import Applied, CompactedTable
from bridge.kafka.transactions import TransactionalProducer


@dataclass(frozen=True)
class Entry:
    intent: bool
    result: dict[str, Any] | None  # set once the command has its result


@dataclass
class Staged:
    key: bytes
    value: bytes
    position: tuple[int, int] = (0, -1)  # (partition, offset) once delivered

    def delivered(self, msg: Message) -> None:
        self.position = (int(msg.partition() or 0), int(msg.offset() or 0))

    def applied(self) -> Applied:
        return self.key, self.value, *self.position


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
            found[keys[key]] = Entry(intent=value.get("state") == "intent", result=value.get("result"))
        return found

    def stage_intent(self, producer: TransactionalProducer, command_id: str, at_ms: int) -> Staged:
        return self._stage(producer, command_id, {"state": "intent", "at": at_ms})

    def stage_result(
        self, producer: TransactionalProducer, command_id: str, result: dict[str, Any]
    ) -> Staged:
        return self._stage(producer, command_id, {"state": "done", "result": result})

    def _stage(self, producer: TransactionalProducer, command_id: str, value: dict[str, Any]) -> Staged:
        staged = Staged(
            ledger_key(self.connection, command_id), json.dumps(value, separators=(",", ":")).encode()
        )
        producer.produce(self._table.topic, staged.value, key=staged.key, on_delivery=staged.delivered)
        return staged

    def catch_up(self) -> None:
        """Read what others recorded since this instance last read the ledger topic."""
        self._table.catch_up()

    def apply(self, writes: Iterable[Staged]) -> None:
        """After the commit: the staged writes at the offsets their delivery reports gave."""
        self._table.apply(w.applied() for w in writes)

    def count(self) -> int:
        return len(self._table)
