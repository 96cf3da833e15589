"""Fingerprints, projections and event records, validated against the real event schemas."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.source.detect import Change, detect_changes
from bridge.source.events import Trigger, build_event, event_id
from bridge.source.fingerprint import canonical_json, fingerprint
from bridge.source.projection import PROJECTIONS, patient_id_of
from bridge.source.state import Seen

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)

PATIENT = {
    "resourceType": "Patient",
    "id": "eq081-VQEgP8drUUqCWzHfw3",
    "identifier": [
        {"use": "usual", "system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "203711"}
    ],
    "name": [
        {"use": "usual", "family": "Nickname", "given": ["Der"]},
        {"use": "official", "family": "Lin", "given": ["Derrick", "J"]},
    ],
    "gender": "male",
    "birthDate": "1973-06-03",
    "active": True,
}
BP = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]
    },
    "subject": {"reference": "Patient/eq081-VQEgP8drUUqCWzHfw3"},
    "encounter": {"reference": "Encounter/enc-9"},
    "effectiveDateTime": "2026-11-25T08:15:00-05:00",
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 80, "unit": "mm[Hg]"},
        },
    ],
}
APPOINTMENT = {
    "resourceType": "Appointment",
    "id": "appt-1",
    "status": "booked",
    "start": "2026-12-01T14:00:00Z",
    "end": "2026-12-01T14:30:00Z",
    "minutesDuration": 30,
    "participant": [
        {"actor": {"reference": "Patient/p1", "display": "Lin, Derrick"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/pr1"}, "status": "accepted"},
    ],
}
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-9",
    "status": "finished",
    "class": {"code": "AMB"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2026-11-25", "end": "2026-11-25T10:00:00Z"},
    "location": [{"location": {"display": "Clinic A"}}],
}
DOCUMENT = {
    "resourceType": "DocumentReference",
    "id": "doc-1",
    "status": "current",
    "docStatus": "final",
    "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
    "subject": {"reference": "Patient/p1"},
    "date": "2026-11-25T10:05:00Z",
    "context": {"encounter": [{"reference": "Encounter/enc-9"}]},
    "content": [{"attachment": {"contentType": "text/plain", "data": "SGVsbG8="}}],
}
SAMPLES = [PATIENT, BP, APPOINTMENT, ENCOUNTER, DOCUMENT]


def schema_for(resource_type: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMAS / f"{resource_type.lower()}_event.avsc").read_text()))


def avro_round_trip(resource_type: str, record: dict[str, Any]) -> Any:
    schema = schema_for(resource_type)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, schema)


def test_fingerprint_ignores_key_order_and_volatile_meta() -> None:
    reordered = dict(reversed(list(PATIENT.items())))
    with_meta = {**PATIENT, "meta": {"versionId": "7", "lastUpdated": "2026-11-25T00:00:00Z"}}
    assert fingerprint(reordered) == fingerprint(PATIENT) == fingerprint(with_meta)
    assert b"versionId" not in canonical_json(with_meta)


def test_fingerprint_changes_with_content_and_with_security_labels() -> None:
    changed = {**PATIENT, "gender": "female"}
    labelled = {**PATIENT, "meta": {"security": [{"code": "R"}]}}
    assert len({fingerprint(PATIENT), fingerprint(changed), fingerprint(labelled)}) == 3


@pytest.mark.parametrize("resource", SAMPLES, ids=lambda r: r["resourceType"])
def test_event_encodes_with_its_schema(resource: dict[str, Any]) -> None:
    event = build_event(
        connection="sandbox",
        resource=resource,
        fingerprint=fingerprint(resource),
        trigger=Trigger.CREATED,
        detected_at=NOW,
        cursor="patient:3",
    )
    decoded = avro_round_trip(resource["resourceType"], event)
    assert decoded["resource_id"] == resource["id"]
    assert json.loads(decoded["resource_json"]) == resource
    assert decoded["trigger"] == "CREATED"


def test_projections_read_the_fields_downstream_filters_on() -> None:
    p = PROJECTIONS["Patient"](PATIENT)
    assert (p["family_name"], p["given_names"], p["birth_date"]) == (
        "Lin",
        ["Derrick", "J"],
        dt.date(1973, 6, 3),
    )
    assert p["identifiers"][0]["value"] == "203711"
    o = PROJECTIONS["Observation"](BP)
    assert o["code"]["code"] == "85354-9" and o["categories"][0]["code"] == "vital-signs"
    assert [c["value_quantity"] for c in o["components"]] == [120.0, 80.0]
    assert o["effective_at"] == dt.datetime(2026, 11, 25, 13, 15, tzinfo=dt.UTC)
    assert o["encounter_id"] == "enc-9"
    a = PROJECTIONS["Appointment"](APPOINTMENT)
    assert a["status"] == "booked" and a["minutes_duration"] == 30 and len(a["participants"]) == 2
    e = PROJECTIONS["Encounter"](ENCOUNTER)
    assert e["period_start"] == dt.datetime(2026, 11, 25, tzinfo=dt.UTC) and e["location_names"] == [
        "Clinic A"
    ]
    d = PROJECTIONS["DocumentReference"](DOCUMENT)
    assert d["encounter_id"] == "enc-9" and d["content_types"] == ["text/plain"]


def test_patient_of_each_resource() -> None:
    assert [patient_id_of(r) for r in SAMPLES] == [
        "eq081-VQEgP8drUUqCWzHfw3",
        "eq081-VQEgP8drUUqCWzHfw3",
        "p1",
        "p1",
        "p1",
    ]


def test_event_id_is_stable_for_the_same_change_only() -> None:
    assert event_id("c", "Patient", "x", "f1") == event_id("c", "Patient", "x", "f1")
    assert event_id("c", "Patient", "x", "f1") != event_id("c", "Patient", "x", "f2")


def _status(status: str) -> dict[str, Any]:
    return {**APPOINTMENT, "status": status}


def test_a_resource_flipping_back_and_forth_never_repeats_an_event_id() -> None:
    """A → B → A → B: each change is named by where it came from, where it led and how many came before;
    the state store's record after each commit is what the next detection starts from."""
    known: dict[str, Seen] = {}
    ids = []
    for status in ("booked", "cancelled", "booked", "cancelled"):
        [change] = detect_changes([_status(status)], known)
        event = build_event(
            connection="c", resource=change.resource, fingerprint=change.fingerprint, trigger=change.trigger,
            detected_at=NOW, cursor=None, change=change.identity,
        )  # fmt: skip
        # the same change detected again (a crash before the commit) gets the same id
        [again] = detect_changes([_status(status)], known)
        assert again.identity == change.identity
        ids.append(event["event_id"])
        known = {change.resource_id: change.seen()}
    assert len(set(ids)) == 4
    assert [s.changes for s in known.values()] == [3]
    assert detect_changes([_status("cancelled")], known) == []  # unchanged: nothing, whatever the count


def test_a_snapshot_keeps_the_change_count_of_an_unchanged_resource() -> None:
    [first] = detect_changes([_status("booked")], {})
    [second] = detect_changes([_status("cancelled")], {first.resource_id: first.seen()})
    recorded = second.seen()
    snapshot = Change(second.resource, second.fingerprint, second.patient_id, Trigger.CREATED, recorded)
    assert snapshot.seen() == recorded


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    resource_type=st.sampled_from(list(PROJECTIONS)),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "birthDate",
                "start",
                "period",
                "category",
                "code",
                "component",
                "context",
                "valueQuantity",
                "participant",
                "identifier",
                "effectiveDateTime",
                "type",
                "date",
                "subject",
                "content",
                "deceasedDateTime",
                "location",
                "class",
            ]
        ),
        json_values,
        max_size=8,
    ),
)
def test_odd_resources_still_make_valid_events(resource_type: str, fields: dict[str, Any]) -> None:
    resource = {**fields, "resourceType": resource_type, "id": "odd-1"}
    event = build_event(
        connection="c",
        resource=resource,
        fingerprint=fingerprint(resource),
        trigger=Trigger.UPDATED,
        detected_at=NOW,
        cursor=None,
    )
    assert avro_round_trip(resource_type, event)["resource_id"] == "odd-1"
