"""Schema registration under a subject with an explicit compatibility level."""

from __future__ import annotations

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from bridge.kafka.errors import KafkaGlueError


class IncompatibleSchemaError(KafkaGlueError):
    """The registry refused a schema version under the subject's compatibility rule."""


def register_avro(
    client: SchemaRegistryClient, subject: str, schema: str, compatibility: str = "BACKWARD"
) -> int:
    """Pin the subject's compatibility, then register the schema; returns its registry id.

    Consumers of event topics keep decoding old records with new schemas only if every new version
    is BACKWARD compatible, so the level is set per subject rather than trusted from the registry default.
    """
    client.set_compatibility(subject_name=subject, level=compatibility)
    try:
        # Stripped as the Avro serializer strips it before its lookup: registries that match schemas by
        # exact text (Apicurio does) would otherwise not find the version registered here.
        return client.register_schema(subject, Schema(schema.strip(), "AVRO"))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise IncompatibleSchemaError(
                f"schema for {subject} is not {compatibility} compatible with the registered versions: "
                f"{exc.error_message}"
            ) from exc
        raise
