"""From a Kafka record to a Command, or to the reason it belongs in the dead-letter topic.

A record that cannot be tied to a command id (undecodable, unknown schema, no id, too large) cannot get
a result, so it goes to the DLQ. A decoded command that is wrong in substance (bad resource JSON, an
action without what it needs) has an id and gets a REJECTED result instead, see `precheck`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from enum import StrEnum
from typing import Any

from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import SerializationError

from bridge.sink.model import Action, Command, Outcome, Source

MAX_COMMAND_ID = 200


class DeadLetterReason(StrEnum):
    OVERSIZED = "oversized"
    EMPTY = "empty"
    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown-schema"
    MISSING_FIELD = "missing-field"


class DeadLetter(Exception):
    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class RegistryUnavailable(Exception):
    """The registry could not be asked; the record is fine, so it must be retried, not dead-lettered."""


Deserialize = Callable[[bytes], Any]


def _deserialize(deserialize: Deserialize, value: bytes) -> Any:
    try:
        return deserialize(value)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise DeadLetter(
                DeadLetterReason.UNKNOWN_SCHEMA, f"schema id not in the registry: {exc}"
            ) from exc
        raise RegistryUnavailable(str(exc)) from exc
    except SerializationError as exc:
        raise DeadLetter(DeadLetterReason.UNDECODABLE, str(exc)) from exc
    except (ValueError, TypeError, EOFError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise DeadLetter(DeadLetterReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc


def decode_command(
    value: bytes | None, source: Source, resource_type: str, deserialize: Deserialize, max_bytes: int
) -> Command:
    """Raises DeadLetter (the record gets no result) or RegistryUnavailable (retry later)."""
    if value is None or len(value) == 0:
        raise DeadLetter(DeadLetterReason.EMPTY, "the record has no value")
    if len(value) > max_bytes:
        raise DeadLetter(
            DeadLetterReason.OVERSIZED, f"{len(value)} bytes, more than the limit of {max_bytes}"
        )
    if value[0] != 0 or len(value) < 5:
        raise DeadLetter(
            DeadLetterReason.UNDECODABLE, "not in Confluent wire format (magic byte 0 + schema id)"
        )
    record = _deserialize(deserialize, value)
    if not isinstance(record, Mapping):
        raise DeadLetter(DeadLetterReason.MISSING_FIELD, "the record is not an Avro record")
    command_id = record.get("command_id")
    if not isinstance(command_id, str) or not command_id.strip() or len(command_id) > MAX_COMMAND_ID:
        raise DeadLetter(
            DeadLetterReason.MISSING_FIELD,
            f"command_id must be a non-empty string of at most {MAX_COMMAND_ID} characters",
        )
    action = record.get("action")
    if not isinstance(action, str) or action not in Action.__members__:
        raise DeadLetter(DeadLetterReason.MISSING_FIELD, f"action must be one of {', '.join(Action)}")
    criteria = record.get("criteria") or {}
    sent_at = record.get("sent_at")
    return Command(
        command_id=command_id,
        action=Action(action),
        resource_type=resource_type,
        source=source,
        correlation_id=_str_or_none(record.get("correlation_id")),
        resource_json=_str_or_none(record.get("resource_json")),
        fields=dict(record["fields"]) if isinstance(record.get("fields"), Mapping) else None,
        criteria={str(k): str(v) for k, v in criteria.items()} if isinstance(criteria, Mapping) else {},
        reply_topic=_str_or_none(record.get("reply_topic")),
        sent_at=sent_at if isinstance(sent_at, dt.datetime) else None,
        deadline_ms=record.get("deadline_ms") if isinstance(record.get("deadline_ms"), int) else None,
    )


def precheck(command: Command) -> Command | Outcome:
    """Checks that need no server: the command with its resource parsed, or a REJECTED outcome."""
    resource: dict[str, Any] | None = None
    if command.resource_json is not None:
        try:
            parsed = json.loads(command.resource_json)
        except ValueError as exc:
            return Outcome.rejected(f"resource_json is not valid JSON: {exc}")
        if not isinstance(parsed, dict):
            return Outcome.rejected("resource_json must be a JSON object (a FHIR resource)")
        declared = parsed.setdefault("resourceType", command.resource_type)
        if declared != command.resource_type:
            return Outcome.rejected(
                f"resource_json is a {declared!r} but this is the {command.resource_type} command topic"
            )
        resource = parsed
    if command.action.may_create and resource is None and command.fields is None:
        return Outcome.rejected(f"{command.action} needs resource_json or fields to create from")
    if command.action is not Action.CREATE and not command.criteria:
        return Outcome.rejected(f"{command.action} needs search criteria")
    return replace(command, resource=resource)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
