"""Tolerant readers for FHIR JSON values: a malformed or partial value becomes None, never an error.

Events carry the full resource anyway; the typed projection is a convenience, so one odd field in one
resource must not stop a poll.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def date(value: Any) -> dt.date | None:
    """A FHIR date; a partial one ("1973" or "1973-06") has no single day and gives None."""
    match = _PARTIAL_DATE.match(value) if isinstance(value, str) else None
    if match is None or match.group(3) is None:
        return None
    try:
        return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def instant(value: Any) -> dt.datetime | None:
    """A FHIR dateTime/instant as an aware UTC datetime. Partial dates take their first instant
    (UTC); a time without a zone, which FHIR forbids, is read as UTC."""
    if not isinstance(value, str):
        return None
    match = _PARTIAL_DATE.match(value)
    try:
        if match is not None:
            year, month, day = match.group(1), match.group(2) or "1", match.group(3) or "1"
            return dt.datetime(int(year), int(month), int(day), tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def coding(value: Any) -> dict[str, str | None] | None:
    c = mapping(value)
    if not c:
        return None
    return {"system": text(c.get("system")), "code": text(c.get("code")), "display": text(c.get("display"))}


def codings(concept: Any) -> list[dict[str, str | None]]:
    """All codings of a CodeableConcept; its text alone becomes a coding with only a display."""
    c = mapping(concept)
    found = [x for x in (coding(v) for v in items(c.get("coding"))) if x is not None]
    if not found and text(c.get("text")):
        found = [{"system": None, "code": None, "display": text(c.get("text"))}]
    return found


def first_coding(concept: Any) -> dict[str, str | None] | None:
    found = codings(concept)
    return found[0] if found else None


def identifiers(value: Any) -> list[dict[str, str | None]]:
    return [
        {"system": text(m.get("system")), "value": text(m.get("value")), "use": text(m.get("use"))}
        for m in (mapping(v) for v in items(value))
        if m
    ]


def reference_id(value: Any, resource_type: str) -> str | None:
    """The id in a reference like {"reference": "Patient/abc"} (relative or absolute URL)."""
    ref = text(mapping(value).get("reference"))
    if ref is None:
        return None
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1] or None
    return None
