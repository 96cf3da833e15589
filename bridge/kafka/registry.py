"""Schema registration under a subject with an explicit compatibility level."""

from __future__ import annotations

import json

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
    try:
        client.set_compatibility(subject_name=subject, level=compatibility)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 409:
            raise
        # Apicurio answers 409 when another writer created the subject's rule a moment before; setting
        # it again is then an update.
        client.set_compatibility(subject_name=subject, level=compatibility)
    return _register(client, subject, schema, f"{compatibility} compatible")


def _register(client: SchemaRegistryClient, subject: str, schema: str, rule: str) -> int:
    try:
        # Stripped as the Avro serializer strips it before its lookup: registries that match schemas by
        # exact text (Apicurio does) would otherwise not find the version registered here.
        return client.register_schema(subject, Schema(schema.strip(), "AVRO"))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise IncompatibleSchemaError(
                f"schema for {subject} is not {rule} with the registered versions: {exc.error_message}"
            ) from exc
        raise


class ForeignSubjectError(KafkaGlueError):
    """The subject exists and holds a schema of another record: it is someone else's, leave it alone."""


class RegistryUnavailableError(KafkaGlueError):
    """The registry could not be reached, or answered with a transient error: ask again later."""


_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _is_transport_error(exc: BaseException) -> bool:
    """A network error of the registry client's HTTP library (httpx2 where installed, else httpx), told
    by its class rather than imported: importing either here would load it (and its extras) into every
    process that only encodes records."""
    return isinstance(exc, OSError | RegistryUnavailableError) or any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0] in ("httpx", "httpx2")
        for cls in type(exc).__mro__
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a registry call failed in a way that asking again later can fix."""
    if _is_transport_error(exc):
        return True
    return isinstance(exc, SchemaRegistryError) and exc.http_status_code in _TRANSIENT_STATUSES


def record_name(schema: str) -> str | None:
    """The full name of an Avro record schema (namespace.name), None for anything else."""
    try:
        parsed = json.loads(schema)
    except ValueError:
        return None
    if (
        not isinstance(parsed, dict)
        or parsed.get("type") != "record"
        or not isinstance(parsed.get("name"), str)
    ):
        return None
    name, namespace = parsed["name"], parsed.get("namespace")
    return name if "." in name or not isinstance(namespace, str) else f"{namespace}.{name}"


def register_owned_avro(client: SchemaRegistryClient, subject: str, schema: str) -> int:
    """Register `schema` under `subject` only where the subject is the bridge's to write to: a new subject
    (created with BACKWARD compatibility) or one whose latest version is the same record (a new version
    under the subject's own rules). Any other subject raises ForeignSubjectError, and its compatibility
    level is never touched."""
    try:
        latest = client.get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
        return register_avro(client, subject, schema)
    wanted = record_name(schema)
    if latest.schema is None or latest.schema.schema_type not in (None, "AVRO"):
        raise ForeignSubjectError(f"subject {subject} holds a non-Avro schema")
    held = record_name(latest.schema.schema_str or "")
    if held != wanted:
        raise ForeignSubjectError(
            f"subject {subject} holds records of type {held or 'unknown'}, not {wanted}"
        )
    return _register(client, subject, schema, "compatible under the subject's own rule")
