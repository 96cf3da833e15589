"""Encounter updated → Find encounter.

When an encounter changes, fetch it from Epic (by patient and the encounter's CSN identifier) to be sure
of its latest state before routing it to analytics or care operations.
"""

from __future__ import annotations

from typing import Any

from bridge.client import Command, Event, Trigger
from examples.workflow import Workflow, find_by_identifier, found_one, when


def command(event: Event) -> Command | None:
    return find_by_identifier(event, date_field="period_start")


def summary(encounter: dict[str, Any]) -> str:
    period = encounter.get("period") or {}
    return f"is {encounter.get('status')} ({when(period.get('start'))} to {when(period.get('end'))})"


WORKFLOW = Workflow(
    "encounter-find", "Encounter updated -> Find encounter", "Encounter", Trigger.UPDATED,
    command, found_one(summary),
)  # fmt: skip
