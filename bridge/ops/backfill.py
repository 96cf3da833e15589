"""`epic-bridge backfill <connection> <resource> [--since DATE]`: re-publish what exists as snapshot events.

For a downstream system that lost its data or joins late. It scans the resource exactly as the poller
does (the same plan: only supported parameters, per patient on Epic) and publishes every resource found
as an event with `snapshot: true` (trigger CREATED), through a transaction helper (bridge.kafka.txn) of its
own transactional.id. The fingerprints it records are the ones the poller would record, so the poller
does not announce the same content again. `--since` narrows the scan with `_lastUpdated` or `date` where
the server supports them (otherwise everything is re-published).

It runs while no bridge process runs the connection's poll tasks (bridge.ops.exclusive): its commits are
not fenced by the owner's group. It refuses to start beside one, and stops with that reason before its
next batch when one started meanwhile (what it committed before stays published).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.fhir.budget import Priority
from bridge.fhir.errors import FHIRNotFound
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.table import CompactedTable
from bridge.kafka.topics import events_topic, offsets_topic, state_topic
from bridge.kafka.txn import Committer
from bridge.ops.exclusive import refuse_if_owned
from bridge.source.cursors import CursorStore
from bridge.source.detect import Change
from bridge.source.events import Trigger
from bridge.source.fingerprint import fingerprint
from bridge.source.plan import PollPlan, plan_resource
from bridge.source.projection import patient_id_of
from bridge.source.publish import BatchPublisher
from bridge.source.roster import build_roster
from bridge.source.state import SeenStore

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class Progress:
    """Callbacks for a progress display: total patients (None when unanchored), one patient done (with
    the events so far), and the events so far alone."""

    start: Callable[[int | None], None] = lambda total: None
    advance: Callable[[int], None] = lambda events: None
    events: Callable[[int], None] = lambda events: None


@dataclass(frozen=True)
class BackfillResult:
    run_id: str
    events: int
    patients: int | None


async def _resources(
    connection: Connection,
    cfg: ConnectionConfig,
    plan: PollPlan,
    seen: SeenStore,
    since: dt.date | None,
    progress: Progress,
) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    """Pages of resources, each with whether it completes a roster patient."""
    since_text = None if since is None else since.isoformat()
    caps = await connection.fhir.capabilities()
    fhir = connection.fhir_client(priority=Priority.BULK)  # last in the budget: never ahead of commands
    if not plan.uses_roster:
        progress.start(None)
        for variant in plan.variants:
            async for page in fhir.search_pages(
                plan.resource_type, plan.params(variant, None, since_text, None)
            ):
                yield page.resources, False
        return
    roster = build_roster(cfg.roster, fhir, caps, seen, cfg.name)
    patients = [pid async for pid in roster.patient_ids(None)]
    progress.start(len(patients))
    for pid in patients:
        if plan.mode == "read":
            try:
                yield [await fhir.read(plan.resource_type, pid)], True
            except FHIRNotFound:
                yield [], True
            continue
        for variant in plan.variants:
            params = plan.params(variant, pid, since_text, since_text)
            async for page in fhir.search_pages(plan.resource_type, params):
                yield page.resources, False
        yield [], True


async def backfill(
    cfg: ConnectionConfig,
    resource_type: str,
    kafka: KafkaContext,
    connection: Connection,
    *,
    since: dt.date | None = None,
    progress: Progress | None = None,
) -> BackfillResult:
    async def unowned() -> None:
        await asyncio.to_thread(
            refuse_if_owned, kafka, cfg.topic_prefix, cfg.name, "backfill",
            "Beside it, a backfill could publish an older snapshot after its newer UPDATED and leave a "
            "fingerprint that makes it announce the same content again.",
        )  # fmt: skip

    await unowned()
    progress = progress or Progress()
    run_id = uuid.uuid4().hex
    caps = await connection.fhir.capabilities()
    plan = plan_resource(cfg, caps, resource_type)
    committer = Committer(
        kafka.config,
        kafka.transactional_id(cfg.topic_prefix, "backfill", cfg.name, plan.task),
        transaction_timeout_s=kafka.settings.transaction_timeout_s,
        name="backfill committer",
    )
    committer.start().result()
    with tempfile.TemporaryDirectory() as scratch:
        # Own caches: the running bridge's files stay untouched.
        state = CompactedTable(kafka.config, state_topic(cfg.topic_prefix), Path(scratch) / "state.db")
        offsets = CompactedTable(kafka.config, offsets_topic(cfg.topic_prefix), Path(scratch) / "offsets.db")
        try:
            state.catch_up(300)
            seen = SeenStore(state)
            codec = TopicCodec(
                kafka.registry,
                events_topic(cfg.topic_prefix, cfg.name, plan.task),
                load_schema(f"{plan.task}_event.avsc"),
            )
            publisher = BatchPublisher(
                connection=cfg.name, committer=committer, codecs={resource_type: codec}, seen=seen,
                cursors=CursorStore(offsets),
            )  # fmt: skip
            events = 0
            pending: dict[str, Change] = {}
            patients = 0

            async def flush() -> None:
                nonlocal events
                if pending:
                    await unowned()  # again before each batch: an owner may have started meanwhile
                    batch = list(pending.values())
                    pending.clear()
                    published = await publisher.publish_async(
                        "backfill", resource_type, batch, None, advance_cursor=False,
                        position=f"backfill={run_id}", snapshot_run=run_id,
                    )  # fmt: skip
                    events += published.events
                    progress.events(events)

            async for resources, patient_done in _resources(connection, cfg, plan, seen, since, progress):
                mine = {
                    r["id"]: r
                    for r in resources
                    if r.get("resourceType") == resource_type and isinstance(r.get("id"), str)
                }
                known = seen.lookup(cfg.name, resource_type, mine)  # their change counts go on
                for rid, resource in mine.items():
                    fp, pid = fingerprint(resource), patient_id_of(resource)
                    pending[rid] = Change(resource, fp, pid, Trigger.CREATED, known.get(rid))
                if len(pending) >= BATCH:
                    await flush()
                if patient_done:
                    patients += 1
                    progress.advance(events)
            await flush()
        finally:
            committer.close()
            state.close()
            offsets.close()
    log.info("backfill %s of %s/%s: %d snapshot events", run_id, cfg.name, plan.task, events)
    return BackfillResult(run_id, events, patients if plan.uses_roster else None)
