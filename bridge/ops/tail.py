"""`epic-bridge tail`: a readable, live view of a connection's event topics, decoded through the registry.

One line per event: when, trigger, resource, patient and a short clinical summary (status, code,
dates). Names and other identifying fields are left out unless EPIC_BRIDGE_LOG_PATIENT_DATA=1.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.context import KafkaContext
from bridge.logs import patient_data


def _code(coding: Mapping[str, Any] | None) -> str:
    if not coding:
        return ""
    return str(coding.get("display") or coding.get("code") or "")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, dt.datetime) else ""


def summarize(event: Mapping[str, Any]) -> str:
    """The non-identifying gist of an event's projection."""
    rtype = str(event.get("resource_type", ""))
    p: Mapping[str, Any] = event.get(rtype.lower()) or {}
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


def format_line(event: Mapping[str, Any]) -> str:
    detected = event.get("detected_at")
    when = detected.strftime("%H:%M:%S") if isinstance(detected, dt.datetime) else "--:--:--"
    resource = f"{event.get('resource_type')}/{event.get('resource_id')}"
    patient = event.get("patient_id") or "-"
    return f"{when}  {event.get('trigger', ''):7}  {resource:48}  patient={patient:28}  {summarize(event)}"


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
    pattern = f"^{re.escape(prefix)}\\.{re.escape(connection)}\\.[a-z]+\\.events$"
    consumer = Consumer(
        {
            **kafka.config,
            "group.id": f"epic-bridge-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
            "topic.metadata.refresh.interval.ms": 5000,
        }
    )
    deserialize = AvroDeserializer(kafka.registry)
    printed = 0
    consumer.subscribe([pattern])
    try:
        while not stop() and (limit is None or printed < limit):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    out.write(f"# {error}\n")
                continue
            event = deserialize(msg.value(), SerializationContext(str(msg.topic()), MessageField.VALUE))
            out.write(format_line(event) + "\n")
            out.flush()
            printed += 1
    finally:
        consumer.close()
    return printed
