"""The Kafka side of a bridge process: where the cluster and the registry are, and the clients the
framework hands to sources and sinks (they never build their own)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.config.models import check_url
from bridge.config.secrets import SecretRef
from bridge.kafka.security import client_config, refuse_inline_secrets, registry_config
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
        description="extra librdkafka settings (security.protocol, sasl.mechanism, sasl.username, "
        "ssl.ca.location, ...) as a JSON object; secrets are refused here (see kafka_secrets)",
    )
    kafka_secrets: dict[str, SecretRef] = Field(
        default_factory=dict,
        description='librdkafka settings that are secrets, each by reference: {"sasl.password": '
        '{"env": "KAFKA_PASSWORD"}} or {"sasl.password": {"file": "/run/secrets/kafka-password"}}',
    )
    schema_registry_user: str | None = Field(
        default=None, description="registry basic auth: user (or API key)"
    )
    schema_registry_password: SecretRef | None = Field(
        default=None, description='registry basic auth: password (or API secret) by reference, {"env": ...}'
    )
    schema_registry_ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) that signs the registry's certificate; default: certifi's"
    )
    schema_registry_cert_file: Path | None = Field(
        default=None, description="client certificate (PEM) for a registry that asks for one"
    )
    schema_registry_key_file: Path | None = Field(
        default=None, description="the client certificate's key (PEM)"
    )
    schema_registry_key_password: SecretRef | None = Field(
        default=None, description="passphrase of an encrypted key file, by reference"
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
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of the internal topics the bridge creates (_offsets, _state, "
        "_command-results); default: the cluster's",
    )

    idempotency_window_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="how long the sink remembers a command id (the `_command-results` topic's retention.ms, "
        "set when the bridge creates it): a command re-sent within it is answered from the record, after "
        "it runs again",
    )

    _no_inline_secrets = field_validator("kafka_config")(refuse_inline_secrets)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        both = sorted(set(self.kafka_config) & set(self.kafka_secrets))
        if both:
            raise ValueError(f"{', '.join(both)} set in both kafka_config and kafka_secrets: keep one")
        if (self.schema_registry_user is None) != (self.schema_registry_password is None):
            raise ValueError("registry basic auth needs schema_registry_user and schema_registry_password")
        has_key = self.schema_registry_key_file is not None or self.schema_registry_key_password is not None
        if has_key and self.schema_registry_cert_file is None:
            raise ValueError("schema_registry_key_file/_key_password need schema_registry_cert_file")
        what = "schema_registry_url"
        if self.schema_registry_password is not None:  # basic auth sends the password in every request
            what += " (with basic auth)"
        check_url(self.schema_registry_url, what, require_tls=self.schema_registry_password is not None)
        return self


class KafkaContext:
    def __init__(self, settings: KafkaSettings) -> None:
        """Resolves the secret references (SecretResolutionError names one that points at nothing)."""
        self.settings = settings
        self.config: dict[str, Any] = client_config(settings)
        self.admin = AdminClient(dict(self.config))
        self.registry = SchemaRegistryClient(registry_config(settings))

    def transactional_id(self, *parts: str) -> str:
        """Per process (`epic-bridge.<instance id>.<parts>`): work is spread among processes by the
        consumer group, whose generation fences a zombie; a restart with the same instance id aborts what
        its predecessor left open."""
        return ".".join(["epic-bridge", self.settings.instance_id, *parts])

    def cache_path(self, name: str) -> Path:
        return self.settings.state_dir / "kafka" / self.settings.instance_id / f"{name}.v{SCHEMA}.db"
