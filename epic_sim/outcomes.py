"""OperationOutcome bodies, shaped like Epic's."""

from __future__ import annotations

from typing import Any

EPIC_OO_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"

NOT_FOUND = "59008"
PARAM_IGNORED = "59100"
NEEDS_DEMOGRAPHICS = "59159"
NOT_AUTHORIZED_WARNING = "59204"
NO_RESULTS = "4101"

DISPLAYS = {
    NOT_FOUND: "The FHIR ID provided was not found.",
    PARAM_IGNORED: "Content invalid against the specification or a profile.",
    NEEDS_DEMOGRAPHICS: "Search request is missing required demographics or an _id.",
    NOT_AUTHORIZED_WARNING: "Client not authorized for this content.",
    NO_RESULTS: "Resource request returns no results.",
}


def issue(
    severity: str,
    code: str,
    text: str,
    *,
    epic_code: str | None = None,
    diagnostics: str | None = None,
    expression: str | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {"severity": severity, "code": code}
    details: dict[str, Any] = {"text": text}
    if epic_code is not None:
        details["coding"] = [
            {"system": EPIC_OO_SYSTEM, "code": epic_code, "display": DISPLAYS.get(epic_code, text)}
        ]
    item["details"] = details
    if diagnostics is not None:
        item["diagnostics"] = diagnostics
    if expression is not None:
        item["expression"] = [expression]
    return item


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def error(
    code: str, text: str, *, epic_code: str | None = None, diagnostics: str | None = None
) -> dict[str, Any]:
    return outcome(issue("error", code, text, epic_code=epic_code, diagnostics=diagnostics))
