"""Exactly-once publication of one batch of changes.

Events, the fingerprints that explain them and the advanced cursor go into one Kafka transaction. A
crash at any instant leaves either all of them or none of them visible to read_committed consumers;
after a restart, the state store says which changes were already published, so re-polling the same
data emits nothing twice and misses nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.kafka.avro import TopicCodec
from bridge.kafka.errors import KafkaGlueError
from bridge.kafka.table import Write
from bridge.kafka.transactions import TransactionalProducer
from bridge.source.cursors import Cursor, CursorStore
from bridge.source.detect import Change
from bridge.source.events import build_event
from bridge.source.state import SeenStore

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

    @property
    def cursors(self) -> CursorStore:
        return self._cursors

    def _stage(
        self,
        task: str,
        resource_type: str,
        changes: Sequence[Change],
        cursor: Cursor | None,
        advance_cursor: bool,
        extra_cursors: Mapping[str, Cursor],
        position: str | None = None,
        snapshot_run: str | None = None,
    ) -> tuple[list[Write], list[Write], int]:
        """Produce everything of one batch into the open transaction."""
        now = dt.datetime.now(dt.UTC)
        state_writes: list[Write] = []
        cursor_writes: list[Write] = []
        events = 0
        codec = self._codecs[resource_type]
        cursor_text = (
            position if position is not None else None if cursor is None else str(cursor.get("position", ""))
        )
        for change in changes:
            if change.trigger is not None:
                event = build_event(
                    connection=self.connection,
                    resource=change.resource,
                    fingerprint=change.fingerprint,
                    trigger=change.trigger,
                    detected_at=now,
                    cursor=cursor_text,
                    snapshot_run=snapshot_run,
                    change=change.identity,
                )
                self._producer.produce(codec.topic, codec.encode(event), key=change.resource_id.encode())
                events += 1
            state_writes.append(
                self._seen.stage(
                    self._producer,
                    self.connection,
                    resource_type,
                    change.resource_id,
                    change.seen(),
                )
            )
        for name, extra in extra_cursors.items():
            cursor_writes.append(self._cursors.stage(self._producer, self.connection, name, extra))
        if advance_cursor:
            cursor_writes.append(self._cursors.stage(self._producer, self.connection, task, cursor))
        return state_writes, cursor_writes, events

    def _apply(self, state_writes: list[Write], cursor_writes: list[Write]) -> None:
        self._seen.apply(state_writes)
        if cursor_writes:
            self._cursors.apply(cursor_writes)

    def publish(
        self,
        task: str,
        resource_type: str,
        changes: Sequence[Change],
        cursor: Cursor | None,
        *,
        advance_cursor: bool = True,
        extra_cursors: Mapping[str, Cursor] | None = None,
    ) -> Published:
        """Publish in one transaction; the local caches learn of it only once it committed."""
        with self._producer.transaction():
            state, cursors, events = self._stage(
                task, resource_type, changes, cursor, advance_cursor, extra_cursors or {}
            )
        self._apply(state, cursors)
        return Published(events, len(state))

    async def publish_async(
        self,
        task: str,
        resource_type: str,
        changes: Sequence[Change],
        cursor: Cursor | None,
        *,
        advance_cursor: bool = True,
        extra_cursors: Mapping[str, Cursor] | None = None,
        position: str | None = None,
        snapshot_run: str | None = None,
    ) -> Published:
        """As `publish`, with the blocking commit in a worker thread so other poll tasks keep going.

        Cancelling the caller does not cut a commit short: it waits for the commit's outcome first, so
        the caches never disagree with what the broker made visible.
        """
        self._producer.begin()
        try:
            state, cursors, events = self._stage(
                task,
                resource_type,
                changes,
                cursor,
                advance_cursor,
                extra_cursors or {},
                position,
                snapshot_run,
            )
        except BaseException:
            self._abort_quietly()
            raise
        commit = asyncio.ensure_future(asyncio.to_thread(self._producer.commit))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await asyncio.wait([commit])
            if not commit.cancelled() and commit.exception() is None:
                self._apply(state, cursors)
            raise
        self._apply(state, cursors)
        return Published(events, len(state))

    def _abort_quietly(self) -> None:
        try:
            self._producer.abort()
        except KafkaGlueError as exc:
            log.warning("abort after a failed batch also failed: %s", exc)
