"""Document reference created → Find document reference.

When a clinical document appears, locate it in Epic at once to capture its identifiers for storage,
indexing or audit. Epic searches DocumentReference by patient, category and date (it has no identifier
search), so the search may match the patient's other notes of that day: the app picks out its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bridge.client import Command, Event, Trigger, find
from examples.workflow import Workflow, found_one, when


def command(event: Event) -> Command | None:
    if event.patient_id is None:
        return None
    criteria = {"patient": event.patient_id}
    categories = [c.get("code") for c in event.projection.get("categories") or [] if c.get("code")]
    if categories:
        criteria["category"] = categories[0]
    date = event.projection.get("date")
    if isinstance(date, dt.datetime):
        criteria["date"] = date.date().isoformat()
    return find("DocumentReference", criteria)


def summary(document: dict[str, Any]) -> str:
    kind = (document.get("type") or {}).get("text") or "document"
    return (
        f"is a {kind} ({document.get('docStatus') or document.get('status')}) of {when(document.get('date'))}"
    )


WORKFLOW = Workflow(
    "documentreference-find", "Document reference created -> Find document reference", "DocumentReference",
    Trigger.CREATED, command, found_one(summary),
)  # fmt: skip
