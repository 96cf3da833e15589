"""Appointment created → Find appointment.

For each new appointment, look it up in Epic by the patient and the appointment's own identifier, to
confirm identifiers and status before a downstream scheduling workflow goes on.
"""

from __future__ import annotations

from typing import Any

from bridge.client import Command, Event, Trigger
from examples.workflow import Workflow, find_by_identifier, found_one, when


def command(event: Event) -> Command | None:
    return find_by_identifier(event, date_field="start")


def summary(appointment: dict[str, Any]) -> str:
    return f"is {appointment.get('status')}, starts {when(appointment.get('start'))}"


WORKFLOW = Workflow(
    "appointment-find", "Appointment created -> Find appointment", "Appointment", Trigger.CREATED,
    command, found_one(summary),
)  # fmt: skip
