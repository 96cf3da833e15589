"""Exactly-once publication of one batch of changes.

Events, the fingerprints that explain them and the advanced cursor are one unit of the connection's
transaction helper (bridge.kafka.txn), so they commit together: a crash at any instant leaves either all
of them or none of them visible to read_committed consumers; after a restart, the state store says which
changes were already published, so re-polling the same data emits nothing twice and misses nothing. The
unit belongs to the connection: a process that no longer owns it cannot commit it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.kafka.avro import TopicCodec
from bridge.kafka.txn import Committer, Record, Unit
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
        committer: Committer,
        codecs: Mapping[str, TopicCodec],
        seen: SeenStore,
        cursors: CursorStore,
    ) -> None:
        self.connection = connection
        self._committer = committer
        self._codecs = codecs
        self._seen = seen
        self._cursors = cursors

    @property
    def cursors(self) -> CursorStore:
        return self._cursors

    def _unit(
        self,
        task: str,
        resource_type: str,
        changes: Sequence[Change],
        cursor: Cursor | None,
        advance_cursor: bool,
        extra_cursors: Mapping[str, Cursor],
        position: str | None = None,
        snapshot_run: str | None = None,
    ) -> tuple[Unit, Published]:
        """Everything of one batch: events, then fingerprints, then cursors."""
        now = dt.datetime.now(dt.UTC)
        records: list[Record] = []
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
                records.append(Record(codec.topic, change.resource_id.encode(), codec.encode(event)))
                events += 1
        for change in changes:
            seen = change.seen()
            records.append(self._seen.record(self.connection, resource_type, change.resource_id, seen))
        for name, extra in extra_cursors.items():
            records.append(self._cursors.record(self.connection, name, extra))
        if advance_cursor:
            records.append(self._cursors.record(self.connection, task, cursor))
        unit = Unit(records, owner=self.connection, label=f"{self.connection}/{task}")
        return unit, Published(events, len(changes))

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
        """Publish in one transaction and wait for it; the local caches learn of it once it committed."""
        unit, published = self._unit(
            task, resource_type, changes, cursor, advance_cursor, extra_cursors or {}
        )
        self._committer.commit_sync(unit)
        return published

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
        """As `publish`, awaited: the commit runs on the helper's thread while other tasks keep going.
        Cancelling the caller withdraws the batch only if its commit has not started (see Committer)."""
        unit, published = self._unit(
            task, resource_type, changes, cursor, advance_cursor, extra_cursors or {}, position, snapshot_run
        )
        await self._committer.commit(unit)
        return published
