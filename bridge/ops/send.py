"""`epic-bridge send`: produce one command and wait for its result (a hands-on way to try the actions)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.avro import load_schema
from bridge.kafka.context import KafkaContext
from bridge.kafka.topics import commands_topic, results_topic


def build_command(
    action: str,
    *,
    command_id: str | None = None,
    resource: dict[str, Any] | None = None,
    criteria: dict[str, str] | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "correlation_id": correlation_id,
        "action": action.upper(),
        "resource_json": None if resource is None else json.dumps(resource),
        "fields": None,
        "criteria": criteria or {},
        "reply_topic": None,
        "sent_at": dt.datetime.now(dt.UTC),
        "deadline_ms": None,
    }


def send_and_wait(
    kafka: KafkaContext,
    prefix: str,
    connection: str,
    resource_type: str,
    command: dict[str, Any],
    key: str | None,
    timeout_s: float,
) -> dict[str, Any] | None:
    """Produce the command; return its result, or None if none arrived within the timeout."""
    results = results_topic(prefix, connection)
    consumer = Consumer(
        {
            **kafka.config,
            "group.id": f"epic-bridge-send-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    # Start reading the results topic at its current end *before* sending, so the answer cannot be missed.
    metadata = consumer.list_topics(results, timeout=10).topics[results]
    ends = [
        TopicPartition(results, p, consumer.get_watermark_offsets(TopicPartition(results, p), timeout=10)[1])
        for p in metadata.partitions
    ]
    consumer.assign(ends)
    topic = commands_topic(prefix, connection, resource_type.lower())
    serializer = AvroSerializer(kafka.registry, load_schema(f"{resource_type.lower()}_command.avsc"))
    producer = Producer(dict(kafka.config))
    producer.produce(
        topic,
        key=(key or command["command_id"]).encode(),
        value=serializer(command, SerializationContext(topic, MessageField.VALUE)),
    )
    producer.flush(10)
    deserialize = AvroDeserializer(kafka.registry)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            result: dict[str, Any] = deserialize(
                msg.value(), SerializationContext(results, MessageField.VALUE)
            )
            if result.get("command_id") == command["command_id"]:
                return result
    finally:
        consumer.close()
    return None
