"""From a record of the hints topic to a `Hint`, or to the reason it belongs in the dead-letter topic.

Anyone may produce to the hints topic, so every field is checked: a record that cannot be read as a hint
(not Avro in Confluent wire format, an unknown schema id, no patient, a malformed id, an unknown resource
type) goes to the connection's DLQ, untouched, with headers saying why. A registry that cannot be asked is
not the record's fault: `RegistryUnavailable`, read it again later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import SerializationError

from bridge.hints.model import FHIR_ID, MAX_REASON, MRN, Hint, HintSource

HEADER_PREFIX = "dlq."
MAX_SYSTEM = 500
MAX_CONTROL_ID = 200


@dataclass(frozen=True)
class RawHint:
    """One record read from the hints topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: dt.datetime | None = None


class BadHintReason(StrEnum):
    EMPTY = "empty"
    OVERSIZED = "oversized"
    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown-schema"
    INVALID = "invalid-hint"


class BadHint(Exception):
    def __init__(self, reason: BadHintReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class RegistryUnavailable(Exception):
    """The schema registry did not answer; the record is fine and must be read again."""


@dataclass(frozen=True)
class HintRules:
    max_bytes: int
    default_mrn_system: str | None
    resource_types: Collection[str]  # every type a hint may name (the bridge's five)


def decode_hint(raw: RawHint, deserialize: Callable[[bytes], Any], rules: HintRules) -> Hint:
    """Raises BadHint (dead-letter it) or RegistryUnavailable (retry)."""
    value = raw.value
    if not value:
        raise BadHint(BadHintReason.EMPTY, "the record has no value")
    if len(value) > rules.max_bytes:
        raise BadHint(
            BadHintReason.OVERSIZED, f"{len(value)} bytes, more than the limit of {rules.max_bytes}"
        )
    if len(value) < 5 or value[0] != 0:
        raise BadHint(
            BadHintReason.UNDECODABLE, "not Avro in Confluent wire format (magic byte 0 + schema id)"
        )
    try:
        record = deserialize(value)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise BadHint(BadHintReason.UNKNOWN_SCHEMA, "the schema id is not in the registry") from exc
        raise RegistryUnavailable(str(exc)) from exc
    except (SerializationError, ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
        raise BadHint(BadHintReason.UNDECODABLE, f"{type(exc).__name__} while decoding") from exc
    if not isinstance(record, Mapping):
        raise BadHint(BadHintReason.UNDECODABLE, "the value is not an Avro record")
    return _hint(record, raw, rules)


def _hint(record: Mapping[str, Any], raw: RawHint, rules: HintRules) -> Hint:
    patient_id = _optional_str(record, "patient_id")
    mrn = _optional_str(record, "mrn")
    system = _optional_str(record, "mrn_system") or rules.default_mrn_system
    if patient_id is None and mrn is None:
        raise _invalid("the hint names no patient: set patient_id or mrn")
    if patient_id is not None and not FHIR_ID.fullmatch(patient_id):
        raise _invalid("patient_id is not a FHIR id (letters, digits, '.', '-'; at most 64)")
    if patient_id is None:
        if mrn is None or not MRN.fullmatch(mrn):
            raise _invalid("mrn must be 1 to 64 letters, digits, spaces or ._:/#-")
        if system is None:
            raise _invalid("mrn needs mrn_system (the connection configures no default)")
        if len(system) > MAX_SYSTEM or "|" in system:
            raise _invalid(f"mrn_system must be at most {MAX_SYSTEM} characters without '|'")
    types = record.get("resource_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise _invalid("resource_types must be a list of FHIR type names")
    unknown = sorted({t for t in types if t not in rules.resource_types})
    if unknown:
        raise _invalid(f"unknown resource types {unknown[:5]}; allowed: {', '.join(rules.resource_types)}")
    received_at = record.get("received_at")
    control_id = _optional_str(record, "message_control_id")
    return Hint(
        resource_types=tuple(dict.fromkeys(types)),
        source=HintSource.MLLP if record.get("source") == HintSource.MLLP.value else HintSource.KAFKA,
        received_at=received_at if isinstance(received_at, dt.datetime) else _record_time(raw),
        patient_id=patient_id,
        mrn=None if patient_id is not None else mrn,
        mrn_system=None if patient_id is not None else system,
        reason=(_optional_str(record, "reason") or "")[:MAX_REASON] or None,
        message_control_id=control_id[:MAX_CONTROL_ID] if control_id else None,
    )


def _optional_str(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _record_time(raw: RawHint) -> dt.datetime:
    return raw.timestamp if raw.timestamp is not None else dt.datetime.now(dt.UTC)


def _invalid(message: str) -> BadHint:
    return BadHint(BadHintReason.INVALID, message)


def dead_letter_headers(raw: RawHint, error: BadHint, connection: str) -> list[tuple[str, bytes]]:
    """The same `dlq.*` headers as dead-lettered commands: reason, message (the record's form, never its
    content), where the record came from."""
    fields = {
        "error.reason": error.reason.value,
        "error.message": error.message[:1000],
        "source.topic": raw.topic,
        "source.partition": str(raw.partition),
        "source.offset": str(raw.offset),
        "connection": connection,
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return [(HEADER_PREFIX + name, text.encode()) for name, text in fields.items()]
