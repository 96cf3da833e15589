"""The sink side of one connection, as the engine (bridge.engine) runs it.

* `SinkService.prepare` (blocking, once per process): create the command, results and dead-letter topics.
* `SinkService.run` (while this process owns the connection, after the handover settled and the ledger
  caught up): open the connection's command route of the process's partition feed, from the offsets the
  group committed, and run the command loop until stopped. A restart (after a failure) opens the route
  again, so a batch that was not committed is read again, never skipped.
The Kafka clients are the engine's: the feed's consumer, the transaction helper's producer, the shared
ledger table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.fhir.budget import Priority
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.errors import KafkaGlueError, TopicConfigError
from bridge.kafka.feed import PartitionFeed
from bridge.kafka.internal import InternalTables
from bridge.kafka.registry import register_owned_avro
from bridge.kafka.topics import (
    TopicSpec,
    command_results_topic,
    commands_topic,
    dlq_topic,
    ensure_topics,
    results_topic,
    topic_config,
)
from bridge.kafka.txn import Committer
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
PROMISE_GRACE_S = 1.0  # a create's intent promises no create after its deadline plus this


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
        """The connection's own topics (the ledger is an internal topic of the prefix)."""
        return [
            *(TopicSpec(t, COMMAND_PARTITIONS, replication_factor) for t in self.commands),
            TopicSpec(self.results, COMMAND_PARTITIONS, replication_factor),
            TopicSpec(self.dlq, 1, replication_factor),
        ]


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
        except (KafkaException, KafkaGlueError, ValueError) as exc:  # an ACL, a slow broker: fall back
            log.warning("max.message.bytes of %s unknown (%s); using the producer's limit", topic, exc)
            return None

    return limit


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


class SinkService:
    def __init__(
        self,
        config: ConnectionConfig,
        kafka: KafkaContext,
        tables: InternalTables,
        committer: Committer,
        feed: PartitionFeed,
        metrics: Metrics | None,
    ) -> None:
        self.config = config
        self.topics = SinkTopics.of(config)
        self._kafka = kafka
        window = kafka.settings.idempotency_window_days
        self._ledger = CommandLedger(tables.results, config.name, window_days=window)
        self._committer = committer
        self._feed = feed
        self._metrics = metrics
        self._known: dict[str, tuple[TopicCodec | None, int | None]] = {}

    def _look_up(self) -> None:
        """Blocking: the result schema registered for the results topic, and the size limits of the topics
        every batch writes, so the command loop does not ask Kafka or the registry on the event loop."""
        limit = topic_limit(self._kafka)
        results = self.topics.results
        codec: TopicCodec | None = None
        try:
            schema = load_schema("command_result.avsc")
            codec = TopicCodec(self._kafka.registry, results, schema, register=register_owned_avro)
        except Exception as exc:  # noqa: BLE001 - the command loop meets it again, per batch, and answers it
            log.warning(
                "%s: the result schema of %s is not registered yet: %s", self.config.name, results, exc
            )
        self._known = {
            results: (codec, limit(results)),
            self.topics.dlq: (None, limit(self.topics.dlq)),
            self.topics.ledger: (None, limit(self.topics.ledger)),
        }

    @classmethod
    def prepare(
        cls,
        config: ConnectionConfig,
        kafka: KafkaContext,
        tables: InternalTables,
        committer: Committer,
        feed: PartitionFeed,
        metrics: Metrics | None = None,
    ) -> SinkService | None:
        """Blocking: the connection's sink topics. None when no resource has actions enabled."""
        topics = SinkTopics.of(config)
        if not topics.commands:
            return None
        created = ensure_topics(kafka.admin, topics.specs(kafka.settings.topic_replication_factor))
        if created:
            log.info("%s: created topics %s", config.name, ", ".join(created))
        check_ledger_topic(kafka.admin, topics.ledger)
        service = cls(config, kafka, tables, committer, feed, metrics)
        service._look_up()
        return service

    async def run(self, connection: Connection, stop: asyncio.Event) -> None:
        """The command loop, on a route opened for this run (closed when it ends)."""
        config, metrics = self.config, self._metrics
        ledger = self._ledger
        if metrics is not None:
            for resource_type, kept in ledger.markers().items():
                marker_recorder(metrics, config.name)(resource_type, kept)
        route = await self._feed.open(config.name, "commands", self.topics.commands)
        try:
            executor = FHIRExecutor(
                # Same pool, token manager and request budget as the connection (commands go first in
                # it); retries are the executor's (it knows each command's deadline, never repeats a create).
                connection.fhir_client(priority=Priority.INTERACTIVE, retry=RetryPolicy(max_attempts=1)),
                config,
                capabilities=connection.fhir.capabilities,
                on_partial=None if metrics is None else partial_recorder(metrics, config.name),
                marker_kept=ledger.marker_kept,
                on_marker=None if metrics is None else marker_recorder(metrics, config.name),
            )
            sink = config.sink
            worker = SinkWorker(
                SinkSettings(
                    config.name,
                    self.topics.commands,
                    self.topics.results,
                    self.topics.dlq,
                    max_batch=sink.max_batch,
                    max_command_bytes=sink.max_command_bytes,
                    concurrency=sink.concurrency,
                    deadline_s=executor.deadline_s,
                    promise_grace_s=PROMISE_GRACE_S,
                    settle_s=sink.ambiguous_settle_s,
                    clock_skew_margin_s=sink.clock_skew_margin_s,
                    topic_prefix=config.topic_prefix,
                    reply_topics=sink.reply_topics,
                    max_message_bytes=int(self._kafka.config.get("message.max.bytes", 1_000_000)),
                ),
                route=route,
                committer=self._committer,
                ledger=ledger,
                registry=self._kafka.registry,
                executor=executor,
                topic_exists=self._topic_exists,
                on_result=None if metrics is None else metrics_recorder(metrics, config.name),
                on_lag=None if metrics is None else lag_recorder(metrics, config.name),
                topic_limit=topic_limit(self._kafka),
                known=self._known,
            )
            with log_context(connection=config.name, task="sink"):
                log.info(
                    "connection %s: sink running for %s",
                    config.name,
                    ", ".join(sorted(self.topics.commands.values())),
                )
                await worker.run(stop)
        finally:
            await self._feed.close(config.name, "commands")

    def _topic_exists(self, topic: str) -> bool:
        try:
            metadata = self._kafka.admin.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException:
            return False
        return metadata is not None and metadata.error is None and bool(metadata.partitions)
