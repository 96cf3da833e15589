"""Dead-letter records as typed objects.

A record on `<prefix>.<connection>.dlq` is the original record (a command, or a hint), bytes untouched,
with `dlq.*` headers saying what was wrong with it and where it came from, so it can be fixed and produced
again. The header names below are the contract; a test checks them against what the bridge writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.client.errors import NotADeadLetter

HEADER_PREFIX = "dlq."
REASON = "dlq.error.reason"
MESSAGE = "dlq.error.message"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
CONNECTION = "dlq.connection"
AT = "dlq.at"
HEADERS = (REASON, MESSAGE, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, CONNECTION, AT)

# The reasons the bridge gives (dlq.error.reason) for commands and for hints; new ones may be added, so
# treat others as opaque.
REASONS = ("oversized", "empty", "undecodable", "unknown-schema", "missing-field", "invalid-hint")


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    connection: str
    at: dt.datetime | None
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]

    @classmethod
    def from_parts(
        cls, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
    ) -> DeadLetter:
        found = {name: raw or b"" for name, raw in (headers or ()) if name.startswith(HEADER_PREFIX)}
        if REASON not in found:
            raise NotADeadLetter(f"the record has no {REASON} header: not a dead letter of the bridge")

        def text(name: str) -> str:
            return found.get(name, b"").decode(errors="replace")

        return cls(
            reason=text(REASON),
            message=text(MESSAGE),
            source_topic=text(SOURCE_TOPIC),
            source_partition=int(text(SOURCE_PARTITION) or -1),
            source_offset=int(text(SOURCE_OFFSET) or -1),
            connection=text(CONNECTION),
            at=dt.datetime.fromisoformat(text(AT)) if text(AT) else None,
            key=key,
            value=value,
            headers=found,
        )

    @classmethod
    def from_message(cls, message: Any) -> DeadLetter:
        """From a confluent_kafka.Message read from a DLQ topic."""
        return cls.from_parts(message.key(), message.value(), message.headers())

    def replay(self, producer: Any, value: bytes | None = None) -> None:
        """Produce the record again to the topic it came from (its original key), with the original
        bytes or a fixed `value`. Call producer.flush() (or poll) as usual afterwards."""
        producer.produce(self.source_topic, value=self.value if value is None else value, key=self.key)
