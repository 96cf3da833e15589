"""Helpers for the sink tests: a connection to the simulator, commands in, results out, on the real broker.

Imported as ``from sink_support import ...`` (pytest puts tests/ and this folder's parent on sys.path).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.auth.keys import KeySet, generate_key_pair, load_private_key
from bridge.config import ConnectionConfig, load_connection_file
from bridge.engine.prefix import PrefixEngine, Side
from bridge.kafka.avro import load_schema
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.metrics import Metrics
from bridge.sink.service import SinkTopics

ALL_ACTIONS = {"actions": ["create", "find"], "triggers": []}
RESOURCES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
LOINC = "http://loinc.org"
ENCOUNTERS_SQL = (
    "SELECT seq, type, id, version, last_updated, json FROM resources WHERE type='Encounter' AND patient=?"
)


def bp_fields(patient: str, at: dt.datetime, encounter: str | None = None) -> dict[str, Any]:
    """Typed fields of a blood-pressure panel Observation."""
    return {
        "patient_id": patient,
        "encounter_id": encounter,
        "code": {"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"},
        "components": [
            {"code": {"system": LOINC, "code": "8480-6"}, "value_quantity": 121.0, "value_unit": "mm[Hg]"},
            {"code": {"system": LOINC, "code": "8462-4"}, "value_quantity": 79.0, "value_unit": "mm[Hg]"},
        ],
        "effective_at": at,
    }


def encounter_of(sim: Any, patient: str) -> str:
    rows = sim.sim.store.query(ENCOUNTERS_SQL, (patient,))
    assert rows, f"the simulator seeded no encounter for {patient}"
    return str(rows[0].id)


def mrn_of(patient: dict[str, Any]) -> tuple[str, str] | None:
    for ident in patient.get("identifier", []):
        if ident.get("system") == MRN_SYSTEM:
            return MRN_SYSTEM, str(ident["value"])
    return None


def next_weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def write_connection(
    sim: Any, folder: Path, name: str, *, resources: dict[str, Any] | None = None, **over: Any
) -> ConnectionConfig:
    """Register a backend-services client with the simulator (inline JWK Set) and write its config."""
    folder.mkdir(parents=True, exist_ok=True)
    kid, pem = generate_key_pair("RS384")
    key_path = folder / f"{name}.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    jwks = KeySet([load_private_key(pem, kid=kid, alg="RS384")]).jwks()
    sim.register_client(
        client_id=name, auth_methods=["private_key_jwt"], jwks=jwks, jwks_url=None, scopes=["system/*.crs"]
    )
    raw: dict[str, Any] = {
        "name": name,
        "fhir_base_url": sim.fhir_base,
        "auth": {
            "method": "backend_services",
            "client_id": name,
            "keys": [{"kid": kid, "private_key": {"file": key_path.name}}],
        },
        "resources": resources or {r: ALL_ACTIONS for r in RESOURCES},
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        "rate_limit": {"requests_per_second": 500, "burst": 100},
        "sink": {"command_deadline_s": 10, "retry_base_delay_s": 0.05, "retry_max_delay_s": 0.5},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / f"{name}.json"
    path.write_text(json.dumps(raw, indent=2))
    return load_connection_file(path)


def kafka_context(bootstrap: str, registry_url: str, state_dir: Path) -> KafkaContext:
    return KafkaContext(
        KafkaSettings(
            kafka_bootstrap=bootstrap,
            schema_registry_url=registry_url,
            instance_id=f"test-{uuid.uuid4().hex[:8]}",
            state_dir=state_dir,
        )
    )


def millis(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass
class SinkHarness:
    """Sends commands to a connection's command topics and collects its results and dead letters."""

    config: ConnectionConfig
    bootstrap: str
    registry: SchemaRegistryClient
    topics: SinkTopics = field(init=False)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead: list[Any] = field(default_factory=list)
    _serializers: dict[str, AvroSerializer] = field(default_factory=dict)
    _consumer: Consumer | None = None
    _producer: Producer | None = None

    def __post_init__(self) -> None:
        self.topics = SinkTopics.of(self.config)

    def topic_of(self, resource_type: str) -> str:
        return next(t for t, r in self.topics.commands.items() if r == resource_type)

    def encode(self, resource_type: str, record: dict[str, Any]) -> bytes:
        topic = self.topic_of(resource_type)
        if resource_type not in self._serializers:
            self._serializers[resource_type] = AvroSerializer(
                self.registry, load_schema(f"{resource_type.lower()}_command.avsc")
            )
        value = self._serializers[resource_type](record, SerializationContext(topic, MessageField.VALUE))
        assert value is not None
        return value

    def command(
        self,
        resource_type: str,
        action: str,
        command_id: str | None = None,
        key: bytes | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Build and send one command; returns the record sent (with its command_id)."""
        record = {"command_id": command_id or uuid.uuid4().hex, "action": action, **fields}
        if isinstance(record.get("resource_json"), dict):
            record["resource_json"] = json.dumps(record["resource_json"])
        self.send_raw(resource_type, self.encode(resource_type, record), key=key)
        return record

    def send_raw(self, resource_type: str, value: bytes | None, key: bytes | None = None) -> None:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        self._producer.produce(self.topic_of(resource_type), value=value, key=key)
        self._producer.poll(0)

    def flush(self) -> None:
        if self._producer is not None:
            assert self._producer.flush(30) == 0

    def collect(self, timeout_s: float = 0.2) -> None:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"test-{uuid.uuid4().hex}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
            self._consumer.subscribe([self.topics.results, self.topics.dlq])
        deserialize = AvroDeserializer(self.registry)
        for message in self._consumer.consume(500, timeout_s):
            error = message.error()
            if error is not None:
                assert error.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART), error
                continue
            if message.topic() == self.topics.dlq:
                self.dead.append(message)
                continue
            result = deserialize(
                message.value(), SerializationContext(self.topics.results, MessageField.VALUE)
            )
            self.results.setdefault(result["command_id"], []).append(result)

    async def wait_for(
        self, done: Callable[[], bool], timeout_s: float = 60, task: asyncio.Task[Any] | None = None
    ) -> None:
        self.flush()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            await asyncio.to_thread(self.collect)
            if done():
                return
            if task is not None and task.done():
                raise AssertionError(f"the sink stopped: {task.exception()!r}")
            assert asyncio.get_running_loop().time() < deadline, (
                f"timed out; results so far: {sorted(self.results)} dead: {len(self.dead)}"
            )

    async def result_of(
        self, record: dict[str, Any], task: asyncio.Task[Any] | None = None, timeout_s: float = 60
    ) -> dict[str, Any]:
        command_id = record["command_id"]
        await self.wait_for(lambda: command_id in self.results, timeout_s, task)
        return self.results[command_id][0]

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.flush(10)


def sink_engine(
    config: ConnectionConfig, kafka: KafkaContext, metrics: Metrics | None = None
) -> PrefixEngine:
    """The engine `epic-bridge run --only sink` runs (group membership, partition feed, transaction
    helper), for one connection, in this process."""
    sink_only: frozenset[Side] = frozenset({"sink"})
    return PrefixEngine(
        config.topic_prefix, [config], kafka, sides=sink_only, store=None, metrics=metrics or Metrics()
    )


async def run_sink(
    config: ConnectionConfig, kafka: KafkaContext, stop: asyncio.Event, metrics: Metrics | None = None
) -> None:
    await sink_engine(config, kafka, metrics).run(stop)


@dataclass
class RunningSink:
    harness: SinkHarness
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def result_of(self, record: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        return await self.harness.result_of(record, self.task, timeout_s)

    def send(self, resource_type: str, action: str, **fields: Any) -> dict[str, Any]:
        return self.harness.command(resource_type, action, **fields)

    async def run(self, resource_type: str, action: str, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its result."""
        return await self.result_of(self.send(resource_type, action, **fields))

    async def close(self) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, 60)
        finally:
            self.harness.close()


async def start_sink(config: ConnectionConfig, kafka: KafkaContext, metrics: Any = None) -> RunningSink:
    """The sink running, once it owns the connection and opened it (discovery and token done)."""
    stop = asyncio.Event()
    engine = sink_engine(config, kafka, metrics)
    task = asyncio.create_task(engine.run(stop))
    harness = SinkHarness(config, kafka.config["bootstrap.servers"], kafka.registry)
    deadline = asyncio.get_running_loop().time() + 60
    while (worker := engine.workers.get(config.name)) is None or worker.connection is None:
        assert not task.done(), task.exception()
        assert asyncio.get_running_loop().time() < deadline, "the sink did not start"
        await asyncio.sleep(0.1)
    return RunningSink(harness, task, stop)


def resources_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in result["resources_json"]]
