"""HL7 v2 messages built for changes: parse with hl7.parse, carry the MRN in PID-3, name the right event."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import hl7
import pytest

from epic_sim.episodes.changes import inpatient_encounter
from epic_sim.hl7feed.messages import build_message, escape, fhir_ts
from epic_sim.seed import MRN_SYSTEM, anchor_datetime, patient_bundle

NOW = datetime(2026, 6, 1, 12, 30, 5, 123000, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle() -> dict[str, list[dict[str, Any]]]:
    """The first generated (non-sandbox) patient's seeded resources, by type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in patient_bundle(0, 7, anchor_datetime("2026-06-01")):
        by_type.setdefault(resource["resourceType"], []).append(resource)
    return by_type


def _build(resource: dict[str, Any], kind: str, patient: dict[str, Any], **kw: Any) -> Any:
    message = build_message(
        resource, kind, patient=patient, encounter=kw.get("encounter"), control_id="C1", now=NOW
    )
    assert message is not None
    parsed = hl7.parse(message.text)
    assert str(parsed["MSH.F10"]) == "C1"
    assert str(parsed.segment("MSH")[9]).startswith(message.type + "^")
    return message.type, parsed


@pytest.mark.parametrize(
    ("rtype", "kind", "edit", "expected"),
    [
        ("Patient", "update", None, "ADT^A08"),
        ("Patient", "create", None, "ADT^A28"),
        ("Encounter", "create", None, "ADT^A04"),
        ("Encounter", "update", {"status": "finished"}, "ADT^A03"),
        ("Encounter", "update", {"status": "in-progress"}, "ADT^A08"),
        ("Appointment", "create", None, "SIU^S12"),
        ("Appointment", "update", {"status": "arrived"}, "SIU^S14"),
        ("Observation", "create", None, "ORU^R01"),
        ("DocumentReference", "create", None, "MDM^T02"),
        ("DocumentReference", "update", {"docStatus": "amended"}, "MDM^T08"),
    ],
)
def test_message_type_per_change(
    bundle: dict[str, list[dict[str, Any]]], rtype: str, kind: str, edit: dict[str, Any] | None, expected: str
) -> None:
    patient = bundle["Patient"][0]
    resource = copy.deepcopy(bundle[rtype][0]) | (edit or {})
    message_type, parsed = _build(resource, kind, patient, encounter=bundle["Encounter"][0])
    assert message_type == expected
    mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
    assert str(parsed["PID.F3.R1.C1"]) == mrn
    assert str(parsed["PID.F3.R1.C5"]) == "MR"
    assert str(parsed["PID.F3.R1.C4.S1"]) == "EPI"
    assert str(parsed["PID.F3.R1.C4.S2"]) == MRN_SYSTEM.removeprefix("urn:oid:")
    assert str(parsed["PID.F5.R1.C1"]) == patient["name"][0]["family"]
    assert str(parsed["PID.F7"]) == patient["birthDate"].replace("-", "")
    assert str(parsed["PID.F8"]) == {"male": "M", "female": "F"}[patient["gender"]]
    assert str(parsed["PID.F11.R1.C3"]) == patient["address"][0]["city"]
    assert str(parsed["PID.F13"]) == patient["telecom"][0]["value"]


def test_inpatient_admission_is_a01_with_class_i(bundle: dict[str, list[dict[str, Any]]]) -> None:
    patient = bundle["Patient"][0]
    encounter = inpatient_encounter("eEnc1", patient["id"], NOW, "123456789", "EMH ICU Room 101 Bed A")
    message_type, parsed = _build(encounter, "create", patient, encounter=encounter)
    assert message_type == "ADT^A01"
    assert str(parsed["PV1.F2"]) == "I"
    assert str(parsed["PV1.F19"]) == "123456789"
    assert str(parsed["EVN.F1"]) == "A01"


def test_observation_values_and_corrected_status(bundle: dict[str, list[dict[str, Any]]]) -> None:
    patient = bundle["Patient"][0]
    panel = next(o for o in bundle["Observation"] if "component" in o)  # a blood-pressure panel
    _, parsed = _build(panel, "create", patient)
    assert [str(obx[3][0][0]) for obx in parsed.segments("OBX")] == ["8480-6", "8462-4"]
    assert str(parsed["OBR.F25"]) == "F"
    lab = next(o for o in bundle["Observation"] if o["category"][0]["coding"][0]["code"] == "laboratory")
    _, parsed = _build(dict(lab, status="corrected"), "update", patient)
    assert str(parsed["OBX.F5"]) == str(lab["valueQuantity"]["value"])
    assert str(parsed["OBX.F11"]) == "C"


def test_note_text_and_appointment_status(bundle: dict[str, list[dict[str, Any]]]) -> None:
    patient = bundle["Patient"][0]
    _, parsed = _build(bundle["DocumentReference"][0], "create", patient)
    assert "Progress note for" in str(parsed["OBX.F5"])  # the accessor unescapes
    assert str(parsed["TXA.F2"]) == "PN"
    appointment = dict(bundle["Appointment"][0], status="fulfilled")
    _, parsed = _build(appointment, "update", patient)
    assert str(parsed["SCH.F25"]) == "Complete"


def test_delimiters_in_text_are_escaped_and_survive_parsing(bundle: dict[str, list[dict[str, Any]]]) -> None:
    patient = copy.deepcopy(bundle["Patient"][0])
    patient["name"][0]["family"] = "O|Brien^&~\\Jr"
    _, parsed = _build(patient, "update", patient)
    assert len(parsed.segments("PID")) == 1
    assert str(parsed["PID.F5.R1.C1"]) == "O|Brien^&~\\Jr"
    assert escape("line one\nline two") == "line one\\.br\\line two"


def test_no_message_for_a_patient_without_mrn(bundle: dict[str, list[dict[str, Any]]]) -> None:
    patient = {k: v for k, v in bundle["Patient"][0].items() if k != "identifier"}
    assert build_message(patient, "update", patient=patient, encounter=None, control_id="C2", now=NOW) is None


def test_times_are_utc_and_odd_stored_data_still_makes_a_message(
    bundle: dict[str, list[dict[str, Any]]],
) -> None:
    assert fhir_ts("2026-06-01T08:15:00-04:00") == "20260601121500+0000"
    assert fhir_ts("2026-06-01T12:15:00Z") == "20260601121500+0000"
    assert fhir_ts("1973-06-03") == "19730603"
    patient = copy.deepcopy(bundle["Patient"][0])
    patient["name"][0]["family"] = "Lone\ud800Surrogate"
    note = dict(bundle["DocumentReference"][0], content=[{"attachment": {"data": "not base64!"}}])
    _, parsed = _build(note, "update", patient)
    assert str(parsed["PID.F5.R1.C1"]) == "Lone?Surrogate"
    assert str(parsed["OBX.F5"]) == ""
