"""Patient created → Create patient.

Each new patient is mirrored as a linked record: a Patient with the same name, gender and birth date and
an identifier pointing back at the original (system MIRROR_SYSTEM, value the original's FHIR id). In a
real deployment the mirror goes to another connection (`--target-connection`, e.g. from production to a
test environment); by default it goes to the same one.

The command is ENSURE (find by the mirror identifier, create only when nothing matches): a create that
can be run again safely, so re-published events never create a second copy. Mirrors are never mirrored
again: an event for a patient carrying the mirror identifier is left alone.
"""

from __future__ import annotations

from typing import Any

from bridge.client import Command, CommandResult, Event, Trigger, ensure
from examples.workflow import Workflow, error_text

MIRROR_SYSTEM = "urn:epic-kafka-bridge:examples:mirror-of"


def command(event: Event) -> Command | None:
    identifiers = event.projection.get("identifiers") or []
    if any(i.get("system") == MIRROR_SYSTEM for i in identifiers):
        return None
    patient = event.fhir()  # a fhir.resources (R4B) Patient model
    mirror: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": MIRROR_SYSTEM, "value": event.resource_id}],
        "name": [name.model_dump(mode="json", exclude_none=True) for name in patient.name or []],
    }
    if patient.gender:
        mirror["gender"] = patient.gender
    if patient.birthDate:
        mirror["birthDate"] = patient.birthDate.isoformat()
    return ensure(mirror, {"identifier": f"{MIRROR_SYSTEM}|{event.resource_id}"})


def describe(result: CommandResult) -> str:
    if not result.ok:
        return error_text(result)
    ids = ", ".join(f"Patient/{i}" for i in result.resource_ids)
    created = "created" if result.effect is not None and result.effect.value == "CREATED" else "already there"
    return f"mirror {ids} {created}"


WORKFLOW = Workflow(
    "patient-create", "Patient created -> Create patient", "Patient", Trigger.CREATED,
    command, describe,
)  # fmt: skip
