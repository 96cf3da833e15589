"""Events as typed objects: the envelope every event shares, the typed projection, and the FHIR resource.

An event record (schemas/<resource>_event.avsc) carries the same change three ways: the envelope
(what happened, to which resource, when), a small typed projection of the fields downstream systems
filter and join on, and `resource_json`, the resource exactly as Epic returned it. `Event` keeps all
three; `resource` parses the JSON once, `fhir()` builds a `fhir.resources` model when that package is
installed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from bridge.client.errors import NotAnEvent
from bridge.client.fhir_models import fhir_model
from bridge.client.topics import resource_type_of


class Trigger(StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"


@dataclass(frozen=True)
class Event:
    """One change detected in Epic. `event_id` is derived from the change: the same change always
    carries the same id, so it is the key to deduplicate on (and to derive command ids from)."""

    event_id: str
    trigger: Trigger
    connection: str
    resource_type: str
    resource_id: str
    patient_id: str | None
    detected_at: dt.datetime
    fingerprint: str
    cursor: str | None
    projection: Mapping[str, Any]
    resource_json: str
    snapshot: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        """From a decoded Avro event record (what confluent-kafka's AvroDeserializer returns).

        Fields that a later schema version adds, and this class does not know yet, land in `extra`.
        """
        try:
            rtype = resource_type_of(str(record["resource_type"]))
            projection_field = rtype.lower()
            known = {f for f in cls.__dataclass_fields__ if f not in ("projection", "extra")}
            detected = record["detected_at"]
            if not isinstance(detected, dt.datetime):
                raise TypeError("detected_at is not a timestamp")
            return cls(
                event_id=str(record["event_id"]),
                trigger=Trigger(str(record["trigger"])),
                connection=str(record["connection"]),
                resource_type=rtype,
                resource_id=str(record["resource_id"]),
                patient_id=_opt_str(record.get("patient_id")),
                detected_at=detected,
                fingerprint=str(record["fingerprint"]),
                cursor=_opt_str(record.get("cursor")),
                projection=dict(record.get(projection_field) or {}),
                resource_json=str(record["resource_json"]),
                snapshot=bool(record.get("snapshot", False)),
                extra={k: v for k, v in record.items() if k not in known and k != projection_field},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotAnEvent(f"not an event record: {type(exc).__name__}: {exc}") from exc

    @cached_property
    def resource(self) -> dict[str, Any]:
        """The FHIR resource as Epic returned it (parsed `resource_json`)."""
        parsed: dict[str, Any] = json.loads(self.resource_json)
        return parsed

    def fhir(self) -> Any:
        """The resource as a `fhir.resources` (R4B) model; needs `pip install 'fhir.resources>=8,<9'`."""
        return fhir_model(self.resource)

    @property
    def reference(self) -> str:
        """`<Type>/<id>`, as FHIR references name the resource."""
        return f"{self.resource_type}/{self.resource_id}"


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
