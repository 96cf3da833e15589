"""Topic names and idempotent topic creation with the configs each kind of topic needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from bridge.kafka.errors import TopicConfigError, TopicCreationError, translate

log = logging.getLogger(__name__)

# Internal topics hold the latest value per key (cursors, fingerprints, command outcomes): they must
# be compacted, never deleted by retention, or a restart would forget what was already published.
# min.insync.replicas is the cluster's unless the operator sets one (KafkaSettings).
COMPACTED: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.1",
}


def events_topic(prefix: str, connection: str, resource: str) -> str:
    return f"{prefix}.{connection}.{resource}.events"


def commands_topic(prefix: str, connection: str, resource: str) -> str:
    return f"{prefix}.{connection}.{resource}.commands"


def results_topic(prefix: str, connection: str) -> str:
    return f"{prefix}.{connection}.results"


def dlq_topic(prefix: str, connection: str) -> str:
    return f"{prefix}.{connection}.dlq"


def hints_topic(prefix: str, connection: str) -> str:
    return f"{prefix}.{connection}.hints"


def offsets_topic(prefix: str) -> str:
    return f"{prefix}._offsets"


def state_topic(prefix: str) -> str:
    return f"{prefix}._state"


def command_results_topic(prefix: str) -> str:
    return f"{prefix}._command-results"


def tasks_topic(prefix: str, connection: str) -> str:
    """The empty single-partition topic whose assignment in the group makes a process the connection's
    owner (see bridge.kafka.membership)."""
    return f"{prefix}._tasks.{connection}"


def internal_topic_specs(
    prefix: str,
    partitions: int,
    replication_factor: int = -1,
    min_insync_replicas: int | None = None,
    results_retention_ms: int | None = None,
) -> list[TopicSpec]:
    """`_state`, `_offsets` and `_command-results`. An existing topic keeps its partition count: nothing
    assumes one (keys go to partitions by the producer's default partitioner). `_command-results` is
    also deleted after `results_retention_ms` (the idempotency window) when given: it must not keep what
    commands did forever (an existing compact-only topic is accepted, and warned about by the sink)."""
    specs = [
        TopicSpec.compacted(name, partitions, replication_factor, min_insync_replicas)
        for name in (state_topic(prefix), offsets_topic(prefix), command_results_topic(prefix))
    ]
    if results_retention_ms is not None:
        results = specs[2]
        retention = {"cleanup.policy": "compact,delete", "retention.ms": str(results_retention_ms)}
        specs[2] = TopicSpec(results.name, partitions, replication_factor, {**results.config, **retention})
    return specs


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = -1  # -1: the broker's default.replication.factor
    config: Mapping[str, str] = field(default_factory=dict)
    # Settings an existing topic must already have; a mismatch is an operator error, not something
    # the bridge silently works around (altering cleanup.policy on a live topic is the operator's call).
    required: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def compacted(
        cls,
        name: str,
        partitions: int = 1,
        replication_factor: int = -1,
        min_insync_replicas: int | None = None,
    ) -> TopicSpec:
        """An internal topic; `min_insync_replicas` None keeps the cluster's default."""
        config = dict(COMPACTED)
        if min_insync_replicas is not None:
            config["min.insync.replicas"] = str(min_insync_replicas)
        return cls(name, partitions, replication_factor, config, {"cleanup.policy": "compact"})


def ensure_topics(admin: AdminClient, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that are missing and check the required settings of those that exist.

    Returns the names of the topics this call created.
    """
    wanted = {spec.name: spec for spec in specs}
    if not wanted:
        return []
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise translate(exc, "listing topics") from exc
    missing = [spec for name, spec in wanted.items() if name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
                log.info("created topic %s", name)
            except KafkaException as exc:
                error = exc.args[0]
                # Another worker created it between our listing and our request: that is success.
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise TopicCreationError(f"could not create topic {name}: {error}") from exc
    _await_visible(admin, created, timeout_s)
    _check_required(admin, [s for s in wanted.values() if s.required and s.name not in created], timeout_s)
    return created


def _await_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Wait until new topics show in the metadata with their partitions, so producing to them works."""
    deadline = time.monotonic() + timeout_s
    waiting = set(names)
    while waiting:
        try:
            topics = admin.list_topics(timeout=timeout_s).topics
        except KafkaException as exc:
            raise translate(exc, "listing topics") from exc
        waiting = {
            n for n in waiting if n not in topics or topics[n].error is not None or not topics[n].partitions
        }
        if waiting and time.monotonic() > deadline:
            raise TopicCreationError(
                f"created topics did not become visible in {timeout_s:.0f}s: {sorted(waiting)}"
            )
        if waiting:
            time.sleep(0.1)


def topic_config(admin: AdminClient, name: str, timeout_s: float = 30.0) -> dict[str, str]:
    """The effective configuration of one topic."""
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    except KafkaException as exc:
        raise translate(exc, f"reading the settings of {name}") from exc
    return {key: entry.value for key, entry in entries.items()}


def _check_required(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    for spec in specs:
        actual = topic_config(admin, spec.name, timeout_s)
        wrong = {k: (v, actual.get(k)) for k, v in spec.required.items() if actual.get(k) != v}
        if wrong:
            details = ", ".join(f"{k}={have!r} (needs {want!r})" for k, (want, have) in wrong.items())
            raise TopicConfigError(
                f"topic {spec.name} exists with {details}; fix it with kafka-configs --alter "
                f"or delete the topic so the bridge can create it"
            )
