"""The Kafka side of a bridge process: where the cluster and the registry are, and the clients the
framework hands to sources and sinks (they never build their own)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.kafka.table import SCHEMA


class KafkaSettings(BaseSettings):
    """From the environment: EPIC_BRIDGE_KAFKA_BOOTSTRAP, EPIC_BRIDGE_SCHEMA_REGISTRY_URL, ..."""

    model_config = SettingsConfigDict(env_prefix="EPIC_BRIDGE_", extra="ignore")

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    schema_registry_url: str = Field(
        default="http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible schema registry"
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka settings (security.protocol, sasl.*, ...) as a JSON object",
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="stable, unique name of this bridge process (default: the host name); part of its "
        "transactional.id, so a restarted process aborts what its predecessor left open. Two processes on "
        "one host need different ids.",
    )
    state_dir: Path = Field(default=Path(".bridge-state"), description="local caches of the internal topics")
    topic_replication_factor: int = Field(default=-1, description="-1: the broker's default")
    internal_topic_partitions: int = Field(
        default=12,
        ge=1,
        description="partitions of `_state`, `_offsets` and `_command-results` when the bridge creates them",
    )
    session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="group session timeout: how long a silent (killed, paused, cut off) process keeps its "
        "connections before the others take them over",
    )
    heartbeat_interval_s: float = Field(default=3.0, gt=0, description="group heartbeat interval")
    transaction_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Kafka transaction timeout; a transaction is only open while a batch is committed",
    )
    handover_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="how long a process handing connections over (rebalance, SIGTERM) waits for their "
        "work to commit and stop",
    )


class KafkaContext:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_config}
        self.admin = AdminClient(dict(self.config))
        self.registry = SchemaRegistryClient({"url": settings.schema_registry_url})

    def transactional_id(self, *parts: str) -> str:
        """Per process (`epic-bridge.<instance id>.<parts>`): work is spread among processes by the
        consumer group, whose generation fences a zombie; a restart with the same instance id aborts what
        its predecessor left open."""
        return ".".join(["epic-bridge", self.settings.instance_id, *parts])

    def cache_path(self, name: str) -> Path:
        return self.settings.state_dir / "kafka" / self.settings.instance_id / f"{name}.v{SCHEMA}.db"
