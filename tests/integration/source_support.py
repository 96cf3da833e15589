"""Helpers for the source integration tests: a simulator client, a connection config, a bridge source
run in-process for whole cycles, and an ordinary Avro consumer for what landed in Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.auth.keys import generate_key_pair, load_private_key
from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.engine.prefix import PrefixEngine, Side
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.kafka.internal import InternalTables
from bridge.kafka.topics import ensure_topics, events_topic, internal_topic_specs
from bridge.kafka.txn import Committer
from bridge.metrics import Metrics
from bridge.source.service import SourceService

ALL_SCOPES = [
    f"system/{t}.crs" for t in ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
]
ALL_SCOPES += ["system/Group.r"]
RESOURCES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
OBS_CATEGORIES = ["vital-signs", "laboratory", "social-history"]


def register_backend_client(sim: Any, folder: Path, client_id: str) -> Path:
    """A fresh key pair registered on the simulator; returns the private key file."""
    kid, pem = generate_key_pair("RS384")
    key_file = folder / f"{client_id}.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    public = load_private_key(pem, kid=kid, alg="RS384").public_jwk()
    sim.register_client(
        client_id=client_id,
        auth_methods=["private_key_jwt"],
        jwks_url=None,
        jwks={"keys": [public]},
        client_secret=None,
        scopes=ALL_SCOPES,
        redirect_uris=[],
        token_lifetime_s=None,
    )
    return key_file


def connection_config(
    sim: Any,
    folder: Path,
    *,
    name: str = "sim",
    prefix: str,
    roster: dict[str, Any] | None = None,
    initial_sync: str = "snapshot",
    resources: dict[str, dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
    rate: float = 500.0,
    poll_interval_s: float = 1,
    sink: dict[str, Any] | None = None,
) -> ConnectionConfig:
    client_id = f"bridge-{uuid.uuid4().hex[:8]}"
    key_file = register_backend_client(sim, folder, client_id)
    if resources is None:
        resources = {r: {} for r in RESOURCES}
        resources["Observation"] = {"categories": OBS_CATEGORIES}
    doc = {
        "name": name,
        "fhir_base_url": sim.fhir_base,
        "auth": {
            "method": "backend_services",
            "client_id": client_id,
            "keys": [{"private_key": {"file": str(key_file)}}],
        },
        "resources": resources,
        "poll_interval_s": poll_interval_s,
        "roster": roster or {"source": "group", "group_id": sim.stats()["roster_group"]},
        "initial_sync": initial_sync,
        "topic_prefix": prefix,
        "rate_limit": {"requests_per_second": rate, "burst": int(rate)},
        "source": {"batch_max_seconds": 30, **(source or {})},
        **({"sink": sink} if sink else {}),
    }
    (folder / f"{name}.json").write_text(json.dumps(doc, indent=2))
    return ConnectionConfig.model_validate(doc).with_source_dir(folder)


def kafka_context(bootstrap: str, registry_url: str, state_dir: Path, instance: str = "test") -> KafkaContext:
    return KafkaContext(
        KafkaSettings(
            kafka_bootstrap=bootstrap,
            schema_registry_url=registry_url,
            instance_id=instance,
            state_dir=state_dir,
        )
    )


@dataclass
class SourceRun:
    """The source side of one connection, started the way `epic-bridge run` starts it once it owns the
    connection (without a group: its commits are not fenced by one)."""

    cfg: ConnectionConfig
    kafka: KafkaContext
    tables: InternalTables = field(init=False)
    committer: Committer = field(init=False)
    service: SourceService = field(init=False)

    def __post_init__(self) -> None:
        prefix = self.cfg.topic_prefix
        ensure_topics(
            self.kafka.admin, internal_topic_specs(prefix, self.kafka.settings.internal_topic_partitions)
        )
        self.tables = InternalTables.open(self.kafka, prefix)
        # one id per connection: runs of several connections of a prefix share this process
        self.committer = Committer(self.kafka.config, self.kafka.transactional_id(prefix, self.cfg.name))
        self.committer.start().result()  # aborts what an earlier run with this id left open
        self.service = SourceService.prepare(self.cfg, self.kafka, self.tables, self.committer)
        self.tables.catch_up(60)

    def cycles(self, n: int = 1) -> SourceService:
        async def go() -> None:
            async with await Connection.open(self.cfg) as connection:
                await self.service.run(connection, asyncio.Event(), cycles=n)

        asyncio.run(go())
        return self.service

    def close(self) -> None:
        self.committer.close()
        self.tables.close()


@asynccontextmanager
async def owning_engine(
    cfg: ConnectionConfig, kafka: KafkaContext, sides: frozenset[Side] = frozenset({"source", "sink"})
) -> AsyncIterator[PrefixEngine]:
    """The engine `epic-bridge run` runs for `cfg`'s prefix, in this process, from the moment it owns the
    connection and runs its worker until the block ends (it then leaves the group)."""
    engine = PrefixEngine(cfg.topic_prefix, [cfg], kafka, sides=sides, store=None, metrics=Metrics())
    stop = asyncio.Event()
    running = asyncio.create_task(engine.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while (worker := engine.workers.get(cfg.name)) is None or not worker.running:
            assert not running.done(), running.exception()
            assert asyncio.get_running_loop().time() < deadline, "the engine did not take the connection"
            await asyncio.sleep(0.2)
        yield engine
    finally:
        stop.set()
        await running


def read_all_events(
    bootstrap: str, registry: SchemaRegistryClient, topics: list[str], expect: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Every committed event on `topics`, decoded by a plain read_committed AvroDeserializer consumer
    (partitions assigned directly: no group rebalance to wait for)."""
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    found: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
    try:
        assignment = []
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        consumer.assign(assignment)
        drained: set[tuple[str, int]] = set()
        idle = 0
        total = 0
        while idle < 20 and not (len(drained) >= len(assignment) and total >= expect):
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 1
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                drained.add((msg.topic() or "", msg.partition() or 0))
                continue
            idle = 0
            topic = msg.topic() or ""
            value = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
            key = msg.key()
            assert key is not None and key.decode() == value["resource_id"]
            found[topic].append(value)
            total += 1
    finally:
        consumer.close()
    return found


def read_events(
    bootstrap: str, registry: SchemaRegistryClient, topic: str, expect: int = 0
) -> list[dict[str, Any]]:
    return read_all_events(bootstrap, registry, [topic], expect)[topic]


def topic_of(cfg: ConnectionConfig, resource: str) -> str:
    return events_topic(cfg.topic_prefix, cfg.name, resource.lower())


def sim_resources(sim: Any, rtype: str) -> list[str]:
    response = sim.admin.get(f"/admin/resources/{rtype}", params={"limit": 1_000_000})
    response.raise_for_status()
    ids: list[str] = response.json()["ids"]
    return ids


def sim_read(sim: Any, rtype: str, rid: str) -> dict[str, Any]:
    response = sim.admin.get(f"/admin/resources/{rtype}/{rid}")
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc


def sim_update(sim: Any, resource: dict[str, Any]) -> None:
    sim.admin.put(
        f"/admin/resources/{resource['resourceType']}/{resource['id']}", json=resource
    ).raise_for_status()


def sim_create(sim: Any, resource: dict[str, Any]) -> dict[str, Any]:
    response = sim.admin.post(f"/admin/resources/{resource['resourceType']}", json=resource)
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc
