"""Creates as Epic accepts them, and the STU3 scheduling operations."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sim_support import Fhir, matches

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
LOINC = "http://loinc.org"
MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"


def _bp_panel(patient: str, encounter: str | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
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
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-11-20T09:30:00Z",
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 128,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {
                    "value": 82,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
    }
    if encounter:
        obs["encounter"] = {"reference": f"Encounter/{encounter}"}
    return obs


def _note(patient: str, encounter: str | None, text: str = "Patient doing well.") -> dict[str, Any]:
    note: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": "11506-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}
        ],
        "context": {},
    }
    if encounter:
        note["context"]["encounter"] = [{"reference": f"Encounter/{encounter}"}]
    return note


def test_patient_create_returns_201_empty_body_and_location(fhir: Fhir) -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Nguyen", "given": ["Anh"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
        "telecom": [{"system": "phone", "value": "608-555-0101"}],
        "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "999001"}],
        "address": [{"city": "Madison", "state": "WI"}],
    }
    response = fhir.post("Patient", json=patient)
    assert response.status_code == 201
    assert response.content == b""
    location = response.headers["location"]
    assert location.startswith(f"{fhir.server.fhir_base}Patient/")
    new_id = location.rsplit("/", 1)[1]
    assert all(c.isalnum() or c in ".-" for c in new_id)
    read = fhir.get(location).json()
    assert read["id"] == new_id and read["name"][0]["family"] == "Nguyen"
    found = fhir.search("Patient", identifier="urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14|999001")
    assert [p["id"] for p in matches(found)] == [new_id]


def test_patient_create_needs_a_name(fhir: Fhir) -> None:
    response = fhir.post("Patient", json={"resourceType": "Patient", "gender": "male"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_blood_pressure_observation_create(fhir: Fhir) -> None:
    encounter = matches(fhir.search("Encounter", patient=DERRICK))[0]["id"]
    response = fhir.post("Observation", json=_bp_panel(DERRICK, encounter))
    assert response.status_code == 201 and response.content == b""
    created = fhir.get(response.headers["location"]).json()
    assert [c["valueQuantity"]["value"] for c in created["component"]] == [128, 82]
    panels = matches(fhir.search("Observation", patient=DERRICK, code="85354-9"))
    assert created["id"] in {o["id"] for o in panels}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.update(subject={"reference": "Patient/eNobody3"}), "Valid patient required"),
        (lambda o: o.pop("subject"), "Valid patient required"),
        (lambda o: o.update(component=o["component"][:1]), "8462-4"),
        (lambda o: o["category"][0]["coding"][0].update(code="laboratory"), "vital-signs"),
        (lambda o: o.update(encounter={"reference": "Encounter/eNope3"}), "Valid encounter required"),
    ],
)
def test_observation_create_is_validated(fhir: Fhir, mutate: Any, message: str) -> None:
    obs = _bp_panel(DERRICK)
    mutate(obs)
    response = fhir.post("Observation", json=obs)
    assert response.status_code == 400
    assert message in response.text


def test_document_reference_requires_an_encounter(fhir: Fhir) -> None:
    response = fhir.post("DocumentReference", json=_note(DERRICK, None))
    assert response.status_code == 400
    assert response.json()["issue"][0]["details"]["text"] == "Valid encounter required"
    assert fhir.post("DocumentReference", json=_note(DERRICK, "eNoSuchEncounter3")).status_code == 400


def test_document_reference_create(fhir: Fhir) -> None:
    encounter = matches(fhir.search("Encounter", patient=DERRICK))[0]["id"]
    response = fhir.post("DocumentReference", json=_note(DERRICK, encounter, "Follow up in 2 weeks."))
    assert response.status_code == 201
    created = fhir.get(response.headers["location"]).json()
    data = created["content"][0]["attachment"]["data"]
    assert base64.b64decode(data).decode() == "Follow up in 2 weeks."
    assert created["id"] in {d["id"] for d in matches(fhir.search("DocumentReference", patient=DERRICK))}
    bad = _note(DERRICK, encounter)
    bad["content"][0]["attachment"]["data"] = "not base64!!"
    assert fhir.post("DocumentReference", json=bad).status_code == 400


@pytest.mark.parametrize("rtype", ["Encounter", "Appointment"])
def test_no_r4_create_for_encounter_and_appointment(fhir: Fhir, rtype: str) -> None:
    response = fhir.post(rtype, json={"resourceType": rtype, "status": "booked"})
    assert response.status_code == 405
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-supported"
    if rtype == "Appointment":
        assert "$find" in outcome["issue"][0]["details"]["text"]


def _parameters(**values: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": k, **v} for k, v in values.items()]}


def test_stu3_find_and_book(fhir: Fhir) -> None:
    stu3 = fhir.server.stu3_base
    before = {a["id"] for a in matches(fhir.search("Appointment", patient=DERRICK))}
    find = fhir.post(
        f"{stu3}Appointment/$find",
        json=_parameters(
            patient={"valueReference": {"reference": f"Patient/{DERRICK}"}},
            startTime={"valueDateTime": "2026-12-01T08:00:00Z"},
            endTime={"valueDateTime": "2026-12-01T12:00:00Z"},
            serviceType={"valueCodeableConcept": {"text": "Office Visit"}},
        ),
    )
    assert find.status_code == 200, find.text
    proposals = matches(find.json())
    assert len(proposals) == 8
    assert all(p["status"] == "proposed" and p["id"] for p in proposals)
    chosen = proposals[2]
    book = fhir.post(
        f"{stu3}Appointment/$book",
        json=_parameters(
            patient={"valueReference": {"reference": f"Patient/{DERRICK}"}},
            appointment={"valueReference": {"reference": f"Appointment/{chosen['id']}"}},
            appointmentNote={"valueString": "Annual physical"},
        ),
    )
    assert book.status_code == 200, book.text
    booked = book.json()
    assert (
        booked["status"] == "booked"
        and booked["id"] == chosen["id"]
        and booked["comment"] == "Annual physical"
    )
    after = {a["id"]: a for a in matches(fhir.search("Appointment", patient=DERRICK))}
    assert set(after) - before == {chosen["id"]}
    assert after[chosen["id"]]["start"] == chosen["start"]
    again = fhir.post(
        f"{stu3}Appointment/$book",
        json=_parameters(
            patient={"valueReference": {"reference": f"Patient/{DERRICK}"}},
            appointment={"valueString": chosen["id"]},
        ),
    )
    assert again.status_code == 404
    # The booked slot is no longer proposed.
    refind = fhir.post(
        f"{stu3}Appointment/$find",
        json=_parameters(
            patient={"valueString": DERRICK},
            startTime={"valueDateTime": "2026-12-01T08:00:00Z"},
            endTime={"valueDateTime": "2026-12-01T12:00:00Z"},
        ),
    )
    assert chosen["start"] not in {p["start"] for p in matches(refind.json())}


def test_stu3_find_validates_input(fhir: Fhir) -> None:
    stu3 = fhir.server.stu3_base
    no_patient = fhir.post(
        f"{stu3}Appointment/$find",
        json=_parameters(
            startTime={"valueDateTime": "2026-12-01T08:00:00Z"},
            endTime={"valueDateTime": "2026-12-01T12:00:00Z"},
        ),
    )
    assert no_patient.status_code == 400
    backwards = fhir.post(
        f"{stu3}Appointment/$find",
        json=_parameters(
            patient={"valueString": DERRICK},
            startTime={"valueDateTime": "2026-12-01T12:00:00Z"},
            endTime={"valueDateTime": "2026-12-01T08:00:00Z"},
        ),
    )
    assert backwards.status_code == 400


def test_created_patient_gets_an_mrn_when_none_is_sent(fhir: Fhir) -> None:
    response = fhir.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Okafor"}]})
    created = fhir.get(response.headers["location"]).json()
    mrn = next(i["value"] for i in created["identifier"] if i["system"] == MRN)
    found = fhir.search("Patient", identifier=f"{MRN}|{mrn}")
    assert [p["id"] for p in matches(found)] == [created["id"]]
