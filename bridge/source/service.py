"""The source side of one connection: its topics, schemas and poll tasks.

* `prepare` (from the config alone, no FHIR call, blocking): create the event topics that are missing and
  register the event schemas (BACKWARD). Done once per process, for every configured connection.
* `run` (while this process owns the connection, after its caches caught up with the topics): read the
  CapabilityStatement, plan each resource, and poll until stopped. Each poll task runs supervised: an
  unexpected failure restarts that task with backoff and is reported; the others go on.

Every batch is a unit of the process's transaction helper (bridge.kafka.txn) belonging to the
connection, so a process that lost the connection cannot publish for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.internal import InternalTables
from bridge.kafka.topics import TopicSpec, ensure_topics, events_topic
from bridge.kafka.txn import Committer
from bridge.logs import log_context
from bridge.metrics import Metrics
from bridge.source.cursors import CursorStore
from bridge.source.plan import PlanError, plan_resource
from bridge.source.poller import PollTask
from bridge.source.publish import BatchPublisher
from bridge.source.roster import RosterError, build_roster
from bridge.source.state import SeenStore
from bridge.supervise import Health, supervise

log = logging.getLogger(__name__)

EVENT_TOPIC_PARTITIONS = 3


def source_resources(cfg: ConnectionConfig) -> list[str]:
    """Resource types with at least one trigger enabled, in a stable order."""
    return sorted(r for r, rc in cfg.enabled_resources().items() if rc.triggers)


def topic_specs(cfg: ConnectionConfig, replication_factor: int = -1) -> list[TopicSpec]:
    return [
        TopicSpec(
            events_topic(cfg.topic_prefix, cfg.name, r.lower()), EVENT_TOPIC_PARTITIONS, replication_factor
        )
        for r in source_resources(cfg)
    ]


class SourceService:
    def __init__(
        self,
        cfg: ConnectionConfig,
        tables: InternalTables,
        codecs: Mapping[str, TopicCodec],
        committer: Committer,
    ) -> None:
        self.config = cfg
        self.tables = tables
        self.codecs = dict(codecs)
        self.committer = committer
        self.seen = SeenStore(tables.state)
        self.cursors = CursorStore(tables.offsets)
        self.tasks: list[PollTask] = []

    @classmethod
    def prepare(
        cls, cfg: ConnectionConfig, kafka: KafkaContext, tables: InternalTables, committer: Committer
    ) -> SourceService:
        """Blocking Kafka/registry set-up; run it in a worker thread from async code."""
        created = ensure_topics(kafka.admin, topic_specs(cfg, kafka.settings.topic_replication_factor))
        if created:
            log.info("%s: created topics %s", cfg.name, ", ".join(created))
        codecs = {
            rtype: TopicCodec(
                kafka.registry,
                events_topic(cfg.topic_prefix, cfg.name, rtype.lower()),
                load_schema(f"{rtype.lower()}_event.avsc"),
            )
            for rtype in source_resources(cfg)
        }
        return cls(cfg, tables, codecs, committer)

    async def run(
        self,
        connection: Connection,
        stop: asyncio.Event,
        *,
        cycles: int | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
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
                committer=self.committer,
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
        await asyncio.gather(*(self._run_task(t, stop, cycles, metrics, health) for t in self.tasks))

    async def _run_task(
        self,
        task: PollTask,
        stop: asyncio.Event,
        cycles: int | None,
        metrics: Metrics | None,
        health: Health | None,
    ) -> None:
        with log_context(connection=self.config.name, resource=task.plan.resource_type, task="poll"):
            await supervise(
                task.plan.task,
                lambda: task.run(stop, cycles=cycles),
                stop,
                health=health,
                on_failure=None if metrics is None else restarts_counter(metrics, self.config.name),
            )


def restarts_counter(metrics: Metrics, connection: str) -> Callable[[str, BaseException], None]:
    def count(task: str, exc: BaseException) -> None:
        metrics.task_restarts.labels(connection, task, type(exc).__name__).inc()

    return count
