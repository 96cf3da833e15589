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
        description="stable name of this bridge instance; part of every transactional.id, so a restarted "
        "instance fences its predecessor. Give each replica its own.",
    )
    state_dir: Path = Field(default=Path(".bridge-state"), description="local caches of the internal topics")
    topic_replication_factor: int = Field(default=-1, description="-1: the broker's default")
    idempotency_window_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="how long the sink remembers a command id (the `_command-results` topic's retention.ms, "
        "set when the bridge creates it): a command re-sent within it is answered from the record, after "
        "it runs again",
    )


class KafkaContext:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_config}
        self.admin = AdminClient(dict(self.config))
        self.registry = SchemaRegistryClient({"url": settings.schema_registry_url})

    def transactional_id(self, *parts: str) -> str:
        """Per instance: for work split among instances by a consumer group (the sink), where the group
        generation fences a zombie and each instance needs its own id."""
        return ".".join(["epic-bridge", self.settings.instance_id, *parts])

    @staticmethod
    def task_transactional_id(*parts: str) -> str:
        """The same on every instance: for work that one worker at a time may do (a poll task). A second
        worker started anywhere with the same task fences the first, so it can never publish twice."""
        return ".".join(["epic-bridge", *parts])

    def cache_path(self, name: str) -> Path:
        return self.settings.state_dir / "kafka" / self.settings.instance_id / f"{name}.db"
