"""Bytes to typed objects and back, in Confluent wire format through the schema registry.

Decoding uses confluent-kafka's AvroDeserializer with the writer's schema from the registry, so records
written with any registered version of a schema decode. Encoding registers the command schema shipped
with the bridge under `<topic>-value` (compatibility pinned to BACKWARD, as the bridge does for its
own topics) and then only looks it up.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from bridge.client.commands import Command
from bridge.client.errors import NotAnEvent, RegistryUnavailable, UndecodableRecord
from bridge.client.events import Event
from bridge.client.results import CommandResult
from bridge.client.topics import Topics
from bridge.kafka.avro import TopicCodec, load_schema


class _Decoder:
    def __init__(self, registry: SchemaRegistryClient) -> None:
        self._deserialize = AvroDeserializer(registry)

    def record(self, value: bytes | None, topic: str) -> Any:
        """The decoded Avro record; errors translated to UndecodableRecord or RegistryUnavailable."""
        if not value:
            raise UndecodableRecord(f"a record on {topic} has no value")
        try:
            return self._deserialize(value, SerializationContext(topic, MessageField.VALUE))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UndecodableRecord(
                    f"a record on {topic} names a schema id unknown to the registry"
                ) from exc
            raise RegistryUnavailable(f"schema registry: {exc}") from exc
        except (SerializationError, ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
            raise UndecodableRecord(
                f"a record on {topic} does not decode: {type(exc).__name__}: {exc}"
            ) from exc


class EventDecoder(_Decoder):
    """`decoder(value, topic)` → Event."""

    def __call__(self, value: bytes | None, topic: str) -> Event:
        try:
            return Event.from_record(self.record(value, topic))
        except UndecodableRecord as exc:
            raise NotAnEvent(str(exc)) from exc


class ResultDecoder(_Decoder):
    """`decoder(value, topic)` → CommandResult."""

    def __call__(self, value: bytes | None, topic: str) -> CommandResult:
        return CommandResult.from_record(self.record(value, topic))


class CommandEncoder:
    """`encoder(command)` → the bytes to produce to `encoder.topic_of(command)`."""

    def __init__(self, registry: SchemaRegistryClient, topics: Topics) -> None:
        self._registry = registry
        self.topics = topics
        self._codecs: dict[str, TopicCodec] = {}

    def topic_of(self, command: Command) -> str:
        return self.topics.commands(command.resource_type)

    def __call__(self, command: Command) -> bytes:
        topic = self.topic_of(command)
        codec = self._codecs.get(topic)
        if codec is None:
            schema = load_schema(f"{command.resource_type.lower()}_command.avsc")
            codec = self._codecs[topic] = TopicCodec(self._registry, topic, schema)
        return codec.encode(command.to_record())
