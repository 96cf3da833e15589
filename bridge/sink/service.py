"""The sink side of one connection, as the runtime (`epic-bridge run`) starts it.

`run_sink` creates the topics it needs, builds its Kafka clients from the framework's `KafkaContext`,
catches the idempotency ledger up, and runs the command loop for every resource that has actions
enabled, until `stop` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.kafka.context import KafkaContext
from bridge.kafka.table import CompactedTable
from bridge.kafka.topics import (
    TopicSpec,
    command_results_topic,
    commands_topic,
    dlq_topic,
    ensure_topics,
    results_topic,
)
from bridge.kafka.transactions import TransactionalProducer
from bridge.logs import log_context
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy
from bridge.sink.decode import DeadLetter
from bridge.sink.executor import FHIRExecutor
from bridge.sink.ledger import CommandLedger
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

    def specs(self, replication_factor: int) -> list[TopicSpec]:
        return [
            *(TopicSpec(t, COMMAND_PARTITIONS, replication_factor) for t in self.commands),
            TopicSpec(self.results, COMMAND_PARTITIONS, replication_factor),
            TopicSpec(self.dlq, 1, replication_factor),
            TopicSpec.compacted(self.ledger, 1, replication_factor),
        ]


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
    await asyncio.to_thread(ensure_topics, kafka.admin, topics.specs(kafka.settings.topic_replication_factor))
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
            ),
            consumer=consumer,
            producer=producer,
            ledger=CommandLedger(table, config.name),
            registry=kafka.registry,
            # Same pool, token manager and rate limiter as the connection; retries are the executor's
            # (it knows each command's deadline and never repeats a create blindly).
            executor=FHIRExecutor(
                connection.fhir_client(retry=RetryPolicy(max_attempts=1)),
                config,
                capabilities=connection.fhir.capabilities,
            ),
            on_result=None if metrics is None else metrics_recorder(metrics, config.name),
            on_lag=None if metrics is None else lag_recorder(metrics, config.name),
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
