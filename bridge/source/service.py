"""The source side of one connection: its topics, schemas, producers and poll tasks.

Start-up happens in the order exactly-once needs:
1. `prepare` (from the config alone, no FHIR call): create the topics that are missing, register the
   event schemas (BACKWARD), and create one transactional producer per poll task, whose
   `init_transactions()` fences any older worker with the same transactional.id and aborts what it
   left open;
2. the caller catches the internal tables up with their topics (after every writer was fenced);
3. `run`: read the CapabilityStatement, plan each resource, and poll until stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.table import CompactedTable
from bridge.kafka.topics import TopicSpec, ensure_topics, events_topic, offsets_topic, state_topic
from bridge.kafka.transactions import ProducerFencedError, TransactionalProducer
from bridge.logs import log_context
from bridge.metrics import Metrics
from bridge.source.cursors import CursorStore
from bridge.source.plan import PlanError, plan_resource
from bridge.source.poller import PollTask
from bridge.source.publish import BatchPublisher
from bridge.source.roster import RosterError, build_roster
from bridge.source.state import SeenStore

log = logging.getLogger(__name__)

EVENT_TOPIC_PARTITIONS = 3


@dataclass
class InternalTables:
    """The compacted `_state` and `_offsets` tables of one topic prefix (shared by its connections)."""

    state: CompactedTable
    offsets: CompactedTable

    @classmethod
    def open(cls, kafka: KafkaContext, prefix: str) -> InternalTables:
        return cls(
            CompactedTable(kafka.config, state_topic(prefix), kafka.cache_path(state_topic(prefix))),
            CompactedTable(kafka.config, offsets_topic(prefix), kafka.cache_path(offsets_topic(prefix))),
        )

    def catch_up(self, timeout_s: float = 120.0) -> None:
        self.state.catch_up(timeout_s)
        self.offsets.catch_up(timeout_s)

    def close(self) -> None:
        self.state.close()
        self.offsets.close()


def source_resources(cfg: ConnectionConfig) -> list[str]:
    """Resource types with at least one trigger enabled, in a stable order."""
    return sorted(r for r, rc in cfg.enabled_resources().items() if rc.triggers)


def topic_specs(
    cfg: ConnectionConfig, replication_factor: int = -1, min_insync_replicas: int | None = None
) -> list[TopicSpec]:
    specs = [
        TopicSpec(
            events_topic(cfg.topic_prefix, cfg.name, r.lower()), EVENT_TOPIC_PARTITIONS, replication_factor
        )
        for r in source_resources(cfg)
    ]
    for internal in (offsets_topic(cfg.topic_prefix), state_topic(cfg.topic_prefix)):
        specs.append(TopicSpec.compacted(internal, 1, replication_factor, min_insync_replicas))
    return specs


class SourceService:
    def __init__(
        self,
        cfg: ConnectionConfig,
        tables: InternalTables,
        codecs: Mapping[str, TopicCodec],
        producers: Mapping[str, TransactionalProducer],
    ) -> None:
        self.config = cfg
        self.tables = tables
        self.codecs = dict(codecs)
        self.producers = dict(producers)
        self.seen = SeenStore(tables.state)
        self.cursors = CursorStore(tables.offsets)
        self.tasks: list[PollTask] = []
        self.fenced: set[str] = set()  # tasks another instance took over

    def check_not_fenced(self) -> None:
        """A readiness check: fails while another instance holds some of this connection's tasks."""
        if self.fenced:
            raise RuntimeError(f"taken over by another instance: {', '.join(sorted(self.fenced))}")

    @classmethod
    def prepare(cls, cfg: ConnectionConfig, kafka: KafkaContext, tables: InternalTables) -> SourceService:
        """Blocking Kafka/registry set-up; run it in a worker thread from async code."""
        settings = kafka.settings
        specs = topic_specs(cfg, settings.topic_replication_factor, settings.topic_min_insync_replicas)
        created = ensure_topics(kafka.admin, specs)
        if created:
            log.info("%s: created topics %s", cfg.name, ", ".join(created))
        codecs: dict[str, TopicCodec] = {}
        producers: dict[str, TransactionalProducer] = {}
        try:
            for rtype in source_resources(cfg):
                task = rtype.lower()
                topic = events_topic(cfg.topic_prefix, cfg.name, task)
                codecs[rtype] = TopicCodec(kafka.registry, topic, load_schema(f"{task}_event.avsc"))
                producers[rtype] = TransactionalProducer(
                    kafka.config, kafka.task_transactional_id(cfg.topic_prefix, cfg.name, "source", task)
                )
            # each init is a round trip to the transaction coordinator (and may wait for an abort)
            with ThreadPoolExecutor(max_workers=len(producers) or 1) as pool:
                for future in [pool.submit(p.init) for p in producers.values()]:
                    future.result()
        except BaseException:
            for producer in producers.values():
                producer.close()
            raise
        return cls(cfg, tables, codecs, producers)

    async def run(
        self,
        connection: Connection,
        stop: asyncio.Event,
        *,
        cycles: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Plan every resource from the CapabilityStatement, then poll until `stop` is set (or, for
        tests and one-shot runs, until every task completed `cycles` cycles)."""
        cfg = self.config
        caps = await connection.fhir.capabilities()
        self.tasks = []
        for rtype in source_resources(cfg):
            try:
                plan = plan_resource(cfg, caps, rtype)
                roster = (
                    build_roster(cfg.roster, connection.fhir, caps, self.seen, cfg.name)
                    if plan.mode != "unanchored"
                    else None
                )
            except (PlanError, RosterError) as exc:
                log.error("%s: %s is not polled: %s", cfg.name, rtype, exc)
                continue
            publisher = BatchPublisher(
                connection=cfg.name,
                producer=self.producers[rtype],
                codecs=self.codecs,
                seen=self.seen,
                cursors=self.cursors,
            )
            log.info(
                "%s: polling %s (%s, %d search(es) per unit)", cfg.name, rtype, plan.mode, len(plan.variants)
            )
            self.tasks.append(
                PollTask(
                    config=cfg,
                    plan=plan,
                    fhir=connection.fhir,
                    roster=roster,
                    publisher=publisher,
                    seen=self.seen,
                    metrics=metrics,
                )
            )
        await asyncio.gather(*(self._run_task(t, stop, cycles) for t in self.tasks))

    async def _run_task(self, task: PollTask, stop: asyncio.Event, cycles: int | None) -> None:
        with log_context(connection=self.config.name, resource=task.plan.resource_type, task="poll"):
            try:
                await task.run(stop, cycles=cycles)
            except ProducerFencedError:
                # another bridge process runs this task now (same transactional.id): this one stops it for
                # good, without crash-looping against the other; /readyz reports it (see `fenced`)
                log.error("%s: another instance took over this task; it stops here", task.name)
                self.fenced.add(task.plan.task)

    def close(self) -> None:
        """Abort whatever is still open (nothing half-done becomes visible) and flush."""
        for producer in self.producers.values():
            producer.close()
