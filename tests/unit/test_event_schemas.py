"""The event schemas in schemas/ are valid Avro, share one envelope and document every field."""

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
    assert names == [*ENVELOPE, resource.lower(), "resource_json"]


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
