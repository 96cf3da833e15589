"""Typed projections of FHIR resources: the fields downstream teams filter and join on.

Each function returns a dict shaped like the projection record of that resource's event schema
(schemas/<resource>_event.avsc) and never raises on odd input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bridge.source.fhir_values import (
    boolean,
    codings,
    first_coding,
    identifiers,
    instant,
    integer,
    items,
    mapping,
    number,
    reference_id,
    text,
)
from bridge.source.fhir_values import date as fhir_date

Projection = dict[str, Any]


def patient(resource: Mapping[str, Any]) -> Projection:
    names = [mapping(n) for n in items(resource.get("name"))]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    deceased: bool | None = boolean(resource.get("deceasedBoolean"))
    if deceased is None and text(resource.get("deceasedDateTime")):
        deceased = True
    return {
        "identifiers": identifiers(resource.get("identifier")),
        "family_name": text(name.get("family")),
        "given_names": [g for g in items(name.get("given")) if isinstance(g, str)],
        "birth_date": fhir_date(resource.get("birthDate")),
        "gender": text(resource.get("gender")),
        "active": boolean(resource.get("active")),
        "deceased": deceased,
    }


def appointment(resource: Mapping[str, Any]) -> Projection:
    participants = []
    for p in (mapping(x) for x in items(resource.get("participant"))):
        actor = mapping(p.get("actor"))
        participants.append(
            {
                "actor_reference": text(actor.get("reference")),
                "actor_display": text(actor.get("display")),
                "status": text(p.get("status")),
            }
        )
    return {
        "identifiers": identifiers(resource.get("identifier")),
        "status": text(resource.get("status")),
        "start": instant(resource.get("start")),
        "end": instant(resource.get("end")),
        "minutes_duration": integer(resource.get("minutesDuration")),
        "service_types": [c for st in items(resource.get("serviceType")) for c in codings(st)],
        "description": text(resource.get("description")),
        "participants": participants,
    }


def encounter(resource: Mapping[str, Any]) -> Projection:
    period = mapping(resource.get("period"))
    return {
        "identifiers": identifiers(resource.get("identifier")),
        "status": text(resource.get("status")),
        "class_code": text(mapping(resource.get("class")).get("code")),
        "types": [c for t in items(resource.get("type")) for c in codings(t)],
        "period_start": instant(period.get("start")),
        "period_end": instant(period.get("end")),
        "location_names": [
            name
            for loc in items(resource.get("location"))
            if (name := text(mapping(mapping(loc).get("location")).get("display")))
        ],
        "service_provider": text(mapping(resource.get("serviceProvider")).get("reference")),
    }


def _value(holder: Mapping[str, Any]) -> tuple[float | None, str | None, str | None]:
    quantity = mapping(holder.get("valueQuantity"))
    unit = text(quantity.get("code")) or text(quantity.get("unit"))
    as_text = text(holder.get("valueString")) or text(mapping(holder.get("valueCodeableConcept")).get("text"))
    if as_text is None and (c := first_coding(holder.get("valueCodeableConcept"))) is not None:
        as_text = c["display"] or c["code"]
    return number(quantity.get("value")), unit if quantity else None, as_text


def observation(resource: Mapping[str, Any]) -> Projection:
    value, unit, as_text = _value(resource)
    components = []
    for comp in (mapping(c) for c in items(resource.get("component"))):
        c_value, c_unit, _ = _value(comp)
        components.append(
            {"code": first_coding(comp.get("code")), "value_quantity": c_value, "value_unit": c_unit}
        )
    effective = resource.get("effectiveDateTime") or mapping(resource.get("effectivePeriod")).get("start")
    return {
        "status": text(resource.get("status")),
        "categories": [c for cat in items(resource.get("category")) for c in codings(cat)],
        "code": first_coding(resource.get("code")),
        "value_quantity": value,
        "value_unit": unit,
        "value_string": as_text,
        "components": components,
        "effective_at": instant(effective),
        "issued": instant(resource.get("issued")),
        "encounter_id": reference_id(resource.get("encounter"), "Encounter"),
    }


def document_reference(resource: Mapping[str, Any]) -> Projection:
    context = mapping(resource.get("context"))
    encounters = [e for e in (reference_id(x, "Encounter") for x in items(context.get("encounter"))) if e]
    return {
        "status": text(resource.get("status")),
        "doc_status": text(resource.get("docStatus")),
        "type": first_coding(resource.get("type")),
        "categories": [c for cat in items(resource.get("category")) for c in codings(cat)],
        "date": instant(resource.get("date")),
        "encounter_id": encounters[0] if encounters else None,
        "author_references": [
            r for a in items(resource.get("author")) if (r := text(mapping(a).get("reference")))
        ],
        "content_types": [
            t
            for c in items(resource.get("content"))
            if (t := text(mapping(mapping(c).get("attachment")).get("contentType")))
        ],
    }


PROJECTIONS: Mapping[str, Callable[[Mapping[str, Any]], Projection]] = {
    "Patient": patient,
    "Appointment": appointment,
    "Encounter": encounter,
    "Observation": observation,
    "DocumentReference": document_reference,
}


def patient_id_of(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to (a Patient belongs to itself)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return text(resource.get("id"))
    for field in ("subject", "patient"):
        if (found := reference_id(resource.get(field), "Patient")) is not None:
            return found
    if rtype == "Appointment":
        for p in items(resource.get("participant")):
            if (found := reference_id(mapping(p).get("actor"), "Patient")) is not None:
                return found
    return None
