"""From a command's typed `fields` (schemas/*_command.avsc) to the FHIR R4 resource to create.

Each builder checks what the resource cannot do without and raises `Invalid` with a plain reason, so
the command is REJECTED before any request. `resource_json` commands skip the builders (the sender
wrote FHIR already) but go through the same Epic-specific checks in `check_for_server`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

LOINC = "http://loinc.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
UCUM = "http://unitsofmeasure.org"
DOCUMENT_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"


class Invalid(ValueError):
    """The command cannot be turned into a resource the server would accept."""


def instant(value: Any, what: str) -> str:
    """A FHIR instant (UTC, `Z`) from the datetime the Avro decoder gives for timestamp-millis."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        moment = moment.astimezone(dt.UTC)
        if moment.microsecond:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, int):  # epoch milliseconds
        return instant(dt.datetime.fromtimestamp(value / 1000, dt.UTC), what)
    raise Invalid(f"{what} must be a timestamp")


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    value = value.strip()
    return value or None


def _required(fields: Mapping[str, Any], name: str, why: str) -> str:
    value = _text(fields, name)
    if value is None:
        raise Invalid(f"fields.{name} is required: {why}")
    return value


def _coding(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise Invalid(f"{what} must be a Coding")
    coding = {
        k: value[k] for k in ("system", "code", "display") if isinstance(value.get(k), str) and value[k]
    }
    if "code" not in coding and "display" not in coding:
        raise Invalid(f"{what} needs a code or a display")
    return coding


def _concept(value: Any, what: str) -> dict[str, Any] | None:
    coding = _coding(value, what)
    if coding is None:
        return None
    concept: dict[str, Any] = {"coding": [coding]} if "code" in coding else {}
    if "display" in coding:
        concept["text"] = coding["display"]
    return concept


def _reference(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _quantity(value: Any, unit: Any, what: str) -> dict[str, Any]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{what} must be a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise Invalid(f"{what} must be a finite number")
    quantity: dict[str, Any] = {"value": value}
    if isinstance(unit, str) and unit:
        quantity.update(unit=unit, system=UCUM, code=unit)
    return quantity


# -- one builder per resource type -------------------------------------------------------------------
def build_patient(fields: Mapping[str, Any]) -> dict[str, Any]:
    family = _required(fields, "family_name", "Epic registers a patient only with a name")
    given = [g.strip() for g in fields.get("given_names") or [] if isinstance(g, str) and g.strip()]
    resource: dict[str, Any] = {"resourceType": "Patient", "name": [{"use": "official", "family": family}]}
    if given:
        resource["name"][0]["given"] = given
    identifiers = []
    for ident in fields.get("identifiers") or []:
        if not isinstance(ident, Mapping) or not _text(ident, "value"):
            raise Invalid("each of fields.identifiers needs a value")
        identifiers.append({k: ident[k] for k in ("use", "system", "value") if ident.get(k)})
    if identifiers:
        resource["identifier"] = identifiers
    gender = _text(fields, "gender")
    if gender is not None:
        if gender not in ("male", "female", "other", "unknown"):
            raise Invalid("fields.gender must be male, female, other or unknown")
        resource["gender"] = gender
    birth = fields.get("birth_date")
    if birth is not None:
        if not isinstance(birth, dt.date):
            raise Invalid("fields.birth_date must be a date")
        resource["birthDate"] = birth.isoformat()
    telecom = []
    if (phone := _text(fields, "phone")) is not None:
        telecom.append({"system": "phone", "value": phone})
    if (email := _text(fields, "email")) is not None:
        telecom.append({"system": "email", "value": email})
    if telecom:
        resource["telecom"] = telecom
    lines = [line for line in fields.get("address_lines") or [] if isinstance(line, str) and line.strip()]
    address: dict[str, Any] = {"line": lines} if lines else {}
    for name, key in (
        ("city", "city"),
        ("state", "state"),
        ("postal_code", "postalCode"),
        ("country", "country"),
    ):
        if (value := _text(fields, name)) is not None:
            address[key] = value
    if address:
        resource["address"] = [address]
    return resource


def build_appointment(fields: Mapping[str, Any]) -> dict[str, Any]:
    patient = _required(fields, "patient_id", "an appointment is booked for a patient")
    if fields.get("start") is None:
        raise Invalid("fields.start is required: the desired start of the appointment")
    start = instant(fields["start"], "fields.start")
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": _text(fields, "status") or "booked",
        "start": start,
        "participant": [{"actor": _reference("Patient", patient), "status": "accepted"}],
    }
    if fields.get("end") is not None:
        end = instant(fields["end"], "fields.end")
        if end <= start:
            raise Invalid("fields.end must be after fields.start")
        resource["end"] = end
    services = [_concept(s, "fields.service_types[]") for s in fields.get("service_types") or []]
    if services:
        resource["serviceType"] = [s for s in services if s]
    if (note := _text(fields, "note")) is not None:
        resource["comment"] = note
    return resource


def build_encounter(fields: Mapping[str, Any]) -> dict[str, Any]:
    patient = _required(fields, "patient_id", "an encounter belongs to a patient")
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": _text(fields, "status") or "finished",
        "class": {"system": ENCOUNTER_CLASS, "code": _text(fields, "class_code") or "AMB"},
        "subject": _reference("Patient", patient),
    }
    types = [_concept(t, "fields.types[]") for t in fields.get("types") or []]
    if types:
        resource["type"] = [t for t in types if t]
    period: dict[str, str] = {}
    if fields.get("period_start") is not None:
        period["start"] = instant(fields["period_start"], "fields.period_start")
    if fields.get("period_end") is not None:
        period["end"] = instant(fields["period_end"], "fields.period_end")
    if period:
        resource["period"] = period
    return resource


def build_observation(fields: Mapping[str, Any]) -> dict[str, Any]:
    patient = _required(fields, "patient_id", "an observation is about a patient")
    code = _concept(fields.get("code"), "fields.code")
    if code is None:
        raise Invalid("fields.code is required: what was measured (e.g. LOINC 85354-9)")
    category = _text(fields, "category") or "vital-signs"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": _text(fields, "status") or "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}],
        "code": code,
        "subject": _reference("Patient", patient),
        "effectiveDateTime": instant(fields["effective_at"], "fields.effective_at")
        if fields.get("effective_at") is not None
        else instant(dt.datetime.now(dt.UTC).replace(microsecond=0), "now"),
    }
    if (encounter := _text(fields, "encounter_id")) is not None:
        resource["encounter"] = _reference("Encounter", encounter)
    if fields.get("value_quantity") is not None:
        resource["valueQuantity"] = _quantity(fields["value_quantity"], fields.get("value_unit"), "value")
    components = []
    for index, comp in enumerate(fields.get("components") or []):
        what = f"fields.components[{index}]"
        if not isinstance(comp, Mapping):
            raise Invalid(f"{what} must be a record")
        comp_code = _concept(comp.get("code"), f"{what}.code")
        if comp_code is None or comp.get("value_quantity") is None:
            raise Invalid(f"{what} needs a code and a value_quantity")
        components.append(
            {
                "code": comp_code,
                "valueQuantity": _quantity(comp["value_quantity"], comp.get("value_unit"), what),
            }
        )
    if components:
        resource["component"] = components
    if "valueQuantity" not in resource and not components:
        raise Invalid("fields.value_quantity or fields.components is required: the measured value")
    return resource


def build_document_reference(fields: Mapping[str, Any]) -> dict[str, Any]:
    patient = _required(fields, "patient_id", "a note is about a patient")
    text = fields.get("note_text")
    if not isinstance(text, str) or not text.strip():
        raise Invalid("fields.note_text is required: the text of the note")
    doc_type = _concept(fields.get("type"), "fields.type") or {
        "coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]
    }
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": _text(fields, "status") or "current",
        "docStatus": _text(fields, "doc_status") or "final",
        "type": doc_type,
        "category": [{"coding": [{"system": DOCUMENT_CATEGORY, "code": "clinical-note"}]}],
        "subject": _reference("Patient", patient),
        "date": instant(fields["date"], "fields.date")
        if fields.get("date") is not None
        else instant(dt.datetime.now(dt.UTC).replace(microsecond=0), "now"),
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(text.encode()).decode("ascii"),
                }
            }
        ],
    }
    if (encounter := _text(fields, "encounter_id")) is not None:
        resource["context"] = {"encounter": [_reference("Encounter", encounter)]}
    return resource


BUILDERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "Patient": build_patient,
    "Appointment": build_appointment,
    "Encounter": build_encounter,
    "Observation": build_observation,
    "DocumentReference": build_document_reference,
}


def build(resource_type: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    builder = BUILDERS.get(resource_type)
    if builder is None:
        raise Invalid(f"no builder for {resource_type}")
    return builder(fields)


# -- what the resource points at -----------------------------------------------------------------
def referenced_id(value: Any, rtype: str) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
        ref: str = value["reference"]
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == rtype and parts[-1]:
            return parts[-1]
    return None


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to (the resource's own id for a Patient)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    if rtype == "Appointment":
        for participant in resource.get("participant") or []:
            if isinstance(participant, Mapping):
                found = referenced_id(participant.get("actor"), "Patient")
                if found:
                    return found
        return None
    return referenced_id(resource.get("subject"), "Patient") or referenced_id(
        resource.get("patient"), "Patient"
    )


def encounter_of_document(resource: Mapping[str, Any]) -> str | None:
    context = resource.get("context")
    return referenced_id(context.get("encounter"), "Encounter") if isinstance(context, Mapping) else None


def check_for_server(resource: Mapping[str, Any], *, epic: bool) -> None:
    """What Epic refuses with a bare 400 is refused here first, with the reason (no request made)."""
    rtype = resource.get("resourceType")
    if epic and rtype == "DocumentReference" and encounter_of_document(resource) is None:
        raise Invalid(
            "Epic requires DocumentReference.context.encounter (fields.encounter_id): "
            "a clinical note must belong to an encounter"
        )
    if rtype in ("Observation", "DocumentReference", "Encounter") and patient_of(resource) is None:
        raise Invalid(f"{rtype}.subject must reference the Patient (Patient/<id>)")
    if rtype == "Appointment" and patient_of(resource) is None:
        raise Invalid("Appointment.participant must include the Patient (actor Patient/<id>)")
