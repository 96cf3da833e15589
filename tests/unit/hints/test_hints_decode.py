"""Records of the hints topic: what decodes to a hint, and why the rest is dead-lettered. The schema is
valid, documented Avro. The hints config validates its combinations."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pydantic
import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from bridge.config.hints import HintResource, HintsConfig
from bridge.config.models import RESOURCE_TYPES
from bridge.hints.decode import (
    BadHint,
    BadHintReason,
    HintRules,
    RawHint,
    RegistryUnavailable,
    dead_letter_headers,
    decode_hint,
)
from bridge.hints.model import Hint, HintSource

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "hint.avsc"
SCHEMA = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
RULES = HintRules(max_bytes=10_000, default_mrn_system="urn:mrn", resource_types=RESOURCE_TYPES)
WHEN = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def wire(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", 7))
    fastavro.schemaless_writer(out, SCHEMA, {"resource_types": [], **record})
    return out.getvalue()


def deserialize(value: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), SCHEMA, SCHEMA)


def raw(value: bytes | None) -> RawHint:
    return RawHint("epic.sim.hints", 2, 41, b"k", value, WHEN)


def test_a_hint_by_mrn_takes_the_default_system_and_the_record_time() -> None:
    hint = decode_hint(raw(wire({"mrn": "203711", "resource_types": ["Observation"]})), deserialize, RULES)
    assert hint == Hint(
        resource_types=("Observation",),
        source=HintSource.KAFKA,
        received_at=WHEN,
        mrn="203711",
        mrn_system="urn:mrn",
    )


def test_a_hint_by_id_wins_over_the_mrn_and_keeps_its_fields() -> None:
    value = wire(
        {
            "patient_id": "eq081-VQEgP8drUUqCWzHfw3",
            "mrn": "203711",
            "resource_types": ["Patient", "Encounter", "Patient"],
            "reason": "ADT^A08",
            "source": "mllp",
            "message_control_id": "MSG1",
            "received_at": WHEN - dt.timedelta(seconds=3),
        }
    )
    hint = decode_hint(raw(value), deserialize, RULES)
    assert hint.patient_id == "eq081-VQEgP8drUUqCWzHfw3" and hint.mrn is None
    assert hint.resource_types == ("Patient", "Encounter")
    assert (hint.source, hint.reason, hint.message_control_id) == (HintSource.MLLP, "ADT^A08", "MSG1")
    assert hint.received_at == WHEN - dt.timedelta(seconds=3)


def test_the_schema_round_trips_what_the_listener_writes() -> None:
    hint = Hint(("Appointment",), HintSource.MLLP, WHEN, mrn="1", mrn_system="urn:x", reason="SIU^S12")
    assert decode_hint(raw(wire(hint.record())), deserialize, RULES) == hint


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, BadHintReason.EMPTY),
        (b"", BadHintReason.EMPTY),
        (b"\x00" * 20_000, BadHintReason.OVERSIZED),
        (b'{"patient_id": "x"}', BadHintReason.UNDECODABLE),
        (b"\x00\x00\x00\x00\x07\xff\xff", BadHintReason.UNDECODABLE),
        (wire({}), BadHintReason.INVALID),
        (wire({"patient_id": "not/an/id"}), BadHintReason.INVALID),
        (wire({"mrn": "20|3711"}), BadHintReason.INVALID),
        (wire({"mrn": "1", "mrn_system": "a|b"}), BadHintReason.INVALID),
        (wire({"patient_id": "p1", "resource_types": ["Medication"]}), BadHintReason.INVALID),
    ],
)
def test_bad_records_are_dead_lettered_with_a_reason(value: bytes | None, reason: BadHintReason) -> None:
    with pytest.raises(BadHint) as caught:
        decode_hint(raw(value), deserialize, RULES)
    assert caught.value.reason is reason


def test_an_mrn_without_any_system_is_invalid() -> None:
    rules = HintRules(10_000, None, RESOURCE_TYPES)
    with pytest.raises(BadHint, match="mrn_system"):
        decode_hint(raw(wire({"mrn": "1"})), deserialize, rules)


def test_registry_answers_decide_between_dead_letter_and_retry() -> None:
    def missing(_v: bytes) -> Any:
        raise SchemaRegistryError(404, 40403, "Schema not found")

    def down(_v: bytes) -> Any:
        raise SchemaRegistryError(503, -1, "unavailable")

    with pytest.raises(BadHint) as caught:
        decode_hint(raw(wire({"patient_id": "p"})), missing, RULES)
    assert caught.value.reason is BadHintReason.UNKNOWN_SCHEMA
    with pytest.raises(RegistryUnavailable):
        decode_hint(raw(wire({"patient_id": "p"})), down, RULES)


def test_dead_letter_headers_say_why_and_where_without_content() -> None:
    error = BadHint(BadHintReason.INVALID, "the hint names no patient: set patient_id or mrn")
    headers = dict(dead_letter_headers(raw(wire({})), error, "sim"))
    assert headers["dlq.error.reason"] == b"invalid-hint"
    assert headers["dlq.source.topic"] == b"epic.sim.hints"
    assert (headers["dlq.source.partition"], headers["dlq.source.offset"]) == (b"2", b"41")
    assert headers["dlq.connection"] == b"sim"


def test_the_schema_documents_every_field_and_optional_fields_default_to_null() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["namespace"] == "epickafkabridge.hints"
    for field in schema["fields"]:
        assert field.get("doc"), field["name"]
        if isinstance(field["type"], list) and field["type"][0] == "null":
            assert field["default"] is None
    received = next(f for f in schema["fields"] if f["name"] == "received_at")
    assert received["type"][1]["logicalType"] == "timestamp-millis"


def test_hint_resources_are_the_bridges_resources() -> None:
    assert HintResource.__args__ == RESOURCE_TYPES  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw_cfg", "message"),
    [
        ({"mllp": {"enabled": True}}, "needs hints.enabled"),
        ({"enabled": True, "mllp": {"enabled": True}}, "needs patient_identifiers"),
        ({"patient_identifiers": {"mrn_system": "urn:x"}}, "go together"),
        ({"message_resources": {"adt": ["Patient"]}}, "not a message code"),
        ({"message_resources": {"ADT": []}}, "lists no resource"),
        ({"message_resources": {"ADT": ["Medication"]}}, "Patient"),
    ],
)
def test_invalid_hints_configs_say_what_to_fix(raw_cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        HintsConfig.model_validate(raw_cfg)


def test_hints_are_off_by_default_and_a_listener_config_validates() -> None:
    assert not HintsConfig().enabled and not HintsConfig().mllp.enabled
    cfg = HintsConfig.model_validate(
        {
            "enabled": True,
            "mllp": {"enabled": True, "host": "0.0.0.0", "port": 2576},
            "patient_identifiers": {"fhir_id_type": "FHIR"},
        }
    )
    assert cfg.mllp.port == 2576 and cfg.message_resources["ORU"] == ["Observation"]
