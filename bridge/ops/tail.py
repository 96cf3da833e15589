"""`epic-bridge tail`: a readable, live view of a connection's event topics, decoded through the registry.

One line per event: when, trigger, resource, patient and a short clinical summary (status, code,
dates). Names and other identifying fields are left out unless EPIC_BRIDGE_LOG_PATIENT_DATA=1.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from bridge.client import Event, EventReader, NotAnEvent, Topics
from bridge.kafka.context import KafkaContext
from bridge.logs import patient_data


def _code(coding: Mapping[str, Any] | None) -> str:
    if not coding:
        return ""
    return str(coding.get("display") or coding.get("code") or "")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, dt.datetime) else ""


def summarize(event: Event) -> str:
    """The non-identifying gist of an event's projection."""
    rtype = event.resource_type
    p: Mapping[str, Any] = event.projection
    if rtype == "Patient":
        parts = [
            str(p.get("gender") or ""),
            patient_data(f"{p.get('family_name')}, {' '.join(p.get('given_names') or [])}"),
        ]
    elif rtype == "Appointment":
        parts = [str(p.get("status") or ""), _when(p.get("start"))]
    elif rtype == "Encounter":
        parts = [str(p.get("status") or ""), str(p.get("class_code") or ""), _when(p.get("period_start"))]
    elif rtype == "Observation":
        value = p.get("value_quantity")
        shown = f"{value:g} {p.get('value_unit') or ''}".strip() if isinstance(value, float) else ""
        if not shown and p.get("components"):
            shown = "/".join(
                f"{c.get('value_quantity'):g}" for c in p["components"] if c.get("value_quantity") is not None
            )
        parts = [_code(p.get("code")), shown, _when(p.get("effective_at"))]
    elif rtype == "DocumentReference":
        parts = [_code(p.get("type")), str(p.get("status") or ""), _when(p.get("date"))]
    else:
        parts = []
    return "  ".join(x for x in parts if x)


def format_line(event: Event) -> str:
    when = event.detected_at.strftime("%H:%M:%S")
    patient = event.patient_id or "-"
    return f"{when}  {event.trigger.value:7}  {event.reference:48}  patient={patient:28}  {summarize(event)}"


def tail(
    kafka: KafkaContext,
    prefix: str,
    connection: str,
    out: TextIO,
    *,
    from_beginning: bool = False,
    stop: Callable[[], bool] = lambda: False,
    limit: int | None = None,
) -> int:
    """Print events until `stop()` or `limit` events; returns how many were printed."""
    printed = 0
    with EventReader(
        kafka.config,
        kafka.registry,
        Topics(connection, prefix),
        f"epic-bridge-tail-{uuid.uuid4().hex[:8]}",
        from_beginning=from_beginning,
        on_error=lambda error: out.write(f"# {error}\n"),
    ) as events:
        while not stop() and (limit is None or printed < limit):
            try:
                event = events.poll(0.5)
            except NotAnEvent as exc:
                out.write(f"# {exc}\n")
                continue
            if event is None:
                continue
            out.write(format_line(event) + "\n")
            out.flush()
            printed += 1
    return printed
