"""The real broker and registry do what the bridge relies on: Avro through the registry,
transactions that read_committed consumers respect, compacted internal topics."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka_support import read_topic

from bridge.kafka.context import KafkaSettings
from bridge.kafka.errors import TopicConfigError
from bridge.kafka.registry import IncompatibleSchemaError, register_avro
from bridge.kafka.topics import TopicSpec, ensure_topics, topic_config

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def sample_patient_event() -> dict[str, Any]:
    resource = {"resourceType": "Patient", "id": "eq081-VQEgP8drUUqCWzHfw3", "gender": "male"}
    return {
        "event_id": uuid.uuid4(),
        "trigger": "CREATED",
        "connection": "sandbox",
        "resource_type": "Patient",
        "resource_id": resource["id"],
        "patient_id": resource["id"],
        "detected_at": dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC),
        "fingerprint": "0" * 64,
        "cursor": None,
        "patient": {
            "identifiers": [
                {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "203711", "use": "usual"}
            ],
            "family_name": "Lin",
            "given_names": ["Derrick"],
            "birth_date": dt.date(1973, 6, 3),
            "gender": "male",
            "active": True,
            "deceased": None,
        },
        "resource_json": json.dumps(resource),
        "snapshot": False,
    }


@pytest.mark.integration
def test_avro_event_round_trips_through_the_registry(
    kafka_bootstrap: str, schema_registry: SchemaRegistryClient, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("events")
    schema = (SCHEMAS / "patient_event.avsc").read_text()
    serializer = AvroSerializer(schema_registry, schema)
    event = sample_patient_event()

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    value = serializer(event, SerializationContext(topic, MessageField.VALUE))
    producer.produce(topic, key=event["resource_id"].encode(), value=value)
    assert producer.flush(30) == 0

    # Registered under the topic's subject (TopicNameStrategy), as the bridge's consumers expect.
    registered = schema_registry.get_latest_version(f"{topic}-value")
    assert json.loads(registered.schema.schema_str)["name"] == "PatientEvent"

    [record] = read_topic(kafka_bootstrap, topic, "read_committed", expect=1)
    raw = record.value()
    assert raw is not None and raw[0] == 0  # Confluent wire format: magic byte, then the schema id
    assert int.from_bytes(raw[1:5], "big") == registered.schema_id
    decoded = AvroDeserializer(schema_registry)(raw, SerializationContext(topic, MessageField.VALUE))
    assert decoded == event


@pytest.mark.integration
def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = new_topic("tx")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_name("txid")})
    producer.init_transactions(30)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(30)  # written to the log, so only the abort marker can hide it
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(30)

    committed = [m.value() for m in read_topic(kafka_bootstrap, topic, "read_committed", expect=1)]
    everything = [m.value() for m in read_topic(kafka_bootstrap, topic, "read_uncommitted", expect=2)]
    assert committed == [b"committed"]
    assert everything == [b"aborted", b"committed"]


@pytest.mark.integration
def test_a_second_transactional_producer_fences_the_first(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = new_topic("fence")
    txid = unique_name("txid")
    old = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txid})
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, value=b"from the old worker")
    old.flush(30)

    new = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txid})
    new.init_transactions(30)  # aborts the old worker's open transaction and bumps the epoch
    new.begin_transaction()
    new.produce(topic, value=b"from the new worker")
    new.commit_transaction(30)

    with pytest.raises(Exception, match=r"(?i)fenced"):
        old.commit_transaction(30)
    assert [m.value() for m in read_topic(kafka_bootstrap, topic, "read_committed", 1)] == [
        b"from the new worker"
    ]


@pytest.mark.integration
def test_internal_topic_is_created_compacted_and_checked(
    kafka_admin: AdminClient, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("_state")
    try:
        assert ensure_topics(kafka_admin, [TopicSpec.compacted(name, partitions=3)]) == [name]
        config = topic_config(kafka_admin, name)
        assert config["cleanup.policy"] == "compact"
        assert config["min.cleanable.dirty.ratio"] == "0.1"
        assert len(kafka_admin.list_topics(name, timeout=10).topics[name].partitions) == 3
        # Idempotent: a second start creates nothing and accepts the topic as it is.
        assert ensure_topics(kafka_admin, [TopicSpec.compacted(name, partitions=3)]) == []
    finally:
        kafka_admin.delete_topics([name], operation_timeout=30)[name].result()


def topic_overrides(admin: AdminClient, name: str) -> dict[str, str]:
    """The settings the topic itself sets (not inherited from the broker or the cluster)."""
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([resource], request_timeout=30)[resource].result()
    return {k: e.value for k, e in entries.items() if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}


@pytest.mark.integration
@pytest.mark.parametrize("configured", [None, 1])
def test_internal_topic_keeps_the_cluster_min_insync_replicas_unless_configured(
    kafka_admin: AdminClient, unique_name: Callable[[str], str], configured: int | None
) -> None:
    name = unique_name("_offsets")
    try:
        ensure_topics(kafka_admin, [TopicSpec.compacted(name, min_insync_replicas=configured)])
        overrides = topic_overrides(kafka_admin, name)
        assert overrides["cleanup.policy"] == "compact"
        assert overrides.get("min.insync.replicas") == (None if configured is None else str(configured))
    finally:
        kafka_admin.delete_topics([name], operation_timeout=30)[name].result()


def test_min_insync_replicas_is_a_process_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().topic_min_insync_replicas is None
    monkeypatch.setenv("EPIC_BRIDGE_TOPIC_MIN_INSYNC_REPLICAS", "2")
    assert KafkaSettings().topic_min_insync_replicas == 2


@pytest.mark.integration
def test_existing_internal_topic_with_delete_policy_is_refused(
    kafka_admin: AdminClient, new_topic: Callable[..., str]
) -> None:
    name = new_topic("not-compacted")  # cleanup.policy=delete, the broker default
    with pytest.raises(TopicConfigError, match=r"cleanup.policy='delete' \(needs 'compact'\)"):
        ensure_topics(kafka_admin, [TopicSpec.compacted(name)])


@pytest.mark.integration
def test_event_subject_is_backward_compatible(
    schema_registry: SchemaRegistryClient, unique_name: Callable[[str], str]
) -> None:
    subject = f"{unique_name('patient.events')}-value"
    schema = json.loads((SCHEMAS / "patient_event.avsc").read_text())
    first = register_avro(schema_registry, subject, json.dumps(schema))
    assert schema_registry.get_compatibility(subject) == "BACKWARD"

    # An added optional field (with a default) is a compatible evolution.
    schema["fields"].append(
        {"name": "source_system", "type": ["null", "string"], "default": None, "doc": "x"}
    )
    second = register_avro(schema_registry, subject, json.dumps(schema))
    assert second != first
    assert len(schema_registry.get_versions(subject)) == 2

    # A new required field breaks readers of old records: refused, and the subject is unchanged.
    schema["fields"].append({"name": "required_now", "type": "string", "doc": "x"})
    with pytest.raises(IncompatibleSchemaError, match="not BACKWARD compatible"):
        register_avro(schema_registry, subject, json.dumps(schema))
    assert len(schema_registry.get_versions(subject)) == 2
