"""Finding a resource an earlier attempt of the same command may have created.

Every resource the sink creates carries an identifier naming the command (the *marker*, system
`urn:epic-kafka-bridge:command`, value `<connection>/<command id>`). Before a create is tried again
after an interruption, the resource is searched for:
* by the marker itself where the server searches `identifier` on that type (Patient; Encounter and
  Appointment with their patient);
* otherwise by what the server does search (patient, code or category, a date window around the
  resource's own date), keeping only results that carry the marker.
If neither is possible the sink does not create again: a duplicate in a medical record is worse
than a FAILED result that asks a person to look.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from bridge.fhir.capabilities import Capabilities
from bridge.sink.builders import patient_of

MARKER_SYSTEM = "urn:epic-kafka-bridge:command"
# Characters with no meaning in a FHIR token search (`,` means OR, `|` splits system and value, `\` escapes).
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def marker_value(connection: str, command_id: str) -> str:
    """`<connection>/<command id>`; a command id with other characters is hashed, so that a search for the
    marker can never be read as two values or a different one."""
    if _PLAIN_ID.fullmatch(command_id):
        return f"{connection}/{command_id}"
    return f"{connection}/sha256-{hashlib.sha256(command_id.encode()).hexdigest()[:48]}"


def with_marker(resource: dict[str, Any], value: str) -> dict[str, Any]:
    """A copy of `resource` that carries the marker identifier (once)."""
    marked = dict(resource)
    identifiers = [i for i in marked.get("identifier") or [] if isinstance(i, dict)]
    if not any(i.get("system") == MARKER_SYSTEM for i in identifiers):
        identifiers.append({"use": "secondary", "system": MARKER_SYSTEM, "value": value})
    marked["identifier"] = identifiers
    return marked


def carries_marker(resource: Mapping[str, Any], value: str) -> bool:
    return any(
        isinstance(i, Mapping) and i.get("system") == MARKER_SYSTEM and i.get("value") == value
        for i in resource.get("identifier") or []
    )


def _first_code(concepts: Any) -> tuple[str | None, str | None]:
    if isinstance(concepts, Mapping):
        concepts = [concepts]
    for concept in concepts or []:
        for coding in concept.get("coding") or [] if isinstance(concept, Mapping) else []:
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                system = coding.get("system")
                return (system if isinstance(system, str) else None), coding["code"]
    return None, None


def _own_date(resource: Mapping[str, Any]) -> str | None:
    rtype = resource.get("resourceType")
    value: Any = None
    if rtype == "Observation":
        period = resource.get("effectivePeriod")
        value = resource.get("effectiveDateTime") or (
            period.get("start") if isinstance(period, Mapping) else None
        )
    elif rtype == "DocumentReference":
        value = resource.get("date")
    elif rtype == "Appointment":
        value = resource.get("start")
    elif rtype == "Encounter":
        period = resource.get("period")
        value = period.get("start") if isinstance(period, Mapping) else None
    return value if isinstance(value, str) and len(value) >= 10 else None


def _day_window(value: str) -> list[tuple[str, str]]:
    try:
        day = dt.date.fromisoformat(value[:10])
    except ValueError:
        return []
    one = dt.timedelta(days=1)
    return [("date", f"ge{(day - one).isoformat()}"), ("date", f"le{(day + one).isoformat()}")]


def recovery_query(
    capabilities: Capabilities, resource: Mapping[str, Any], marker: str
) -> list[tuple[str, str]] | None:
    """Search parameters that find the resource created for this marker, or None when the server
    offers no search that could (the caller must then not create again)."""
    rtype = str(resource.get("resourceType"))

    def ok(name: str) -> bool:
        return capabilities.supports_search_param(rtype, name)

    if not capabilities.supports_search(rtype):
        return None
    patient = patient_of(resource) if rtype != "Patient" else None
    query: list[tuple[str, str]] = []
    if rtype != "Patient":
        anchor = "patient" if ok("patient") else ("subject" if ok("subject") else None)
        if patient is not None and anchor is not None:
            query.append((anchor, patient))
        elif capabilities.is_epic:
            return None  # Epic refuses clinical searches without a patient
    if ok("identifier"):
        return [*query, ("identifier", f"{MARKER_SYSTEM}|{marker}")]
    if rtype == "Patient" or not query:
        return None
    return _narrowed(capabilities, resource, query)


def _narrowed(
    capabilities: Capabilities, resource: Mapping[str, Any], query: list[tuple[str, str]]
) -> list[tuple[str, str]] | None:
    """A patient-anchored clinical search narrowed by what the server searches: code (or category) and
    a date window around the resource's own date."""
    rtype = str(resource.get("resourceType"))

    def ok(name: str) -> bool:
        return capabilities.supports_search_param(rtype, name)

    query = list(query)
    if rtype == "Observation":
        system, code = _first_code(resource.get("code"))
        _, category = _first_code(resource.get("category"))
        if code is not None and ok("code"):
            query.append(("code", f"{system}|{code}" if system else code))
        elif category is not None and ok("category"):
            query.append(("category", category))
        elif capabilities.is_epic:
            return None  # Epic: "Must have either code or category"
    elif rtype == "DocumentReference":
        _, category = _first_code(resource.get("category"))
        if category is not None and ok("category"):
            query.append(("category", category))
    date = _own_date(resource)
    if date is not None and ok("date"):
        query.extend(_day_window(date))
    return query


# -- natural keys: for servers that do not keep the marker ------------------------------------------------
# Nothing documents that Epic keeps a client's own identifier system on a created Observation or
# DocumentReference. Where the read-back after a create shows the marker gone, an interrupted create is
# looked for by what the resource itself is instead:
#   Patient            the identifiers sent (other than the marker), else family + given + birth date
#   Observation        patient + code + effective time
#   DocumentReference  patient + encounter + type + date
# A natural key can match a resource the bridge did not create, so more than one candidate is never guessed
# between: the command is answered FAILED with the candidates.


NATURAL_KEYS = {
    "Patient": "identifier (or name and birth date)",
    "Observation": "patient, code and effective time",
    "DocumentReference": "patient, encounter, type and date",
}


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # a date, or a local time: compare as written
        return moment
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def _own_identifiers(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (i["system"], i["value"])
        for i in resource.get("identifier") or []
        if isinstance(i, Mapping)
        and isinstance(i.get("system"), str)
        and isinstance(i.get("value"), str)
        and i["system"] != MARKER_SYSTEM
    ]


def _first_name(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for name in resource.get("name") or []:
        if isinstance(name, Mapping):
            given = name.get("given") or []
            family = name.get("family")
            return (family if isinstance(family, str) else None), (
                given[0] if given and isinstance(given[0], str) else None
            )
    return None, None


def _reference(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, Mapping) else None
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _encounter_of(resource: Mapping[str, Any]) -> str | None:
    context = resource.get("context")
    encounters = context.get("encounter") if isinstance(context, Mapping) else None
    if isinstance(encounters, list):
        return _reference(encounters[0]) if encounters else None
    return _reference(encounters) or _reference(resource.get("encounter"))


def natural_key_query(
    capabilities: Capabilities, resource: Mapping[str, Any]
) -> list[tuple[str, str]] | None:
    """A search that finds resources with the same natural key, or None when there is none for the type
    (or the server does not offer it)."""
    rtype = str(resource.get("resourceType"))
    if not capabilities.supports_search(rtype):
        return None

    def ok(name: str) -> bool:
        return capabilities.supports_search_param(rtype, name)

    if rtype == "Patient":
        identifiers = _own_identifiers(resource)
        if identifiers and ok("identifier"):
            system, value = identifiers[0]
            return [("identifier", f"{system}|{value}")]
        family, given = _first_name(resource)
        birth = resource.get("birthDate")
        if (
            family
            and given
            and isinstance(birth, str)
            and all(ok(p) for p in ("family", "given", "birthdate"))
        ):
            return [("family", family), ("given", given), ("birthdate", birth)]
        return None
    if rtype not in ("Observation", "DocumentReference"):
        return None
    patient = patient_of(resource)
    anchor = "patient" if ok("patient") else ("subject" if ok("subject") else None)
    if patient is None or anchor is None:
        return None
    return _narrowed(capabilities, resource, [(anchor, patient)])


def same_natural_key(sent: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether `found` has the natural key of the resource that was sent."""
    rtype = sent.get("resourceType")
    if found.get("resourceType") != rtype:
        return False
    if rtype == "Patient":
        identifiers = _own_identifiers(sent)
        if identifiers:
            return identifiers[0] in _own_identifiers(found)
        return [n.lower() if n else n for n in _first_name(sent)] == [
            n.lower() if n else n for n in _first_name(found)
        ] and sent.get("birthDate") == found.get("birthDate")
    if patient_of(sent) != patient_of(found) or _instant(_own_date(sent)) != _instant(_own_date(found)):
        return False
    if rtype == "Observation":
        return _first_code(sent.get("code")) == _first_code(found.get("code"))
    if rtype == "DocumentReference":
        return _encounter_of(sent) == _encounter_of(found) and _first_code(sent.get("type")) == _first_code(
            found.get("type")
        )
    return False
