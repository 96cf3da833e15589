"""Exactly-once publication of one batch of changes.

Events, the fingerprints that explain them and the advanced cursor go into one Kafka transaction. A
crash at any instant leaves either all of them or none of them visible to read_committed consumers;
after a restart, the state store says which changes were already published, so re-polling the same
data emits nothing twice and misses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.kafka.avro import TopicCodec
from bridge.kafka.table import Write
from bridge.kafka.transactions import TransactionalProducer
from bridge.source.cursors import Cursor, CursorStore
from bridge.source.detect import Change
from bridge.source.events import build_event
from bridge.source.state import Seen, SeenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    events: int
    recorded: int


class BatchPublisher:
    def __init__(
        self,
        *,
        connection: str,
        producer: TransactionalProducer,
        codecs: Mapping[str, TopicCodec],
        seen: SeenStore,
        cursors: CursorStore,
    ) -> None:
        self.connection = connection
        self._producer = producer
        self._codecs = codecs
        self._seen = seen
        self._cursors = cursors

    def publish(
        self,
        task: str,
        resource_type: str,
        changes: Sequence[Change],
        cursor: Cursor | None,
        *,
        advance_cursor: bool = True,
    ) -> Published:
        """Publish in one transaction; the local caches learn of it only once it committed."""
        now = dt.datetime.now(dt.UTC)
        state_writes: list[Write] = []
        cursor_writes: list[Write] = []
        events = 0
        codec = self._codecs[resource_type]
        cursor_text = None if cursor is None else str(cursor.get("position", ""))
        with self._producer.transaction():
            for change in changes:
                if change.trigger is not None:
                    event = build_event(
                        connection=self.connection,
                        resource=change.resource,
                        fingerprint=change.fingerprint,
                        trigger=change.trigger,
                        detected_at=now,
                        cursor=cursor_text,
                    )
                    self._producer.produce(codec.topic, codec.encode(event), key=change.resource_id.encode())
                    events += 1
                state_writes.append(
                    self._seen.stage(
                        self._producer,
                        self.connection,
                        resource_type,
                        change.resource_id,
                        Seen(change.fingerprint, change.patient_id),
                    )
                )
            if advance_cursor:
                cursor_writes.append(self._cursors.stage(self._producer, self.connection, task, cursor))
        self._seen.apply(state_writes)
        if cursor_writes:
            self._cursors.apply(cursor_writes)
        return Published(events, len(state_writes))
