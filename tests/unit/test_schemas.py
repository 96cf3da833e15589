"""The schemas in schemas/ are valid Avro, share their common parts and document every field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
RESOURCES = ["Patient", "Appointment", "Encounter", "Observation", "DocumentReference"]
ENVELOPE = [
    "event_id",
    "trigger",
    "connection",
    "resource_type",
    "resource_id",
    "patient_id",
    "detected_at",
    "fingerprint",
    "cursor",
]


def event_schema(resource: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{resource.lower()}_event.avsc").read_text())
    return schema


def walk_fields(schema: Any) -> list[dict[str, Any]]:
    """Every record field, at any depth."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += walk_fields(branch)
    elif isinstance(schema, dict):
        for field in schema.get("fields", []):
            found.append(field)
            found += walk_fields(field["type"])
        if schema.get("type") == "array":
            found += walk_fields(schema["items"])
    return found


@pytest.mark.parametrize("resource", RESOURCES)
def test_event_schema_is_valid_namespaced_avro(resource: str) -> None:
    schema = event_schema(resource)
    fastavro.parse_schema(schema)
    assert schema["name"] == f"{resource}Event"
    assert schema["namespace"] == "epickafkabridge.events"
    names = [f["name"] for f in schema["fields"]]
    assert names == [*ENVELOPE, resource.lower(), "resource_json", "snapshot"]


@pytest.mark.parametrize("resource", RESOURCES[1:])
def test_every_event_shares_the_patient_event_envelope(resource: str) -> None:
    def envelope(r: str) -> list[dict[str, Any]]:
        fields = event_schema(r)["fields"][: len(ENVELOPE)]
        # resource_type's doc names the type; everything else must be identical
        return [
            {k: v for k, v in f.items() if not (f["name"] == "resource_type" and k == "doc")} for f in fields
        ]

    assert envelope(resource) == envelope("Patient")


@pytest.mark.parametrize("resource", RESOURCES)
def test_every_field_is_documented_and_optional_fields_default(resource: str) -> None:
    for field in walk_fields(event_schema(resource)):
        assert field.get("doc"), f"{resource}: field {field['name']} has no doc"
        if isinstance(field["type"], list) and field["type"][0] == "null":
            assert "default" in field and field["default"] is None, field["name"]


@pytest.mark.parametrize("resource", RESOURCES)
def test_times_use_logical_types(resource: str) -> None:
    schema = event_schema(resource)
    detected = next(f for f in schema["fields"] if f["name"] == "detected_at")
    assert detected["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    text = json.dumps(schema)
    assert '"logicalType": "uuid"' in text


COMMAND_COMMON = [
    "command_id",
    "correlation_id",
    "action",
    "resource_json",
    "fields",
    "criteria",
    "reply_topic",
    "sent_at",
    "deadline_ms",
]


def command_schema(resource: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{resource.lower()}_command.avsc").read_text())
    return schema


@pytest.mark.parametrize("resource", RESOURCES)
def test_command_schema_is_valid_and_shares_the_common_fields(resource: str) -> None:
    schema = command_schema(resource)
    fastavro.parse_schema(schema)
    assert (schema["name"], schema["namespace"]) == (f"{resource}Command", "epickafkabridge.commands")
    assert [f["name"] for f in schema["fields"]] == COMMAND_COMMON

    def common(s: dict[str, Any]) -> list[dict[str, Any]]:
        return [f for f in s["fields"] if f["name"] != "fields"]

    assert common(schema) == common(command_schema("Patient"))
    for field in walk_fields(schema):
        assert field.get("doc"), f"{resource}: field {field['name']} has no doc"


def test_result_schema_covers_every_outcome() -> None:
    schema = json.loads((SCHEMAS / "command_result.avsc").read_text())
    fastavro.parse_schema(schema)
    status = next(f for f in schema["fields"] if f["name"] == "status")["type"]
    assert status["symbols"] == ["SUCCEEDED", "NOT_FOUND", "FAILED", "REJECTED"]
    action = next(f for f in schema["fields"] if f["name"] == "action")["type"]
    assert action["symbols"] == command_schema("Patient")["fields"][2]["type"]["symbols"]
    for field in walk_fields(schema):
        assert field.get("doc"), f"field {field['name']} has no doc"
