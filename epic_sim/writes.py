"""Validation of FHIR creates, following what Epic accepts for each resource type."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from epic_sim import outcomes
from epic_sim.store import Store

BP_PANEL = "85354-9"
BP_COMPONENTS = ("8480-6", "8462-4")


class WriteError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _fail(text: str, *, code: str = "required", status: int = 400) -> WriteError:
    return WriteError(status, outcomes.error(code, text))


def _codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [str(c["code"]) for c in concept.get("coding", []) if isinstance(c, dict) and c.get("code")]


def _ref_target(ref: Any, rtype: str) -> str | None:
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        value: str = ref["reference"]
        if value.startswith(f"{rtype}/"):
            return value.split("/", 1)[1]
    return None


def _require_patient(store: Store, resource: dict[str, Any], field: str = "subject") -> None:
    pid = _ref_target(resource.get(field), "Patient")
    if not pid or not store.exists("Patient", pid):
        raise _fail("Valid patient required", code="invalid")


def validate_patient(resource: dict[str, Any], store: Store) -> None:
    names = resource.get("name")
    if (
        not isinstance(names, list)
        or not names
        or not any(isinstance(n, dict) and (n.get("family") or n.get("text")) for n in names)
    ):
        raise _fail("A patient name (family) is required")
    if resource.get("gender") not in (None, "male", "female", "other", "unknown"):
        raise _fail("Invalid gender", code="invalid")


def validate_observation(resource: dict[str, Any], store: Store) -> None:
    categories = [code for c in resource.get("category", []) for code in _codes(c)]
    if "vital-signs" not in categories:
        raise _fail("Only vital-signs Observations can be created", code="not-supported")
    codes = _codes(resource.get("code"))
    if not codes:
        raise _fail("Observation.code is required")
    _require_patient(store, resource)
    if resource.get("encounter") is not None:
        eid = _ref_target(resource.get("encounter"), "Encounter")
        if not eid or not store.exists("Encounter", eid):
            raise _fail("Valid encounter required", code="invalid")
    if not resource.get("effectiveDateTime"):
        raise _fail("effectiveDateTime is required")
    if BP_PANEL in codes:
        present = {
            code
            for comp in resource.get("component", [])
            for code in _codes(comp.get("code"))
            if isinstance(comp.get("valueQuantity"), dict)
        }
        missing = [c for c in BP_COMPONENTS if c not in present]
        if missing:
            raise _fail(f"Blood pressure panel needs components {', '.join(missing)} with valueQuantity")
    elif not isinstance(resource.get("valueQuantity"), dict) and not resource.get("component"):
        raise _fail("A vital sign needs a valueQuantity")
    resource.setdefault("status", "final")


def validate_document(resource: dict[str, Any], store: Store) -> None:
    encounters = (resource.get("context") or {}).get("encounter") or []
    eid = _ref_target(encounters[0], "Encounter") if encounters else None
    if not eid or not store.exists("Encounter", eid):
        raise _fail("Valid encounter required", code="invalid")
    _require_patient(store, resource)
    content = resource.get("content") or []
    attachment = content[0].get("attachment") if content and isinstance(content[0], dict) else None
    if not isinstance(attachment, dict) or not attachment.get("data"):
        raise _fail("Note text is required as content[0].attachment.data")
    if attachment.get("contentType", "").split(";")[0] not in ("text/plain", "text/html", "text/rtf"):
        raise _fail("Unsupported attachment contentType", code="invalid")
    try:
        base64.b64decode(attachment["data"], validate=True)
    except (binascii.Error, ValueError):
        raise _fail("attachment.data is not valid base64", code="invalid") from None
    resource.setdefault("status", "current")
    resource.setdefault("docStatus", "final")


EPIC_CREATE_VALIDATORS = {
    "Patient": validate_patient,
    "Observation": validate_observation,
    "DocumentReference": validate_document,
}

EPIC_NO_CREATE_TEXT = {
    "Encounter": "Create is not supported for Encounter in FHIR R4.",
    "Appointment": (
        "Create is not supported for Appointment in FHIR R4. "
        "Schedule through the STU3 Appointment/$find and Appointment/$book operations."
    ),
    "Group": "Create is not supported for Group.",
}


EPIC_OID_ROOT = "urn:oid:1.2.840.114350."


def drop_unknown_identifiers(resource: dict[str, Any]) -> None:
    """Keep only identifiers of Epic's own systems, as a server that stores no foreign identifier would
    (nothing documents that Epic keeps a client's identifier on a created Observation or note)."""
    kept = [
        i
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and str(i.get("system", "")).startswith(EPIC_OID_ROOT)
    ]
    if kept:
        resource["identifier"] = kept
    else:
        resource.pop("identifier", None)
