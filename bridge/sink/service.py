"""The sink side of one connection, as the runtime (`epic-bridge run`) starts it.

`run_sink` creates the topics it needs, builds its Kafka clients from the framework's `KafkaContext`,
catches the idempotency ledger up, and runs the command loop for every resource that has actions
enabled, until `stop` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.fhir.budget import Priority
from bridge.kafka.context import KafkaContext
from bridge.kafka.errors import TopicConfigError
from bridge.kafka.table import CompactedTable
from bridge.kafka.topics import (
    TopicSpec,
    command_results_topic,
    commands_topic,
    dlq_topic,
    ensure_topics,
    results_topic,
    topic_config,
)
from bridge.kafka.transactions import TransactionalProducer
from bridge.logs import log_context
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy
from bridge.sink.decode import DeadLetter
from bridge.sink.executor import FHIRExecutor
from bridge.sink.ledger import DAY_MS, CommandLedger
from bridge.sink.model import Command
from bridge.sink.worker import SinkSettings, SinkWorker

log = logging.getLogger(__name__)

COMMAND_PARTITIONS = 3
MAX_POLL_INTERVAL_MS = 1_800_000  # a batch may wait out several command deadlines


@dataclass(frozen=True)
class SinkTopics:
    commands: dict[str, str]  # topic -> FHIR resource type
    results: str
    dlq: str
    ledger: str

    @classmethod
    def of(cls, config: ConnectionConfig) -> SinkTopics:
        prefix, name = config.topic_prefix, config.name
        return cls(
            {
                commands_topic(prefix, name, rtype.lower()): rtype
                for rtype, resource in config.enabled_resources().items()
                if resource.actions
            },
            results_topic(prefix, name),
            dlq_topic(prefix, name),
            command_results_topic(prefix),
        )

    def specs(
        self, replication_factor: int, min_insync_replicas: int | None = None, window_days: float = 7.0
    ) -> list[TopicSpec]:
        return [
            *(TopicSpec(t, COMMAND_PARTITIONS, replication_factor) for t in self.commands),
            TopicSpec(self.results, COMMAND_PARTITIONS, replication_factor),
            TopicSpec(self.dlq, 1, replication_factor),
            ledger_spec(self.ledger, replication_factor, window_days, min_insync_replicas),
        ]


def ledger_spec(
    topic: str, replication_factor: int, window_days: float, min_insync_replicas: int | None = None
) -> TopicSpec:
    """Compacted (the latest entry per command id) and deleted after the idempotency window: the ledger
    must not keep what commands did forever. An existing topic is checked by check_ledger_topic."""
    spec = TopicSpec.compacted(topic, 1, replication_factor, min_insync_replicas)
    retention = {"cleanup.policy": "compact,delete", "retention.ms": str(int(window_days * DAY_MS))}
    return replace(spec, config={**spec.config, **retention}, required={})


def check_ledger_topic(admin: AdminClient, topic: str) -> None:
    """The ledger must be compacted; without `delete` it keeps results past the window (a topic created
    before the window existed): say so, but keep working."""
    policy = set(topic_config(admin, topic).get("cleanup.policy", "").split(","))
    if "compact" not in policy:
        raise TopicConfigError(
            f"topic {topic} is not compacted (cleanup.policy={','.join(sorted(policy))}); set "
            "cleanup.policy=compact,delete with kafka-configs --alter or delete the topic"
        )
    if "delete" not in policy:
        log.warning(
            "topic %s keeps command results forever (cleanup.policy=compact): set "
            "cleanup.policy=compact,delete and retention.ms to the idempotency window (kafka-configs)",
            topic,
        )


def topic_limit(kafka: KafkaContext) -> Callable[[str], int | None]:
    """A topic's max.message.bytes (None when it cannot be read: the producer's own limit applies)."""

    def limit(topic: str) -> int | None:
        try:
            return int(topic_config(kafka.admin, topic, timeout_s=10).get("max.message.bytes") or 0) or None
        except (KafkaException, ValueError) as exc:  # an ACL, a slow broker: fall back, do not stop
            log.warning("max.message.bytes of %s unknown (%s); using the producer's limit", topic, exc)
            return None

    return limit


def consumer_group(config: ConnectionConfig) -> str:
    return f"epic-bridge.{config.topic_prefix}.{config.name}.sink"


def metrics_recorder(
    metrics: Metrics, connection: str
) -> Callable[[Command | None, dict[str, Any] | None, DeadLetter | None], None]:
    """Counts each committed result (by resource, action, status) and dead letter (by reason)."""

    def record(command: Command | None, result: dict[str, Any] | None, dead: DeadLetter | None) -> None:
        if dead is not None:
            metrics.dlq_records.labels(connection, dead.reason.value).inc()
            return
        if command is None or result is None:
            return
        labels = (connection, command.resource_type.lower(), command.action.value)
        metrics.commands.labels(*labels, result["status"]).inc()
        if not result.get("replayed"):
            seconds = max(0.0, (int(result["completed_at"]) - int(result["received_at"])) / 1000)
            metrics.command_duration.labels(*labels).observe(seconds)

    return record


def partial_recorder(metrics: Metrics, connection: str) -> Callable[[str, str], None]:
    def record(resource_type: str, code: str) -> None:
        metrics.partial_answers.labels(connection, "sink", resource_type.lower(), code).inc()

    return record


def marker_recorder(metrics: Metrics, connection: str) -> Callable[[str, bool], None]:
    def record(resource_type: str, kept: bool) -> None:
        metrics.create_marker_kept.labels(connection, resource_type.lower()).set(1 if kept else 0)

    return record


def lag_recorder(metrics: Metrics, connection: str) -> Callable[[dict[str, int]], None]:
    def record(lag: dict[str, int]) -> None:
        for topic, records in lag.items():
            metrics.command_lag.labels(connection, topic).set(records)

    return record


async def run_sink(
    connection: Connection,
    config: ConnectionConfig,
    kafka: KafkaContext,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    topics = SinkTopics.of(config)
    if not topics.commands:
        log.info("connection %s: no resource has actions enabled; the sink does not run", config.name)
        return
    specs = topics.specs(
        kafka.settings.topic_replication_factor,
        kafka.settings.topic_min_insync_replicas,
        kafka.settings.idempotency_window_days,
    )
    await asyncio.to_thread(ensure_topics, kafka.admin, specs)
    await asyncio.to_thread(check_ledger_topic, kafka.admin, topics.ledger)
    producer = TransactionalProducer(kafka.config, kafka.transactional_id(config.name, "sink"))
    table = CompactedTable(kafka.config, topics.ledger, kafka.cache_path(f"{config.name}.command-results"))
    consumer: Consumer | None = None
    try:
        await asyncio.to_thread(producer.init)  # fences a predecessor and aborts its open transaction
        await asyncio.to_thread(table.catch_up)
        consumer = Consumer(
            {
                **kafka.config,
                "group.id": consumer_group(config),
                # Static membership: a restarted instance takes its partitions back at once instead of
                # waiting for the old member's session to time out.
                "group.instance.id": f"{kafka.settings.instance_id}.{config.name}.sink",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            }
        )
        sink = config.sink
        ledger = CommandLedger(table, config.name, window_days=kafka.settings.idempotency_window_days)
        if metrics is not None:
            for resource_type, kept in ledger.markers().items():
                marker_recorder(metrics, config.name)(resource_type, kept)
        worker = SinkWorker(
            SinkSettings(
                config.name,
                topics.commands,
                topics.results,
                topics.dlq,
                max_batch=sink.max_batch,
                max_command_bytes=sink.max_command_bytes,
                concurrency=sink.concurrency,
                topic_prefix=config.topic_prefix,
                reply_topics=sink.reply_topics,
                max_message_bytes=int(kafka.config.get("message.max.bytes", 1_000_000)),
            ),
            consumer=consumer,
            producer=producer,
            ledger=ledger,
            registry=kafka.registry,
            # Same pool, token manager and request budget as the connection (commands go first in it);
            # retries are the executor's (it knows each command's deadline and never repeats a create).
            executor=FHIRExecutor(
                connection.fhir_client(priority=Priority.INTERACTIVE, retry=RetryPolicy(max_attempts=1)),
                config,
                capabilities=connection.fhir.capabilities,
                on_partial=None if metrics is None else partial_recorder(metrics, config.name),
                marker_kept=ledger.marker_kept,
                on_marker=None if metrics is None else marker_recorder(metrics, config.name),
            ),
            on_result=None if metrics is None else metrics_recorder(metrics, config.name),
            on_lag=None if metrics is None else lag_recorder(metrics, config.name),
            topic_limit=topic_limit(kafka),
        )
        with log_context(connection=config.name, task="sink"):
            log.info(
                "connection %s: sink running for %s", config.name, ", ".join(sorted(topics.commands.values()))
            )
            await worker.run(stop)
    finally:
        if consumer is not None:
            await asyncio.to_thread(consumer.close)
        await asyncio.to_thread(producer.close)
        table.close()
