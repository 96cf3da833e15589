"""Deterministic clinical data generator: N patients with appointments, encounters, vitals, labs, notes."""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from epic_sim.store import Store

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
CSN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.3.698084.8"
APPT_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.3.698084.8"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
UCUM = "http://unitsofmeasure.org"

# (name, FHIR id, MRN, birth date, gender) from Epic's public sandbox.
SANDBOX_PATIENTS = (
    (("Lin", ["Derrick"]), "eq081-VQEgP8drUUqCWzHfw3", "203711", "1973-06-03", "male"),
    (("Lopez", ["Camila", "Maria"]), "erXuFYUfucBZaryVksYEcMg3", "203713", "1987-09-12", "female"),
    (("Argonaut", ["Jason"]), "eD.LxhDyX35TntF77l7etUA3", None, "1985-08-01", "male"),
    (("Argonaut", ["Jessica"]), "evYS76EX6LLeCX2PlRLhvwg3", None, "1983-02-14", "female"),
)

_FAMILIES = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Nguyen",
)
_MALE = ("James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Daniel")
_FEMALE = (
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
)
_CITIES = (("Madison", "WI", "53703"), ("Verona", "WI", "53593"), ("Middleton", "WI", "53562"))
_ID_CHARS = string.ascii_letters + string.digits + ".-"

VITALS = (
    ("8867-4", "Heart rate", "/min", 55, 100),
    ("29463-7", "Body weight", "kg", 50, 110),
    ("8310-5", "Body temperature", "Cel", 36.1, 37.8),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 93, 100),
)
LABS = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 160),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 8.5),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.4),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.4, 5.2),
)


# Fixed ids so demo configs can name the rosters; every patient created later joins ROSTER_GROUP_ID.
ROSTER_GROUP_ID = "all-patients"
SANDBOX_GROUP_ID = "sandbox-test-patients"


def epic_id(rng: random.Random) -> str:
    return "e" + "".join(rng.choices(_ID_CHARS, k=22)) + "3"


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref(rtype: str, rid: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"{rtype}/{rid}"}
    if display:
        ref["display"] = display
    return ref


def _category(system: str, code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": system, "code": code, "display": display}], "text": display}]


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def patient_resource(
    rng: random.Random, pid: str, family: str, given: list[str], birth: str, gender: str, mrn: str | None
) -> dict[str, Any]:
    city, state, postal = rng.choice(_CITIES)
    identifiers = (
        [{"use": "usual", "type": {"text": "EPI"}, "system": MRN_SYSTEM, "value": mrn}] if mrn else []
    )
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if identifiers:
        patient["identifier"] = identifiers
    return patient | {
        "active": True,
        "name": [
            {"use": "official", "text": f"{' '.join(given)} {family}", "family": family, "given": given}
        ],
        "telecom": [
            {"system": "phone", "value": f"608-555-{rng.randint(1000, 9999)}", "use": "home"},
            {
                "system": "email",
                "value": f"{given[0].lower()}.{family.lower()}{rng.randint(1, 999)}@example.com",
            },
        ],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randint(1, 9999)} Main St"],
                "city": city,
                "state": state,
                "postalCode": postal,
                "country": "US",
            }
        ],
    }


def vital_observation(
    rng: random.Random, oid: str, pid: str, eid: str | None, when: str, kind: int
) -> dict[str, Any]:
    """kind 0 is a blood-pressure panel; 1.. are the single-value VITALS."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": _category(OBS_CATEGORY, "vital-signs", "Vital Signs"),
        "subject": _ref("Patient", pid),
        "effectiveDateTime": when,
        "issued": when,
    }
    if eid:
        obs["encounter"] = _ref("Encounter", eid)
    if kind == 0:
        obs["code"] = {
            "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood Pressure",
        }
        obs["component"] = [
            {
                "code": {
                    "coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]
                },
                "valueQuantity": _quantity(rng.randint(100, 160), "mm[Hg]"),
            },
            {
                "code": {
                    "coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]
                },
                "valueQuantity": _quantity(rng.randint(60, 100), "mm[Hg]"),
            },
        ]
        return obs
    code, display, unit, low, high = VITALS[(kind - 1) % len(VITALS)]
    obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}
    obs["valueQuantity"] = _quantity(round(rng.uniform(low, high), 1), unit)
    return obs


def lab_observation(
    rng: random.Random, oid: str, pid: str, eid: str | None, when: str, kind: int
) -> dict[str, Any]:
    code, display, unit, low, high = LABS[kind % len(LABS)]
    value = round(rng.uniform(low, high), 1)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": _category(OBS_CATEGORY, "laboratory", "Laboratory"),
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": _ref("Patient", pid),
        "effectiveDateTime": when,
        "issued": when,
        "valueQuantity": _quantity(value, unit),
        "interpretation": [{"text": "High" if value > high * 0.9 else "Normal"}],
    }
    if eid:
        obs["encounter"] = _ref("Encounter", eid)
    return obs


def encounter_resource(rng: random.Random, eid: str, pid: str, start: datetime, csn: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "identifier": [{"use": "usual", "system": CSN_SYSTEM, "value": csn}],
        "status": "finished",
        "class": {
            "system": "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260",
            "code": "13",
            "display": "Support OP Encounter",
        },
        "type": [
            {
                "coding": [
                    {
                        "system": "urn:oid:1.2.840.114350.1.13.0.1.7.10.698084.30",
                        "code": "101",
                        "display": "Office Visit",
                    }
                ],
                "text": "Office Visit",
            }
        ],
        "subject": _ref("Patient", pid),
        "period": {"start": _instant(start), "end": _instant(start + timedelta(minutes=30))},
        "location": [{"location": {"display": "EMH Family Medicine"}}],
    }


def appointment_resource(aid: str, pid: str, start: datetime, status: str, number: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "identifier": [{"use": "usual", "system": APPT_SYSTEM, "value": number}],
        "status": status,
        "serviceType": [
            {
                "coding": [
                    {
                        "system": "urn:oid:1.2.840.114350.1.13.0.1.7.10.698084.30",
                        "code": "101",
                        "display": "Office Visit",
                    }
                ],
                "text": "Office Visit",
            }
        ],
        "start": _instant(start),
        "end": _instant(start + timedelta(minutes=30)),
        "minutesDuration": 30,
        "participant": [
            {"actor": _ref("Patient", pid), "required": "required", "status": "accepted"},
            {
                "actor": {"display": "Physician Family Medicine, MD"},
                "required": "required",
                "status": "accepted",
            },
            {"actor": {"display": "EMH Family Medicine"}, "required": "required", "status": "accepted"},
        ],
    }


def note_resource(oid: str, pid: str, eid: str, when: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": oid,
        "status": "current",
        "docStatus": "final",
        "type": {
            "coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}],
            "text": "Progress Notes",
        },
        "category": _category(DOC_CATEGORY, "clinical-note", "Clinical Note"),
        "subject": _ref("Patient", pid),
        "date": when,
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}
        ],
        "context": {"encounter": [_ref("Encounter", eid)], "period": {"start": when}},
    }


def patient_bundle(seed: int, index: int, anchor: datetime) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"{seed}:patient:{index}")
    if index < len(SANDBOX_PATIENTS):
        (family, given), pid, mrn, birth, gender = SANDBOX_PATIENTS[index]
    else:
        pid = epic_id(rng)
        gender = rng.choice(("male", "female"))
        family = rng.choice(_FAMILIES)
        given = [rng.choice(_MALE if gender == "male" else _FEMALE)]
        birth = (datetime(1940, 1, 1) + timedelta(days=rng.randint(0, 365 * 65))).strftime("%Y-%m-%d")
        mrn = str(300000 + index)
    yield patient_resource(rng, pid, family, list(given), birth, gender, mrn)

    for visit in range(4):
        start = (anchor - timedelta(days=rng.randint(1, 720))).replace(hour=rng.randint(8, 16), minute=0)
        eid = epic_id(rng)
        csn = str(1_000_000 + index * 10 + visit)
        yield encounter_resource(rng, eid, pid, start, csn)
        status = "fulfilled" if visit < 2 else "booked"
        appt_start = (
            start if visit < 2 else anchor + timedelta(days=rng.randint(1, 90), hours=rng.randint(8, 16))
        )
        yield appointment_resource(epic_id(rng), pid, appt_start, status, str(2_000_000 + index * 10 + visit))
        when = _instant(start + timedelta(minutes=10))
        for kind in range(5):
            yield vital_observation(rng, epic_id(rng), pid, eid, when, kind)
        if visit < 2:
            lab_time = _instant(start + timedelta(hours=2))
            for kind in range(len(LABS)):
                yield lab_observation(rng, epic_id(rng), pid, eid, lab_time, kind)
        note = (
            f"Progress note for {' '.join(given)} {family}.\nSeen for routine follow-up (visit {visit + 1}). "
            "Vitals reviewed. Continue current plan."
        )
        yield note_resource(epic_id(rng), pid, eid, _instant(start + timedelta(minutes=40)), note)
    smoking = {
        "resourceType": "Observation",
        "id": epic_id(rng),
        "status": "final",
        "category": _category(OBS_CATEGORY, "social-history", "Social History"),
        "code": {"coding": [{"system": LOINC, "code": "72166-2", "display": "Tobacco smoking status"}]},
        "subject": _ref("Patient", pid),
        "effectiveDateTime": _instant(anchor - timedelta(days=30)),
        "valueCodeableConcept": {
            "text": rng.choice(("Never smoker", "Former smoker", "Current every day smoker"))
        },
    }
    yield smoking


RESOURCES_PER_PATIENT = 1 + 4 * (1 + 1 + 5 + 1) + 2 * len(LABS) + 1


def anchor_datetime(anchor_date: str) -> datetime:
    return datetime.fromisoformat(anchor_date).replace(tzinfo=UTC, hour=12)


def group_resource(gid: str, name: str, members: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": gid,
        "type": "person",
        "actual": True,
        "name": name,
        "quantity": len(members),
        "member": [{"entity": _ref("Patient", m)} for m in members],
    }


def seed_store(store: Store, *, patients: int, seed: int, anchor_date: str) -> int:
    """Fill an empty store; returns the number of resources written."""
    anchor = anchor_datetime(anchor_date)
    patient_ids: list[str] = []

    def everything() -> Iterator[dict[str, Any]]:
        for index in range(patients):
            for resource in patient_bundle(seed, index, anchor):
                if resource["resourceType"] == "Patient":
                    patient_ids.append(resource["id"])
                yield resource

    written = store.bulk_load(everything())
    groups = [group_resource(ROSTER_GROUP_ID, "All patients", patient_ids)]
    sandbox = patient_ids[: min(len(SANDBOX_PATIENTS), len(patient_ids))]
    groups.append(group_resource(SANDBOX_GROUP_ID, "Sandbox test patients", sandbox))
    written += store.bulk_load(groups)
    store.create_indexes()
    store.set_meta("seed", f"patients={patients} seed={seed} anchor={anchor_date}")
    store.set_meta("roster_group", groups[0]["id"])
    store.set_meta("sandbox_group", groups[1]["id"])
    return written
