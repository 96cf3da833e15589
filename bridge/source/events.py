"""Event records as the event schemas (schemas/<resource>_event.avsc) define them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from bridge.source.projection import PROJECTIONS, patient_id_of

# Event ids are name-based (UUIDv5) on the change itself, so re-publishing the same change after a
# crash yields the same id and downstream consumers can deduplicate on it. A change is named by the
# fingerprint it came from, the one it led to and how many changes the resource had before, so a resource
# that reverts (A → B → A) or flips back and forth never repeats an id.
EVENT_NAMESPACE = uuid.UUID("5b0f7f0e-3c55-4a8e-9a43-2f6c3b8f6a11")


class Trigger(StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"


def change_identity(fingerprint: str, previous: str | None = None, changes_before: int = 0) -> str:
    """What names one change of a resource: its first sight has no previous fingerprint."""
    if previous is None:
        return fingerprint
    return f"{previous}>{fingerprint}#{changes_before + 1}"


def event_id(connection: str, resource_type: str, resource_id: str, change: str) -> uuid.UUID:
    """`change`: from ``change_identity`` (plus, for a backfill run, the run's id)."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{connection}|{resource_type}|{resource_id}|{change}")


def projection_field(resource_type: str) -> str:
    """Name of the projection field in the event record, e.g. documentreference."""
    return resource_type.lower()


def build_event(
    *,
    connection: str,
    resource: Mapping[str, Any],
    fingerprint: str,
    trigger: Trigger,
    detected_at: dt.datetime,
    cursor: str | None,
    snapshot_run: str | None = None,
    change: str | None = None,
) -> dict[str, Any]:
    """`change`: the change's identity (``change_identity``), by default a first sight.
    `snapshot_run`: the id of a backfill run; its events are marked `snapshot` and get ids of their
    own (a consumer deduplicating on event ids must still receive a deliberate re-publication)."""
    resource_type = str(resource["resourceType"])
    resource_id = str(resource["id"])
    identity = change or change_identity(fingerprint)
    if snapshot_run is not None:
        identity = f"{identity}|snapshot|{snapshot_run}"
    return {
        "event_id": event_id(connection, resource_type, resource_id, identity),
        "trigger": trigger.value,
        "connection": connection,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "patient_id": patient_id_of(resource),
        "detected_at": detected_at,
        "fingerprint": fingerprint,
        "cursor": cursor,
        projection_field(resource_type): PROJECTIONS[resource_type](resource),
        "resource_json": json.dumps(resource, separators=(",", ":"), ensure_ascii=False),
        "snapshot": snapshot_run is not None,
    }
