"""Avro encoding of records for one topic, in Confluent wire format, through the schema registry."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.registry import register_avro

Register = Callable[[SchemaRegistryClient, str, str], int]


def load_schema(file_name: str) -> str:
    """The text of a schema shipped with the package (schemas/*.avsc)."""
    return (importlib.resources.files("bridge") / "schemas" / file_name).read_text()


class TopicCodec:
    """Serializes values for one topic with one schema, registered under `<topic>-value`.

    Registration happens once, up front, with the subject's compatibility pinned (see register_avro);
    the serializer then only looks the schema up, so a producer never registers an unplanned version.
    """

    def __init__(
        self, registry: SchemaRegistryClient, topic: str, schema: str, register: Register = register_avro
    ) -> None:
        self.topic = topic
        self.subject = f"{topic}-value"
        self.schema_id = register(registry, self.subject, schema)
        self._serializer = AvroSerializer(
            registry, schema, conf={"auto.register.schemas": False, "use.latest.version": False}
        )
        self._context = SerializationContext(topic, MessageField.VALUE)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        encoded: bytes | None = self._serializer(dict(record), self._context)
        if encoded is None:  # only for a None record, which callers never pass
            raise ValueError(f"nothing to encode for {self.topic}")
        return encoded
